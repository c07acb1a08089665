"""Fully connected CRF post-processing with mean-field inference (Krähenbühl & Koltun, NIPS 2011),
as DeepLab v1/v2 used it on top of the network's scores. Pure PyTorch, CPU or GPU.

Model. For an image of N pixels and K labels the energy is

    E(x) = sum_i psi_u(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j),
    psi_u(x_i) = -log softmax(logits)_i,     mu = Potts ([x_i != x_j]),
    k(f_i, f_j) = w1 exp(-|p_i - p_j|^2 / 2 theta_a^2 - |I_i - I_j|^2 / 2 theta_b^2)   (bilateral)
                + w2 exp(-|p_i - p_j|^2 / 2 theta_g^2)                                 (Gaussian)

with p the pixel position (in pixels) and I the 0-255 RGB colour. Mean-field inference iterates

    Q_i(l) <- softmax_l( -psi_u(l) + sum_m w_m M_m(Q)_i(l) ),

with one normalised message M_m per kernel. With the Potts model the penalty
``-sum_{l' != l} k Q_j(l')`` equals ``+k Q_j(l)`` up to a term that is constant across labels, so
agreeing neighbours *raise* a label's score (Krähenbühl's code: compatibility ``-w Q``,
subtracted). A raw sum over a 121-px bilateral window is thousands of times larger than a unary,
so every kernel's message is normalised; ``normalization`` chooses how:

* ``"symmetric"``: ``M(Q)_i = n_i sum_j k(i, j) n_j Q_j`` with ``n_i = (sum_j k(i, j))^(-1/2)``,
  the pixel itself included (``k(i, i) = 1``) in the sum and in ``n``. This is
  ``NORMALIZE_SYMMETRIC``, the default of Krähenbühl & Koltun's released C++ code (densecrf 2.x,
  ``pydensecrf``), which DeepLab ran: ``norm = 1/sqrt(lattice(ones))``, message
  ``norm * lattice(norm * Q)``; its lattice includes the pixel, so this mode does too. The
  config ``conf/model/deeplabv1_crf.yaml`` sets it. Measured against ``pydensecrf2`` on
  360x480 synthetic scenes (tests/test_crf_oracle.py) the label maps agree on 99.98 %.
* ``"after"``: ``M(Q)_i = sum_{j != i} k(i, j) Q_j / Z(i)``, ``Z(i) = sum_j k(i, j)`` (self
  included, so ``Z >= 1``): a weighted average of the *neighbours'* Q, bounded by 1, the pixel
  itself excluded. This is segbench's earlier model and ``DenseCRF``'s Python default, so a
  stored config without the key means what it meant. It is ``NORMALIZE_AFTER`` of the C++ code
  except for the self term (which that code includes, adding ``w k(i,i) Q_i / Z(i)``); the
  label maps agree with it on about 99.75 %.

The published weights were tuned with the C++ code, i.e. for ``"symmetric"``.

Exact versus approximate message passing. The Gaussian kernel is local (std 3 px) and computed
exactly at every size as a separable filter (taps truncated at 4 std, zero padding; ``"after"``
removes the centre tap from the numerator; ``Z`` is the same filter applied to ones, so borders
are normalised correctly). The bilateral kernel is dense, O(N^2):

* ``H * W <= exact_max_pixels``: computed exactly, pairwise, in row chunks (memory bounded);
  the kernel matrix is cached across iterations when it has at most 2^24 entries.
* larger images: approximated with the permutohedral lattice (Adams, Baek & Davis,
  Eurographics 2010), the filter of the authors' own implementation. Each pixel's 5-D feature
  ``(x/theta_a, y/theta_a, r/theta_b, g/theta_b, b/theta_b)`` is splatted onto the 6 vertices of
  its enclosing lattice simplex with barycentric weights, lattice values are blurred with
  ``[1/2, 1, 1/2]`` along each of the 6 lattice directions, and sliced back with the same
  weights. This works at full resolution, keeps colour edges, and costs O(N d^2) per message
  (splat, blurs and slice are gather-and-sum tables built once per forward call and applied
  with ``embedding_bag``, deterministic on CPU; the whole batch shares one lattice whose keys
  include the image index, so images never interact). The lattice's response is a slightly
  blurred Gaussian (effective std about 5-10% wider than requested) whose scale cancels in
  either normalisation. ``Z`` is the lattice applied to ones. ``"symmetric"`` uses the
  lattice's response as is (self included, like the C++ code). For ``"after"`` the lattice
  cannot isolate a pixel's own contribution, so the self term is estimated as
  ``sum_{k,k'} b_k b_k' T[k, k']`` (b: the pixel's barycentric weights, T: the blur's response
  between simplex vertices on a complete lattice) and subtracted, clamped at zero.

Marginals below ``Q_FLOOR`` (1e-20) are raised to it before filtering: invisible in the result,
but it keeps subnormal floats, many times slower on CPUs, out of the filters.

Default parameters are the PASCAL VOC values published for DeepLab-LargeFOV (Chen et al.,
"Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015;
the DeepLab v1 release lists "FOV: bi_w = 4, bi_xy_std = 121, bi_rgb_std = 5, pos_w = 3,
pos_xy_std = 3"), with 10 mean-field iterations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.inference.permutohedral import PermutohedralLattice

__all__ = ["NORMALIZATIONS", "DenseCRF"]

# How each kernel's message is normalised (see the module docstring).
NORMALIZATIONS = ("symmetric", "after")
# Smallest marginal passed to the filters (see forward).
Q_FLOOR = 1e-20

# Same values as segbench.data.transforms (kept here so this module imports nothing heavy).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseCRF(nn.Module):
    """Fully connected CRF refinement of segmentation logits (see the module docstring).

    Args:
        iterations: mean-field iterations; 0 returns ``log_softmax(logits)``.
        bilateral_weight: w1, weight of the appearance (bilateral) kernel.
        bilateral_xy_std: theta_alpha, spatial std of the bilateral kernel, in pixels.
        bilateral_rgb_std: theta_beta, colour std of the bilateral kernel, in 0-255 units.
        gaussian_weight: w2, weight of the smoothness (spatial Gaussian) kernel.
        gaussian_xy_std: theta_gamma, std of the smoothness kernel, in pixels.
        mean, std: the normalisation applied to the input image, in [0, 1] units (as in the
            data module), used to recover 0-255 RGB from the network's input.
        exact_max_pixels: images with at most this many pixels get the exact O(N^2) bilateral
            message; larger ones use the permutohedral lattice. 0 always uses the lattice.
        chunk_elems: pairwise-kernel entries computed at once on the exact path (memory bound).
        normalization: ``"symmetric"`` (Krähenbühl's ``NORMALIZE_SYMMETRIC``, self included; what
            ``conf/model/deeplabv1_crf.yaml`` sets) or ``"after"`` (``filter(Q) / filter(1)``,
            self excluded; the default, so configs stored without the key keep their meaning).

    ``forward(logits (B, K, H, W), image (B, 3, H, W))`` returns the log of the refined marginals
    Q, ``(B, K, H, W)`` in the logits' dtype: ``argmax`` over dim 1 is the CRF labelling and
    the result can stand in for logits.
    """

    def __init__(
        self,
        iterations: int = 10,
        bilateral_weight: float = 4.0,
        bilateral_xy_std: float = 121.0,
        bilateral_rgb_std: float = 5.0,
        gaussian_weight: float = 3.0,
        gaussian_xy_std: float = 3.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        exact_max_pixels: int = 4096,
        chunk_elems: int = 2**22,
        normalization: str = "after",
    ) -> None:
        super().__init__()
        if iterations < 0:
            raise ValueError(f"crf.iterations must be >= 0, got {iterations}")
        for name, value in (
            ("bilateral_weight", bilateral_weight),
            ("gaussian_weight", gaussian_weight),
        ):
            if value < 0:
                raise ValueError(f"crf.{name} must be >= 0, got {value}")
        for name, value in (
            ("bilateral_xy_std", bilateral_xy_std),
            ("bilateral_rgb_std", bilateral_rgb_std),
            ("gaussian_xy_std", gaussian_xy_std),
        ):
            if not value > 0:
                raise ValueError(f"crf.{name} must be > 0, got {value}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"crf.mean and crf.std need 3 values each, got {mean} and {std}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"crf.normalization must be one of {', '.join(map(repr, NORMALIZATIONS))}, "
                f"got {normalization!r}"
            )
        if exact_max_pixels < 0 or chunk_elems < 1:
            raise ValueError("crf.exact_max_pixels must be >= 0 and crf.chunk_elems >= 1")
        self.iterations = int(iterations)
        self.bilateral_weight = float(bilateral_weight)
        self.bilateral_xy_std = float(bilateral_xy_std)
        self.bilateral_rgb_std = float(bilateral_rgb_std)
        self.gaussian_weight = float(gaussian_weight)
        self.gaussian_xy_std = float(gaussian_xy_std)
        self.exact_max_pixels = int(exact_max_pixels)
        self.chunk_elems = int(chunk_elems)
        self.normalization = normalization
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"iterations={self.iterations}, bilateral=({self.bilateral_weight}, "
            f"xy={self.bilateral_xy_std}, rgb={self.bilateral_rgb_std}), gaussian=("
            f"{self.gaussian_weight}, xy={self.gaussian_xy_std}), "
            f"normalization={self.normalization!r}, exact_max_pixels={self.exact_max_pixels}"
        )

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        if logits.ndim != 4 or image.ndim != 4:
            raise ValueError(
                f"DenseCRF expects logits (B, K, H, W) and image (B, 3, H, W), got "
                f"{tuple(logits.shape)} and {tuple(image.shape)}"
            )
        b, _, h, w = logits.shape
        if image.shape != (b, 3, h, w):
            raise ValueError(
                f"DenseCRF: image {tuple(image.shape)} does not match logits {tuple(logits.shape)}"
                f" (expected ({b}, 3, {h}, {w}); resize the logits to the image first)"
            )
        log_q = F.log_softmax(logits.float(), dim=1)
        if self.iterations == 0 or (self.bilateral_weight == 0 and self.gaussian_weight == 0):
            return log_q.to(logits.dtype)

        neg_unary = log_q
        messages = []  # callables Q (B, K, H, W) -> weighted normalised message
        if self.bilateral_weight > 0:
            messages.append(self._bilateral(image))
        if self.gaussian_weight > 0:
            messages.append(self._gaussian(b, h, w, logits.device))
        for _ in range(self.iterations):
            # Floor Q far below float32's resolution of a message (|total| >> 1e-13): no effect
            # on the result, but keeps subnormal floats (exp of log-probabilities < -87), which
            # are many times slower on CPUs, out of the filters.
            q = log_q.exp().clamp_min_(Q_FLOOR)
            total = neg_unary
            for message in messages:
                total = total + message(q)
            log_q = F.log_softmax(total, dim=1)
        return log_q.to(logits.dtype)

    # ----------------------------------------------------------------- kernels

    def _gaussian(self, b: int, h: int, w: int, device: torch.device):
        """Exact smoothness message: separable Gaussian filtering (truncated at 4 std, zero
        padding) by shifted adds, centre excluded from the numerator."""
        radius = max(1, math.ceil(4 * self.gaussian_xy_std))
        taps = [
            math.exp(-0.5 * (x / self.gaussian_xy_std) ** 2) for x in range(-radius, radius + 1)
        ]

        def blur(v: Tensor) -> Tensor:
            hh, ww = v.shape[-2:]
            pad = F.pad(v, (radius, radius, 0, 0))
            out = pad[..., :ww] * taps[0]
            for i in range(1, len(taps)):
                out.add_(pad[..., i : i + ww], alpha=taps[i])
            pad = F.pad(out, (0, 0, radius, radius))
            out = pad[..., :hh, :] * taps[0]
            for i in range(1, len(taps)):
                out.add_(pad[..., i : i + hh, :], alpha=taps[i])
            return out

        z = blur(torch.ones(1, 1, h, w, device=device))
        if self.normalization == "symmetric":  # self included, as in Krähenbühl's code
            norm = z.rsqrt()
            scale = self.gaussian_weight * norm

            def message(q: Tensor) -> Tensor:
                return blur(q * norm) * scale

            return message
        inv_z = self.gaussian_weight / z

        def message(q: Tensor) -> Tensor:
            return (blur(q) - q) * inv_z

        return message

    def _bilateral(self, image: Tensor):
        """Bilateral message: exact for small images, permutohedral lattice for large ones."""
        b, _, h, w = image.shape
        device = image.device
        rgb = image.float() * (self.std * 255).view(1, 3, 1, 1) + (self.mean * 255).view(1, 3, 1, 1)
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32),
            torch.arange(w, device=device, dtype=torch.float32),
            indexing="ij",
        )
        pos = torch.stack([xs, ys]).unsqueeze(0).expand(b, 2, h, w) / self.bilateral_xy_std
        feats = torch.cat([pos, rgb / self.bilateral_rgb_std], dim=1)  # (B, 5, H, W)
        feats = feats.permute(0, 2, 3, 1).reshape(b, h * w, 5)
        weight = self.bilateral_weight
        symmetric = self.normalization == "symmetric"

        def to_rows(q: Tensor) -> Tensor:  # (B, K, H, W) -> (B, N, K)
            return q.permute(0, 2, 3, 1).reshape(b, h * w, -1)

        def from_rows(m: Tensor) -> Tensor:  # (B, N, K) -> (B, K, H, W)
            return m.view(b, h, w, -1).permute(0, 3, 1, 2)

        if h * w <= self.exact_max_pixels:
            filters = [_ExactFilter(feats[i], self.chunk_elems, symmetric) for i in range(b)]

            def message(q: Tensor) -> Tensor:
                rows = to_rows(q)
                out = torch.stack([f(rows[i]) for i, f in enumerate(filters)])
                return weight * from_rows(out)

            return message

        lattice = PermutohedralLattice(
            feats.reshape(b * h * w, 5),
            torch.arange(b, device=device).repeat_interleave(h * w),
        )
        ones = torch.ones(b * h * w, 1, device=device)
        z = lattice.filter(ones).clamp_min(1e-20)  # (B*N, 1)
        if symmetric:  # self included: the lattice's own response, as in Krähenbühl's code
            norm = z.rsqrt()
            scale = weight * norm

            def message(q: Tensor) -> Tensor:
                rows = to_rows(q).reshape(b * h * w, -1)
                return from_rows((lattice.filter(rows * norm) * scale).view(b, h * w, -1))

            return message
        inv_z = weight / z
        self_w = lattice.self_weight().unsqueeze(1)  # (B*N, 1)

        def message(q: Tensor) -> Tensor:
            rows = to_rows(q).reshape(b * h * w, -1)
            num = (lattice.filter(rows) - self_w * rows).clamp_min(0)
            return from_rows((num * inv_z).view(b, h * w, -1))

        return message


class _ExactFilter:
    """Normalised dense Gaussian filtering over one image's features, ``k_ij =
    exp(-|f_i - f_j|^2 / 2)``. ``after``: self excluded,
    ``out_i = sum_{j != i} k_ij v_j / (1 + sum_{j != i} k_ij)``. ``symmetric``: self included,
    ``out_i = n_i sum_j k_ij n_j v_j`` with ``n_i = (sum_j k_ij)^(-1/2)``.
    """

    _CACHE_ELEMS = 2**24

    def __init__(self, feats: Tensor, chunk_elems: int, symmetric: bool = False) -> None:
        self.symmetric = symmetric
        self.feats = feats - feats.mean(dim=0, keepdim=True)  # centred: less cancellation
        self.sq = (self.feats**2).sum(dim=1)
        n = feats.shape[0]
        self.chunk = max(1, chunk_elems // max(n, 1))
        self.cache: list[Tensor] | None = [] if n * n <= self._CACHE_ELEMS else None
        z = []
        for start in range(0, n, self.chunk):
            block = self._kernel(start)
            z.append(block.sum(dim=1))
            if self.cache is not None:
                self.cache.append(block)
        z = torch.cat(z).unsqueeze(1)  # symmetric: self included (>= 1); after: excluded
        self.norm = z.rsqrt() if symmetric else 1.0 / (1.0 + z)

    def _kernel(self, start: int) -> Tensor:
        stop = min(start + self.chunk, self.feats.shape[0])
        f = self.feats[start:stop]
        d2 = self.sq[start:stop, None] + self.sq[None, :] - 2.0 * (f @ self.feats.T)
        block = torch.exp(-0.5 * d2.clamp_min(0))
        rows = torch.arange(stop - start, device=block.device)
        block[rows, rows + start] = 0.0 if not self.symmetric else 1.0  # the pixel itself
        return block

    def __call__(self, v: Tensor) -> Tensor:
        n = self.feats.shape[0]
        if self.symmetric:
            v = v * self.norm
        out = []
        for i, start in enumerate(range(0, n, self.chunk)):
            block = self.cache[i] if self.cache is not None else self._kernel(start)
            out.append(block @ v)
        return torch.cat(out) * self.norm
