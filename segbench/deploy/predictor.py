"""A trained checkpoint as a function of images: the one code path of ``segbench predict``,
``segbench export``'s parity check and ``segbench serve``.

:class:`Predictor` loads the checkpoint with :func:`segbench.checkpoints.load_model`, which builds
the network exactly as ``evaluate.py`` does (the checkpoint's run config merged with the
evaluation's ``inference=...``, ``fast.*`` and ``model.mc_samples`` / ``model.crf`` choices,
without the training runner), passes each image through
the checkpoint's evaluation transform (normalisation, any resize) and returns its class map at
the image's own size, with the model's per-pixel uncertainty where it gives one (Bayesian
SegNet's MC dropout). No labels are read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segbench.deploy.images import (
    ImageError,
    class_shares,
    decode_image,
    legend,
    load_image,
    overlay_with_legend,
)
from segbench.metrics import class_map

__all__ = [
    "checkpoint_name",
    "checkpoint_stem",
    "ImageError",
    "Prediction",
    "Predictor",
    "class_shares",
    "decode_image",
    "legend",
    "load_image",
    "overlay_with_legend",
]


@dataclass
class Prediction:
    """One image's prediction at the image's own size."""

    classes: np.ndarray  # uint8 (H, W) class indices
    uncertainty: np.ndarray | None  # float32 (H, W), when the model gives one
    seconds: float  # the network's time for the batch the image was in, divided per image


def run_dir_of(ckpt: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``); for a
    published checkpoint (``torchvision:fcn_resnet50``), ``outputs/zoo/<source>_<name>``."""
    from segbench.zoo.spec import parse_spec, slug

    spec = parse_spec(str(ckpt))
    if spec is not None:
        return Path("outputs") / "zoo" / slug(spec)
    ckpt = Path(ckpt).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def checkpoint_name(ckpt: str | Path) -> str:
    """How records name ``ckpt``: its absolute path, or a published checkpoint's spec."""
    from segbench.zoo.spec import parse_spec

    spec = parse_spec(str(ckpt))
    return str(spec) if spec is not None else str(Path(ckpt).resolve())


def checkpoint_stem(ckpt: str | Path) -> str:
    """A file-name stem for outputs made from ``ckpt`` (``best``, ``torchvision_fcn_resnet50``)."""
    from segbench.zoo.spec import parse_spec, slug

    spec = parse_spec(str(ckpt))
    return slug(spec) if spec is not None else Path(ckpt).stem


class Predictor:
    """Checkpoint ``ckpt`` evaluated as ``evaluate.py ckpt=<ckpt> <overrides>`` would evaluate it,
    as a function of images.

    Args:
        ckpt: a checkpoint ``train.py`` wrote.
        overrides: ``conf/evaluate.yaml`` overrides: ``inference=slide``, ``fast.channels_last=
            true``, ``model.mc_samples=8``, ``trainer.precision=bf16-mixed`` ...
        device: ``cpu``, ``cuda`` ... (default: a GPU when ``trainer.accelerator`` allows one).
    """

    def __init__(
        self, ckpt: str | Path, overrides: Sequence[str] = (), device: str | None = None
    ) -> None:
        from segbench.checkpoints import load_model

        self.model = load_model(ckpt, overrides, device)
        self.ckpt = self.model.ckpt
        self.cfg, self.run_cfg = self.model.cfg, self.model.run_cfg
        self.network, self.inference = self.model.network, self.model.inference
        self.device = self.model.device
        self.transform = self.model.transform
        self.class_names = self.model.class_names
        self.num_classes = self.model.num_classes
        self.palette = self.model.palette
        self.precision = self.model.precision
        self.eval_mode = self.model.eval_mode

    # ------------------------------------------------------------------------------ describe

    def info(self) -> dict:
        """What the checkpoint is: model, backbone, dataset, classes and palette, how it
        predicts, and the figures its run's ``results.json`` recorded (``None`` if absent)."""
        model, backbone = self.run_cfg.model, self.run_cfg.backbone
        figures = None
        results = run_dir_of(self.ckpt) / "results.json"
        if results.is_file():
            record = json.loads(results.read_text(encoding="utf-8"))
            figures = {
                "split": record.get("split"),
                "metrics": record.get("metrics"),
                "per_class_iou": record.get("per_class_iou"),
                "eval_mode": record.get("eval_mode"),
                "results": str(results),
            }
        return {
            "checkpoint": self.ckpt,
            "model": model.get("name"),
            "backbone": backbone.get("name") if backbone is not None else None,
            "dataset": self.model.dataset,
            "num_classes": self.num_classes,
            "classes": self.class_names,
            "palette": self.palette,
            "ignore_index": self.model.ignore_index,
            "eval_mode": self.eval_mode,
            "uncertainty": bool(int(model.get("mc_samples") or 0) > 0),
            "device": str(self.device),
            "figures": figures,
        }

    # ------------------------------------------------------------------------------- predict

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        """``image`` (uint8 RGB) through the checkpoint's evaluation transform: ``(3, h, w)``."""
        x, _ = self.transform(image, np.zeros(image.shape[:2], dtype=np.uint8))
        return x

    def logits(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The evaluation's scores (``out``, and ``uncertainty`` when the model gives one) of a
        transformed batch ``(B, 3, h, w)``, at its size."""
        return self.model(batch)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict images of one size in one batch (each ``uint8 (H, W, 3)`` RGB)."""
        sizes = {im.shape[:2] for im in images}
        if len(sizes) != 1:
            raise ValueError(f"predict_batch takes images of one size, got {sorted(sizes)}")
        (h, w), start = sizes.pop(), time.perf_counter()
        out = self.logits(torch.stack([self.tensor(im) for im in images]))
        scores, uncertainty = out["out"], out.get("uncertainty")
        if scores.shape[-2:] != (h, w):  # a resizing eval transform: back to the image
            scores = F.interpolate(scores.float(), size=(h, w), mode="bilinear")
            if uncertainty is not None:
                uncertainty = F.interpolate(
                    uncertainty[:, None].float(), size=(h, w), mode="bilinear"
                )[:, 0]
        classes = class_map(scores).to(torch.uint8).cpu().numpy()
        unc = None if uncertainty is None else uncertainty.float().cpu().numpy()
        seconds = (time.perf_counter() - start) / len(images)
        return [
            Prediction(classes[i], None if unc is None else unc[i], seconds)
            for i in range(len(images))
        ]

    def predict(self, image: np.ndarray) -> Prediction:
        """Predict one ``uint8 (H, W, 3)`` RGB image."""
        return self.predict_batch([image])[0]

    def overlay(self, image: np.ndarray, prediction: Prediction, alpha: float = 0.5) -> np.ndarray:
        """``image`` with its prediction blended over it and a legend of class shares."""
        return overlay_with_legend(image, prediction.classes, self.class_names, self.palette, alpha)
