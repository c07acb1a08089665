"""DeconvNet (Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation",
ICCV 2015).

A VGG16 encoder keeps its max-pooling switches; its fully connected fc6/fc7 become a 7×7 and a
1×1 convolution, and a 7×7 transposed convolution ("deconv-fc6") turns the fc7 vector back into
a 7×7 map. A decoder mirroring the whole encoder then alternates unpooling with the switches
and stride-1 transposed convolutions. Every layer has BatchNorm and ReLU, as in the paper.
"""

from __future__ import annotations

from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu
from segbench.models.encoders import require_pooling
from segbench.models.segnet import UnpoolDecoder

__all__ = ["DeconvNet"]


class DeconvNet(SegmentationModel):
    """DeconvNet: fc6/fc7 as convolutions, deconv-fc6, and an unpooling deconvolution decoder.

    Args:
        encoder: a pooling encoder with ``forward_with_indices`` and ``stage_convs``
            (``VGGEncoder`` at its natural stride; VGG16-BN in the paper).
        num_classes: number of classes.
        fc_channels: width of fc6/fc7 (4096 in the paper).
        fc_kernel: kernel of fc6 and deconv-fc6 (7 in the paper).
        fc_padding: ``"same"`` pads fc6 and deconv-fc6 so that any input size works;
            ``"valid"`` is the paper's (a 7×7 pool5, from 224×224 crops, becomes 1×1 and back
            to 7×7) and needs pool5 at least ``fc_kernel`` in both sides.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        fc_padding: str = "same",
    ) -> None:
        require_pooling(encoder, "DeconvNet")
        if fc_padding not in ("same", "valid"):
            raise ValueError(f"DeconvNet: fc_padding must be 'same' or 'valid', got {fc_padding!r}")
        decoder = UnpoolDecoder(
            encoder.channels, encoder.stage_convs, encoder.kernel_size, transposed=True
        )
        head = nn.Conv2d(encoder.channels[0], num_classes, 1)
        super().__init__(encoder, decoder, head, num_classes)
        self.fc_kernel, self.fc_padding = fc_kernel, fc_padding
        pad = fc_kernel // 2 if fc_padding == "same" else 0
        c5 = encoder.channels[-1]
        self.fc6 = conv_bn_relu(c5, fc_channels, fc_kernel, padding=pad)
        self.fc7 = conv_bn_relu(fc_channels, fc_channels, 1)
        self.deconv_fc6 = conv_bn_relu(fc_channels, c5, fc_kernel, padding=pad, transposed=True)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features, indices, sizes = self.encoder.forward_with_indices(x)  # pool1 … poolN
        pool5 = features[-1]  # (B, 512, H/32, W/32)
        h, w = pool5.shape[-2:]
        if self.fc_padding == "valid" and min(h, w) < self.fc_kernel:
            stride = self.encoder.strides[-1]
            raise ValueError(
                f"DeconvNet with fc_padding='valid' needs the last pooled map to be at least "
                f"{self.fc_kernel}x{self.fc_kernel} (inputs of at least "
                f"{self.fc_kernel * stride}x{self.fc_kernel * stride}), got {h}x{w} from a "
                f"{x.shape[-2]}x{x.shape[-1]} input; use larger crops or model.fc_padding=same"
            )
        y = self.fc7(self.fc6(pool5))  # (B, fc, H/32, W/32); (B, fc, h-6, w-6) when valid
        y = self.deconv_fc6(y)  # (B, 512, H/32, W/32) in both modes
        y = self.decoder(y, indices, sizes)  # (B, 64, H, W)
        return {"out": self.head(y)}  # (B, K, H, W)
