"""GAN-seg: Semantic Segmentation using Adversarial Networks (Luc, Couprie, Chintala, Verbeek,
NIPS Workshop on Adversarial Training, 2016).

Any segmentation network (the "segmentor") is trained with its usual per-pixel loss plus an
adversarial term: a discriminator (the paper's "adversarial network") sees an image together
with a label map and tells ground-truth maps from the segmentor's class-probability maps, so
the segmentor is pushed towards maps whose higher-order structure looks like the ground
truth's. The discriminator is used in training only: ``GANSeg.forward`` is the segmentor's
forward, so evaluation, metrics and results are those of the segmentor alone. The training
procedure lives in :class:`segbench.engine.adversarial.AdversarialTask`.

Input encodings of the discriminator (the paper compares them on PASCAL VOC):

- ``basic``: the image concatenated with the K class maps (3 + K channels).
- ``product``: every class map multiplied with the image, ``y_c * x`` (3K channels).
- ``scaling``: the ``basic`` input, but a ground-truth map is not one-hot: at each pixel the
  true class gets ``max(tau, p_l)`` (``p`` the segmentor's probabilities, ``tau = 0.9``) and
  the other classes share the rest in proportion to ``p``, so that real maps are not told
  apart merely by being exactly 0/1.

The default layout of ``stages`` follows the paper's "LargeFOV" adversarial network for VOC:
3×3 convolutions of 96, 128, 128 channels, a 2×2 max-pool, 256, 256, a max-pool, 512, then
one real/fake score per position, averaged over the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["INPUT_MODES", "Discriminator", "GANSeg"]

INPUT_MODES = ("basic", "product", "scaling")


class Discriminator(nn.Module):
    """Scores an (image, label map) pair: one real/fake logit per image.

    Stages of ``conv → [BN] → ReLU`` separated by 2×2 max-pools, a final 3×3 convolution
    to one channel and a global average: ``(B, 3, H, W), (B, K, H, W) → (B,)``.

    Args:
        num_classes: number of class maps K.
        input_mode: ``"basic"`` (image ‖ maps, 3 + K channels), ``"product"`` (maps × image,
            3K channels) or ``"scaling"`` (as basic, with soft ground-truth maps, see
            :meth:`real_maps`).
        stages: conv widths per stage; a 2×2 max-pool closes every stage but the last.
        kernel_size: conv kernel size.
        batch_norm: BatchNorm after every conv (the paper's networks have none).
        downsample: average-pool image and maps by this factor first (the paper feeds the
            adversary label maps at the segmentor's 1/8 output resolution); 1 keeps full size.
        tau: the ``scaling`` encoding's minimum probability of the true class (0.9 in the paper).
        in_chans: image channels.
    """

    def __init__(
        self,
        num_classes: int,
        input_mode: str = "product",
        stages: Sequence[Sequence[int]] = ((96, 128, 128), (256, 256), (512,)),
        kernel_size: int = 3,
        batch_norm: bool = False,
        downsample: int = 1,
        tau: float = 0.9,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(
                f"Discriminator input_mode must be one of {list(INPUT_MODES)}, got {input_mode!r}"
            )
        if not stages or not all(stages):
            raise ValueError(f"Discriminator needs non-empty stages of conv widths, got {stages}")
        if downsample < 1:
            raise ValueError(f"Discriminator downsample must be >= 1, got {downsample}")
        self.num_classes = num_classes
        self.input_mode = input_mode
        self.downsample = downsample
        self.tau = tau
        cin = in_chans * num_classes if input_mode == "product" else in_chans + num_classes
        layers: list[nn.Module] = []
        for i, widths in enumerate(stages):
            for cout in widths:
                layers.append(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))
                cin = cout
            if i < len(stages) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # odd sizes keep their border
        self.features = nn.Sequential(*layers)
        self.score = nn.Conv2d(cin, 1, kernel_size, padding=kernel_size // 2)

    def encode(self, image: Tensor, maps: Tensor) -> Tensor:
        """The network's input for ``image (B, 3, H, W)`` and ``maps (B, K, H, W)``."""
        if self.downsample > 1:
            image = F.avg_pool2d(image, self.downsample, ceil_mode=True)
            maps = F.avg_pool2d(maps, self.downsample, ceil_mode=True)
        if self.input_mode == "product":
            # (B, K, 1, H, W) * (B, 1, 3, H, W) → (B, 3K, H, W), class-major
            return (maps.unsqueeze(2) * image.unsqueeze(1)).flatten(1, 2)
        return torch.cat([image, maps], dim=1)  # (B, 3 + K, H, W)

    def forward(self, image: Tensor, maps: Tensor) -> Tensor:
        """Real/fake logits ``(B,)``; gradients flow into ``maps`` unless it is detached."""
        if maps.shape[1] != self.num_classes or maps.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"Discriminator expects maps (B, {self.num_classes}, H, W) at the image size "
                f"{tuple(image.shape[-2:])}, got {tuple(maps.shape)}"
            )
        h = self.features(self.encode(image, maps))  # (B, C, H/2^(S-1), W/2^(S-1))
        return self.score(h).mean(dim=(1, 2, 3))  # (B, 1, h, w) → (B,)

    @torch.no_grad()
    def real_maps(self, mask: Tensor, probs: Tensor, ignore_index: int) -> Tensor:
        """Ground-truth label maps ``(B, K, H, W)`` from ``mask (B, H, W)``.

        One-hot for ``basic``/``product``; for ``scaling`` the true class gets
        ``max(tau, p_l)`` and the others ``p_c (1 - that) / (1 - p_l)``. Pixels labelled
        ``ignore_index`` have no ground truth: they take the segmentor's (detached)
        probabilities ``probs`` there, so the discriminator cannot tell real maps from
        predicted ones by where the ignored pixels are (a constant or zero vector there would
        give the real maps away).
        """
        probs = probs.detach()
        valid = mask != ignore_index  # (B, H, W)
        labels = torch.where(valid, mask, torch.zeros_like(mask)).long()
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"mask holds label {int(labels.max())} but there are {self.num_classes} classes "
                f"(ignore index {ignore_index})"
            )
        index = labels.unsqueeze(1)  # (B, 1, H, W)
        if self.input_mode == "scaling":
            p_true = probs.gather(1, index)
            y_true = p_true.clamp(min=self.tau)
            real = probs * (1 - y_true) / (1 - p_true).clamp(min=1e-6)
            real = real.scatter(1, index, y_true)
        else:
            real = torch.zeros_like(probs).scatter_(1, index, 1.0)
        return torch.where(valid.unsqueeze(1), real, probs)


class GANSeg(nn.Module):
    """A segmentor and its adversarial discriminator (Luc et al., 2016).

    ``forward`` is the segmentor's, ``{"out", "aux"?}``; the discriminator only takes part
    in training (:class:`segbench.engine.adversarial.AdversarialTask`).

    Args:
        segmenter: any segbench model, returning ``{"out": (B, K, H, W), "aux"?: ...}``.
        discriminator: a :class:`Discriminator` (or any module ``(image, maps) → (B,)``
            logits with ``real_maps(mask, probs, ignore_index)``).
        num_classes: number of classes; must match both parts.
        output_stride: the segmenter's output stride, repeated at the top of the model config
            because the backbone configs read ``model.output_stride``; checked against the
            segmenter's encoder when both are known.
        feature_stride: the segmenter's ``feature_stride`` (ReSeg's), repeated likewise because
            the backbone configs read ``model.feature_stride`` to stop the encoder there.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        discriminator: nn.Module,
        num_classes: int,
        output_stride: int | None = None,
        feature_stride: int | None = None,
    ) -> None:
        super().__init__()
        _check_parts(segmenter, discriminator, num_classes, output_stride)
        self.segmenter = segmenter
        self.discriminator = discriminator
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.feature_stride = feature_stride

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.segmenter(x)  # {"out": (B, K, H, W), "aux"?: (B, K, H, W)}

    def discriminate(self, image: Tensor, maps: Tensor) -> Tensor:
        """Real/fake logits ``(B,)`` for label maps (probabilities or ground truth)."""
        return self.discriminator(image, maps)


def _check_parts(
    segmenter: nn.Module, discriminator: nn.Module, num_classes: int, output_stride: int | None
) -> None:
    """Refuse parts that disagree with GANSeg's ``num_classes`` or ``output_stride``."""
    for part, module in (("segmenter", segmenter), ("discriminator", discriminator)):
        have = getattr(module, "num_classes", num_classes)
        if have != num_classes:
            raise ValueError(
                f"GANSeg has num_classes={num_classes} but its {part} "
                f"{type(module).__name__} has {have}"
            )
    strides = getattr(getattr(segmenter, "encoder", None), "strides", None)
    if output_stride is not None and strides and strides[-1] != output_stride:
        raise ValueError(
            f"GANSeg: output_stride={output_stride} but the segmenter's encoder ends at "
            f"stride {strides[-1]}"
        )
