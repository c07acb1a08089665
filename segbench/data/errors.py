"""The errors and warnings of bad data on disk."""

from __future__ import annotations

__all__ = ["DataError", "DataWarning"]


class DataError(ValueError):
    """Bad data on disk; the message names the file(s) and says what was expected."""


class DataWarning(UserWarning):
    """Data on disk that is probably wrong but may be legitimate; the message names the
    file(s). Emitted with :func:`warnings.warn`; ``segbench check`` prints them."""
