"""Per-class IoU leaderboards from ``results.json`` files (:mod:`segbench.leaderboard.build`)."""

from segbench.leaderboard.build import (
    DEFAULT_METRICS,
    FORMATS,
    METRIC_CHOICES,
    RUN_IDENTITY_KEYS,
    Column,
    Leaderboard,
    LeaderboardWarning,
    Row,
    Stat,
    build_tables,
    check_record,
    collect,
    main,
    write_leaderboards,
    write_tables,
)

__all__ = [
    "DEFAULT_METRICS",
    "FORMATS",
    "METRIC_CHOICES",
    "RUN_IDENTITY_KEYS",
    "Column",
    "Leaderboard",
    "LeaderboardWarning",
    "Row",
    "Stat",
    "build_tables",
    "check_record",
    "collect",
    "main",
    "write_leaderboards",
    "write_tables",
]
