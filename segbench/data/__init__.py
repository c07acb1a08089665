"""Datasets (one file each), the shared dataset contract and checks, and the data module.

``SegDataModule`` is imported lazily: the data commands (``segbench check`` and
friends) should not pay for importing Lightning before they need it.
"""

from segbench.data.base import SegmentationDataset
from segbench.data.errors import DataError
from segbench.data.labels import validate_sample

__all__ = ["DataError", "SegDataModule", "SegmentationDataset", "validate_sample"]


def __getattr__(name: str):
    if name == "SegDataModule":
        from segbench.data.datamodule import SegDataModule

        return SegDataModule
    raise AttributeError(f"module 'segbench.data' has no attribute {name!r}")
