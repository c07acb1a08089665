"""The masked-attention transformer decoder of Mask2Former (Cheng et al., "Masked-attention Mask
Transformer for Universal Image Segmentation", CVPR 2022).

``N`` learnable queries (100) are refined by 9 layers, each ``masked cross-attention ->
self-attention -> feed-forward`` (post-norm), the cross-attention reading the pixel decoder's
levels round-robin, coarsest first (strides 32, 16, 8, 32, ...). Before the first layer and after
every layer the queries go through a shared LayerNorm and the prediction heads: a linear class
head (``K + 1`` logits, the last one "no object") and a 3-layer MLP giving a mask embedding
whose dot product with the per-pixel mask features is the query's mask logit map. Each layer's
cross-attention is masked by the previous prediction: a query sees only the pixels where its
mask, resized to that level, has probability >= 0.5 (all pixels when that leaves none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.msdeform import sine_position_embedding

__all__ = ["Attention", "MaskedAttentionDecoder", "MaskedAttentionDecoderLayer"]


class Attention(nn.Module):
    """Multi-head attention with separate query, key and value projections.

    Args:
        dim: channels of queries, keys and values.
        heads: attention heads.
        dropout: dropout on the attention weights.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: dim {dim} must divide by heads {heads}")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, blocked: Tensor | None = None):
        """``query (B, Q, C)``, ``key``/``value (B, S, C)``; ``blocked (B, Q, S)`` True where a
        query may not look -> ``(B, Q, C)``."""
        b, q, c = query.shape
        m = self.heads
        d = c // m
        qh = (self.q_proj(query) * d**-0.5).view(b, q, m, d).transpose(1, 2)  # (B, M, Q, D)
        kh = self.k_proj(key).view(b, -1, m, d).transpose(1, 2)  # (B, M, S, D)
        vh = self.v_proj(value).view(b, -1, m, d).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2)  # (B, M, Q, S)
        if blocked is not None:
            scores = scores.masked_fill(blocked[:, None], float("-inf"))
        attn = self.drop(scores.softmax(-1))
        out = (attn @ vh).transpose(1, 2).reshape(b, q, c)  # (B, Q, C)
        return self.out_proj(out)


class MaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention to one level, self-attention among the queries, feed-forward;
    each followed by dropout, the residual and a LayerNorm.

    The query position embedding is added to the queries (and to the keys of the
    self-attention); the level's sine position embedding to its keys.

    Args:
        dim: query channels.
        heads: attention heads.
        ffn_dim: feed-forward width (2048).
        dropout: dropout (0 in the paper).
    """

    def __init__(self, dim: int, heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.cross_attn = Attention(dim, heads, dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, blocked: Tensor
    ) -> Tensor:
        """``x``/``query_pos (B, Q, C)``, ``memory``/``memory_pos (B, S, C)`` one level's
        tokens, ``blocked (B, Q, S)`` -> ``(B, Q, C)``."""
        attended = self.cross_attn(x + query_pos, memory + memory_pos, memory, blocked)
        x = self.norm_cross(x + self.drop(attended))
        q = x + query_pos
        x = self.norm_self(x + self.drop(self.self_attn(q, q, x)))
        return self.norm_ffn(x + self.drop(self.fc2(self.drop(F.relu(self.fc1(x))))))


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's transformer decoder with its class and mask heads.

    Args:
        in_channels: channels of the pixel decoder's levels (projected by a 1x1 conv when they
            differ from ``dim``).
        mask_dim: channels of the mask features (the mask embeddings' width).
        num_classes: ``K``; the class head gives ``K + 1`` logits, the last "no object".
        dim: query channels (256).
        num_queries: queries (100).
        layers: decoder layers (9: three rounds over the three levels).
        heads: attention heads (8).
        ffn_dim: feed-forward width (2048).
        dropout: dropout (0).
        num_levels: levels read round-robin (3).

    Returns (from ``forward``):
        ``(class_logits (L+1, B, Q, K+1), mask_logits (L+1, B, Q, H/4, W/4))``: the
        predictions before the first layer and after each of the ``L`` layers, the last the
        final prediction.
    """

    def __init__(
        self,
        in_channels: int,
        mask_dim: int,
        num_classes: int,
        dim: int = 256,
        num_queries: int = 100,
        layers: int = 9,
        heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.0,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        self.heads, self.num_levels = heads, num_levels
        self.query_feat = nn.Parameter(torch.randn(num_queries, dim))  # the queries
        self.query_pos = nn.Parameter(torch.randn(num_queries, dim))  # their positions
        self.level_embed = nn.Parameter(torch.randn(num_levels, dim))
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, dim, 1) if in_channels != dim else nn.Identity()
            for _ in range(num_levels)
        )
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, mask_dim)
        )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Xavier-uniform weights in the decoder layers and projections (the reference
        implementation's), zero biases of the attention projections."""
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            for attn in (layer.cross_attn, layer.self_attn):
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                    nn.init.zeros_(proj.bias)
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)

    def predict(self, x: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits ``(B, Q, K+1)`` and mask logits ``(B, Q, H/4, W/4)`` of queries ``x``."""
        x = self.norm(x)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_head(x), mask_features)
        return self.class_head(x), masks

    def attention_mask(self, masks: Tensor, size: tuple[int, int]) -> Tensor:
        """``(B, Q, h*w)``, True where a query may not look: its mask logits resized to
        ``size`` have probability below 0.5; a query whose mask is empty sees everything."""
        resized = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid() < 0.5).flatten(2).detach()  # (B, Q, h*w)
        return blocked & ~blocked.all(-1, keepdim=True)

    def forward(self, levels: list[Tensor], mask_features: Tensor) -> tuple[Tensor, Tensor]:
        b = mask_features.shape[0]
        sizes, memory, memory_pos = [], [], []
        for i, (proj, level) in enumerate(zip(self.input_proj, levels[: self.num_levels])):
            sizes.append(level.shape[-2:])
            pos = sine_position_embedding(level, self.query_feat.shape[1] // 2)  # (B, C, h, w)
            memory_pos.append(pos.flatten(2).transpose(1, 2))  # (B, h*w, C)
            tokens = proj(level).flatten(2) + self.level_embed[i][None, :, None]
            memory.append(tokens.transpose(1, 2))  # (B, h*w, C)
        # copies, not views: a view of a parameter made under no_grad passes for one that
        # needs a gradient and has none, which torch's module tracker (FLOP counting) refuses
        x = self.query_feat[None].repeat(b, 1, 1)  # (B, Q, C)
        query_pos = self.query_pos[None].repeat(b, 1, 1)
        classes, masks = self.predict(x, mask_features)
        all_classes, all_masks = [classes], [masks]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            blocked = self.attention_mask(masks, sizes[level])
            x = layer(x, query_pos, memory[level], memory_pos[level], blocked)
            classes, masks = self.predict(x, mask_features)
            all_classes.append(classes)
            all_masks.append(masks)
        return torch.stack(all_classes), torch.stack(all_masks)  # (L+1, B, Q, K+1), (L+1, ...)
