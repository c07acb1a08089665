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

register_resolvers()  # before Hydra composes conf/; torch and Lightning wait for main()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    from segbench.engine.run import evaluate

    with run_console(cfg, "evaluate"):
        results = evaluate(cfg)
    return results["metrics"]["mIoU"] if "metrics" in results else None  # format_only: none


if __name__ == "__main__":
    run_app(main, "python evaluate.py")
