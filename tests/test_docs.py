"""The manual holds no command that fails and no link that leads nowhere.

Every fenced ``bash`` block of README.md and docs/ is run, page by page and block by block in
the page's order, in one scratch directory per page (a page's later commands use what its
earlier ones made), as a user would type it: ``uv run python train.py`` and ``uv run segbench``
run this environment's interpreter on the repository's scripts. A block preceded by

    <!-- docs-test: skip "why" -->     is not run (it needs a GPU, a dataset on disk, a cluster...)
    <!-- docs-test: slow -->           makes its page's test `slow` (it trains for minutes)

Links: every relative link of every page points at a file that exists, and every ``#anchor``
at a heading of that file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r'^<!-- docs-test: (skip "(?P<why>[^"]+)"|slow) -->$')
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclass
class Block:
    line: int
    text: str
    skip: str | None = None
    slow: bool = False


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


def parse(path: Path) -> Page:
    page = Page(path)
    lines = path.read_text().splitlines()
    i, mark = 0, None
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if fence.group(1) in ("bash", "sh", "shell"):
                block = Block(start + 1, "\n".join(body))
                if mark is not None:
                    block.skip = mark.group("why")
                    block.slow = mark.group(0).endswith("slow -->")
                page.blocks.append(block)
            mark = None
        elif line.strip():
            mark = MARK.match(line.strip())
        i += 1
    return page


def as_run_here(text: str) -> str:
    """A block with ``uv run`` made this interpreter on this checkout's scripts."""
    py = sys.executable
    text = re.sub(
        r"\buv run (--frozen )?python (train|evaluate)\.py", rf'"{py}" "{ROOT}/\2.py"', text
    )
    text = re.sub(r"\buv run (--frozen )?segbench\b", f'"{py}" -m segbench', text)
    return text


def test_every_page_is_parsed_and_marked_consistently():
    """The markers are well formed and stand before a block; a page without runnable blocks is
    fine, a marker that governs nothing is not."""
    for path in PAGES:
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if line.strip().startswith("<!-- docs-test"):
                assert MARK.match(line.strip()), f"{path.name}:{n + 1}: malformed marker {line!r}"
                after = next((x for x in lines[n + 1 :] if x.strip()), "")
                assert after.startswith("```bash"), (
                    f"{path.name}:{n + 1}: marker not before a block"
                )


def _pages():
    out = []
    for path in PAGES:
        page = parse(path)
        runnable = [b for b in page.blocks if b.skip is None]
        if not runnable:
            continue
        slow = any(b.slow for b in page.blocks)
        marks = [pytest.mark.slow] if slow else []
        out.append(pytest.param(page, id=page.name, marks=marks))
    return out


@pytest.mark.parametrize("page", _pages())
def test_the_commands_of_a_page_run(page: Page, tmp_path):
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "SEGBENCH_CACHE": str(tmp_path / "cache"),
    }
    for block in page.blocks:
        if block.skip is not None:
            continue
        script = tmp_path / f"block_{block.line}.sh"
        script.write_text("set -euo pipefail\n" + as_run_here(block.text) + "\n")
        proc = subprocess.run(
            ["bash", str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (
            f"{page.name}:{block.line}: the block failed ({proc.returncode}):\n{block.text}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )


def _slug(heading: str) -> str:
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.*)$", text, re.M)}


def test_every_link_leads_somewhere():
    broken = []
    for path in PAGES:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in (ROOT / "docs").rglob("*.md"):
        assert f"({page.relative_to(ROOT)})" in readme or any(
            f"{page.name})" in other.read_text() for other in PAGES if other != page
        ), f"{page.relative_to(ROOT)}: no page links to it"


def test_the_architecture_page_names_every_module_in_its_folder():
    """docs/explanation/architecture.md has a section per folder of segbench/ (`## segbench/x/`)
    that names each of its modules (`name.py`); ``__init__.py`` excepted."""
    text = (ROOT / "docs" / "explanation" / "architecture.md").read_text()
    sections = dict(
        (m.group(1), m.group(2))
        for m in re.finditer(r"^## (segbench/\S*)\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    )
    missing = []
    for module in sorted((ROOT / "segbench").rglob("*.py")):
        if module.name == "__init__.py":
            continue
        folder = f"{module.parent.relative_to(ROOT)}/"
        if f"`{module.name}`" not in sections.get(folder, ""):
            missing.append(f"{module.relative_to(ROOT)} (section ## {folder})")
    assert not missing, "modules the architecture page does not name:\n" + "\n".join(missing)


def test_every_verb_is_in_the_front_page_and_the_cli_reference():
    from segbench.cli import VERBS

    readme = (ROOT / "README.md").read_text()
    cli = (ROOT / "docs" / "reference" / "cli.md").read_text()
    for name in VERBS:
        assert f"| `{name}` |" in readme, f"README.md: verb {name} missing from the table"
        assert f"| `{name}` |" in cli, f"docs/reference/cli.md: verb {name} missing"
