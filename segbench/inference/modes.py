"""How a trained model predicts at evaluation: whole image, sliding window, test-time augmentation.

- ``whole``: the full image in one forward pass (the default).
- ``slide``: windows of ``crop`` pixels every ``stride`` pixels, the last one in each direction
  aligned to the border, so that they cover the image exactly; the logits of overlapping windows
  are averaged (a count map divides their sum). For images too large to fit in memory at once,
  such as Cityscapes' 1024×2048 (the PSPNet paper and mmsegmentation evaluate it this way).
- test-time augmentation (TTA): each of ``scales`` (bilinear resize) and, with ``flip``, its
  horizontal mirror, predicted by ``whole`` or ``slide``; the scores are resized back to the
  input size and their softmax averaged, as the DeepLab and PSPNet papers report "MS+Flip".

Post-processing and sampling that belong to the model run once on the final result: a DeepLab
v1 dense CRF (``model.crf``) is taken out of the model for the passes and applied to the
averaged scores; Bayesian SegNet's Monte Carlo dropout runs inside every pass and its
``uncertainty`` map is averaged like the scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import segmenter_of

__all__ = ["MODES", "Inference", "eval_mode", "evaluating", "sliding_windows"]

MODES = ("whole", "slide")


def _starts(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, the last aligned to the border."""
    n = max(size - crop + stride - 1, 0) // stride + 1  # ceil((size - crop) / stride) + 1
    return [min(i * stride, max(size - crop, 0)) for i in range(n)]


def sliding_windows(
    size: Sequence[int], crop: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` covering an image of ``size`` ``(H, W)``; on an axis shorter
    than the crop the one window is the whole axis."""
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    return [
        (y, min(y + ch, h), x, min(x + cw, w))
        for y in _starts(h, ch, sh)
        for x in _starts(w, cw, sw)
    ]


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode without gradients for the block; its mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (``align_corners=False``); the tensor itself at its own size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _pair(key: str, value: Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    items = list(value) if not isinstance(value, (str, int, float)) else [value]
    try:
        ok = len(items) == 2 and all(float(v) == int(v) for v in items)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"inference.{key} must be two integers [h, w], got {value!r}")
    pair = (int(items[0]), int(items[1]))
    if min(pair) < 1:
        raise ValueError(f"inference.{key} must be positive, got {list(pair)}")
    return pair


class Inference:
    """Evaluation-time prediction: whole image or sliding window, optional multi-scale and flip.

    Sliding window as in Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (and
    mmsegmentation's ``slide`` test mode); multi-scale + flip averaging of softmax scores as in
    Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
    Convolution, and Fully Connected CRFs", TPAMI 2018.

    With one pass at the input size (``mode=whole``, ``scales=[1.0]``, no flip) ``out`` is the
    model's own output, unchanged. ``slide`` returns the count-averaged window logits. Otherwise
    (several passes, or one at another scale: ``scales=[0.5]`` predicts at half resolution)
    ``out`` is the log of the averaged probabilities at the input size, float32: its argmax is
    the prediction and cross-entropy on it is the NLL of the averaged prediction.

    Args:
        mode: ``whole`` or ``slide``.
        crop: ``[h, w]`` window size (``slide`` only), in pixels of the (rescaled) input.
        stride: ``[h, w]`` window step (``slide`` only), at most ``crop``. An image smaller
            than the crop is zero-padded at the bottom/right (zero is the mean colour of a
            normalised image) and the scores cropped back.
        scales: image scales to average (``[1.0]``: single scale).
        flip: also average the horizontally flipped image at every scale.
        rescale: ``[long, short]``: before the passes, the image is rescaled, keeping its aspect
            ratio, to the largest size whose long side is at most ``long`` and short side at
            most ``short`` (mmsegmentation's ``Resize(scale=(2048, 512), keep_ratio=True)`` test
            step: ADE20K's 512 short side); ``scales`` are relative to that size, and the scores
            are resized back to the input (the label's) size. ``None``: the input size.
        rescale_divisor: with ``rescale``, each side of the rescaled size rounded up to a
            multiple of it (the official SegFormer's ``AlignedResize(size_divisor=32)``).
    """

    def __init__(
        self,
        mode: str = "whole",
        crop: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        rescale: Sequence[int] | None = None,
        rescale_divisor: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"inference.mode must be one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        self.crop, self.stride = _pair("crop", crop), _pair("stride", stride)
        if mode == "slide":
            if self.crop is None or self.stride is None:
                raise ValueError(
                    "inference.mode=slide needs inference.crop and inference.stride ([h, w] "
                    f"each), got crop={crop!r}, stride={stride!r}"
                )
            if self.stride[0] > self.crop[0] or self.stride[1] > self.crop[1]:
                raise ValueError(
                    f"inference.stride {list(self.stride)} must be at most inference.crop "
                    f"{list(self.crop)} on each side (windows would leave gaps)"
                )
        elif self.crop is not None or self.stride is not None:
            raise ValueError(
                f"inference.crop and inference.stride are used by mode=slide only, got mode="
                f"{mode!r} with crop={crop!r}, stride={stride!r}; set inference.mode=slide or "
                "drop them"
            )
        if isinstance(scales, (int, float)):
            scales = [scales]
        try:
            self.scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError):
            self.scales = ()
        if not self.scales or not all(0 < s < float("inf") for s in self.scales):
            raise ValueError(
                f"inference.scales must be a non-empty list of positive numbers, got {scales!r}"
            )
        if not isinstance(flip, bool):
            raise ValueError(f"inference.flip must be true or false, got {flip!r}")
        self.flip = flip
        self.rescale = _pair("rescale", rescale)
        if rescale_divisor is not None and (
            isinstance(rescale_divisor, bool)
            or not isinstance(rescale_divisor, int)
            or rescale_divisor < 1
            or self.rescale is None
        ):
            raise ValueError(
                "inference.rescale_divisor must be a positive integer and goes with "
                f"inference.rescale=[long, short], got {rescale_divisor!r} (rescale={rescale!r})"
            )
        self.rescale_divisor = rescale_divisor

    def rescaled(self, height: int, width: int) -> tuple[int, int]:
        """The size an ``height x width`` image is predicted at before ``scales``: itself, or
        with ``rescale``, the keep-ratio size fitting ``[long, short]`` (rounded as mmcv's
        ``rescale_size``)."""
        if self.rescale is None:
            return height, width
        factor = min(max(self.rescale) / max(height, width), min(self.rescale) / min(height, width))
        height, width = max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))
        if self.rescale_divisor:  # SegFormer's AlignedResize: each side up to a multiple
            d = self.rescale_divisor
            height, width = -(-height // d) * d, -(-width // d) * d
        return height, width

    def single_scale(self) -> Inference:
        """The single-scale part of this inference, as validation predicts by default: the
        same mode (and windows), one scale (the only one; else 1.0 if listed, else the one
        nearest 1.0), no flip."""
        if len(self.scales) == 1:
            scale = self.scales[0]
        else:
            scale = min(self.scales, key=lambda s: (abs(s - 1.0), s))
        return Inference(
            self.mode, self.crop, self.stride, (scale,), False, self.rescale, self.rescale_divisor
        )

    @property
    def plain(self) -> bool:
        """One forward pass of the whole image at its own size: the model's output as is."""
        return (
            self.mode == "whole"
            and self.passes == 1
            and self.scales == (1.0,)
            and self.rescale is None
        )

    @property
    def passes(self) -> int:
        """Forward passes (of ``whole`` or ``slide``) per image: scales × flips."""
        return len(self.scales) * (2 if self.flip else 1)

    @property
    def label(self) -> str:
        """How results and tables name the setting: ``single-scale``, ``slide``, ``ms+flip``…"""
        parts = [f"resize{max(self.rescale)}x{min(self.rescale)}"] if self.rescale else []
        parts += ["slide"] if self.mode == "slide" else []
        if len(self.scales) > 1:
            parts.append("ms")
        elif self.scales[0] != 1.0:
            parts.append(f"scale{self.scales[0]:g}")
        if self.flip:
            parts.append("flip")
        return "+".join(parts) or "single-scale"

    def __repr__(self) -> str:
        window = f", crop={list(self.crop)}, stride={list(self.stride)}" if self.crop else ""
        rescale = f", rescale={list(self.rescale)}" if self.rescale else ""
        return (
            f"Inference(mode={self.mode!r}{window}, scales={list(self.scales)}, "
            f"flip={self.flip}{rescale})"
        )

    def __call__(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``model`` in eval mode, ``images (B, 3, H, W)`` normalised → ``{"out": (B, K, H, W)
        scores at input size, "uncertainty"?: (B, H, W) when the model gives one}``."""
        # one pass at the input size
        single = self.passes == 1 and self.scales == (1.0,) and self.rescale is None
        if self.mode == "whole" and single:
            out = model(images)
            return {k: out[k] for k in ("out", "uncertainty") if k in out}
        owner = segmenter_of(model)  # the network that holds the CRF
        crf = getattr(owner, "crf", None)
        if crf is not None:
            owner.crf = None  # once on the final scores, not per pass or window
        try:
            if single:
                scores, uncertainty = self._predict(model, images)
            else:
                scores, uncertainty = self._tta(model, images)
        finally:
            if crf is not None:
                owner.crf = crf
        if crf is not None and not owner.training:  # as the model applies it: eval mode only
            scores = crf(scores, images)  # log-probabilities are valid logits for it
        result = {"out": scores}
        if uncertainty is not None:
            result["uncertainty"] = uncertainty
        return result

    def _predict(self, model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """One pass (whole or slide) at the images' own size."""
        if self.mode == "whole":
            out = model(images)
            return out["out"], out.get("uncertainty")
        return self._slide(model, images)

    def _slide(self, model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor | None]:
        b, _, h, w = images.shape
        pad_h, pad_w = max(self.crop[0] - h, 0), max(self.crop[1] - w, 0)
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))  # (B, 3, H', W'), bottom/right
        size = images.shape[-2:]
        scores = uncertainty = None
        count = images.new_zeros(1, 1, *size, dtype=torch.float32)
        dtype = None
        for y1, y2, x1, x2 in sliding_windows(size, self.crop, self.stride):
            out = model(images[:, :, y1:y2, x1:x2])
            logits = out["out"]  # (B, K, ch, cw)
            if scores is None:
                dtype = logits.dtype
                scores = logits.new_zeros(b, logits.shape[1], *size, dtype=torch.float32)
            scores[:, :, y1:y2, x1:x2] += logits.float()
            count[:, :, y1:y2, x1:x2] += 1
            if "uncertainty" in out:
                if uncertainty is None:
                    uncertainty = count.new_zeros(b, *size)
                uncertainty[:, y1:y2, x1:x2] += out["uncertainty"].float()  # (B, ch, cw)
        scores = (scores / count)[:, :, :h, :w].to(dtype)  # (B, K, H, W)
        if uncertainty is not None:
            uncertainty = (uncertainty / count[:, 0])[:, :h, :w]  # (B, H, W)
        return scores, uncertainty

    def _tta(self, model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Mean softmax over scales × flips at the input size; returns its log."""
        h, w = images.shape[-2:]
        base_h, base_w = self.rescaled(h, w)
        probs = uncertainty = None
        for scale in self.scales:
            size = (max(1, int(base_h * scale + 0.5)), max(1, int(base_w * scale + 0.5)))
            x = _resize(images, size)  # (B, 3, h*s, w*s)
            for flip in (False, True) if self.flip else (False,):
                scores, unc = self._predict(model, x.flip(-1) if flip else x)
                if flip:
                    scores = scores.flip(-1)
                    unc = unc.flip(-1) if unc is not None else None
                p = F.softmax(_resize(scores.float(), (h, w)), dim=1)  # (B, K, H, W)
                probs = p if probs is None else probs + p
                if unc is not None:
                    unc = _resize(unc[:, None].float(), (h, w))[:, 0]  # (B, H, W)
                    uncertainty = unc if uncertainty is None else uncertainty + unc
        probs = probs / self.passes
        if uncertainty is not None:
            uncertainty = uncertainty / self.passes  # (B, H, W)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), uncertainty


def eval_mode(model_cfg: dict, inference: Inference | None = None) -> str:
    """How predictions are made, as results and leaderboards label it: the inference's label
    (``single-scale``, ``slide``, ``ms+flip`` ...), then the model's post-processing and
    sampling (``+CRF``, ``+MC-dropout xN``), from the model config."""
    net = model_cfg.get("segmenter") or model_cfg  # a wrapper model predicts with it
    mode = inference.label if inference is not None else "single-scale"
    if net.get("crf"):
        mode += "+CRF"
    if net.get("mc_samples"):
        mode += f"+MC-dropout x{net['mc_samples']}"
    return mode
