"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) and the pixel
decoder of Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022).

Deformable attention lets each query attend to a handful of points per head and level, placed
around a reference point by learned offsets; the features at those points are read by bilinear
interpolation. Here the sampling is plain PyTorch (``F.grid_sample``, zero padding outside the
map), with no custom CUDA operator, so the module runs on any device and exports to ONNX
(``GridSample``, opset 16 and later).

The pixel decoder projects the encoder levels at strides 8, 16 and 32 to ``hidden_dim``
channels, runs 6 deformable self-attention layers over their concatenated tokens (each with a
sine position embedding plus a learned level embedding), then adds the stride-4 level FPN-style
(lateral 1x1 conv + the upsampled coarser output, then a 3x3 conv), and projects that to the
per-pixel *mask features*.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DeformableEncoderLayer",
    "MSDeformAttention",
    "PixelDecoder",
    "ms_deform_attn",
    "sine_position_embedding",
]


def sine_position_embedding(x: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """The normalised 2-D sine position embedding of DETR for a feature map ``x (B, C, H, W)``:
    ``(B, 2 * num_feats, H, W)``, the ``y`` half first, each half alternating sin and cos.

    Positions count from 1 and are scaled to ``(0, 2*pi]`` along each axis. Computed in
    float32 whatever ``x``'s dtype (mixed precision), returned in ``x``'s.
    """
    b, _, h, w = x.shape
    eps = 1e-6
    f32 = torch.float32
    ys = torch.arange(1, h + 1, dtype=f32, device=x.device) / (h + eps) * (2 * math.pi)
    xs = torch.arange(1, w + 1, dtype=f32, device=x.device) / (w + eps) * (2 * math.pi)
    index = torch.arange(num_feats, device=x.device).to(f32)
    freq = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)

    def encode(pos: Tensor) -> Tensor:  # (N,) -> (N, num_feats): sin, cos, sin, cos ...
        angles = pos[:, None] / freq  # (N, F)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(h, w, num_feats)  # (H, W, F)
    pos_x = encode(xs)[None, :, :].expand(h, w, num_feats)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # (2F, H, W)
    return pos[None].expand(b, -1, -1, -1).to(x.dtype)


def ms_deform_attn(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """The core of multi-scale deformable attention, by bilinear sampling.

    Args:
        value: ``(B, S, M, D)`` values of ``M`` heads, the ``S = sum(h * w)`` tokens of every
            level flattened row by row, in the order of ``shapes``.
        shapes: ``(h, w)`` of each level.
        locations: ``(B, Q, M, L, P, 2)`` sampling points as ``(x, y)`` in ``[0, 1]`` of each
            level (0 and 1 are the outer edges of the border pixels); points outside read 0.
        weights: ``(B, Q, M, L, P)`` attention weights.

    Returns:
        ``(B, Q, M * D)``: per query and head, the weighted sum of the sampled values, in
        ``value``'s dtype (the sampling itself runs in float32: sub-pixel positions in a
        half-precision grid would be off by up to half a pixel on large maps).
    """
    b, _, m, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1  # grid_sample's [-1, 1] (align_corners=False)
    sampled = []
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w]  # (B, h*w, M, D)
        start += h * w
        v = v.permute(0, 2, 3, 1).reshape(b * m, d, h, w).float()  # (B*M, D, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1).float()  # (B*M, Q, P, 2)
        sampled.append(
            F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*M, D, Q, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*M, D, Q, L*P)
    attn = weights.transpose(1, 2).reshape(b * m, 1, q, levels * points)
    out = (stacked * attn).sum(-1)  # (B*M, D, Q)
    return out.view(b, m * d, q).transpose(1, 2).to(value.dtype)  # (B, Q, M*D)


class MSDeformAttention(nn.Module):
    """Multi-scale deformable attention: ``points`` sampling points per head and level around
    each query's reference point, their offsets and weights predicted from the query.

    Initialised as Deformable DETR: zero offset weights, the offset biases pointing each head
    in its own direction at distances 1..P, uniform attention weights.

    Args:
        dim: channels of queries and values.
        heads: attention heads (``dim`` must divide by it).
        levels: feature levels attended.
        points: sampling points per head and level.
    """

    def __init__(self, dim: int, heads: int = 8, levels: int = 3, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"deformable attention: dim {dim} must divide by heads {heads}")
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        direction = torch.stack([theta.cos(), theta.sin()], -1)  # (M, 2)
        direction = direction / direction.abs().max(-1, keepdim=True).values
        scale = torch.arange(1, self.points + 1, dtype=torch.float32)  # (P,)
        bias = direction[:, None, None, :] * scale[None, None, :, None]  # (M, 1, P, 2)
        self.sampling_offsets.bias.copy_(bias.expand(-1, self.levels, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, query: Tensor, reference: Tensor, value: Tensor, shapes: list[tuple[int, int]]
    ) -> Tensor:
        """``query (B, Q, C)`` (position embedding added), ``reference (B, Q, 2)`` points as
        ``(x, y)`` in ``[0, 1]``, ``value (B, S, C)`` the flattened levels of ``shapes``
        -> ``(B, Q, C)``."""
        b, q, c = query.shape
        m, lv, p = self.heads, self.levels, self.points
        v = self.value_proj(value).view(b, value.shape[1], m, c // m)  # (B, S, M, D)
        offsets = self.sampling_offsets(query).view(b, q, m, lv, p, 2)
        weights = self.attention_weights(query).view(b, q, m, lv * p).softmax(-1)
        weights = weights.view(b, q, m, lv, p)
        # offsets are in pixels of each level: divide by its (w, h) (written with tensor
        # arithmetic, so that a traced export keeps the sizes symbolic); positions in float32
        one = torch.ones(1, device=query.device)
        size = torch.stack([torch.cat([one * w, one * h]) for h, w in shapes])  # (L, 2)
        locations = reference[:, :, None, None, None, :] + offsets / size[:, None, :]
        return self.output_proj(ms_deform_attn(v, shapes, locations, weights))  # (B, Q, C)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all tokens of all levels, then a feed-forward network;
    each with a residual connection, dropout and a LayerNorm after it (post-norm).

    Args:
        dim: token channels.
        ffn_dim: hidden width of the feed-forward network (1024 in Mask2Former).
        heads: attention heads.
        levels: feature levels.
        points: sampling points per head and level.
        dropout: dropout on the attention and feed-forward outputs.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int = 1024,
        heads: int = 8,
        levels: int = 3,
        points: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn = MSDeformAttention(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]]
    ) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x + pos, reference, x, shapes)))  # (B, S, C)
        return self.norm2(x + self.drop(self.fc2(self.drop(F.relu(self.fc1(x))))))


def _reference_points(shapes: list[tuple[int, int]], like: Tensor) -> Tensor:
    """The centre of every token of every level as ``(x, y)`` in ``[0, 1]``: ``(S, 2)``, in
    float32 (on ``like``'s device)."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=like.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=like.device) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.flatten(), grid_y.flatten()), -1))
    return torch.cat(points)


class PixelDecoder(nn.Module):
    """Mask2Former's multi-scale deformable-attention pixel decoder.

    Reads the encoder's three coarsest levels (strides 8, 16, 32 on a ResNet or Swin) with the
    deformable transformer encoder, and the finer levels down to ``common_stride`` (stride 4)
    through an FPN. Every level is projected to ``dim`` channels (1x1 conv + GroupNorm(32)).

    Args:
        in_channels: channels of the encoder levels, finest first.
        strides: strides of the encoder levels.
        dim: channels inside the decoder (256).
        mask_dim: channels of the mask features (256).
        layers: deformable encoder layers (6).
        heads: attention heads (8).
        points: sampling points per head and level (4).
        ffn_dim: feed-forward width of the encoder layers (1024).
        dropout: dropout in the encoder layers (0).
        common_stride: stride of the mask features (4): the FPN goes down to it.
        num_levels: levels read by the transformer (3).

    Returns (from ``forward``):
        ``(mask_features (B, mask_dim, H/4, W/4), [the transformer's levels, coarsest first,
        each (B, dim, H/s, W/s)])``.
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        dim: int = 256,
        mask_dim: int = 256,
        layers: int = 6,
        heads: int = 8,
        points: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        common_stride: int = 4,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        if len(in_channels) < num_levels:
            raise ValueError(
                f"Mask2Former's pixel decoder reads {num_levels} encoder levels, the encoder "
                f"returns {len(in_channels)} (strides {list(strides)}); use a backbone with "
                "levels at strides 4 to 32, such as resnet50"
            )
        if dim % 32:
            raise ValueError(f"pixel decoder: dim {dim} must divide by 32 (GroupNorm(32))")
        self.num_levels = num_levels
        self.first = len(in_channels) - num_levels  # index of the finest transformer level
        finest = strides[self.first]
        # FPN levels: the encoder's levels finer than the transformer's, down to common_stride
        self.fpn_levels = [i for i in range(self.first) if common_stride <= strides[i] < finest]
        self.input_proj = nn.ModuleList(  # coarsest level first
            nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(32, dim))
            for c in in_channels[self.first :][::-1]
        )
        self.level_embed = nn.Parameter(torch.randn(num_levels, dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, ffn_dim, heads, num_levels, points, dropout)
            for _ in range(layers)
        )
        self.lateral = nn.ModuleList(  # coarsest FPN level first
            nn.Sequential(nn.Conv2d(in_channels[i], dim, 1, bias=False), nn.GroupNorm(32, dim))
            for i in self.fpn_levels[::-1]
        )
        self.output = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GroupNorm(32, dim), nn.ReLU()
            )
            for _ in self.fpn_levels
        )
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)
        # strides of the transformer's levels (coarsest first) and of the mask features
        self.level_strides = list(strides[self.first :])[::-1]
        self.mask_stride = strides[self.fpn_levels[0]] if self.fpn_levels else finest

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        levels = features[self.first :][::-1]  # coarsest first: strides 32, 16, 8
        projected = [proj(x) for proj, x in zip(self.input_proj, levels)]  # (B, C, h_l, w_l)
        shapes = [(x.shape[2], x.shape[3]) for x in projected]  # symbolic when traced
        tokens = torch.cat([x.flatten(2).transpose(1, 2) for x in projected], 1)  # (B, S, C)
        pos = torch.cat(
            [
                (sine_position_embedding(x, x.shape[1] // 2) + self.level_embed[i, :, None, None])
                .flatten(2)
                .transpose(1, 2)
                for i, x in enumerate(projected)
            ],
            1,
        )  # (B, S, C)
        reference = _reference_points(shapes, tokens)[None].expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            tokens = layer(tokens, pos, reference, shapes)  # (B, S, C)
        b, _, c = tokens.shape
        outs = []
        start = 0
        for h, w in shapes:
            outs.append(tokens[:, start : start + h * w].transpose(1, 2).reshape(b, c, h, w))
            start += h * w
        y = outs[-1]
        for lateral, output, i in zip(self.lateral, self.output, self.fpn_levels[::-1]):
            x = lateral(features[i])  # (B, C, H/s, W/s)
            up = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            y = output(x + up)  # (B, C, H/s, W/s)
        return self.mask_features(y), outs  # (B, mask_dim, H/4, W/4), coarsest first
