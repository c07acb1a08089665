"""Published figures (``reference:`` blocks), the leaderboard's ``published`` column and
``segbench repro-check``."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from segbench.leaderboard import build_tables
from segbench.leaderboard.records import collect
from segbench.leaderboard.repro import main as repro_main
from segbench.reference import ReferenceBlockError, check_reference, compare, published
from tests.conftest import CONF, ROOT, options, run_cli

EXPERIMENTS = options("experiment")
# the experiments whose paper fine-tuned an ImageNet-pretrained encoder
FROM_IMAGENET = {
    e
    for e in EXPERIMENTS
    if not any(tag in e for tag in ("shapes", "scratch", "cpu-30min", "unet_unet-bn"))
}


def block(**changes) -> dict:
    ref = {
        "experiment": "x",
        "source": "A paper, 2020",
        "checked": "made up for the test",
        "tolerance": 1.0,
        "results": [
            {
                "split": "val",
                "metrics": {"mIoU": 60.0, "pixel_acc": 90.0},
                "table": "T1",
                "protocol": "p",
            },
            {"split": "test", "metrics": {"mIoU": 58.0}, "table": "T2", "protocol": "q"},
        ],
    }
    ref.update(changes)
    return ref


def record(split="val", miou=0.605, pixel_acc=0.95, **ref_changes) -> dict:
    return {
        "split": split,
        "metrics": {"mIoU": miou, "pixel_acc": pixel_acc},
        "config": {"reference": block(**ref_changes)},
    }


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_states_a_valid_reference(experiment):
    ref = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"))
    checked = check_reference(ref.get("reference"), f"{experiment}.yaml: reference")
    if checked is None:  # only segbench's own settings have no published figure
        assert "shapes" in experiment or "cpu-30min" in experiment, experiment
        return
    assert checked["experiment"] == experiment  # the name repro-check prints
    assert checked["needs"].strip()  # data, weights, GPUs


def test_paper_experiments_start_from_imagenet_and_say_how_to_fetch(tmp_path):
    """The papers fine-tuned an ImageNet encoder, so their experiments ask for those weights;
    offline without them the model is not built, and the error names the fetch command and
    the cache searched (one interpreter for all of them: offline, empty caches)."""
    code = (
        "import sys\n"
        "from segbench.config import compose\n"
        "from segbench.engine.build import build_model\n"
        "for name in sys.argv[1:]:\n"
        "    cfg = compose('train', [f'experiment={name}'])\n"
        "    assert cfg.backbone.pretrained is True, (name, cfg.backbone)\n"
        "    try:\n"
        "        build_model(cfg.model)\n"
        "    except Exception as err:  # PretrainedUnavailable, as Hydra's instantiate wraps it\n"
        "        assert 'pretrained=true' in str(err), err\n"
        "        print(name, '::', str(err).replace(chr(10), ' '))\n"
        "    else:\n"
        "        raise SystemExit(f'{name}: built without the weights')\n"
    )
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    names = sorted(FROM_IMAGENET)
    proc = subprocess.run(
        [sys.executable, "-c", code, *names],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" :: ", 1) for line in proc.stdout.splitlines() if " :: " in line)
    assert sorted(lines) == names
    for name, message in lines.items():
        assert "segbench weights fetch" in message and str(tmp_path) in message, (name, message)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"tolerance": -1}, "reference.tolerance"),
        ({"tolerance": "one"}, "reference.tolerance"),
        ({"source": ""}, "reference.source"),
        ({"checked": None}, "reference.checked"),
        ({"results": []}, "reference.results"),
        ({"papr": "x"}, "reference.papr"),
        ({"comparable": "yes"}, "reference.comparable"),
        (
            {"results": [{"split": "val", "metrics": {"mIU": 1.0}, "table": "t", "protocol": "p"}]},
            "reference.results[0].metrics.mIU",
        ),
        (
            {"results": [{"split": "val", "metrics": {"mIoU": 0.627}, "table": "t"}]},
            "reference.results[0].protocol",
        ),
        (
            {
                "results": [
                    {"split": "val", "metrics": {"mIoU": 162.7}, "table": "t", "protocol": "p"}
                ]
            },
            "reference.results[0].metrics.mIoU",
        ),
    ],
)
def test_a_malformed_reference_names_the_key(changes, key):
    with pytest.raises(ReferenceBlockError, match=f"^{re.escape(key)}"):
        check_reference(block(**changes))


def test_compare_verdicts_against_hand_computed_differences():
    rows = compare(record(miou=0.605, pixel_acc=0.95))
    by = {(r["split"], r["metric"]): r for r in rows}
    assert by[("val", "mIoU")]["verdict"] == "reproduced"
    assert by[("val", "mIoU")]["delta"] == pytest.approx(0.5)
    assert by[("val", "pixel_acc")]["verdict"] == "above"  # 95.0 vs 90.0, tolerance 1
    assert by[("val", "pixel_acc")]["delta"] == pytest.approx(5.0)
    assert by[("test", "mIoU")]["verdict"] == "other split"
    assert compare(record(miou=0.585))[0]["verdict"] == "below"
    assert compare(record(miou=0.585), tolerance=2.0)[0]["verdict"] == "reproduced"
    assert compare(record(comparable=False))[0]["verdict"] == "not comparable"
    assert compare({"split": "val", "metrics": {}, "config": {}}) == [
        {"metric": None, "verdict": "no reference"}
    ]
    rec = record()
    rec["metrics"].pop("pixel_acc")
    assert [r["verdict"] for r in compare(rec)][1] == "not computed"
    assert published(record()) == 60.0 and published(record(split="test")) == 58.0
    assert published(record(split="train")) is None


REFERENCE = (
    "reference={experiment: shapes_check, source: 'a test of repro-check', checked: 'made up', "
    "tolerance: 3.0, "
    "needs: nothing, results: [{split: test, metrics: {mIoU: 12.0}, table: 'Table 0', "
    "protocol: 'single scale'}, {split: val, metrics: {mIoU: 99.0}, table: 'Table 9', "
    "protocol: 'other split'}]}"
)


@pytest.fixture(scope="module")
def referenced_run(tmp_path_factory):
    """A debug=fast run whose configuration states a published test mIoU, and its evaluation."""
    work = tmp_path_factory.mktemp("reference")
    run_cli("train.py", "debug=fast", REFERENCE, f"hydra.run.dir={work / 'run'}", cwd=work)
    ckpt = work / "run" / "checkpoints" / "best.ckpt"
    run_cli("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={work / 'eval'}", cwd=work)
    return work


def test_train_and_evaluate_carry_the_reference_and_repro_check_judges_it(referenced_run, capsys):
    for name in ("run", "eval"):
        res = json.loads((referenced_run / name / "results.json").read_text())
        assert res["config"]["reference"]["experiment"] == "shapes_check"
    measured = (
        100 * json.loads((referenced_run / "run" / "results.json").read_text())["metrics"]["mIoU"]
    )
    expected = 0 if abs(measured - 12.0) <= 3.0 else 1
    out = referenced_run / "repro.json"
    status = repro_main([str(referenced_run / "run"), "--out", str(out)])
    text = capsys.readouterr().out
    assert status == expected
    assert "## shapes_check" in text and "other split" in text and "Table 0" in text
    rows = json.loads(out.read_text())["runs"][0]["rows"]
    assert rows[0]["measured"] == pytest.approx(measured)
    assert rows[0]["delta"] == pytest.approx(measured - 12.0)
    # a tolerance wide enough for anything: reproduced, exit 0
    assert repro_main([str(referenced_run / "run"), "--tolerance", "100"]) == 0


def test_leaderboard_shows_the_published_figure_next_to_the_measured(
    referenced_run, trained_run, tmp_path
):
    records, problems = collect([str(referenced_run / "run"), str(trained_run)])
    assert not problems
    (board,) = build_tables(records, metrics=["mIoU", "published"], merge_seeds=False)
    assert [c.key for c in board.columns][2:] == ["mIoU", "published"]  # side by side
    cells = {row.sources[0]: row.stats["published"].mean for row in board.rows}
    assert cells[str(referenced_run / "run" / "results.json")] == pytest.approx(0.12)
    assert cells[str(trained_run / "results.json")] is None  # no reference: a dash
    out = tmp_path / "board"
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "leaderboard", str(referenced_run / "run"),
         str(trained_run), "--metrics", "mIoU,published", "--format", "md,csv", "--no-merge",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = next(out.glob("*.md")).read_text()
    assert "published mIoU" in table and "| 12.0 |" in table


def test_repro_check_cli_without_reference_and_without_results(trained_run, tmp_path, capsys):
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "repro-check", str(trained_run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "no reference" in proc.stdout
    assert "nothing compared" in proc.stdout
    assert repro_main([str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_a_malformed_reference_stops_train_py_before_training(tmp_path):
    bad = REFERENCE.replace("tolerance: 3.0", "tolerance: -3.0")
    proc = run_cli(
        "train.py",
        "debug=fast",
        bad,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "reference.tolerance" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
