"""Leaderboards: grouping, seed merging, the four file formats, broken files and the CLI.

Most tests write synthetic ``results.json`` files made by ``segbench.results.build_results``
(the real schema) from IoU values chosen here; the expected numbers are recomputed in each test
with numpy. One test reads a real ``train.py`` run.
"""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from segbench.leaderboard import build_tables, check_record, collect, write_leaderboards
from segbench.leaderboard.cli import main
from segbench.leaderboard.render import (
    best_rows,
    cell_text,
    table_rows,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
)
from segbench.leaderboard.wandb_io import log_to_wandb
from segbench.metrics import EvaluationRecord
from segbench.results import RunFacts, build_results

STREETS = ["background", "road", "car_park", "sky & sea"]  # LaTeX and HTML escaping
PETS = ["background", "cat", "dog"]
NAN = float("nan")
# per-class IoU (fractions) of the runs; NaN: class absent from the run
FCN_SEEDS = {
    0: [0.90, 0.50, 0.20, 0.40],
    1: [0.92, 0.56, 0.26, NAN],
    2: [0.88, 0.47, 0.23, 0.52],
}
FCN_LR = [0.85, 0.30, 0.10, 0.20]
UNET = [0.91, 0.60, 0.18, 0.55]
DEEPLAB_MS = [0.70, 0.40, 0.22, 0.10]
PETS_RUNS = {("segnet", "vgg16"): [0.80, 0.40, 0.35], ("fcn32s", "vgg16"): [0.85, 0.50, 0.45]}


def make_record(
    run_dir: Path,
    *,
    model: str,
    backbone: str,
    dataset: str,
    classes: list[str],
    iou: list[float],
    seed: int = 0,
    lr: float = 0.2,
    split: str = "test",
    eval_mode: str = "single-scale",
    created: str = "2026-01-10T12:00:00+00:00",
    params: int = 1_234_567,
) -> dict:
    """A results record as ``train.py`` writes it, for the IoU values ``iou``."""
    iou_arr = np.array(iou, dtype=float)
    acc = np.where(np.isnan(iou_arr), np.nan, np.minimum(iou_arr + 0.05, 1.0))
    evaluation = EvaluationRecord(
        class_names=list(classes),
        summary={
            "mIoU": float(np.nanmean(iou_arr)),
            "pixel_acc": float(np.nanmax(iou_arr)) - 0.01,
            "mean_acc": float(np.nanmean(acc)),
            "fwIoU": float(np.nanmean(iou_arr)) + 0.01,
            "mDice": float(np.nanmean(2 * iou_arr / (1 + iou_arr))),
        },
        per_class={
            "iou": iou_arr.tolist(),
            "dice": (2 * iou_arr / (1 + iou_arr)).tolist(),
            "acc": acc.tolist(),
        },
        confusion_matrix=[[1] * len(classes)] * len(classes),
    )
    config = {
        "seed": seed,
        "run_name": f"{model}_{backbone}_{dataset}",
        "output_dir": str(run_dir),
        "resume": None,
        "data_root": "data",
        "callbacks": {"checkpoint": {"dirpath": f"{run_dir}/checkpoints", "monitor": "val/mIoU"}},
        "logger": {"csv": {"save_dir": str(run_dir)}},
        "model": {"name": model, "_target_": f"segbench.models.{model}", "dropout": 0.1},
        "backbone": {"name": backbone, "pretrained": False},
        "dataset": {"name": dataset, "class_names": classes, "eval_split": split},
        "optimizer": {"_target_": "torch.optim.SGD", "lr": lr, "momentum": 0.9},
        "trainer": {"max_epochs": 10, "enable_progress_bar": True},
    }
    run = RunFacts(
        kind="train",
        model=model,
        backbone=backbone,
        dataset=dataset,
        split=split,
        ignore_index=255,
        num_images=10,
        params=params,
        seed=seed,
        config=config,
        checkpoint=f"{run_dir}/checkpoints/best.ckpt",
        eval_mode=eval_mode,
        gflops=12.5,
        flops_input_size=[64, 64],
    )
    record = build_results(evaluation, run)
    record["created"] = created
    return record


def write(run_dir: Path, record: dict | str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record, indent=1))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A Hydra-multirun-like directory: streets (test) runs, one streets val run, pets (val)."""
    root = tmp_path / "multirun" / "2026-01-10" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    jobs = []
    for seed, iou in FCN_SEEDS.items():
        day = f"2026-01-{10 + seed:02d}T23:30:00+00:00"
        jobs.append(dict(model="fcn8s", backbone="resnet18", iou=iou, seed=seed, created=day))
    jobs.append(dict(model="fcn8s", backbone="resnet18", iou=FCN_LR, lr=0.05))
    jobs.append(dict(model="unet", backbone="unet", iou=UNET, params=7_000_000))
    jobs.append(
        dict(model="deeplabv3plus", backbone="resnet50", iou=DEEPLAB_MS, eval_mode="ms+flip")
    )
    for i, job in enumerate(jobs):
        run_dir = root / f"{i}_{job['model']}_{job['backbone']}_streets"
        write(run_dir, make_record(run_dir, dataset="streets", classes=STREETS, **job))
    run_dir = root / "9_fcn8s_val"
    write(run_dir, make_record(run_dir, model="fcn8s", backbone="resnet18", dataset="streets",
                               classes=STREETS, iou=UNET, split="val"))  # fmt: skip
    for i, ((model, backbone), iou) in enumerate(PETS_RUNS.items()):
        run_dir = root / f"{10 + i}_{model}_{backbone}_pets"
        write(run_dir, make_record(run_dir, model=model, backbone=backbone, dataset="pets",
                                   classes=PETS, iou=iou, split="val"))  # fmt: skip
    return root


def _board(boards, dataset, split):
    (board,) = [b for b in boards if (b.dataset, b.split) == (dataset, split)]
    return board


def _row(board, method):
    (row,) = [r for r in board.rows if r.method == method]
    return row


def _col(board, key):
    (col,) = [c for c in board.columns if c.key == key]
    return col


def test_tables_never_mix_datasets_or_splits_and_rows_are_sorted_by_miou(sweep):
    records, problems = collect([sweep])
    assert problems == [] and len(records) == 9
    boards = build_tables(records)
    assert [(b.dataset, b.split, b.name) for b in boards] == [
        ("pets", "val", "leaderboard_pets_val"),
        ("streets", "test", "leaderboard_streets_test"),
        ("streets", "val", "leaderboard_streets_val"),
    ]
    for board in boards:
        for row in board.rows:
            for record in row.records:
                assert (record["dataset"], record["split"]) == (board.dataset, board.split)
    streets = _board(boards, "streets", "test")
    # mIoU per row computed here: 3 seeds merged, then unet, lr=0.05, deeplab
    fcn = np.mean([np.nanmean(v) for v in FCN_SEEDS.values()])
    expected = {
        "fcn8s / resnet18 (optimizer.lr=0.2)": fcn,
        "fcn8s / resnet18 (optimizer.lr=0.05)": np.mean(FCN_LR),
        "unet / unet": np.mean(UNET),
        "deeplabv3plus / resnet50": np.mean(DEEPLAB_MS),
    }
    assert [r.method for r in streets.rows] == sorted(expected, key=lambda m: -expected[m])
    for row in streets.rows:
        assert row.stats["mIoU"].mean == pytest.approx(expected[row.method])
    assert [r.n for r in streets.rows] == [3 if "lr=0.2" in r.method else 1 for r in streets.rows]
    assert [c.header for c in streets.columns] == [
        "method", "n", "mIoU", *STREETS, "pixel acc", "mean acc", "params (M)", "GFLOPs",
        "eval mode", "date",
    ]  # fmt: skip
    assert _row(streets, "deeplabv3plus / resnet50").eval_mode == "ms+flip"


def test_seeds_merge_into_mean_and_sample_std(sweep):
    (board,) = [b for b in build_tables(collect([sweep])[0]) if b.name.endswith("streets_test")]
    row = _row(board, "fcn8s / resnet18 (optimizer.lr=0.2)")
    assert row.n == 3 and sorted(r["seed"] for r in row.records) == [0, 1, 2]
    per_seed = np.array(list(FCN_SEEDS.values()))
    mious = np.nanmean(per_seed, axis=1)
    assert row.stats["mIoU"].mean == pytest.approx(mious.mean())
    assert row.stats["mIoU"].std == pytest.approx(mious.std(ddof=1))
    # "sky & sea" is absent from seed 1: its mean and std are over seeds 0 and 2
    present = per_seed[~np.isnan(per_seed[:, 3]), 3]
    sky = row.stats["iou/sky & sea"]
    assert (sky.count, sky.mean, sky.std) == (2, pytest.approx(present.mean()),
                                              pytest.approx(present.std(ddof=1)))  # fmt: skip
    shown = cell_text(board, row, _col(board, "iou/sky & sea"))
    assert shown == f"{100 * present.mean():.2f} ± {100 * present.std(ddof=1):.2f} (2/3)"
    road = cell_text(board, row, _col(board, "iou/road"))
    assert road == f"{100 * per_seed[:, 1].mean():.2f} ± {100 * per_seed[:, 1].std(ddof=1):.2f}"
    assert row.date == "2026-01-12"  # the latest of the three runs
    single = _row(board, "unet / unet")
    assert cell_text(board, single, _col(board, "mIoU")) == f"{100 * np.mean(UNET):.2f}"
    assert cell_text(board, single, _col(board, "params")) == "7.00"


def test_best_of_each_score_column_is_bold_in_markdown(sweep):
    (board,) = [b for b in build_tables(collect([sweep])[0]) if b.name.endswith("streets_test")]
    runs = {  # per-class IoU of each row, computed here: means over present seeds
        "fcn8s / resnet18 (optimizer.lr=0.2)": np.nanmean(list(FCN_SEEDS.values()), axis=0),
        "fcn8s / resnet18 (optimizer.lr=0.05)": np.array(FCN_LR),
        "unet / unet": np.array(UNET),
        "deeplabv3plus / resnet50": np.array(DEEPLAB_MS),
    }
    lines = to_markdown(board).splitlines()
    body = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    cells = {re.split(r" \| ", line.strip("| "))[0]: re.split(r" \| ", line.strip("| "))
             for line in body}  # fmt: skip
    for j, name in enumerate(STREETS):
        winner = max(runs, key=lambda m: runs[m][j])
        for method, row_cells in cells.items():
            bold = row_cells[3 + j].startswith("**")
            assert bold == (method == winner), (name, method, row_cells[3 + j])
    assert cells["unet / unet"][2].startswith("**")  # highest mIoU
    assert not any(c.startswith("**") for row in cells.values() for c in row[-4:])  # no params..
    assert "ms+flip" in cells["deeplabv3plus / resnet50"]


def test_class_subset_fraction_and_unknown_class(sweep):
    records = collect([sweep])[0]
    streets = [r for r in records if r["dataset"] == "streets"]
    boards = build_tables(streets, classes=["sky & sea", "road"], percent=False)
    board = _board(boards, "streets", "test")
    assert [c.header for c in board.columns if c.is_class] == ["road", "sky & sea"]  # label order
    row = _row(board, "unet / unet")
    assert cell_text(board, row, _col(board, "mIoU")) == f"{np.mean(UNET):.4f}"  # over 4 classes
    assert cell_text(board, row, _col(board, "iou/road")) == f"{UNET[1]:.4f}"
    assert any("2 of the 4 classes" in line for line in to_markdown(board).splitlines())
    with pytest.raises(ValueError, match=r"'sidewalk'.*streets.*background, road, car_park"):
        build_tables(streets, classes=["sidewalk"])
    with pytest.raises(ValueError, match="unknown metric 'speed'"):
        build_tables(records, metrics=["mIoU", "speed"])
    narrow = build_tables(records, metrics=["mIoU", "date"])[0]
    assert [c.key for c in narrow.columns] == ["method", "n", "mIoU", "date"]


def test_no_merge_gives_one_row_per_run_with_its_seed(sweep):
    (board,) = [
        b for b in build_tables(collect([sweep])[0], merge_seeds=False) if b.name.endswith("test")
    ]
    assert len(board.rows) == 6
    assert [c.key for c in board.columns][:2] == ["method", "seed"]
    fcn = [r for r in board.rows if "lr=0.2" in r.method]
    assert sorted(r.seed for r in fcn) == [0, 1, 2] and all(r.n == 1 for r in fcn)
    assert len({r.method for r in board.rows}) == 6  # every label unambiguous
    assert all(f"seed={r.seed}" in r.method for r in fcn)


def test_csv_holds_means_and_stds_at_full_precision(sweep, tmp_path):
    boards = build_tables(collect([sweep])[0])
    board = _board(boards, "streets", "test")
    rows = list(csv.DictReader(io.StringIO(to_csv(board))))
    by_method = {r["method"]: r for r in rows}
    per_seed = np.array(list(FCN_SEEDS.values()))
    fcn = by_method["fcn8s / resnet18 (optimizer.lr=0.2)"]
    assert fcn["n"] == "3" and fcn["model"] == "fcn8s" and fcn["variant"] == "optimizer.lr=0.2"
    mious = 100 * np.nanmean(per_seed, axis=1)
    assert float(fcn["mIoU_mean"]) == pytest.approx(mious.mean(), abs=1e-9)
    assert float(fcn["mIoU_std"]) == pytest.approx(mious.std(ddof=1), abs=1e-9)
    for j, name in enumerate(STREETS):
        values = 100 * per_seed[:, j][~np.isnan(per_seed[:, j])]
        assert float(fcn[f"iou_{name}_mean"]) == pytest.approx(values.mean(), abs=1e-9)
        assert float(fcn[f"iou_{name}_std"]) == pytest.approx(values.std(ddof=1), abs=1e-9)
    assert len(fcn["runs"].split(";")) == 3
    unet = by_method["unet / unet"]
    assert unet["n"] == "1" and unet["mIoU_std"] == "" and unet["params"] == "7000000"
    assert float(unet["iou_sky & sea_mean"]) == pytest.approx(100 * UNET[3])
    assert unet["eval_mode"] == "single-scale" and unet["date"] == "2026-01-10"
    # fraction mode: the same numbers / 100
    fraction = build_tables(collect([sweep])[0], percent=False)
    frac_rows = list(csv.DictReader(io.StringIO(to_csv(_board(fraction, "streets", "test")))))
    frac = {r["method"]: r for r in frac_rows}["unet / unet"]
    assert float(frac["mIoU_mean"]) == pytest.approx(np.mean(UNET))


class _TableParser(HTMLParser):
    """Collects title, table header cells, body rows (cell text, bold) and external refs."""

    def __init__(self):
        super().__init__()
        self.title, self.heads, self.rows, self.refs, self.tags = "", [], [], [], []
        self._in = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.refs += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "tr" and "tbody" in self._in:
            self.rows.append([])
        if tag in ("th", "td"):
            (self.heads if tag == "th" else self.rows[-1]).append(["", False, attrs])
        if tag == "b":
            self.rows[-1][-1][1] = True
        self._in.append(tag)

    def handle_endtag(self, tag):
        while self._in and self._in.pop() != tag:
            pass

    def handle_data(self, data):
        if "title" in self._in:
            self.title += data
        elif "th" in self._in:
            self.heads[-1][0] += data
        elif "td" in self._in:
            self.rows[-1][-1][0] += data


def test_html_page_parses_back_to_the_table(sweep):
    board = _board(build_tables(collect([sweep])[0]), "streets", "test")
    page = to_html(board)
    parser = _TableParser()
    parser.feed(page)
    assert "streets" in parser.title and "test split" in parser.title
    assert [h[0] for h in parser.heads] == [c.header for c in board.columns]
    assert [h[2]["class"] for h in parser.heads if h[0] in STREETS] == ["class"] * 4
    assert "sky &amp; sea" in page  # escaped in the source, read back as "sky & sea"
    assert parser.refs == [] and "script" not in parser.tags and "link" not in parser.tags
    assert len(parser.rows) == len(board.rows)
    for row, cells in zip(board.rows, parser.rows):
        assert cells[0][0] == row.method
        assert cells[0][2]["title"].split("\n") == row.sources
    for j, column in enumerate(board.columns):
        best = best_rows(board, column)
        assert {i for i, cells in enumerate(parser.rows) if cells[j][1]} == best
        for row, cells in zip(board.rows, parser.rows):
            assert cells[j][0] == cell_text(board, row, column)


def _unescaped(char: str, text: str) -> int:
    return len(re.findall(rf"(?<!\\){re.escape(char)}", text))


def test_latex_is_well_formed_booktabs(sweep):
    board = _board(build_tables(collect([sweep])[0]), "streets", "test")
    tex = to_latex(board)
    assert _unescaped("{", tex) == _unescaped("}", tex)
    depth = 0
    for char in re.sub(r"\\[{}]", "", tex):  # braces never close before they open
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    for env in ("table", "tabular"):
        assert tex.count(f"\\begin{{{env}}}") == tex.count(f"\\end{{{env}}}") == 1
    lines = tex.splitlines()
    top, mid, bottom = (lines.index(f"\\{rule}rule") for rule in ("top", "mid", "bottom"))
    assert top < mid < bottom
    rows = [lines[top + 1], *lines[mid + 1 : bottom]]
    assert len(rows) == len(board.rows) + 1
    for line in rows:
        assert _unescaped("&", line) == len(board.columns) - 1 and line.endswith("\\\\")
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
    assert len(spec) == len(board.columns)
    assert r"\rotatebox{90}{car\_park}" in tex and r"\rotatebox{90}{sky \& sea}" in tex
    assert r"\textbf{" in tex and r"$\pm$" in tex and "±" not in tex
    assert _unescaped("_", tex.split("\\begin{tabular}")[1]) == 0
    assert _unescaped("%", "\n".join(rows)) == 0
    assert "graphicx" in lines[1] and "booktabs" in lines[1]


def test_broken_files_are_reported_by_path_and_skipped(sweep, tmp_path, capsys):
    good = json.loads(next(sweep.glob("0_*/results.json")).read_text())
    truncated = write(sweep / "20_truncated", json.dumps(good)[:200])
    partial = {k: v for k, v in good.items() if k not in ("metrics", "classes")}
    missing = write(sweep / "21_partial", partial)
    wrong = write(sweep / "22_wrong", {**good, "metrics": {**good["metrics"], "mIoU": "high"}})
    per_class = dict(good["metrics"]["per_class_iou"])
    per_class["lake"] = per_class.pop("road")
    mismatch = write(
        sweep / "23_keys", {**good, "metrics": {**good["metrics"], "per_class_iou": per_class}}
    )
    percent = write(sweep / "24_percent", {**good, "metrics": {**good["metrics"], "mIoU": 53.6}})
    records, problems = collect([sweep])
    assert len(records) == 9  # the valid ones, unchanged
    reported = {p.split(": skipped: ")[0]: p for p in problems}
    assert set(reported) == {str(p) for p in (truncated, missing, wrong, mismatch, percent)}
    assert "not valid JSON" in reported[str(truncated)]
    assert "missing keys: classes, metrics" in reported[str(missing)]
    assert "metrics.mIoU must be a number in [0, 1], got 'high'" in reported[str(wrong)]
    assert "missing ['road']" in reported[str(mismatch)]
    assert "not in classes ['lake']" in reported[str(mismatch)]
    assert "got 53.6" in reported[str(percent)]
    # the tables are written all the same, and the problems go to stderr
    written = write_leaderboards([sweep], tmp_path / "out", formats=["csv"])
    assert len(written) == 3
    err = capsys.readouterr().err
    assert all(str(p) in err for p in (truncated, missing, wrong, mismatch, percent))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out/leaderboard_streets_test.csv")
                                           .read_text())))  # fmt: skip
    assert sum(int(r["n"]) for r in rows) == 6
    # records handed to build_tables directly are checked too
    with pytest.warns(UserWarning, match="record 1: skipped: missing keys: classes, metrics"):
        assert len(build_tables([good, partial])[0].rows) == 1
    assert check_record([1, 2]) == ["expected a JSON object, got list"]


def test_cli_on_a_multirun_dir_and_a_glob(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(sweep)]) == 0  # default output: outputs/leaderboards/
    out = capsys.readouterr().out
    assert "### streets, test split (4 classes)" in out and "| method | n | mIoU |" in out
    names = {p.name for p in (tmp_path / "outputs" / "leaderboards").glob("leaderboard_*")}
    assert names == {f"leaderboard_{d}.{ext}" for d in ("pets_val", "streets_test", "streets_val")
                     for ext in ("md", "csv", "tex", "html")}  # fmt: skip
    pattern = str(sweep / "*_pets")
    code = main([pattern, "--out", str(tmp_path / "lb"), "--format", "csv,md", "--fraction"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "lb").iterdir()) == [
        "leaderboard_pets_val.csv",
        "leaderboard_pets_val.md",
    ]
    rows = list(csv.DictReader((tmp_path / "lb/leaderboard_pets_val.csv").open()))
    assert [r["method"] for r in rows] == ["fcn32s / vgg16", "segnet / vgg16"]
    assert float(rows[0]["iou_dog_mean"]) == pytest.approx(0.45)
    one = str(sweep / "0_fcn8s_resnet18_streets" / "results.json")
    assert main([one, "--out", "one"]) == 0
    assert (tmp_path / "one/leaderboard_streets_test.html").exists()
    capsys.readouterr()
    assert main([str(sweep), "--classes", "road,sidewalk", "--dataset", "streets"]) == 2
    assert "'sidewalk'" in capsys.readouterr().err
    assert main([str(sweep), "--format", "pdf"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert f"{empty}: no results.json found" in capsys.readouterr().err


def test_repeated_runs_of_one_seed_are_flagged(sweep, tmp_path):
    first = json.loads(next(sweep.glob("0_*/results.json")).read_text())
    copy = tmp_path / "copy"
    write(copy, {**first, "config": {**first["config"], "output_dir": str(copy)}})
    boards = build_tables(collect([sweep, copy])[0])
    board = _board(boards, "streets", "test")
    assert _row(board, "fcn8s / resnet18 (optimizer.lr=0.2)").n == 4
    assert any("same configuration and seed 0" in w for w in board.warnings)


def test_wandb_tables_are_logged_offline_without_a_key(sweep, tmp_path, monkeypatch):
    """The real ``wandb.Table`` (it refuses mixed column types); ``wandb.init`` is replaced
    by a recorder, as starting W&B's service takes seconds."""
    import wandb

    calls = {}

    class Run:
        dir = str(tmp_path / "wb" / "files")

        def log(self, payload):
            calls.setdefault("logged", {}).update(payload)

        def finish(self):
            calls["finished"] = True

    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.update(init=kwargs) or Run())
    boards = build_tables(collect([sweep])[0])
    assert log_to_wandb(boards, project="me/lb", out_dir=tmp_path / "wb") == Run.dir
    assert calls["init"]["mode"] == "offline"  # conftest: no W&B key
    assert (calls["init"]["entity"], calls["init"]["project"]) == ("me", "lb")
    assert calls["finished"] and set(calls["logged"]) == {f"leaderboard/{b.name}" for b in boards}
    table = calls["logged"]["leaderboard/leaderboard_streets_test"]
    columns, data = table_rows(_board(boards, "streets", "test"))
    assert list(table.columns) == columns and table.data == data
    assert columns[4:8] == ["n", "mIoU_mean", "mIoU_std", "iou_background_mean"]


class _FakeRun:
    def __init__(self, run_id, state, config, summary):
        self.id, self.state, self.config, self.summary_metrics = run_id, state, config, summary
        self.created_at = "2026-02-01T10:00:00Z"


def test_records_from_wandb_runs(tmp_path):
    """Without a W&B server: the conversion of a run's config and summary, on fake runs."""
    from segbench.leaderboard.wandb_io import records_from_wandb

    record = make_record(tmp_path, model="deeplabv1", backbone="vgg16", dataset="pets",
                         classes=PETS, iou=[0.9, 0.5, NAN], split="val")  # fmt: skip
    config = {**record["config"], "model": {"name": "deeplabv1", "crf": {"iterations": 10}}}
    config["inference"] = {"_target_": "x", "mode": "whole", "scales": [0.5, 1.0], "flip": True}
    summary = {"val/mIoU": 0.7, "val/pixel_acc": 0.8, "val/iou/background": 0.9,
               "val/iou/cat": 0.5, "params": 100}  # fmt: skip
    runs = [
        _FakeRun("a1", "finished", config, summary),
        _FakeRun("b2", "crashed", config, summary),
        _FakeRun("c3", "finished", config, {"val/loss": 1.0}),
    ]

    class Api:
        def runs(self, path):
            assert path == "me/proj"
            return runs

    records, problems = records_from_wandb("me/proj", api=Api())
    (rec,) = records
    assert rec["eval_mode"] == "ms+flip+CRF" and rec["split"] == "val"
    assert rec["metrics"]["per_class_iou"] == {"background": 0.9, "cat": 0.5, "dog": None}
    assert rec["created"] == "2026-02-01T10:00:00Z" and rec["params"] == 100
    assert [p.split(":")[1] for p in problems] == ["me/proj/b2", "me/proj/c3"]
    board = build_tables(records)[0]
    assert _row(board, "deeplabv1 / vgg16").date == "2026-02-01"
    assert "val/mIoU" in problems[1] and "crashed" in problems[0]
    assert main(["--wandb-project", "me/proj"]) == 2  # no W&B key in tests: refused, not tried


def test_a_real_training_run_makes_a_table(trained_run, tmp_path):
    records, problems = collect([trained_run])
    assert problems == [] and len(records) == 1
    saved = json.loads((trained_run / "results.json").read_text())
    written = write_leaderboards([trained_run], tmp_path)
    assert {p.suffix for p in written} == {".md", ".csv", ".tex", ".html"}
    (csv_path,) = [p for p in written if p.suffix == ".csv"]
    (row,) = csv.DictReader(csv_path.open())
    assert row["method"] == f"{saved['model']} / {saved['backbone']}"
    assert float(row["mIoU_mean"]) == pytest.approx(100 * saved["metrics"]["mIoU"])
    assert int(row["params"]) == saved["params"] and row["date"] == saved["created"][:10]
    for name, value in saved["metrics"]["per_class_iou"].items():
        got = row[f"iou_{name}_mean"]
        assert (got == "") if value is None else float(got) == pytest.approx(100 * value)


HOSTILE = {
    '=HYPERLINK("http://x","y")': "a spreadsheet formula",
    "evil\n| injected | row |": "a line break that would end the Markdown row",
    "<script>alert(1)</script>": "HTML",
    "a*b*_c_[x](y)`z`": "Markdown emphasis, a link and code",
    "-2+3": "a formula starting with -",
}


@pytest.mark.parametrize("name", list(HOSTILE), ids=list(HOSTILE.values()))
def test_a_hostile_model_name_is_escaped_in_every_format(name, tmp_path):
    runs = tmp_path / "runs"
    for i, (model, iou) in enumerate([(name, [0.9, 0.5, 0.2]), ("fcn8s", [0.8, 0.4, 0.3])]):
        rec = make_record(
            runs / f"r{i}", model=model, backbone="r18", dataset="pets", classes=PETS, iou=iou
        )
        write(runs / f"r{i}", rec)
    out = tmp_path / "lb"
    assert main([str(runs), "--out", str(out), "--format", "md,csv,tex,html"]) == 0
    csv_rows = list(csv.reader(io.StringIO(next(out.glob("*.csv")).read_text())))
    assert len(csv_rows) == 3  # header + two runs: nothing split a row
    for row in csv_rows:
        for field in row:  # no text field a spreadsheet would evaluate
            assert not field.startswith(("=", "+", "-", "@", "\t", "\r")) or _number(field)
    if name.startswith(("=", "-")):  # kept, behind the quote that makes it text
        assert [name] == [f[1:] for row in csv_rows for f in row if f == f"'{name}"]
    md = next(out.glob("*.md")).read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 4  # header, separator, two rows
    assert all(line.endswith(" |") for line in table[:1] + table[2:])
    assert all("<script>" not in line for line in md)
    hostile_row = next(line for line in table[2:] if "fcn8s /" not in line)
    if "*" in name:
        assert "a\\*b\\*" in hostile_row and "\\[x\\]" in hostile_row and "\\`z\\`" in hostile_row
    tex = next(out.glob("*.tex")).read_text()
    assert "<script>" not in next(out.glob("*.html")).read_text()
    assert "\n\n" not in tex.split("\\begin{tabular}")[1]  # no blank line inside the table
    if "_" in name:
        assert "\\_c\\_" in tex


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
