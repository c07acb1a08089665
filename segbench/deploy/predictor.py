"""A trained checkpoint as a function of images: the one code path of ``segbench predict``,
``segbench export``'s parity check and ``segbench serve``.

:class:`Predictor` builds the network exactly as ``evaluate.py`` does (the checkpoint's run
config merged with the evaluation's ``inference=...``, ``fast.*`` and ``model.mc_samples`` /
``model.crf`` choices, :func:`segbench.engine.build.evaluation_task`), passes each image through
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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segbench.deploy.images import (
    ImageError,
    class_shares,
    decode_image,
    legend,
    load_image,
    overlay_with_legend,
)
from segbench.engine.fast import autocast_for, prepare_batch
from segbench.inference import eval_mode
from segbench.metrics import class_map
from segbench.plots import default_palette

__all__ = [
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


def _plain(model, x):
    return model(x)


def _device(cfg: DictConfig, device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _model_overrides(overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """``model.<key>=value`` overrides of the evaluation-only keys (``mc_samples``, ``crf``)
    taken out of ``overrides``, as evaluate.py applies them to the trained model config; any
    other ``model.<key>`` would change what the weights mean and is refused."""
    from segbench.engine.checkpoint import EVALUATION_ONLY_KEYS, CheckpointError

    keys, rest = {}, []
    for token in overrides:
        key, _, value = token.partition("=")
        name = key.lstrip("+~")
        if name.startswith("model."):
            field = name.split(".", 1)[1]
            if field.split(".")[0] not in EVALUATION_ONLY_KEYS:
                raise CheckpointError(
                    f"{token}: model.{field} cannot change at prediction: only "
                    f"{', '.join(f'model.{k}' for k in EVALUATION_ONLY_KEYS)} may be set"
                )
            keys = OmegaConf.to_container(
                OmegaConf.merge(keys, OmegaConf.from_dotlist([f"{field}={value}"]))
            )
        else:
            rest.append(token)
    return keys, rest


def run_dir_of(ckpt: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``)."""
    ckpt = Path(ckpt).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


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
        from segbench.config import compose
        from segbench.engine.build import evaluation_task
        from segbench.engine.checkpoint import evaluation_config

        self.ckpt = str(ckpt)
        model_keys, overrides = _model_overrides(overrides)
        cfg = compose("evaluate", [f"ckpt={self.ckpt}", *overrides])
        self.cfg = cfg
        self.run_cfg, state_dict = evaluation_config(cfg)
        if model_keys:  # model.mc_samples=0, model.crf=null: how the trained model predicts
            self.run_cfg.model = OmegaConf.merge(self.run_cfg.model, model_keys)
        self.dm = instantiate(self.run_cfg.dataset)  # no split opened: no labels read
        self.task, _ = evaluation_task(cfg, self.run_cfg, state_dict, self.dm)
        self.device = _device(cfg, device)
        self.task.to(self.device).eval()
        self.transform = self.dm.eval_transform
        self.class_names = [str(n) for n in self.dm.class_names]
        self.num_classes = int(self.dm.num_classes)
        self.palette = [
            list(map(int, c)) for c in (self.dm.palette or default_palette(self.num_classes))
        ]
        self.precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
        self.eval_mode = eval_mode(self.run_cfg.model, self.task.inference)

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
            "dataset": self.dm.name,
            "num_classes": self.num_classes,
            "classes": self.class_names,
            "palette": self.palette,
            "ignore_index": int(self.dm.ignore_index),
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

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The evaluation's scores (``out``, and ``uncertainty`` when the model gives one) of a
        transformed batch ``(B, 3, h, w)``, at its size."""
        batch = prepare_batch(batch.to(self.device), self.task.fast)
        autocast = autocast_for(self.precision, self.device)
        if autocast is None:
            return (self.task.inference or _plain)(self.task.model, batch)
        with autocast:
            return (self.task.inference or _plain)(self.task.model, batch)

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
