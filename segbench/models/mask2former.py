"""Mask2Former: Masked-attention Mask Transformer (Cheng, Misra, Schwing, Kirillov & Girdhar,
"Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022), for semantic
segmentation.

Segmentation as mask classification: an encoder (ResNet-50 or Swin in the paper), a pixel
decoder of 6 multi-scale deformable-attention layers on strides 8/16/32 plus an FPN level at
stride 4 (:mod:`segbench.models.msdeform`), and a transformer decoder in which 100 queries, each
refined by 9 masked-attention layers (:mod:`segbench.models.mask2former_decoder`), predict one
class (among ``K`` + "no object") and one binary mask each. It is trained with a set loss
(Hungarian matching of queries to the classes present, :mod:`segbench.losses.set_criterion`) by
:class:`segbench.engine.mask_classification.MaskClassificationTask`.

The paper's semantic inference sums the queries' masks weighted by their class probabilities,
``semseg[k] = sum_q softmax(class_q)[k] * sigmoid(mask_q)`` over the ``K`` real classes (the
no-object probability dropped), the mask logits first upsampled bilinearly to the input size.
These scores are not a distribution over classes (they need not sum to 1); segbench treats a
model's ``"out"`` as logits (argmax for the prediction, softmax for calibration, averaging over
windows and flips), so the model returns ``log(semseg)`` (clamped at the dtype's smallest
normal number). The argmax is the paper's prediction; the softmax of ``"out"`` is ``semseg``
normalised over the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.encoders import encoder_name
from segbench.models.mask2former_decoder import MaskedAttentionDecoder
from segbench.models.msdeform import PixelDecoder

__all__ = ["Mask2Former", "semantic_inference"]


def semantic_inference(class_logits: Tensor, mask_logits: Tensor, size: Sequence[int]) -> Tensor:
    """The paper's semantic map: ``(B, Q, K+1)`` class and ``(B, Q, h, w)`` mask logits ->
    ``(B, K, H, W)`` scores ``sum_q softmax(class_q)[:K] * sigmoid(upsampled mask_q)``."""
    masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    probs = class_logits.softmax(-1)[..., :-1]  # (B, Q, K): no-object dropped
    return torch.einsum("bqk,bqhw->bkhw", probs, masks.sigmoid())  # (B, K, H, W)


class Mask2Former(SegmentationModel):
    """Mask2Former for semantic segmentation: encoder -> pixel decoder -> transformer decoder.

    ``forward`` returns, in training and evaluation alike,

    - ``"out"`` ``(B, K, H, W)``: ``log`` of the semantic map (module docstring);
    - ``"class_logits"`` ``(L+1, B, Q, K+1)`` and ``"mask_logits"`` ``(L+1, B, Q, H/4, W/4)``:
      the predictions of every decoder layer (the first before any layer, the last the final
      one), which the set loss supervises (deep supervision) and
      :class:`~segbench.engine.mask_classification.MaskClassificationTask` reads.

    Args:
        encoder: an encoder with at least three levels (strides 8, 16, 32: the deformable
            attention's) and one at stride 4 for the FPN (missing, the mask features come at
            the finest transformer level's stride).
        num_classes: ``K``.
        hidden_dim: channels of the pixel decoder, the queries and the mask features (256).
        num_queries: queries (100).
        dec_layers: masked-attention decoder layers (9).
        heads: attention heads, everywhere (8).
        dim_feedforward: feed-forward width of the decoder layers (2048).
        enc_layers: deformable-attention layers of the pixel decoder (6).
        enc_dim_feedforward: their feed-forward width (1024).
        enc_points: sampling points per head and level (4).
        common_stride: stride of the mask features (4).
        dropout: dropout in both transformers (0 in the paper).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        dec_layers: int = 9,
        heads: int = 8,
        dim_feedforward: int = 2048,
        enc_layers: int = 6,
        enc_dim_feedforward: int = 1024,
        enc_points: int = 4,
        common_stride: int = 4,
        dropout: float = 0.0,
    ) -> None:
        channels = list(getattr(encoder, "channels", None) or [])
        strides = list(getattr(encoder, "strides", None) or [])
        if len(channels) < 3 or len(strides) != len(channels):
            raise ValueError(
                f"Mask2Former reads three encoder levels (strides 8, 16, 32) and one at stride "
                f"4; encoder {encoder_name(encoder)!r} returns channels {channels} at strides "
                f"{strides}; use a backbone such as resnet50 with every level (out_indices=null)"
            )
        pixel_decoder = PixelDecoder(
            channels,
            strides,
            dim=hidden_dim,
            mask_dim=hidden_dim,
            layers=enc_layers,
            heads=heads,
            points=enc_points,
            ffn_dim=enc_dim_feedforward,
            dropout=dropout,
            common_stride=common_stride,
        )
        transformer = MaskedAttentionDecoder(
            hidden_dim,
            hidden_dim,
            num_classes,
            dim=hidden_dim,
            num_queries=num_queries,
            layers=dec_layers,
            heads=heads,
            ffn_dim=dim_feedforward,
            dropout=dropout,
        )
        super().__init__(encoder, pixel_decoder, transformer, num_classes)
        self.num_queries = num_queries

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.encoder(x)  # list of (B, C_i, H/s_i, W/s_i), finest first
        mask_features, levels = self.decoder(features)  # (B, D, H/4, W/4), coarsest first
        class_logits, mask_logits = self.head(levels, mask_features)  # (L+1, B, Q, ...)
        semseg = semantic_inference(class_logits[-1], mask_logits[-1], size)  # (B, K, H, W)
        tiny = torch.finfo(semseg.dtype).tiny
        return {
            "out": semseg.clamp_min(tiny).log(),
            "class_logits": class_logits,
            "mask_logits": mask_logits,
        }
