"""MiT, the Mix Transformer encoder of SegFormer (Xie et al., "SegFormer: Simple and Efficient
Design for Semantic Segmentation with Transformers", NeurIPS 2021).

Four stages, each an overlapping patch embedding, a stack of transformer blocks and a
LayerNorm, give features at strides 4, 8, 16 and 32:

- the patch embedding is a strided conv (kernel 7 stride 4 before stage 1, kernel 3 stride 2
  before the others) padded by half its kernel, so that neighbouring patches overlap and any
  input size works (``floor((H - 1) / s) + 1`` rows after a stride ``s``);
- a block is ``x + DropPath(Attention(LN(x)))`` then ``x + DropPath(MixFFN(LN(x)))``;
- efficient self-attention: the queries are every token, the keys and values come from the map
  shrunk by a conv of kernel and stride ``R`` (the reduction ratio, 8, 4, 2, 1 by stage) and a
  LayerNorm, which divides the cost of attention by ``R²``;
- Mix-FFN is ``Linear → 3×3 depthwise conv → GELU → Linear`` (hidden width 4×): the zero-padded
  depthwise conv leaks position information, so there is no positional encoding to resize;
- stochastic depth grows linearly over the blocks, from 0 to ``drop_path_rate`` (0.1).

The variants B0 … B5 (the paper's Table 6) share heads (1, 2, 5, 8), reduction ratios and MLP
ratio, and differ in widths and depths. ``pretrained=true`` loads NVIDIA's ImageNet-1k weights
published on the Hugging Face hub (``nvidia/mit-b0`` … ``nvidia/mit-b5``), converted by
:func:`segbench.models.segformer_hf.convert_mit`. The LayerNorms use PyTorch's default epsilon
(1e-5) as Hugging Face's implementation does; ``block_norm_eps=1e-6`` gives the authors' code
(and segmentation_models_pytorch's ``mit_b*``), which has 1e-6 in the blocks and after each
stage, and PyTorch's 1e-5 in the patch embeddings and the key/value reductions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.encoders.base import pick_levels
from segbench.models.encoders.mit_variants import (
    HEADS,
    MIT_VARIANTS,
    MLP_RATIOS,
    PATCH_SIZES,
    PATCH_STRIDES,
    SR_RATIOS,
)

__all__ = ["MIT_VARIANTS", "MiTEncoder"]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): in training, the residual branch of each sample is
    dropped with probability ``p`` and the kept ones scaled by ``1 / (1 - p)``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _to_map(tokens: Tensor, h: int, w: int) -> Tensor:
    """``(B, h*w, C)`` tokens → ``(B, C, h, w)`` map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with ``patch // 2`` padding, then LayerNorm over the channels.

    Args:
        in_channels: channels of the input map.
        dim: embedding width.
        patch: kernel size (7 for stage 1, 3 after).
        stride: stride (4 for stage 1, 2 after).
        norm_eps: the LayerNorm's epsilon.
    """

    def __init__(
        self, in_channels: int, dim: int, patch: int, stride: int, norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)  # (B, D, h, w)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w  # (B, h*w, D)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values are read from the map shrunk ``R``
    times along each side (conv of kernel and stride ``R``, then LayerNorm; none when R = 1).

    Args:
        dim: token width.
        heads: number of heads (``dim`` must divide by it).
        sr_ratio: the reduction ratio ``R``.
        norm_eps: the reduction LayerNorm's epsilon.
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio) if sr_ratio > 1 else None
        self.sr_norm = nn.LayerNorm(dim, eps=norm_eps) if sr_ratio > 1 else None

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, n, d)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        kv = x  # (B, h*w, C)
        if self.sr is not None:
            kv = self.sr(_to_map(x, h, w)).flatten(2).transpose(1, 2)  # (B, h/R * w/R, C)
            kv = self.sr_norm(kv)
        out = F.scaled_dot_product_attention(
            self._heads(self.q(x)), self._heads(self.k(kv)), self._heads(self.v(kv))
        )  # (B, heads, h*w, d), scaled by d^-1/2
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class MixFFN(nn.Module):
    """``Linear → 3×3 depthwise conv → GELU → Linear`` on ``(B, h*w, C)`` tokens.

    Args:
        dim: token width.
        hidden: hidden width (``mlp_ratio * dim``).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = self.dwconv(_to_map(self.fc1(x), h, w))  # (B, hidden, h, w)
        return self.fc2(F.gelu(x.flatten(2).transpose(1, 2)))  # (B, h*w, C)


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient self-attention, then Mix-FFN, each residual and
    under stochastic depth ``drop_path``; ``norm_eps`` is its two LayerNorms' epsilon,
    ``embed_norm_eps`` the key/value reduction's."""

    def __init__(
        self,
        dim: int,
        heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_path: float,
        norm_eps: float = 1e-5,
        embed_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio, embed_norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn = MixFFN(dim, int(dim * mlp_ratio))
        self.drop = DropPath(drop_path)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), h, w))
        return x + self.drop(self.ffn(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Overlapping patch embedding → blocks → LayerNorm; ``(B, C_in, H, W)`` → ``(B, D, h, w)``.
    ``norm_eps`` is the epsilon of the blocks' LayerNorms and of the stage's last one,
    ``embed_norm_eps`` that of the patch embedding's and the key/value reductions'."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        patch: int,
        stride: int,
        depth: int,
        heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_paths: Sequence[float],
        norm_eps: float = 1e-5,
        embed_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, dim, patch, stride, embed_norm_eps)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, heads, sr_ratio, mlp_ratio, drop_paths[j], norm_eps, embed_norm_eps)
            for j in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x, h, w = self.embed(x)  # (B, h*w, D)
        for block in self.blocks:
            x = block(x, h, w)
        return _to_map(self.norm(x), h, w)  # (B, D, h, w)


def _four(name: str, key: str, values: Sequence[int] | None, default: Sequence[int]) -> list[int]:
    values = [int(v) for v in (default if values is None else values)]
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"backbone {name!r}: {key} needs 4 positive values (one per stage)")
    return values


class MiTEncoder(nn.Module):
    """The Mix Transformer encoder: features at strides 4, 8, 16, 32, finest first.

    Args:
        name: ``mit_b0`` … ``mit_b5``, or any label when ``widths`` and ``depths`` are given.
        pretrained: load NVIDIA's ImageNet weights ``hf:nvidia/mit-bN`` from the Hugging Face
            cache (fetched when missing and online; offline and not cached, refused with the
            command that fetches them). Only for the published variants.
        weights: a Hugging Face MiT or SegFormer checkpoint (Hugging Face key names): a local
            ``.safetensors`` or ``torch.save`` file (a ``config.json`` of a SegFormer beside
            it is checked too), or ``hf:<owner>/<repo>`` from the hub cache. Wins over
            ``pretrained``. The ImageNet classifier or a decode head in it is left out; any
            other tensor must fit, or nothing is loaded.
        out_indices: which stages ``forward`` returns (0 = stage 1, stride 4); ``None``: all.
        output_stride: ``None`` or 32. MiT cannot be dilated: 8 or 16 is refused.
        until_stride: return the stages up to the first one at this stride or coarser, and
            keep no later stage (they are built, then dropped, so a seeded encoder draws the
            same weights either way); ``None``: all of them.
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last block (0.1); 0 at the first.
        decoder_dim: the width of the SegFormer decoder the paper pairs with this variant (256
            for B0/B1, 768 for B2-B5); the encoder does not use it, ``model=segformer`` reads it
            from the backbone config.
        widths, depths, num_heads, sr_ratios, mlp_ratios: per-stage architecture, the
            variant's (``name``) when ``None``.
        block_norm_eps: epsilon of the blocks' LayerNorms and of each stage's last one: 1e-5
            (PyTorch's default, as Hugging Face's SegFormer), or 1e-6 as the authors' code and
            segmentation_models_pytorch's ``mit_b*`` (whose converted checkpoints need it:
            :mod:`segbench.models.smp_convert`).
        embed_norm_eps: epsilon of the patch embeddings' and the key/value reductions'
            LayerNorms: 1e-5 (Hugging Face's, the authors' and smp's), or 1e-6 as
            mmsegmentation's ``MixVisionTransformer``, whose LayerNorms all have 1e-6 (its
            checkpoints: ``block_norm_eps=1e-6 embed_norm_eps=1e-6``).
    """

    def __init__(
        self,
        name: str = "mit_b0",
        pretrained: bool = False,
        weights: str | None = None,
        out_indices: Sequence[int] | None = None,
        output_stride: int | None = None,
        until_stride: int | None = None,
        in_chans: int = 3,
        drop_path_rate: float = 0.1,
        decoder_dim: int | None = None,
        widths: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        sr_ratios: Sequence[int] | None = None,
        mlp_ratios: Sequence[int] | None = None,
        block_norm_eps: float = 1e-5,
        embed_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if output_stride is not None and int(output_stride) != 32:
            raise ValueError(
                f"backbone {name!r}: MiT cannot be dilated (output_stride={output_stride} was "
                "asked for, by a model such as DeepLab or PSPNet): its stages downsample by "
                "strided patch embeddings, which SegFormer never dilates; use a ResNet backbone "
                "(backbone=resnet50) for that model, or model=segformer on MiT"
            )
        if name not in MIT_VARIANTS and (widths is None or depths is None):
            raise ValueError(
                f"backbone {name!r} is not a MiT variant: use one of {sorted(MIT_VARIANTS)}, or "
                "give `widths` and `depths`"
            )
        table = MIT_VARIANTS.get(name, (None, None))
        widths = _four(name, "widths", widths, table[0])
        depths = _four(name, "depths", depths, table[1])
        heads = _four(name, "num_heads", num_heads, HEADS)
        sr = _four(name, "sr_ratios", sr_ratios, SR_RATIOS)
        mlp = _four(name, "mlp_ratios", mlp_ratios, MLP_RATIOS)
        bad = [f"{w} by {n}" for w, n in zip(widths, heads) if w % n]
        if bad:
            raise ValueError(f"backbone {name!r}: widths must divide by num_heads ({bad})")
        self.name = name
        self.decoder_dim = decoder_dim
        # the architecture in the terms of a Hugging Face SegformerConfig (config.json)
        self.arch = {
            "num_channels": int(in_chans),
            "depths": depths,
            "hidden_sizes": widths,
            "num_attention_heads": heads,
            "sr_ratios": sr,
            "mlp_ratios": mlp,
            "patch_sizes": list(PATCH_SIZES),
            "strides": list(PATCH_STRIDES),
        }
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, c_in = [], int(in_chans)
        for i in range(4):
            start = sum(depths[:i])
            stages.append(
                MiTStage(
                    c_in,
                    widths[i],
                    PATCH_SIZES[i],
                    PATCH_STRIDES[i],
                    depths[i],
                    heads[i],
                    sr[i],
                    mlp[i],
                    rates[start : start + depths[i]],
                    float(block_norm_eps),
                    float(embed_norm_eps),
                )
            )
            c_in = widths[i]
        self.stages = nn.ModuleList(stages)
        if weights is not None or pretrained:  # a whole encoder's tensors: before the cut below
            from segbench.models.segformer_hf import load_mit_weights

            load_mit_weights(self, weights)
        strides = [4, 8, 16, 32]
        self.out_levels: list[int] = pick_levels(
            name, strides, out_indices, until_stride, "stage 1, stride 4"
        )
        self.stages = nn.ModuleList(list(self.stages)[: self.out_levels[-1] + 1])
        self.channels: list[int] = [widths[i] for i in self.out_levels]
        self.strides: list[int] = [strides[i] for i in self.out_levels]
        self.output_stride = self.strides[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (B, C_i, H/s_i, W/s_i)
            if i in self.out_levels:
                features.append(x)
        return features

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"
