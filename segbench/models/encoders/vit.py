"""``ViTEncoder``: DINOv2's Vision Transformers (Oquab et al., "DINOv2: Learning Robust Visual
Features without Supervision", 2023) as segbench encoders, over timm's ``vit_*_patch14_dinov2``.

A ViT has no pyramid: every block sees the image as ``H/14 × W/14`` patch tokens. The encoder
returns the tokens of chosen blocks (by default the last four, which DINOv2's "+ms" probe
concatenates) as feature maps, the way DINOv2's segmentation evaluation reads them
(``get_intermediate_layers(..., reshape=True)``, its default ``norm=True``):

1. the image is zero-padded to a multiple of the patch size, split evenly between the two
   sides (DINOv2's ``CenterPadding`` pre-hook);
2. patch embedding, class token, position embeddings resampled to the token grid (timm's
   ``dynamic_img_size``), the blocks;
3. each chosen block's tokens go through the final LayerNorm; the patch tokens become a
   ``(B, C, ⌈H/14⌉, ⌈W/14⌉)`` map, and the class token ``(B, C)`` is kept for heads that want
   it (:meth:`ViTEncoder.forward_with_class_token`).

Every level is at stride 14. The encoder cannot dilate: ``output_stride`` 8 or 16 is refused,
and so are the models that need one (PSPNet, DeepLab).

The position embeddings (a 37×37 grid for 518-px images) are resampled to other grids the way
timm does it: bicubic with antialiasing. DINOv2's own code (and Hugging Face's ``Dinov2Model``)
uses bicubic without antialiasing, which weighs neighbours differently, so the features agree
with theirs exactly only on the 37×37 grid (images padded to 518 px, e.g. 512-px crops) and
differ somewhat at other sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.encoders.base import pick_levels
from segbench.models.encoders.timm import _check_weights, _pretrained
from segbench.models.hub import hf_repo

__all__ = ["ViTEncoder", "center_pad"]

# DINOv2's probes read the last four blocks ("+ms"); the linear probe reads the last of them
DEFAULT_LAST_BLOCKS = 4


def center_pad(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``x (B, C, H, W)`` to ``(B, C, ⌈H/m⌉·m, ⌈W/m⌉·m)``, half of the padding (rounded
    down) before and the rest after, on each axis, as DINOv2's evaluation does."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last axis first
        extra = -size % multiple
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads) if any(pads) else x


def _not_a_vit(name: str) -> str:
    return (
        f"backbone {name!r}: ViTEncoder needs a timm Vision Transformer with a class token "
        "(e.g. vit_small_patch14_dinov2); use TimmEncoder for CNN backbones"
    )


class ViTEncoder(nn.Module):
    """A DINOv2 ViT returning the patch tokens of some blocks as maps at stride 14.

    Args:
        name: a timm ViT with a class token, e.g. ``vit_small_patch14_dinov2`` (ViT-S/14) or
            ``vit_base_patch14_dinov2`` (ViT-B/14).
        pretrained: load timm's pretrained weights (DINOv2's LVD-142M ones for these names),
            read from the Hugging Face hub cache as for :class:`TimmEncoder`; refused with the
            command that fetches them when they cannot be had.
        pretrained_tag: which of timm's weight variants (``name.<tag>``); ``None``: its default.
        weights: path to a local state-dict file of the whole timm model ``name`` (timm's key
            names; ``.safetensors`` or a ``torch.save`` file), or ``hf:<owner>/<repo>``, a
            Hugging Face ``Dinov2Model`` checkpoint from the hub cache (``hf:facebook/
            dinov2-small``, converted by :mod:`segbench.models.dinov2_hf`). It must fit the
            model key for key and shape for shape, the classifier aside; anything else is
            refused. Wins over ``pretrained``.
        out_indices: the blocks whose tokens are returned, from 0 (the first block), increasing;
            ``None``: the last four. Blocks after the last one are not built.
        output_stride: ``None`` or the patch size (14); anything else is refused, a ViT cannot
            dilate.
        until_stride: return the chosen blocks up to the first at this stride or coarser (every
            block is at stride 14: the first one) and build no later block; ``None``: all.
        in_chans: number of input channels.
        model_args: more arguments of timm's constructor (``depth``, ``embed_dim``,
            ``num_heads``, ``img_size`` ...: a small model for tests); ``None``: timm's.

    Shapes:
        ``forward``: ``(B, in_chans, H, W)`` → a list of ``(B, C, ⌈H/14⌉, ⌈W/14⌉)``, one per
        chosen block, earliest first.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: str | None = None,
        out_indices: Sequence[int] | None = None,
        output_stride: int | None = None,
        until_stride: int | None = None,
        in_chans: int = 3,
        pretrained_tag: str | None = None,
        model_args: dict | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"backbone name {name!r} is not a timm model")
        kwargs: dict = {**(model_args or {}), "in_chans": in_chans, "dynamic_img_size": True}
        kwargs["num_classes"] = 0
        # Meta's Dinov2Model files on the hub: converted and loaded below, before the cut
        from_hub = hf_repo(weights) is not None
        if weights is not None and not from_hub:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"backbone weights file {str(path)!r} does not exist; expected a local "
                    f"state-dict file for timm model {name!r}"
                )
            _check_weights(path, name, kwargs)  # timm itself would load a foreign file in part
            overlay = {"file": str(path), "source": None}
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        elif pretrained and not from_hub:
            model = _pretrained(f"{name}.{pretrained_tag}" if pretrained_tag else name, kwargs)
        else:
            try:
                model = timm.create_model(name, pretrained=False, **kwargs)
            except TypeError as err:  # a CNN's constructor refuses dynamic_img_size
                raise ValueError(_not_a_vit(name)) from err
        blocks = getattr(model, "blocks", None)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        if blocks is None or patch is None or getattr(model, "cls_token", None) is None:
            raise ValueError(_not_a_vit(name))
        if patch[0] != patch[1]:
            raise ValueError(f"backbone {name!r}: square patches only, got {tuple(patch)}")
        if from_hub:
            from segbench.models.dinov2_hf import load_dinov2_weights

            load_dinov2_weights(model, weights)
        self.patch_size = int(patch[0])
        self.name = name
        if output_stride is not None and int(output_stride) != self.patch_size:
            raise ValueError(
                f"backbone {name!r} is a Vision Transformer: all its tokens are at stride "
                f"{self.patch_size} and it cannot dilate, so output_stride={output_stride} is "
                "refused. Use a model that does not dilate its encoder (linear_probe, fcn8s, "
                "unet ...), or a dilating CNN backbone such as resnet50 for PSPNet and DeepLab"
            )
        depth = len(blocks)
        if out_indices is None:
            out_indices = list(range(max(0, depth - DEFAULT_LAST_BLOCKS), depth))
        every = [self.patch_size] * depth
        self.blocks_taken = pick_levels(name, every, out_indices, until_stride, "the first block")
        # keep no block after the last one read (it would get no gradient), nor the classifier
        model.prune_intermediate_layers(self.blocks_taken, prune_norm=False, prune_head=True)
        self.model = model
        self.num_prefix_tokens = int(model.num_prefix_tokens)  # class (+ register) tokens
        width = int(model.embed_dim)
        self.channels: list[int] = [width] * len(self.blocks_taken)
        self.strides: list[int] = [self.patch_size] * len(self.blocks_taken)
        self.output_stride = self.patch_size
        self.class_token_channels = width

    def forward_with_class_token(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The feature maps and, for each, the block's class token after the final norm.

        Returns:
            ``(maps, class_tokens)``: ``maps[i]`` is ``(B, C, ⌈H/14⌉, ⌈W/14⌉)``,
            ``class_tokens[i]`` is ``(B, C)``.
        """
        x = center_pad(x, self.patch_size)  # (B, 3, H', W'), multiples of 14
        batch, _, height, width = x.shape
        grid = (height // self.patch_size, width // self.patch_size)
        vit = self.model
        tokens = vit.patch_embed(x)  # (B, H'/14, W'/14, C): timm's dynamic-size layout
        tokens = vit._pos_embed(tokens)  # (B, 1 + N, C): class token, resampled positions
        tokens = vit.norm_pre(vit.patch_drop(tokens))
        maps, class_tokens = [], []
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i in self.blocks_taken:
                normed = vit.norm(tokens)  # DINOv2 reads every block after the final norm
                class_tokens.append(normed[:, 0])
                patches = normed[:, self.num_prefix_tokens :]  # (B, N, C), row-major grid
                maps.append(patches.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous())
        return maps, class_tokens

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_with_class_token(x)[0]

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, blocks={self.blocks_taken}, channels={self.channels}, "
            f"strides={self.strides}"
        )
