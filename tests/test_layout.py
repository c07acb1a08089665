"""The package's shape: every module imports on its own, no import cycle inside ``segbench``,
``segbench/models`` free of Lightning and Hydra, and one ``segbench`` command with its verbs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from segbench.cli import VERBS, main
from tests.conftest import ROOT

PACKAGE = ROOT / "segbench"


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ``segbench`` modules that ``name`` imports anywhere in its file (also in functions).
    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            # a module's own package (its __init__) runs first anyway: not an edge
            if candidate and candidate != name and not name.startswith(candidate + "."):
                found.add(candidate)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    known = module_names()
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    assert len(graph) > 40 and graph["segbench.engine.run"]  # the graph was really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_models_are_pure_torch():
    """``segbench/models`` never imports Lightning, Hydra, OmegaConf or another segbench layer."""
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for imported in names:
                top = imported.split(".")[0]
                assert top not in ("pytorch_lightning", "lightning", "hydra", "omegaconf"), path
                if top == "segbench":
                    assert imported.startswith("segbench.models"), f"{path}: {imported}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = [n for n in module_names() if n != "segbench.__main__"]
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    for loaded in [m for m in sys.modules if m.startswith('segbench')]:\n"
        "        del sys.modules[loaded]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_segbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segbench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_segbench_lists_its_verbs_and_refuses_an_unknown_one(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(verb in listing for verb in VERBS)
    assert main([]) == 2  # no verb: usage, and a status a script sees as failure
    assert main(["nope"]) == 2
    assert "unknown verb 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help_that_names_it(verb, capsys):
    assert main([verb, "--help"]) == 0
    assert f"usage: segbench {verb}" in capsys.readouterr().out


def test_a_verb_usage_error_exits_2_as_a_user_runs_it():
    proc = run_segbench("leaderboard")  # neither paths nor a W&B project
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "usage: segbench leaderboard" in proc.stderr and "give either PATHS" in proc.stderr


def test_a_verb_that_finds_nothing_exits_1(tmp_path):
    proc = run_segbench("leaderboard", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stdout + proc.stderr


# the layers that run things: a module outside them never imports them, so that data, models,
# metrics, inference and checkpoints stay usable without the runner (and without a cycle of
# layers); deploy/ predicts through segbench.checkpoints, not the training runner
RUNNERS = ("segbench.engine", "segbench.leaderboard", "segbench.bench", "segbench.deploy")
ENTRY_POINTS = ("segbench.cli", "segbench.__main__")


def _layer(name: str) -> str | None:
    return next((r for r in RUNNERS if name == r or name.startswith(r + ".")), None)


def test_imports_run_one_way_from_the_runners_to_the_rest():
    known = module_names()
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if _layer(name) is None and name not in ENTRY_POINTS
        for target in targets
        if _layer(target) is not None or target in ENTRY_POINTS
    )
    assert not wrong, "a module outside the runners imports one:\n" + "\n".join(wrong)
    deploy_to_engine = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if _layer(name) == "segbench.deploy"
        for target in targets
        if _layer(target) == "segbench.engine"
    )
    assert not deploy_to_engine, "\n".join(deploy_to_engine)
    # the rule was really checked: the runners do import the rest
    assert "segbench.metrics" in graph["segbench.engine.task"]


def test_the_direction_rule_catches_a_planted_import():
    graph = {"segbench.metrics.x": {"segbench.engine.task"}, "segbench.engine.task": set()}
    wrong = [n for n, ts in graph.items() if _layer(n) is None and any(map(_layer, ts))]
    assert wrong == ["segbench.metrics.x"]
