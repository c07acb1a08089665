"""Train a segmentation model: ``python train.py model=fcn8s backbone=resnet18 dataset=shapes``.

Composes ``conf/train.yaml`` with Hydra; see README.md for the groups and options. Prints one
line per epoch and the result table (``verbose=true``: everything Lightning prints, and the
progress bar on a terminal); the same lines go to ``<run dir>/train.log``. A refused run prints
why on stderr and exits with status 1 (``HYDRA_FULL_ERROR=1``: with its traceback).
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


def train(cfg: DictConfig) -> dict:
    """:func:`segbench.engine.run.train`, imported when a run starts (not for ``--help``)."""
    from segbench.engine.run import train as run

    return run(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from segbench.engine.resume import RunInterrupted

    with run_console(cfg, "train"):
        try:
            results = train(cfg)
        except RunInterrupted as stop:  # SIGINT/SIGTERM: saved, with the command that resumes
            print(f"\n{stop}", file=sys.stderr, flush=True)
            sys.exit(128 + stop.signum)
    # what sweepers optimise (hydra/sweeper=search maximises it): the best validation mIoU,
    # never a test figure; None when no val/mIoU checkpoint was kept
    return results["best_val_mIoU"]


if __name__ == "__main__":
    run_app(main, "python train.py")
