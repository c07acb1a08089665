"""What ``train.py`` and ``evaluate.py`` show, and the run's log file.

Quiet by default: one line per epoch (:class:`~segbench.engine.progress.ProgressLines`), the
result table and segbench's own messages. Lightning's tips, its GPU/TPU lines and model summary,
known deprecation warnings and, unless W&B runs online, W&B's own output are left out; the
progress bar is shown only with ``verbose=true`` on a terminal. ``verbose=true`` (or Hydra's
``hydra.verbose=true``) brings everything back.

Everything the run prints (stdout and stderr) also goes, line by line with a timestamp and
flushed at once, to ``<run dir>/train.log`` or ``evaluate.log``, the file Hydra's job logging
names (it stayed empty: segbench printed nothing through ``logging``). A refused run prints its
paragraph on stderr (:mod:`segbench.report`) and writes its traceback to that file.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, open_dict

from segbench.report import ReportedError, full_errors, is_user_error, message_of

__all__ = [
    "NOISE",
    "is_verbose",
    "live_display",
    "log_line",
    "run_console",
    "trainer_config",
]

# Lightning's (and W&B's) lines that tell a user nothing about the run (shown with verbose=true)
NOISE = tuple(
    re.compile(p)
    for p in (
        r"^(GPU|TPU|HPU|IPU) available",
        r"^💡 Tip",
        r"^`weights_only` was not set",
        r"^Loading `train_dataloader` to estimate number of stepping batches",
        r"^`Trainer\.(fit|test|validate)` stopped: `max_(epochs|steps)=\d+` reached",
        r"^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
        r"^You are using a CUDA device .* Tensor Cores",
        r"^Restor(ing|ed all) states from the checkpoint",
        r"^Using (16bit|bfloat16) Automatic Mixed Precision",
        r"^Initializing distributed: GLOBAL_RANK",
        r"^Images sizes do not match\. This will cause",  # W&B's, about how its UI shows them
    )
)
# known deprecation warnings of the libraries under segbench, not the user's to act on
_DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
_CURSOR = re.compile(r"\x1b\[[0-9;?]*[ABCDEFGHJKSTfhlsu]")  # a live display redrawing
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

_active: _Session | None = None


def is_verbose() -> bool:
    """Whether the run shows everything (``verbose=true``); True outside ``train.py`` and
    ``evaluate.py`` (a library call changes nothing of what Lightning or W&B print)."""
    return _active is None or _active.verbose


class _LogFile:
    """``<run dir>/<kind>.log``, appended to (a resumed run carries it on), one timestamped
    line at a time, flushed at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8", buffering=1)

    def line(self, text: str) -> None:
        if self._file.closed:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._file.write(f"[{stamp}] {text}\n")
        self._file.flush()

    def block(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            self.line(line)

    def close(self) -> None:
        self._file.close()


def live_display() -> bool:
    """Whether a live display (Rich's progress bar) holds stdout: what is written then is
    redrawn in place, and :func:`log_line` logs the lines printed meanwhile."""
    return type(sys.stdout).__name__ == "FileProxy"


def log_line(text: str) -> None:
    """Write ``text`` to the run's log file only (no-op outside :func:`run_console`)."""
    if _active is not None and _active.log is not None:
        _active.log.line(text)


class _Tee:
    """A text stream that also writes each of its complete lines to a :class:`_LogFile`: the
    part after the last carriage return, colours dropped, a live display's redraws skipped."""

    def __init__(self, stream, log: _LogFile) -> None:
        self._stream, self._log, self._partial = stream, log, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        if live_display() or _CURSOR.search(text):
            # a progress bar drawn in place (verbose=true on a terminal), in one write: the
            # log file leaves it out
            return len(text) if written is None else written
        self._partial += text
        if "\n" in self._partial:
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                line = _ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip()
                if line:
                    self._log.line(line)
        return len(text) if written is None else written

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def __getattr__(self, name: str):  # fileno, encoding, buffer, ...
        return getattr(self._stream, name)


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: shown, as logging would
            return True
        return not any(p.search(message) for p in NOISE)


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()]
    known = logging.Logger.manager.loggerDict.values()
    loggers += [lg for lg in known if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers]


def _hydra_verbose() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig

        return bool(HydraConfig.get().verbose)
    except ValueError:  # not under Hydra
        return False


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


class _Session:
    def __init__(self, cfg: DictConfig, kind: str) -> None:
        from segbench.engine.rundir import is_rank_zero

        self.verbose = bool(cfg.get("verbose")) or _hydra_verbose()
        self.log: _LogFile | None = None
        if is_rank_zero() and cfg.get("output_dir"):
            self.log = _LogFile(Path(str(cfg.output_dir)) / f"{kind}.log")
        self._undo: list = []

    def start(self) -> None:
        if self.log is not None:
            self._tee_streams()
        if not self.verbose:
            quiet = _QuietFilter()
            for handler in _all_handlers():
                handler.addFilter(quiet)
                self._undo.append(lambda h=handler: h.removeFilter(quiet))
            catcher = warnings.catch_warnings()
            catcher.__enter__()
            self._undo.append(lambda: catcher.__exit__(None, None, None))
            for message in _DEPRECATIONS:
                warnings.filterwarnings("ignore", message=message)

    def _tee_streams(self) -> None:
        out, err = sys.stdout, sys.stderr
        tee_out, tee_err = _Tee(out, self.log), _Tee(err, self.log)
        sys.stdout, sys.stderr = tee_out, tee_err
        self._undo.append(lambda: setattr(sys, "stdout", out))
        self._undo.append(lambda: setattr(sys, "stderr", err))
        root = logging.getLogger()
        for handler in _all_handlers():
            if isinstance(handler, logging.FileHandler):
                if Path(handler.baseFilename) == self.log.path.absolute():  # Hydra's, the same file
                    root.removeHandler(handler)
                    self._undo.append(lambda h=handler: root.addHandler(h))
            elif isinstance(handler, logging.StreamHandler) and handler.stream in (out, err):
                old = handler.setStream(tee_out if handler.stream is out else tee_err)
                self._undo.append(lambda h=handler, s=old: h.setStream(s))

    def stop(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self.log is not None:
            self.log.close()


@contextmanager
def run_console(cfg: DictConfig, kind: str):
    """The console of a ``train.py`` (``kind="train"``) or ``evaluate.py`` run: quiet unless
    ``cfg.verbose``, everything also in ``<run dir>/<kind>.log``. A user error raised within
    is reported as a paragraph on stderr (its traceback in the log file) and ends the process
    with status 1; in a multirun it fails the job (:class:`~segbench.report.ReportedError`).
    """
    global _active
    session = _Session(cfg, kind)
    previous, _active = _active, session
    session.start()
    try:
        yield session
    except Exception as err:
        if session.log is not None:
            session.log.block("".join(traceback.format_exception(err)))
        if full_errors() or not is_user_error(err):
            raise
        where = f"the traceback is in {session.log.path}; " if session.log is not None else ""
        message = f"{message_of(err, cfg)}\n({where}HYDRA_FULL_ERROR=1 prints it)"
        print(message, file=sys.stderr, flush=True)
        if _multirun():
            raise ReportedError(message) from None
        sys.exit(1)
    finally:
        session.stop()
        _active = previous


def trainer_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with what the trainer shows set for the console: no progress bar unless
    verbose on a terminal, no model summary unless verbose (or set in ``trainer``). Outside
    :func:`run_console`, ``cfg`` itself."""
    if _active is None:
        return cfg
    tty = sys.stdout.isatty()
    out = copy.deepcopy(cfg)
    with open_dict(out):
        bar = bool(cfg.trainer.get("enable_progress_bar", True))
        out.trainer.enable_progress_bar = bar and _active.verbose and tty
        if cfg.trainer.get("enable_model_summary") is None:
            out.trainer.enable_model_summary = _active.verbose
    return out
