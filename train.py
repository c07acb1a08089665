"""Train a segmentation model: ``python train.py model=fcn8s backbone=resnet18 dataset=shapes``.

Composes ``conf/train.yaml`` with Hydra; see README.md for the groups and options.
"""

import sys

import hydra
from omegaconf import DictConfig

from segbench.engine.resume import RunInterrupted
from segbench.engine.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except RunInterrupted as stop:  # SIGINT/SIGTERM: saved, with the command that resumes
        print(f"\n{stop}", file=sys.stderr, flush=True)
        sys.exit(128 + stop.signum)
    # what sweepers optimise (hydra/sweeper=search maximises it): the best validation mIoU,
    # never a test figure; None when no val/mIoU checkpoint was kept
    return results["best_val_mIoU"]


if __name__ == "__main__":
    main()
