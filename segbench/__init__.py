"""segbench: train, evaluate and compare semantic-segmentation models under one roof."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segbench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
