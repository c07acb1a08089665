"""The Evaluator: one object for an evaluation's figures, chosen by configuration.

Its record is checked against independent computations (numpy counts, the figure functions
called directly), batch order and batching do not change it, and a new figure is one class plus
one line of config: :class:`ForegroundShare` below is added to a real training by an override
alone and lands in ``results.json``, the logs and the printed table.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import Tensor

from segbench.checkpoints.store import upgrade_config
from segbench.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from segbench.metrics import EvalBatch, Evaluator, Figure, FigureResult, Totals
from segbench.metrics.boundary import BoundaryFigures, boundary_figures, boundary_stats
from segbench.metrics.calibration import Calibration, CalibrationFigures, calibration_record
from tests.conftest import compose_config

K, IGNORE = 4, 255
NAMES = ["a", "b", "c", "d"]


class ForegroundShare(Figure):
    """An example figure: the share of valid pixels predicted as anything but class 0, kept per
    image (``foreground (N,)``) and averaged over the images."""

    name = "foreground"

    def update(self, batch: EvalBatch) -> dict[str, Tensor]:
        valid = batch.target != self.ignore_index
        fg = ((batch.pred != 0) & valid).flatten(1).sum(1).double()
        return {"foreground": fg / valid.flatten(1).sum(1).clamp(min=1)}

    def compute(self, totals: Totals) -> FigureResult:
        share = float(totals.arrays["foreground"].mean())
        return FigureResult(
            record={"share": share},
            metrics={"foreground_share": share},
            logged={"foreground_share": share},
            rows=[("foreground", share)],
        )


def batches(seed: int = 0, n: int = 3, size: int = 4):
    """``n`` batches of scores, labels (some void) and the loader's fields, images 0.. in order."""
    gen = torch.Generator().manual_seed(seed)
    out, index = [], 0
    for _ in range(n):
        scores = torch.randn(size, K, 12, 16, generator=gen)
        target = torch.randint(0, K, (size, 12, 16), generator=gen)
        target[torch.rand(target.shape, generator=gen) < 0.1] = IGNORE
        ids = list(range(index, index + size))
        batch = {"index": torch.tensor(ids), "name": [f"img{i}" for i in ids]}
        out.append((scores, target, batch))
        index += size
    return out


def evaluate(figures, data) -> object:
    evaluator = Evaluator(K, IGNORE, NAMES, figures)
    for scores, target, batch in data:
        evaluator.update(scores, target, batch)
    return evaluator.compute()


def test_the_record_matches_an_independent_count():
    data = batches()
    record = evaluate({}, data)
    pred = np.concatenate([s.argmax(1).numpy() for s, _, _ in data])
    target = np.concatenate([t.numpy() for _, t, _ in data])
    valid = target != IGNORE
    confusion = np.bincount(
        target[valid] * K + pred[valid], minlength=K * K
    ).reshape(K, K)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(record.confusion_matrix), confusion)
    inter, union = np.diag(confusion), confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    assert record.summary["mIoU"] == pytest.approx(float(np.mean(inter / union)), abs=1e-12)
    assert record.names == [f"img{i}" for i in range(12)]
    for i in range(len(pred)):  # per image: intersection, ground truth, predicted per class
        ok = valid[i]
        for c in range(K):
            gt_c, pr_c = (target[i] == c) & ok, (pred[i] == c) & ok
            assert list(record.counts[i, :, c]) == [(gt_c & pr_c).sum(), gt_c.sum(), pr_c.sum()]
    assert record.figures == {} and record.arrays == {}


def test_each_figure_gives_what_its_own_functions_give():
    data = batches(1)
    record = evaluate(
        {"boundary": BoundaryFigures(K, IGNORE, NAMES), "calibration": CalibrationFigures},
        data,
    )
    bf = torch.cat([boundary_stats(s.argmax(1), t, K, IGNORE)[0] for s, t, _ in data]).numpy()
    counts = torch.cat([boundary_stats(s.argmax(1), t, K, IGNORE)[1] for s, t, _ in data])
    expected = boundary_figures(bf, counts.numpy())
    boundary = record.figure_record("boundary")
    assert boundary["bf"] == expected["bf"] and boundary["boundary_iou"] == expected["boundary_iou"]
    np.testing.assert_array_equal(record.arrays["bf"], bf)
    calibration = Calibration(K, IGNORE)
    for scores, target, _ in data:
        calibration.update(scores, target)
    assert record.figure_record("calibration") == calibration_record(calibration.compute())
    # what results.json, the logs and the table get, decided by the figures themselves
    assert record.figures["boundary"].entries["boundary"]["computed"] is True
    assert record.logged()["bf"] == expected["bf"]
    assert record.logged()["ece"] == record.figure_record("calibration")["ece"]


def test_batching_and_order_change_nothing():
    data = batches(2)
    figures = lambda: {"boundary": BoundaryFigures(K, IGNORE, NAMES), "fg": ForegroundShare}  # noqa: E731
    one = evaluate(figures(), data)
    # the same images in one batch, in reverse order: rows come back in dataset order
    scores = torch.cat([s for s, _, _ in data]).flip(0)
    target = torch.cat([t for _, t, _ in data]).flip(0)
    index = torch.arange(12).flip(0)
    batch = {"index": index, "name": [f"img{i}" for i in index.tolist()]}
    other = evaluate(figures(), [(scores, target, batch)])
    assert one.names == other.names and one.summary == other.summary
    np.testing.assert_array_equal(one.counts, other.counts)
    for key in one.arrays:
        np.testing.assert_array_equal(one.arrays[key], other.arrays[key])
    assert one.figure_record("fg") == other.figure_record("fg")


def test_a_figure_must_say_how_it_computes():
    class Incomplete(Figure):  # update only: no compute
        pass

    with pytest.raises(TypeError, match="abstract method"):
        Incomplete(K, IGNORE, NAMES)


def test_a_figure_factory_must_make_a_figure():
    with pytest.raises(TypeError, match="evaluation figure 'oops'.*not a segbench.metrics.Figure"):
        Evaluator(K, IGNORE, NAMES, {"oops": lambda **kw: object()})
    evaluator = Evaluator(K, IGNORE, NAMES, {"a": ForegroundShare, "b": ForegroundShare})
    scores, target, batch = batches()[0]
    with pytest.raises(ValueError, match="figure 'b': per-image array 'foreground' given twice"):
        evaluator.update(scores, target, batch)


LEAN = [
    "debug=fast",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "dataset.subset.train=4",
    "dataset.subset.val=2",
    "dataset.subset.test=3",
    "callbacks.run_plots=null",
    "callbacks.eval_outputs=null",
]


def test_a_new_figure_is_one_class_and_one_line_of_config(tmp_path, capsys):
    """The example figure, switched on by one override, in results.json, the CSV log and the
    printed table; switching calibration off leaves its entry out."""
    from segbench.engine.run import train

    line = (
        "+evaluation.figures.foreground={_target_: tests.test_evaluator.ForegroundShare, "
        "_partial_: true}"
    )
    run_dir = tmp_path / "run"
    overrides = [*LEAN, "logger=csv", line, "~evaluation.figures.calibration"]
    res = train(compose_config("train", overrides, run_dir))
    share = res["metrics"]["foreground_share"]
    assert 0.0 <= share <= 1.0
    per_image = np.load(run_dir / "per_image.npz")
    assert share == pytest.approx(float(per_image["foreground"].mean()))
    assert "calibration" not in res and res["boundary"]["computed"] is True
    printed = capsys.readouterr().out
    assert f"foreground    {100 * share:6.2f}" in printed
    logged = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    values = [r["test/foreground_share"] for r in logged if r.get("test/foreground_share")]
    assert values and float(values[-1]) == pytest.approx(share)
    # the stored config names the figure, so evaluate.py can run it again
    assert json.loads((run_dir / "results.json").read_text())["config"]["evaluation"]["figures"][
        "foreground"
    ]["_target_"].endswith("ForegroundShare")


def test_a_bad_figure_option_is_refused_before_training(tmp_path):
    from segbench.engine.run import train

    cfg = compose_config("train", [*LEAN, "logger=none", "boundary.bf_tolerance=2"], tmp_path)
    with pytest.raises(ValueError, match=r"boundary.bf_tolerance must be a fraction"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_cityscapes_adds_its_figures_and_old_checkpoints_get_them_too():
    cfg = compose_config("train", ["dataset=cityscapes"], ".")
    assert cfg.dataset.figures.cityscapes._target_.endswith("CityscapesFigures")
    assert "figures" not in compose_config("train", ["dataset=camvid"], ".").dataset
    old = {"dataset": {"name": "cityscapes", "class_names": list(CITYSCAPES_CLASSES)}}
    upgraded = upgrade_config(old)["dataset"]["figures"]
    assert upgraded["cityscapes"]["_target_"] == "segbench.metrics.cityscapes.CityscapesFigures"
    other = {"dataset": {"name": "camvid", "class_names": ["sky", "road"]}}
    assert "figures" not in upgrade_config(other)["dataset"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("bootstrap.resamples=0", r"bootstrap.resamples=0: expected a whole number >= 1"),
        ("bootstrap.level=1.5", r"bootstrap.level=1.5: expected a confidence level"),
        ("+bootstrap.samples=10", r"bootstrap.samples: unknown key"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0: nothing would be trained"),
        ("trainer.max_steps=0", r"trainer.max_steps=0: nothing would be trained"),
    ],
)
def test_evaluation_and_trainer_options_are_refused_before_anything_runs(
    override, message, tmp_path
):
    from segbench.engine.run import train

    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(compose_config("train", [*LEAN, "logger=none", override], run_dir))
    assert not run_dir.exists() or not any(run_dir.iterdir())  # nothing written, nothing run


def test_evaluate_checks_the_bootstrap_options_too(trained_run, tmp_path):
    from segbench.engine.run import evaluate

    ckpt = trained_run / "checkpoints" / "best.ckpt"
    cfg = compose_config("evaluate", [f"ckpt={ckpt}", "bootstrap.level=0"], tmp_path / "ev")
    with pytest.raises(ValueError, match=r"bootstrap.level=0"):
        evaluate(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without")
def test_a_gpu_trainer_without_a_gpu_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    from segbench.data.datamodule import SegDataModule
    from segbench.engine.run import train

    opened = []
    monkeypatch.setattr(SegDataModule, "dataset", lambda self, split: opened.append(split))
    overrides = [*LEAN, "logger=none", "trainer=gpu", "trainer.accelerator=gpu"]
    cfg = compose_config("train", overrides, tmp_path / "run")
    with pytest.raises(
        ValueError, match=r"trainer.accelerator=gpu.*run on the CPU with trainer=cpu"
    ):
        train(cfg)
    assert opened == []  # no split opened, nothing cached
    # the fix the message gives composes a CPU trainer
    assert compose_config("train", [*LEAN, "trainer=cpu"], tmp_path).trainer.accelerator == "cpu"
