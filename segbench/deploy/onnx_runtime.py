"""An exported ONNX file (``segbench export``) as a function of images, with NumPy, OpenCV,
Pillow and onnxruntime only: a deployment without PyTorch.

The input pipeline is rebuilt from the file's ``segbench`` metadata (the checkpoint's
evaluation transform: resize if set, then ``(RGB / 255 - mean) / std``). A file exported at a
fixed size (``dynamic_hw: false``) gets every image resized to that size. Logits of a resized
image are resized back bilinearly (half-pixel centres, as PyTorch's ``F.interpolate`` with
``align_corners=False``) and the class is the first maximum, as in ``segbench predict`` with
the checkpoint. Nothing here imports torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.deploy.images import overlay_with_legend

__all__ = ["OnnxPredictor"]


@dataclass
class Prediction:
    """One image's prediction at its own size (the fields of the PyTorch Predictor's)."""

    classes: np.ndarray  # uint8 (H, W)
    uncertainty: np.ndarray | None
    seconds: float


def _resize_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(K, h, w)`` scores bilinearly to ``size`` with half-pixel centres."""
    import cv2

    planes = [cv2.resize(p, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for p in scores]
    return np.stack(planes)


class OnnxPredictor:
    """``path`` (an ONNX file ``segbench export`` wrote) on CPU through onnxruntime.

    Raises:
        ValueError: the file has no segbench metadata (not written by ``segbench export``).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        import onnx
        import onnxruntime as ort

        self.path = str(path)
        props = {
            p.key: p.value for p in onnx.load(self.path, load_external_data=False).metadata_props
        }
        if "segbench" not in props:
            raise ValueError(
                f"{self.path}: no segbench metadata (classes, normalisation); export it with "
                "segbench export ckpt=<checkpoint> format=onnx"
            )
        self.meta = json.loads(props["segbench"])
        self.session = ort.InferenceSession(
            self.path, providers=list(providers or ["CPUExecutionProvider"])
        )
        dims = self.session.get_inputs()[0].shape
        self.fixed_batch = isinstance(dims[0], int)  # else a named (dynamic) batch axis
        self.class_names = list(self.meta["classes"])
        self.palette = [list(c) for c in self.meta["palette"]]
        self.num_classes = len(self.class_names)
        self.eval_mode = self.meta.get("eval_mode", "single-scale")
        self.mean = np.asarray(self.meta["mean"], np.float32).reshape(3, 1, 1) * 255
        self.std = np.asarray(self.meta["std"], np.float32).reshape(3, 1, 1) * 255

    def info(self) -> dict:
        """What the file holds (the checkpoint's description, as exported)."""
        keys = ("model", "backbone", "dataset", "classes", "palette", "ignore_index", "eval_mode")
        return {
            "checkpoint": self.path,
            **{k: self.meta.get(k) for k in keys},
            "num_classes": self.num_classes,
            "uncertainty": False,
            "device": "cpu (onnxruntime)",
            "figures": None,
        }

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network sees for an image of ``height x width``: the transform's resize
        (its short-side resize first), else the traced size for a file exported at a fixed size,
        else the image's own."""
        if self.meta.get("resize_short"):
            from segbench.data.transforms import short_side_size

            height, width = short_side_size(height, width, int(self.meta["resize_short"]))
        if self.meta.get("resize"):
            return tuple(self.meta["resize"])
        if not self.meta.get("dynamic_hw", True):
            return tuple(self.meta["traced_size"])  # a fixed-size graph: resized to it and back
        return height, width

    def tensor(self, image: np.ndarray) -> np.ndarray:
        """``image`` (uint8 RGB) through the exported evaluation transform: ``(3, h, w)``."""
        h, w = self.input_size(*image.shape[:2])
        if self.meta.get("resize_short") and not self.meta.get("resize"):
            from segbench.data.transforms import resize_short_side

            image, _ = resize_short_side(image, image[..., 0], int(self.meta["resize_short"]))
        if (h, w) != image.shape[:2]:
            import cv2

            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        return (x - self.mean) / self.std

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict images of one size in one batch (each ``uint8 (H, W, 3)`` RGB)."""
        sizes = {im.shape[:2] for im in images}
        if len(sizes) != 1:
            raise ValueError(f"predict_batch takes images of one size, got {sorted(sizes)}")
        (h, w), start = sizes.pop(), time.perf_counter()
        batch = np.stack([self.tensor(im) for im in images])
        if self.fixed_batch:  # torch.export's graphs take one image at a time
            out = np.concatenate([self.session.run(None, {"image": b[None]})[0] for b in batch])
        else:
            out = self.session.run(None, {"image": batch})[0]
        classes = []
        for scores in out:
            if self.meta["output"] == "classes":
                pred = scores
                if pred.shape != (h, w):  # nearest back to the image: no scores to blend
                    import cv2

                    pred = cv2.resize(
                        pred.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST
                    )
            else:
                if scores.shape[-2:] != (h, w):
                    scores = _resize_scores(scores, (h, w))
                pred = scores.argmax(0)  # the first maximum, as torch's max(dim=1)
            classes.append(pred.astype(np.uint8))
        seconds = (time.perf_counter() - start) / len(images)
        return [Prediction(c, None, seconds) for c in classes]

    def predict(self, image: np.ndarray) -> Prediction:
        """Predict one ``uint8 (H, W, 3)`` RGB image."""
        return self.predict_batch([image])[0]

    def overlay(self, image: np.ndarray, prediction: Prediction, alpha: float = 0.5) -> np.ndarray:
        """``image`` with its prediction blended over it and a legend of class shares."""
        return overlay_with_legend(image, prediction.classes, self.class_names, self.palette, alpha)
