"""Sweeps: the leaderboard a multirun writes into its own directory, the launchers, the Optuna
search on validation mIoU, and the experiment configs, whose names must tell their settings."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import pickle
import re
import types
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import segbench.leaderboard.sweep
from segbench.engine.build import build_model
from segbench.leaderboard.sweep import LeaderboardCallback
from segbench.metrics import EvaluationRecord
from segbench.results import RESULTS_FILE, RunFacts, build_results, write_results
from tests.conftest import CONF, ROOT, compose_config, run_cli

SHAPES = OmegaConf.load(CONF / "dataset" / "shapes.yaml")
CLASSES = list(SHAPES.class_names)
# '++' adds the callback, or overrides it once conf/train.yaml registers it
CALLBACK = "++hydra.callbacks.leaderboard._target_=segbench.leaderboard.sweep.LeaderboardCallback"
# what a sweep test does not need: plots, loggers, per-step callbacks
LEAN = [
    "logger=none",
    "callbacks.run_plots=null",
    "callbacks.eval_outputs=null",
    "callbacks.wandb_media=null",
    "callbacks.lr_monitor=null",
]


def fake_results(model: str, iou: list[float], *, config: dict | None = None, val=None) -> dict:
    """A results.json record of a shapes run with per-class test IoU ``iou``."""
    evaluation = EvaluationRecord(
        class_names=list(CLASSES),
        summary={"mIoU": sum(iou) / len(iou), "pixel_acc": 0.9, "mean_acc": 0.5},
        per_class={"iou": iou, "dice": iou, "acc": iou},
        confusion_matrix=[[0] * len(CLASSES) for _ in CLASSES],
    )
    evaluation.summary.update(fwIoU=0.8, mDice=0.5)
    run = RunFacts(
        kind="train",
        model=model,
        backbone="tiny",
        dataset="shapes",
        split="test",
        ignore_index=255,
        num_images=8,
        params=1000,
        seed=0,
        config=config or {"model": {"name": model}},
        best_val_miou=val,
    )
    return build_results(evaluation, run)


def read_csv_board(sweep: Path) -> list[dict]:
    """Rows of the one shapes test-split CSV leaderboard in ``sweep``."""
    boards = sorted(sweep.glob("leaderboard_shapes*.csv"))
    assert len(boards) == 1, f"expected one shapes CSV leaderboard in {sweep}, found {boards}"
    with open(boards[0], newline="") as f:
        return list(csv.DictReader(f))


def column(row: dict, name: str) -> str:
    """The value of the one column of ``row`` named ``name`` or ``<name>_mean``."""
    hits = [k for k in row if k in (name, f"{name}_mean")]
    assert len(hits) == 1, f"no single column {name!r} in {list(row)}"
    return row[hits[0]]


def assert_board_matches_runs(rows: list[dict], runs: list[dict]) -> None:
    """Every run is one row whose mIoU and per-class IoU are its results.json figures, in %."""
    assert sorted(r["model"] for r in rows) == sorted(r["model"] for r in runs)
    for run in runs:
        (row,) = [r for r in rows if r["model"] == run["model"]]
        assert float(column(row, "mIoU")) == pytest.approx(100 * run["metrics"]["mIoU"])
        for name in CLASSES:
            value = run["metrics"]["per_class_iou"][name]
            shown = column(row, f"iou_{name}")
            if value is None:
                assert shown == ""
            else:
                assert float(shown) == pytest.approx(100 * value)


def test_multirun_writes_the_leaderboard_of_its_own_sweep(tmp_path):
    # the real default sweep directory (multirun/<date>/<time>): the callback must find the
    # directory the jobs were written to; beside it, a decoy of another sweep
    decoy = tmp_path / "multirun" / "2000-01-01" / "00-00-00" / "0_decoy"
    write_results(decoy, fake_results("decoy", [0.5] * len(CLASSES)))
    proc = run_cli(
        "train.py",
        "-m",
        "model=fcn32s,fcn8s",
        "debug=fast",
        "trainer.max_epochs=1",
        *LEAN,
        CALLBACK,
        cwd=tmp_path,
    )
    (sweep,) = [p.parent for p in tmp_path.glob("multirun/*/*/multirun.yaml")]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RESULTS_FILE}"))]
    assert [r["model"] for r in runs] == ["fcn32s", "fcn8s"]
    assert f"leaderboard of sweep {sweep.resolve()}" in proc.stdout
    for ext in ("md", "csv", "tex", "html"):
        assert len(list(sweep.glob(f"leaderboard_shapes*.{ext}"))) == 1, ext
    rows = read_csv_board(sweep)
    assert len(rows) == 2  # the decoy sweep's run is not in it
    assert_board_matches_runs(rows, runs)
    header = (next(sweep.glob("leaderboard_shapes*.md"))).read_text()
    assert all(name in header for name in CLASSES)
    assert "decoy" not in header


def multirun(task, overrides: list[str]):
    """Run Hydra's multirun of conf/train.yaml in this process with ``task`` as the job."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_app = GlobalHydra.instance().hydra
        return hydra_app.multirun(
            config_name="train",
            task_function=task,
            overrides=[*overrides, "hydra/job_logging=none", "hydra/hydra_logging=none", CALLBACK],
        )


@pytest.fixture
def exits(monkeypatch) -> list:
    """The functions LeaderboardCallback registers to run at interpreter exit (not run)."""
    registered: list = []
    fake = types.SimpleNamespace(register=registered.append, unregister=registered.remove)
    monkeypatch.setattr(segbench.leaderboard.sweep, "atexit", fake)
    return registered


def test_optuna_search_maximises_the_returned_val_miou(tmp_path, exits):
    def search(sweep: Path) -> list[dict]:
        trials = []

        def objective(cfg):  # a stand-in for train.py: writes results.json, returns val mIoU
            lr, wd = cfg.optimizer.lr, cfg.optimizer.weight_decay
            val = 1 / (1 + (math.log10(lr) + 1) ** 2)  # best at lr = 0.1
            iou = [min(1.0, val * (c + 1) / len(CLASSES)) for c in range(len(CLASSES))]
            config = OmegaConf.to_container(cfg, resolve=True)
            write_results(cfg.output_dir, fake_results(cfg.model.name, iou, config=config, val=val))
            trials.append({"model": cfg.model.name, "lr": lr, "wd": wd, "val": val})
            return val

        multirun(
            objective,
            ["hydra/sweeper=search", "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}"],
        )
        return trials

    trials = search(tmp_path / "a")
    assert len(trials) == 4
    for t in trials:  # the search space of conf/hydra/sweeper/search.yaml
        assert 0.01 <= t["lr"] <= 0.5 and 1e-5 <= t["wd"] <= 1e-3
        assert t["model"] in {"fcn8s", "unet", "pspnet"}
    best = max(trials, key=lambda t: t["val"])  # maximised, not minimised
    study = OmegaConf.load(tmp_path / "a" / "optimization_results.yaml")
    assert study.best_value == pytest.approx(best["val"])
    assert study.best_params["optimizer.lr"] == pytest.approx(best["lr"])
    # every trial is its own row (different lr: never merged as seeds of one configuration)
    assert len(read_csv_board(tmp_path / "a")) == 4
    assert exits == []  # the at-exit fallback was withdrawn once the leaderboard was written
    # sampler seed 0: the same trials again
    again = search(tmp_path / "b")
    assert [(t["model"], t["lr"], t["wd"]) for t in again] == [
        (t["model"], t["lr"], t["wd"]) for t in trials
    ]


def test_a_failed_sweep_still_ranks_the_runs_that_finished(tmp_path, exits, capsys):
    iou = [0.1 * (c + 1) for c in range(len(CLASSES))]

    def job(cfg):
        if cfg.model.name == "fcn8s":
            raise RuntimeError("planted failure")
        write_results(cfg.output_dir, fake_results(cfg.model.name, iou))

    sweep = tmp_path / "sweep"
    with pytest.raises(RuntimeError, match="planted failure"):
        multirun(job, ["model=fcn32s,fcn8s", f"hydra.sweep.dir={sweep}"])
    assert not list(sweep.glob("leaderboard_*"))  # Hydra skipped on_multirun_end
    (at_exit,) = exits
    at_exit()  # what the interpreter does as the failed sweep's process exits
    out = capsys.readouterr().out
    assert "stopped before all its jobs finished" in out
    rows = read_csv_board(sweep)
    assert [r["model"] for r in rows] == ["fcn32s"]
    assert float(column(rows[0], "mIoU")) == pytest.approx(100 * sum(iou) / len(iou))


def test_callback_reports_a_failed_table_without_raising(tmp_path, monkeypatch, capsys):
    import segbench.leaderboard

    def broken(*args, **kwargs):
        raise ValueError("planted table error")

    monkeypatch.setattr(segbench.leaderboard, "write_leaderboards", broken)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    LeaderboardCallback().on_multirun_end(config)  # must not raise
    err = capsys.readouterr().err
    assert "planted table error" in err
    assert f"segbench leaderboard {tmp_path} --out {tmp_path}" in err


def test_callback_options_and_an_empty_sweep(tmp_path, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    assert LeaderboardCallback().write(tmp_path) == []
    assert f"no {RESULTS_FILE} in it" in capsys.readouterr().err

    iou = [0.3, 0.2, None, 0.6, 0.1, 0.0, 0.4]
    record = fake_results("fcn8s", [v or 0.0 for v in iou])
    record["metrics"]["per_class_iou"] = dict(zip(CLASSES, iou))
    write_results(tmp_path / "0_fcn8s", record)
    callback = LeaderboardCallback(formats=["csv"], percent=False)
    callback.on_multirun_end(config)
    assert [p.suffix for p in tmp_path.glob("leaderboard_*")] == [".csv"]
    (row,) = read_csv_board(tmp_path)
    assert float(column(row, "mIoU")) == pytest.approx(record["metrics"]["mIoU"])  # fractions
    assert column(row, f"iou_{CLASSES[2]}") == ""  # absent class
    assert float(column(row, f"iou_{CLASSES[6]}")) == pytest.approx(0.4)


def test_train_py_returns_the_best_val_miou_not_a_test_figure(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    record = fake_results("fcn8s", [0.9] * len(CLASSES), val=0.42)
    monkeypatch.setattr(script, "train", lambda cfg: record)
    # a config passed to a @hydra.main function runs it directly
    assert script.main(OmegaConf.create({})) == 0.42


def compose_hydra(overrides: list[str]):
    """conf/train.yaml with its ``hydra`` node (launcher, sweeper) composed."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_sequential_launcher_is_hydras_default():
    chosen = compose_hydra(["hydra/launcher=sequential"]).hydra.launcher
    default = compose_hydra([]).hydra.launcher
    assert chosen._target_ == default._target_
    assert chosen._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def test_parallel_launcher_composes_and_the_callback_travels_to_its_workers(tmp_path):
    cfg = compose_hydra(["hydra/launcher=parallel", "hydra.launcher.n_jobs=3"])
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"
    assert launcher.joblib["n_jobs"] == 3
    assert compose_hydra(["hydra/launcher=parallel"]).hydra.launcher.n_jobs == 2
    # joblib pickles Hydra's callbacks into its workers: copies never write at exit
    callback = LeaderboardCallback(formats=["md"])
    callback._pending = tmp_path
    copy = pickle.loads(pickle.dumps(callback))
    assert copy._pending is None and copy.formats == ["md"]


def test_slurm_launcher_maps_ddp_to_slurm_tasks(tmp_path, monkeypatch):
    """The sbatch script submitit would submit, from the composed launcher config."""
    import submitit

    class Submitted(Exception):
        pass

    seen = {}

    def fake_map_array(self, fn, *args):
        seen["executor"], seen["jobs"] = self, len(args[0])
        raise Submitted

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    cfg = compose_hydra(
        [
            "hydra/launcher=slurm",
            "experiment=deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.setup=['export SEGBENCH_DATA=/datasets']",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    assert seen["jobs"] == 2
    executor = seen["executor"]._executor
    script = executor._make_submission_file_text("COMMAND", "uid")
    devices = cfg.trainer.devices
    assert devices == 4
    for line in (
        f"#SBATCH --ntasks-per-node={devices}",  # one task per DDP rank
        f"#SBATCH --gpus-per-node={devices}",
        "#SBATCH --nodes=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=1440",
        "export SEGBENCH_DATA=/datasets",
    ):
        assert line in script.splitlines(), line
    assert executor.parameters["array_parallelism"] == 16


def test_search_sweeper_composes():
    sweeper = compose_hydra(["hydra/sweeper=search"]).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.storage is None
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "model"}
    both = compose_hydra(["hydra/sweeper=search", "hydra/launcher=parallel"]).hydra
    assert both.sweeper.direction == "maximize" and both.launcher.n_jobs == 2


# experiment names: <model>_<backbone>_<gpus>xb<batch>-<schedule>_<dataset>-<crop>[_<tag>]
# (a tag names the budget a run is made for, cpu-30min, or the probe's head, lin | ms)
NAME = re.compile(
    r"^(?P<model>[a-z0-9-]+)_(?P<backbone>[a-z0-9-]+)_(?P<gpus>\d+)xb(?P<batch>\d+)"
    r"-(?P<steps>\d+)(?P<unit>[ke])_(?P<dataset>[a-z0-9_]+)-(?P<crop>\d+(x\d+)?)"
    r"(?:_(?P<tag>[a-z0-9-]+))?$"
)
# the field's short backbone names -> (segbench backbone, output stride)
BACKBONES = {
    "r18": ("resnet18", None),
    "r50-d8": ("resnet50", 8),
    "vgg16": ("vgg16", None),
    "vgg16-d8": ("vgg16", 8),  # DeepLab v1's dilated VGG16
    "segnet-basic": ("segnet_basic", None),
    "vgg16bn": ("vgg16_bn", None),
    "unet-bn": ("unet", None),
    "r50": ("resnet50", None),  # Mask2Former's, not dilated
    "mit-b0": ("mit_b0", None),
    "mit-b5": ("mit_b5", None),
    "convnext-t": ("convnext_tiny", None),
    "swin-t": ("swin_tiny_patch4_window7_224", None),
    "vit-s14-dinov2": ("vit_small_patch14_dinov2", None),
    "vit-b14-dinov2": ("vit_base_patch14_dinov2", None),
}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
LIGHT = [e for e in EXPERIMENTS if e.endswith("_shapes-64")]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_name_tells_its_settings(name, tmp_path):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert f"python train.py experiment={name}" in text  # the documented command
    parts = NAME.match(name)
    assert parts, f"{name} does not follow <model>_<backbone>_<N>xb<B>-<schedule>_<dataset>-<crop>"
    data_root = tmp_path / "data"
    cfg = compose_config("train", [f"experiment={name}", f"data_root={data_root}"], tmp_path)
    assert cfg.model.name == parts["model"].replace("-", "_")  # model names use _
    backbone, stride = BACKBONES[parts["backbone"]]
    assert cfg.backbone.name == backbone
    assert cfg.model.get("output_stride") == stride
    assert cfg.dataset.name == parts["dataset"]
    gpus = int(parts["gpus"])
    assert cfg.trainer.devices == gpus
    if gpus > 1:
        assert cfg.trainer.strategy == "ddp"
    assert cfg.dataset.batch_size == int(parts["batch"])  # per GPU
    steps = int(parts["steps"])
    if parts["unit"] == "k":
        assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (1000 * steps, -1)
    else:
        assert (cfg.trainer.max_epochs, cfg.trainer.max_steps) == (steps, -1)
    size = [int(s) for s in parts["crop"].split("x")]
    if len(size) == 2:
        assert list(cfg.dataset.train_transform.crop) == size
    else:  # shapes: generated at that size
        assert cfg.dataset.source.image_size == size[0]
    root = cfg.dataset.source.get("root")
    if root is not None:
        assert Path(root).is_relative_to(data_root)
    trainer = instantiate(  # every trainer key is a Trainer argument (CPU stands in for GPUs)
        cfg.trainer,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    assert trainer.max_steps == cfg.trainer.max_steps


def check_forward(name: str, tmp_path: Path) -> None:
    # backbone.pretrained=false: never downloads (tests/test_reference.py checks what an
    # experiment that starts from ImageNet weights says when they are not cached)
    overrides = [f"experiment={name}", f"data_root={tmp_path}", "backbone.pretrained=false"]
    cfg = compose_config("train", overrides, tmp_path)
    net = build_model(cfg.model).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 64))["out"]
    assert out.shape == (1, cfg.dataset.num_classes, 64, 64)


@pytest.mark.parametrize("name", LIGHT)
def test_light_experiment_models_build(name, tmp_path):
    check_forward(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - set(LIGHT)))
def test_heavy_experiment_models_build(name, tmp_path):
    check_forward(name, tmp_path)


@pytest.mark.slow
def test_parallel_launcher_sweep_writes_the_leaderboard(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "train.py",
        "-m",
        "hydra/launcher=parallel",
        "model=fcn32s,fcn8s",
        "debug=fast",
        "trainer.max_epochs=1",
        *LEAN,
        CALLBACK,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RESULTS_FILE}"))]
    assert_board_matches_runs(read_csv_board(sweep), runs)


@pytest.mark.slow
def test_optuna_search_optimises_best_val_miou_of_real_runs(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "train.py",
        "-m",
        "hydra/sweeper=search",
        "hydra.sweeper.n_trials=2",
        "model=fcn32s",  # fixed: only lr and weight decay are searched
        "debug=fast",
        "trainer.max_epochs=1",
        *LEAN,
        CALLBACK,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RESULTS_FILE}"))]
    assert len(runs) == 2
    study = OmegaConf.load(sweep / "optimization_results.yaml")
    assert study.best_value == pytest.approx(max(r["best_val_mIoU"] for r in runs))
    assert len(read_csv_board(sweep)) == 2


@pytest.mark.slow  # four train.py sweeps, 40 s: make test-all
def test_a_second_sweep_into_the_same_directory_is_refused(tmp_path):
    """Two sweeps in one hydra.sweep.dir would overwrite the first's multirun.yaml and
    leaderboard and mix their runs: the second is refused before any job, untouched files kept;
    the same sweep with resume=auto carries it on."""
    sweep = tmp_path / "sweep"
    common = ["debug=fast", "trainer.max_epochs=1", *LEAN, f"hydra.sweep.dir={sweep}"]
    run_cli("train.py", "-m", "optimizer.lr=0.2", *common, cwd=tmp_path)
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    proc = run_cli("train.py", "-m", "optimizer.lr=0.1", *common, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "already holds another sweep" in proc.stderr and "optimizer.lr=0.2" in proc.stderr
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before
    again = run_cli("train.py", "-m", "optimizer.lr=0.2", *common, cwd=tmp_path, check=False)
    assert again.returncode == 1 and "run the same command with resume=auto" in again.stderr
    # with resume=auto the sweep directory is accepted (its finished run is then refused by
    # the run's own directory check, as any finished run is: nothing is changed)
    resumed = run_cli(
        "train.py", "-m", "optimizer.lr=0.2", *common, "resume=auto", cwd=tmp_path, check=False
    )
    assert "already holds" not in resumed.stderr and "holds a finished run" in resumed.stderr
    assert len(list(sweep.glob(f"*/{RESULTS_FILE}"))) == 1
