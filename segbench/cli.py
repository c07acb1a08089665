"""``segbench <verb>``: one command for the tools around ``train.py`` and ``evaluate.py``.

Each verb is a module's ``main(argv) -> int``, imported only when the verb runs (so that
``segbench --help`` is instant). Verbs that compose ``conf/`` take the same ``group=option
key=value`` overrides as ``train.py``. The exit status is the verb's: 0 when it succeeded,
1 when it found problems (``check``) or failed, 2 for a usage error. A failure that is the
user's to fix (a missing file, a bad value, a misspelt key) prints one paragraph on stderr, no
traceback (``HYDRA_FULL_ERROR=1``: with it, see :mod:`segbench.report`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

__all__ = ["VERBS", "Verb", "main"]


class Verb(NamedTuple):
    name: str
    module: str  # its main(argv) -> int runs the verb
    summary: str


VERBS = {
    verb.name: verb
    for verb in (
        Verb("leaderboard", "segbench.leaderboard.cli", "tables from results.json files or W&B"),
        Verb("compare", "segbench.leaderboard.compare", "paired significance test of two runs"),
        Verb("repro-check", "segbench.leaderboard.repro", "runs vs their published figures"),
        Verb("check", "segbench.data.check", "scan a dataset for bad data (exit 1 if any)"),
        Verb("stats", "segbench.data.stats", "class pixel shares and class weights of a split"),
        Verb("preview", "segbench.data.preview", "save a grid of augmented training samples"),
        Verb("convert-sbd", "segbench.data.sbd", "SBD's .mat masks to PNGs once (voc_aug)"),
        Verb("bench", "segbench.bench.speed", "step/loop/peer/latency speed ratios, JSON"),
        Verb("throughput", "segbench.bench.throughput", "loader vs training-step images/s"),
        Verb("complexity", "segbench.bench.complexity", "parameters and GFLOPs vs the papers"),
        Verb("inference-bench", "segbench.bench.inference", "seconds/image of each eval mode"),
        Verb("weights", "segbench.weights_cli", "fetch or list the encoders' ImageNet weights"),
        Verb("zoo", "segbench.zoo.cli", "list or fetch published checkpoints (ckpt=source:name)"),
        Verb("predict", "segbench.deploy.predict", "predict images, folders or video"),
        Verb("export", "segbench.deploy.exporting", "export a checkpoint to ONNX or TorchScript"),
        Verb("serve", "segbench.deploy.server", "a web page and JSON API around a checkpoint"),
        Verb("serve-load", "segbench.deploy.loadtest", "requests/s and latency of a server"),
    )
}


def _parser() -> argparse.ArgumentParser:
    width = max(len(v) for v in VERBS)
    verbs = "\n".join(f"  {v.name:<{width}}  {v.summary}" for v in VERBS.values())
    return argparse.ArgumentParser(
        prog="segbench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="segbench <verb> [args ...]",
        description="Tools of segbench (train.py and evaluate.py train and evaluate).",
        epilog=f"verbs:\n{verbs}\n\n'segbench <verb> --help' shows a verb's arguments.",
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``segbench <verb> args...``; returns the verb's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv:  # a usage error: the help goes to stderr
        parser.print_help(sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    verb, args = argv[0], argv[1:]
    if verb not in VERBS:
        parser.print_usage(sys.stderr)
        print(
            f"segbench: error: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(VERBS[verb].module)
    try:
        status = module.main(args)
    except SystemExit as exit_:  # argparse's --help (0) and usage errors (2)
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)  # sys.exit("message")
        return 1
    except Exception as err:  # a user error: its paragraph; a bug: its traceback
        from segbench.report import full_errors, is_user_error, key_suggestion, message_of

        if full_errors():
            raise
        if type(err).__name__ == "ConfigCompositionException":
            print(key_suggestion(err, args, f"segbench {verb}"), file=sys.stderr)
        elif is_user_error(err):
            print(message_of(err), file=sys.stderr)
            print("(HYDRA_FULL_ERROR=1 prints the traceback)", file=sys.stderr)
        else:
            raise
        return 1
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())
