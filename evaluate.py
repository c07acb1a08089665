"""Evaluate a checkpoint: ``python evaluate.py ckpt=outputs/train/.../checkpoints/best.ckpt``.

Composes ``conf/evaluate.yaml``; the model and dataset come from the checkpoint. Prints the
result table (``verbose=true``: everything Lightning and W&B print); the same lines go to
``<run dir>/evaluate.log``. A refused run prints why on stderr and exits with status 1.
"""

import sys

from segbench.report import prepare_console, run_app

prepare_console(sys.argv[1:])  # before tqdm is imported

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from segbench.config import register_resolvers  # noqa: E402
from segbench.engine.console import run_console  # noqa: E402

register_resolvers()  # before Hydra composes conf/
if not {"-h", "--help", "--hydra-help", "--info", "-c", "--cfg"} & set(sys.argv[1:]):
    # a run: Lightning imported before Hydra sets up logging keeps its own plain console
    # handler (its lines print as they always have); --help and --cfg skip torch entirely
    import pytorch_lightning  # noqa: E402, F401


def evaluate(cfg: DictConfig) -> dict:
    """:func:`segbench.engine.run.evaluate`, imported when a run starts (not for ``--help``)."""
    from segbench.engine.run import evaluate as run

    return run(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    with run_console(cfg, "evaluate"):
        results = evaluate(cfg)
    return results["metrics"]["mIoU"] if "metrics" in results else None  # format_only: none


if __name__ == "__main__":
    run_app(main, "python evaluate.py")
