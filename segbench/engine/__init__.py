"""The Lightning + Hydra glue: a composed config built into model, data, task and trainer
(:mod:`~segbench.engine.build`), trained or a checkpoint evaluated (:mod:`~segbench.engine.run`),
and the run's ``results.json`` written (:mod:`~segbench.engine.scoring`). The LightningModules
live in :mod:`~segbench.engine.task` (and GAN-seg's in :mod:`~segbench.engine.adversarial`), the
callbacks in :mod:`~segbench.engine.callbacks`."""
