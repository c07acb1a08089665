"""Evaluate a checkpoint: ``python evaluate.py ckpt=outputs/train/.../checkpoints/best.ckpt``.

Composes ``conf/evaluate.yaml``; the model and dataset come from the checkpoint.
"""

import hydra
from omegaconf import DictConfig

from segbench.engine.run import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    results = evaluate(cfg)
    return results["metrics"]["mIoU"] if "metrics" in results else None  # format_only: none


if __name__ == "__main__":
    main()
