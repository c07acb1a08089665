"""The published MiT variants (SegFormer, Xie et al. 2021, Table 6 of its appendix): widths and
depths of B0 ... B5 and the settings all of them share. Apart from the encoder
(:mod:`segbench.models.encoders.mit`) so that the converters of
:mod:`segbench.models.segformer_hf` read them without importing the encoder, which imports
them to load its ImageNet weights.
"""

from __future__ import annotations

__all__ = ["HEADS", "MIT_VARIANTS", "MLP_RATIOS", "PATCH_SIZES", "PATCH_STRIDES", "SR_RATIOS"]

# name -> (widths, depths) of the four stages
MIT_VARIANTS: dict[str, tuple[list[int], list[int]]] = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
    "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
    "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]),
    "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3]),
}
HEADS = [1, 2, 5, 8]
SR_RATIOS = [8, 4, 2, 1]
MLP_RATIOS = [4, 4, 4, 4]
PATCH_SIZES = [7, 3, 3, 3]
PATCH_STRIDES = [4, 2, 2, 2]
