"""Datasets (one file each), the shared dataset contract and checks, and the data module."""

from segbench.data.base import SegmentationDataset, validate_sample
from segbench.data.datamodule import SegDataModule

__all__ = ["SegDataModule", "SegmentationDataset", "validate_sample"]
