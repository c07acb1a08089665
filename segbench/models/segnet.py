"""SegNet and Bayesian SegNet.

SegNet (Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017): the decoder mirrors the encoder stage by
stage. Each decoder stage max-unpools with the pooling indices ("switches") its encoder stage
saved, which puts every value back at the position of its maximum in a sparse map, and then
densifies it with trainable convolutions. Only the indices cross from encoder to decoder, never
the feature maps. The paper's SegNet-Basic is this model on a 4-stage 7×7 encoder with a
decoder without ReLU and a 1×1 classifier.

Bayesian SegNet (Kendall, Badrinarayanan & Cipolla, "Bayesian SegNet: Model Uncertainty in Deep
Convolutional Encoder-Decoder Architectures for Scene Understanding", BMVC 2017): dropout after
the central encoder and decoder stages, kept on at test time (Monte Carlo dropout). The
prediction is the mean softmax over sampled passes and their variance is the model uncertainty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu
from segbench.models.encoders import encoder_name, require_pooling

__all__ = ["BayesianSegNet", "MaxUnpool", "SegNet", "UnpoolDecoder"]


class MaxUnpool(nn.Module):
    """Puts each value back at its pool's argmax in a zero map of the pre-pool size.

    The same result as ``F.max_unpool2d`` with ``output_size`` (odd sizes such as 65 → 32 → 65
    come back exactly), written as a scatter because PyTorch refuses ``max_unpool2d`` under
    ``torch.use_deterministic_algorithms`` (``trainer.deterministic=true``).
    """

    def forward(self, x: Tensor, indices: Tensor, size: torch.Size) -> Tensor:
        b, c = x.shape[:2]
        h, w = size[-2:]
        out = x.new_zeros(b, c, h * w)  # indices are flat positions in each (h, w) plane
        return out.scatter(2, indices.flatten(2), x.flatten(2)).view(b, c, h, w)


class UnpoolDecoder(nn.Module):
    """The mirror of a pooling encoder: per stage, deepest first, unpool then convolve.

    Decoder stage ``i`` has as many ``conv → BN [→ ReLU]`` layers as encoder stage ``i``; all
    keep that stage's width except the last, which narrows to the width of stage ``i - 1``
    (stage 0's keeps its own), so that the next unpooling gets the channels its indices index.

    Args:
        channels: encoder stage widths, finest first.
        stage_convs: convs per encoder stage, finest first.
        kernel_size: conv kernel size (the encoder's).
        relu: ReLU after every BN (SegNet-Basic's decoder has none).
        transposed: transposed (stride-1) convolutions, as in DeconvNet.
    """

    def __init__(
        self,
        channels: list[int],
        stage_convs: list[int],
        kernel_size: int = 3,
        relu: bool = True,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        self.unpools = nn.ModuleList(MaxUnpool() for _ in channels)
        self.stages = nn.ModuleList()
        for i, (width, n_convs) in enumerate(zip(channels, stage_convs)):
            out = channels[max(i - 1, 0)]
            widths = [width] * n_convs + [out]
            self.stages.append(
                nn.Sequential(
                    *(
                        conv_bn_relu(a, b, kernel_size, relu=relu, transposed=transposed)
                        for a, b in zip(widths[:-1], widths[1:])
                    )
                )
            )
        # always-on dropout after each stage's convs (Bayesian SegNet sets it), finest first;
        # ``sampling`` False turns it off (Bayesian SegNet's weight-averaging evaluation)
        self.dropout: list[float] = [0.0] * len(channels)
        self.sampling = True

    def forward(self, x: Tensor, indices: list[Tensor], sizes: list[torch.Size]) -> Tensor:
        """``x``: the deepest pooled feature; ``indices``/``sizes``: every pool's, finest first."""
        for i in reversed(range(len(self.stages))):
            x = self.unpools[i](x, indices[i], sizes[i])  # (B, C_i, H/2^i, W/2^i), sparse
            x = self.stages[i](x)  # (B, C_{i-1}, H/2^i, W/2^i)
            if self.dropout[i] > 0:
                x = F.dropout(x, self.dropout[i], training=self.sampling)
        return x  # (B, C_0, H, W)


class SegNet(SegmentationModel):
    """SegNet: a pooling encoder and its mirror decoder that upsamples with pooling indices.

    Args:
        encoder: a pooling encoder with ``forward_with_indices`` and ``stage_convs``
            (``VGGEncoder`` at its natural stride).
        num_classes: number of classes.
        head_kernel: classifier kernel size (3 in SegNet's Caffe model, 1 in SegNet-Basic).
        decoder_relu: ReLU in the decoder (SegNet-Basic has none).
    """

    paper_name = "SegNet"

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        head_kernel: int = 3,
        decoder_relu: bool = True,
    ) -> None:
        require_pooling(encoder, self.paper_name)
        decoder = UnpoolDecoder(
            encoder.channels, encoder.stage_convs, encoder.kernel_size, relu=decoder_relu
        )
        head = nn.Conv2d(encoder.channels[0], num_classes, head_kernel, padding=head_kernel // 2)
        super().__init__(encoder, decoder, head, num_classes)

    def logits(self, x: Tensor) -> Tensor:
        """One pass: logits ``(B, K, H, W)``."""
        features, indices, sizes = self.encoder.forward_with_indices(x)  # pool1 … poolN
        # only the deepest feature and the switches reach the decoder: no skip features
        y = self.decoder(features[-1], indices, sizes)  # (B, C_0, H, W)
        return self.head(y)  # (B, K, H, W)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.logits(x)}


class _DropoutMaxPool2d(nn.MaxPool2d):
    """A max-pool returning indices whose output goes through always-on dropout."""

    def __init__(self, pool: nn.MaxPool2d, p: float) -> None:
        super().__init__(
            pool.kernel_size, pool.stride, pool.padding, pool.dilation, True, pool.ceil_mode
        )
        self.p = p
        self.sampling = True  # False: dropout off (weight averaging)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, indices = super().forward(x)
        return F.dropout(out, self.p, training=self.sampling), indices

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


class BayesianSegNet(SegNet):
    """Bayesian SegNet: SegNet with Monte Carlo dropout on its central stages.

    Dropout follows the chosen encoder stages' pools and the same decoder stages' convs and is
    on in every mode. In training mode the model makes one stochastic pass and returns plain
    logits. In eval mode it averages the softmax of ``mc_samples`` passes: ``out`` is the log
    of the mean probabilities (so its argmax is the mean prediction and cross-entropy on it is
    the predictive NLL) and ``uncertainty`` ``(B, H, W)`` is the variance of the sampled
    probabilities averaged over classes.

    Args:
        encoder: as for :class:`SegNet`.
        num_classes: number of classes.
        dropout: dropout probability (0.5 in the paper).
        dropout_stages: stage numbers 1 … N (as in pool1 … poolN) that get dropout; ``None``
            picks the three deepest, the paper's "central encoder-decoder" model.
        mc_samples: stochastic passes averaged in eval mode; 0 evaluates with dropout off
            (the paper's "weight averaging" baseline: one deterministic pass, dropout's
            expectation, and no uncertainty).
        head_kernel: classifier kernel size.
        decoder_relu: ReLU in the decoder.
    """

    paper_name = "Bayesian SegNet"

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        dropout: float = 0.5,
        dropout_stages: list[int] | None = None,
        mc_samples: int = 8,
        head_kernel: int = 3,
        decoder_relu: bool = True,
    ) -> None:
        super().__init__(encoder, num_classes, head_kernel, decoder_relu)
        n = len(encoder.channels)
        stages = list(range(max(n - 2, 1), n + 1)) if dropout_stages is None else dropout_stages
        if any(not 1 <= s <= n for s in stages):
            raise ValueError(
                f"Bayesian SegNet: dropout_stages are stage numbers 1..{n} for encoder "
                f"{encoder_name(encoder)!r}, got {list(stages)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Bayesian SegNet: dropout must be in [0, 1), got {dropout}")
        if int(mc_samples) < 0:
            raise ValueError(
                f"Bayesian SegNet: mc_samples must be >= 1 (Monte Carlo dropout) or 0 (dropout "
                f"off at test time, weight averaging), got {mc_samples}"
            )
        self.dropout, self.dropout_stages, self.mc_samples = dropout, sorted(stages), mc_samples
        pools = [(k, m) for k, m in encoder.named_modules() if isinstance(m, nn.MaxPool2d)]
        if len(pools) != n:
            raise ValueError(
                f"Bayesian SegNet: expected one max-pool per encoder stage ({n}), "
                f"found {len(pools)}"
            )
        for s in self.dropout_stages:
            path, pool = pools[s - 1]
            parent, _, child = path.rpartition(".")
            setattr(encoder.get_submodule(parent), child, _DropoutMaxPool2d(pool, dropout))
            self.decoder.dropout[s - 1] = dropout

    def mc_predict(self, x: Tensor, samples: int) -> tuple[Tensor, Tensor]:
        """Mean softmax ``(B, K, H, W)`` and uncertainty ``(B, H, W)`` over ``samples`` passes.

        Call it in eval mode: in training mode every pass also updates BatchNorm statistics.
        """
        ref = F.softmax(self.logits(x).float(), dim=1)  # (B, K, H, W)
        # running sums of the differences to the first sample: no stack of all samples, and
        # identical samples (dropout 0) give a variance of exactly zero
        s1 = torch.zeros_like(ref)
        s2 = torch.zeros_like(ref)
        for _ in range(int(samples) - 1):
            d = F.softmax(self.logits(x).float(), dim=1) - ref
            s1 += d
            s2 += d * d
        s1 /= samples
        mean = ref + s1
        variance = (s2 / samples - s1 * s1).clamp_min(0.0)  # (B, K, H, W)
        return mean, variance.mean(dim=1)  # (B, K, H, W), (B, H, W)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.training:
            return {"out": self.logits(x)}
        if int(self.mc_samples) == 0:  # weight averaging: dropout off, one pass
            switches = [m for m in self.modules() if hasattr(m, "sampling")]
            for m in switches:
                m.sampling = False
            try:
                return {"out": self.logits(x)}
            finally:
                for m in switches:
                    m.sampling = True
        probs, uncertainty = self.mc_predict(x, self.mc_samples)
        out = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()  # (B, K, H, W) log-probs
        return {"out": out, "uncertainty": uncertainty}
