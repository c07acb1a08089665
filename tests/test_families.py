"""Every model option trains through ``train.py`` on shapes, in one Hydra multirun sweep."""

from __future__ import annotations

import json

import pytest
import yaml
from omegaconf import OmegaConf

from segbench.checkpoints import store as checkpoint
from tests.conftest import CONF, run_cli

# one worker runs this module (make test: --dist loadgroup): split over two pytest-xdist workers
# its sweep would run twice. The fixture is session-scoped: that worker interleaves the module's
# tests with other modules', which would tear a module-scoped one down and run it again
pytestmark = pytest.mark.xdist_group("families")

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# the families the product promises; every one must be an option of conf/model/
FAMILIES = [
    "fcn8s", "deeplabv3plus", "unet", "segnet", "deconvnet", "pspnet", "reseg", "ganseg",
    "segformer", "upernet", "mask2former", "linear_probe",
]  # fmt: skip


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """``train.py -m model=<every option> debug=fast`` (one epoch); returns {model: results}."""
    workdir = tmp_path_factory.mktemp("families")
    sweep_dir = workdir / "multirun"
    run_cli(
        "train.py",
        "-m",
        f"model={','.join(MODELS)}",
        "debug=fast",
        "trainer.max_epochs=1",
        "dataset.subset.train=8",
        # no pictures (a second or two per job; RunPlots and EvaluationOutputs have their own
        # tests): this sweep checks what every model writes in results.json
        "callbacks.run_plots=null",
        "callbacks.eval_outputs.panels=0",
        "callbacks.eval_outputs.plots=false",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=workdir,
    )
    results = {}  # keyed by the model option each job was given
    for path in sorted(sweep_dir.glob("*/results.json")):
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        option = next(o.split("=", 1)[1] for o in overrides if o.startswith("model="))
        results[option] = (path.parent, json.loads(path.read_text()))
    return results


def test_families_are_model_options():
    assert set(FAMILIES) <= set(MODELS)


def test_every_model_option_writes_valid_results(sweep):
    assert sorted(sweep) == MODELS
    for name, (run_dir, record) in sweep.items():
        assert record["kind"] == "train" and record["dataset"] == "shapes"
        assert record["backbone"] == "tiny"  # debug=fast wins over a model's paper backbone
        metrics = record["metrics"]
        assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["pixel_acc"] <= 1.0, name
        confusion = record["confusion_matrix"]
        assert len(confusion) == 7 and sum(map(sum, confusion)) > 0
        assert record["params"] > 0 and record["gflops"] > 0
        assert record["flops_input_size"] == [64, 64]
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_gan_results_count_the_segmenter_only(sweep):
    _, gan = sweep["ganseg"]
    _, fcn = sweep[gan["config"]["model"]["segmenter"]["name"]]
    assert gan["model"] == "ganseg_fcn8s" and fcn["model"] == "fcn8s"
    assert gan["params"] == fcn["params"]


def test_gan_checkpoint_evaluates_like_any_other(sweep, tmp_path):
    run_dir, trained = sweep["ganseg"]
    out = tmp_path / "eval"
    run_cli(
        "evaluate.py",
        f"ckpt={trained['checkpoint']}",
        "logger=csv",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    record = json.loads((out / "results.json").read_text())
    assert record["model"] == "ganseg_fcn8s" and record["params"] == trained["params"]
    assert record["confusion_matrix"] == trained["confusion_matrix"]


@pytest.mark.slow  # 27 s; the CRF itself: test_crf.py, test_crf_oracle.py
def test_deeplabv1_checkpoint_evaluates_with_the_crf_variant(sweep, tmp_path):
    """``model=deeplabv1_crf`` adds CRF post-processing to a deeplabv1 checkpoint's weights."""
    _, trained = sweep["deeplabv1"]
    assert trained["eval_mode"] == "single-scale"
    out = tmp_path / "crf"
    run_cli(
        "evaluate.py",
        f"ckpt={trained['checkpoint']}",
        "model=deeplabv1_crf",
        "logger=csv",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    record = json.loads((out / "results.json").read_text())
    assert record["model"] == "deeplabv1_crf" and record["eval_mode"] == "single-scale+CRF"
    assert record["backbone"] == "tiny" and record["params"] == trained["params"]
    assert record["config"]["model"]["crf"]["iterations"] == 10
    # another model class is still refused
    proc = run_cli(
        "evaluate.py",
        f"ckpt={trained['checkpoint']}",
        "model=segnet",
        f"hydra.run.dir={tmp_path / 'refused'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "was trained with model 'deeplabv1'" in proc.stderr


def test_bayesian_segnet_results_name_the_mc_sampling(sweep):
    _, record = sweep["bayesian_segnet"]
    assert record["eval_mode"] == "single-scale+MC-dropout x8"


def test_bayesian_segnet_checkpoint_evaluates_with_other_sampling(sweep, tmp_path, monkeypatch):
    """``+model.mc_samples=N`` (an evaluation-only key) changes how a checkpoint predicts;
    0 is weight averaging (dropout off). A key that changes what the weights mean is refused."""
    _, trained = sweep["bayesian_segnet"]
    out = tmp_path / "wa"
    run_cli(
        "evaluate.py",
        f"ckpt={trained['checkpoint']}",
        "+model.mc_samples=0",
        "logger=csv",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    record = json.loads((out / "results.json").read_text())
    assert record["eval_mode"] == "single-scale" and record["config"]["model"]["mc_samples"] == 0
    assert record["params"] == trained["params"] and record["calibration"]["pixels"] > 0
    # model.dropout=0.1 on the command line (what _named_on_command_line reads from Hydra)
    monkeypatch.setattr(checkpoint, "_named_on_command_line", lambda: {"model", "model.dropout"})
    cfg = OmegaConf.create({"model": {"name": "bayesian_segnet", "dropout": 0.1}})
    trained_cfg = OmegaConf.create(trained["config"])
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.merge_eval_config(cfg, trained_cfg, trained["checkpoint"])
    assert "model.dropout cannot change at evaluation" in str(err.value)
    assert "only model.crf, model.mc_samples may be set" in str(err.value)
