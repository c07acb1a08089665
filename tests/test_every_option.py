"""Every option of every config group in conf/ is RUN, not only composed: a one-epoch training
(or an evaluation) on a few images per option, so that a broken option cannot land again.

The options are the YAML files of each group, listed when the tests are collected, and
``test_every_option_file_has_a_case`` fails for a file (or a group) that no case runs.

- ``test_option_trains``: ``train(cfg)`` in this process, ``debug=fast`` on 4 / 2 / 2 images
  (``FAST``). The options that ``debug=fast`` selects anyway share one run (``BASELINE``), which
  names each of them. Datasets with files on disk train on a tiny copy in their official layout
  (``tests/fixtures``), never on real data.
- ``test_option_evaluates``: ``evaluate(cfg)`` on a checkpoint, for evaluate.py's callbacks.
- ``test_option_in_a_subprocess``: ``train.py`` as a user runs it (DDP starts processes).
- ``COVERED_ELSEWHERE``: options another test file runs already (every model option but
  GAN-seg's and Mask2Former's, whose cases run their tasks too: the families sweep of
  ``tests/test_families.py``); the check makes sure that test still exists and still runs it.
- ``hydra/launcher=slurm`` needs a cluster: composed and instantiated, then skipped.

``gpu`` and ``ddp`` need CUDA and are skipped without it. Runs too slow for the fast suite are
marked ``slow``: the models on the backbones their configs pick (debug=fast replaces them by
its tiny one), the full-size models of four experiments (the fast suite runs those on the
tiny backbone) and the larger variants of a backbone whose smallest variant runs in the fast
suite (``LARGER_VARIANTS``: MiT-B1 to B5, ResNet-34 and -101, ViT-B). An option found broken may be
marked ``xfail(strict=True)`` with its error, so that it stays visible until fixed; none is now.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segbench.engine.run import evaluate, train
from tests.conftest import (
    CONF,
    CONFIG_GROUPS,
    compose_config,
    make_folder_dataset,
    options,
    run_cli,
)
from tests.fixtures.ade20k import write_ade20k
from tests.fixtures.camvid import write_camvid
from tests.fixtures.cityscapes import write_cityscapes
from tests.fixtures.voc import write_sbd, write_voc

GROUPS = CONFIG_GROUPS
# a few images of each split, one epoch, no progress bar: about a second a run on 2 CPU cores
FAST = [
    "debug=fast",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "dataset.subset.train=4",
    "dataset.subset.val=2",
    "dataset.subset.test=2",
]
# the figures are the slowest part of a tiny run (matplotlib): the callbacks options draw them
LEAN = ["callbacks.run_plots=null", "callbacks.eval_outputs=null"]
# 8 training images in batches of 4: two optimizer steps, so that a schedule shows
TWO_STEPS = ["dataset.subset.train=8"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def option_yaml(group: str, option: str):
    return OmegaConf.load(CONF / group / f"{option}.yaml")


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    assert path.is_file(), f"no results.json in {run_dir}"
    return json.loads(path.read_text())


def assert_miou(res: dict) -> None:
    miou = res["metrics"]["mIoU"]
    assert isinstance(miou, float) and 0.0 <= miou <= 1.0, miou


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- tiny copies of the datasets on disk, in their official layouts ----------------------------
# every side at least 32 pixels: the total stride of debug=fast's tiny backbone


def _voc(data: Path) -> list[str]:
    voc_ids = ["2007_000032", "2007_000039", "2007_000063", "2007_000033", "2007_000042"]
    write_voc(data / "VOCdevkit/VOC2012", voc_ids[:3], voc_ids[3:], size=(32, 48))
    sbd = data / "benchmark_RELEASE/dataset"
    write_sbd(sbd, ["2008_000008", "2008_000015"], voc_ids[3:4], size=(32, 48))
    return [f"data_root={data}"]


def _camvid(data: Path) -> list[str]:
    write_camvid(data / "CamVid", size=(32, 48))
    return [f"data_root={data}"]


def _cityscapes(data: Path) -> list[str]:
    write_cityscapes(data / "cityscapes", per_split=3, size=(32, 64))
    return [f"data_root={data}"]


def _ade20k(data: Path) -> list[str]:
    # 32x40 and 36x40 images: ADE20K's sizes vary
    write_ade20k(data / "ADEChallengeData2016", n_train=4, n_val=2, size=(32, 40))
    return [f"data_root={data}"]


def _folder(data: Path) -> list[str]:
    root = make_folder_dataset(data / "mine", n=6, size=32)
    return [f"dataset.source.root={root}", "dataset.num_classes=3", "dataset.class_names=[a,b,c]"]


FAKE_DATA: dict[str, Callable[[Path], list[str]]] = {
    "voc": _voc,
    "voc_aug": _voc,
    "camvid": _camvid,
    "cityscapes": _cityscapes,
    "ade20k": _ade20k,
    "folder": _folder,
}


def dataset_overrides(option: str, data: Path) -> list[str]:
    """The fake copy of dataset ``option`` under ``data``, with its training crop (500-1024
    pixels) shrunk to the fake images (its random rescale, flip and jitter stay on), and its own
    evaluation batch size, which debug=fast replaces by 4."""
    out = FAKE_DATA[option](data) if option in FAKE_DATA else []
    cfg = option_yaml("dataset", option)
    if cfg.train_transform.get("crop"):
        out.append("dataset.train_transform.crop=[32,32]")
    out.append(f"dataset.eval_batch_size={cfg.eval_batch_size}")
    return out


# --- what each option shows in its run ---------------------------------------------------------

Check = Callable[[dict, Path], None]


def _eval_mode(expected: str) -> Check:
    def check(res: dict, run_dir: Path) -> None:
        assert res["eval_mode"] == expected

    return check


def _learning_rates(run_dir: Path) -> list[float]:
    rows = csv_rows(run_dir)
    (key,) = [k for k in rows[0] if k.startswith("lr-")]  # LearningRateMonitor's column
    return [float(r[key]) for r in rows if r[key]]


def _optimizer(option: str) -> Check:
    name = option_yaml("optimizer", option)._target_.rsplit(".", 1)[-1]

    def check(res: dict, run_dir: Path) -> None:
        assert f"lr-{name}" in csv_rows(run_dir)[0]

    return check


def _scheduler(option: str) -> Check:
    def check(res: dict, run_dir: Path) -> None:
        lrs = _learning_rates(run_dir)
        assert len(lrs) >= 2, lrs
        if option == "step":  # step_size=1: x gamma after every step
            assert lrs[1] == pytest.approx(lrs[0] * 0.1), lrs
        elif option_yaml("scheduler", option):
            assert lrs[-1] < lrs[0], lrs  # decays from the first step on
        else:
            assert len(set(lrs)) == 1, lrs  # scheduler=none: a constant learning rate

    return check


def _logger(option: str) -> Check:
    cfg = option_yaml("logger", option)  # its loggers, and those of the options it extends
    kinds = {*cfg.get("defaults", []), *(k for k in cfg if k != "defaults")}

    def check(res: dict, run_dir: Path) -> None:
        assert (run_dir / "csv" / "metrics.csv").is_file() == ("csv" in kinds)
        offline = list((run_dir / "wandb").glob("offline-run-*"))  # no key: offline
        assert len(offline) == ("wandb" in kinds), offline
        if not kinds:
            assert not (run_dir / "csv").exists() and not (run_dir / "wandb").exists()

    return check


def _train_callbacks(res: dict, run_dir: Path) -> None:
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").is_file()
    assert res["checkpoint"] == str(ckpts / "best.ckpt")
    for name in ("curves.png", "val_predictions.png", "history.json"):  # run_plots
        assert (run_dir / name).is_file(), name
    _evaluation_callbacks(res, run_dir)


def _evaluation_callbacks(res: dict, run_dir: Path) -> None:
    for name in ("confusion_matrix.png", "per_class_iou.png"):  # eval_outputs
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "panels").glob("*.png"))


def _evaluation_in_training(res: dict, run_dir: Path) -> None:
    _evaluation_callbacks(res, run_dir)
    assert not (run_dir / "curves.png").exists()  # no run_plots in callbacks=evaluation


def _fast(res: dict, run_dir: Path) -> None:
    from segbench.inference.fast import fast_precision

    trainer = res["config"]["trainer"]
    assert res["config"]["fast"] == {"channels_last": True, "compile": False}
    if trainer["precision"] != "bf16-mixed":  # not forced: the machine's choice, resolved
        assert trainer["precision"] == fast_precision(trainer["accelerator"])


def _evaluation_default(res: dict, run_dir: Path) -> None:
    """Its figures ran: the boundary and calibration entries, their per-image rows written."""
    assert res["boundary"]["computed"] and res["metrics"]["bf"] is not None
    assert res["calibration"]["pixels"] > 0 and res["calibration"]["ece"] is not None
    saved = np.load(run_dir / "per_image.npz")
    assert {"bf", "boundary_counts"} <= set(saved.files)


def _adversarial(res: dict, run_dir: Path) -> None:
    assert res["model"] == "ganseg_fcn8s"
    assert res["config"]["task"]["_target_"].endswith("AdversarialTask")


CHECKS: dict[str, Check] = {
    "model=deeplabv1_crf": _eval_mode("single-scale+CRF"),
    "model=bayesian_segnet": _eval_mode("single-scale+MC-dropout x8"),
    "task=adversarial": _adversarial,
    "inference=whole": _eval_mode("single-scale"),
    "inference=slide": _eval_mode("slide"),
    "inference=ms_flip": _eval_mode("ms+flip"),
    "evaluation=default": _evaluation_default,
    "callbacks=train": _train_callbacks,
    "trainer=fast": _fast,
    **{f"optimizer={o}": _optimizer(o) for o in options("optimizer")},
    **{f"scheduler={o}": _scheduler(o) for o in options("scheduler")},
    **{f"logger={o}": _logger(o) for o in options("logger")},
}


# --- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    covers: list[str]  # the options ("group=option") this run runs
    overrides: list[str]
    data: Callable[[Path], list[str]] | None = None  # writes data under a folder: overrides
    checks: list[Check] = field(default_factory=list)
    variant: str = ""  # names a second run of an option
    name: str = ""
    marks: list = field(default_factory=list)

    def __post_init__(self):
        self.checks = [*self.checks, *(CHECKS[o] for o in self.covers if o in CHECKS)]

    @property
    def id(self) -> str:
        return self.name or self.covers[0] + (f":{self.variant}" if self.variant else "")

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


# what debug=fast selects anyway, each named: one run (the figures and schedule on) runs them all
BASELINE = Case(
    covers=[
        "debug=fast",
        "model=fcn8s",
        "backbone=tiny",
        "dataset=shapes",
        "loss=ce",
        "optimizer=sgd",
        "scheduler=poly",
        "inference=whole",
        "evaluation=default",
        "trainer=cpu",
        "logger=csv",
        "callbacks=train",
        "task=segmentation",
    ],
    overrides=[],
    name="debug=fast:defaults",
)
BASELINE.overrides = [o for o in BASELINE.covers if o != "debug=fast"] + TWO_STEPS

# Mask2Former at a quarter of its width, a tenth of its queries and 1,024 points a mask: the
# same code paths (the matching, the set loss, every decoder layer) in a few seconds
SMALL_MASK2FORMER = [
    "model.hidden_dim=64",  # GroupNorm (32 groups): two channels a group, also on a 1x1 map
    "model.dim_feedforward=64",
    "model.enc_dim_feedforward=64",
    "model.num_queries=10",
    "task.num_points=1024",
]

# experiments whose own full-size model trains in a few seconds at 32-64 px; the others train
# on debug=fast's tiny backbone in the fast suite, and with their own one in the slow suite
FULL_MODEL_FAST = {
    "fcn8s_r18_1xb16-10e_shapes-64",
    "unet_unet-bn_1xb16-10e_shapes-64",
    "segnet_vgg16bn_1xb12-40k_camvid-360x480",
}


def experiment_defaults(name: str) -> dict[str, str]:
    """``{group: option}`` of the experiment's ``override /group: option`` defaults."""
    out = {}
    for entry in option_yaml("experiment", name).defaults:
        if not isinstance(entry, str):  # "_self_"
            for key, value in entry.items():
                out[key.removeprefix("override /")] = value
    return out


def paper_backbone(model: str) -> str | None:
    """The backbone option a model config picks (``override /backbone@...``), if any."""
    for entry in option_yaml("model", model).get("defaults", []):
        if isinstance(entry, str):  # a model config it extends; others (_self_, a package of
            # keys such as /frozen_backbone) pick no backbone
            own = CONF / "model" / f"{entry}.yaml"
            picked = paper_backbone(entry) if own.is_file() else None
        else:
            picked = next((v for k, v in entry.items() if "/backbone" in k), None)
        if picked:
            return picked
    return None


def experiment_cases(name: str) -> list[Case]:
    """The experiment on one CPU for one step, validated after it, on its dataset's fake copy
    (DDP is run by the trainer options; CPU has no SyncBatchNorm)."""
    picks = experiment_defaults(name)
    dataset = picks.get("dataset", "shapes")
    overrides = [f"experiment={name}", "trainer.devices=1", "trainer.max_steps=1", *LEAN]
    if option_yaml("experiment", name).get("backbone", {}).get("pretrained"):
        # the paper's ImageNet start: these tests never touch the network (the loading itself
        # is tested offline in tests/test_pretrained.py and tests/test_reference.py)
        overrides.append("backbone.pretrained=false")
    if option_yaml("experiment", name).get("trainer", {}).get("val_check_interval"):
        overrides.append("trainer.val_check_interval=1")  # every N > 1 steps, across epochs
    if picks.get("trainer") in ("ddp", "ddp_cpu"):
        overrides += ["trainer.strategy=auto", "trainer.sync_batchnorm=false"]
    if picks.get("model") == "mask2former":
        overrides += SMALL_MASK2FORMER
    if option_yaml("experiment", name).get("inference", {}).get("crop"):
        # the windows of a slide evaluation at the fake images' size (a 1024x1024 window would
        # pad every 32x64 image to it)
        overrides += ["inference.crop=[32,64]", "inference.stride=[32,64]"]
    if list(option_yaml("experiment", name).get("inference", {}).get("scales", [1.0])) != [1.0]:
        # the fake data's images are a few pixels wide: at half scale the tiny backbone's
        # deepest level would be empty
        overrides.append("inference.scales=[1.0]")

    def data(root: Path) -> list[str]:
        return dataset_overrides(dataset, root)

    def check(res: dict, run_dir: Path) -> None:
        assert res["dataset"] == dataset and res["config"]["trainer"]["max_steps"] == 1

    own = [f"backbone={picks['backbone']}"] if "backbone" in picks else []
    full = Case([f"experiment={name}"], [*overrides, *own], data, [check])
    if name in FULL_MODEL_FAST or not own:
        return [full]
    full.variant, full.marks = f"backbone={picks['backbone']}", [pytest.mark.slow]
    return [Case([f"experiment={name}"], overrides, data, [check], variant="tiny-backbone"), full]


# larger variants -> the smaller one of the same encoder class whose run stays in the fast suite
LARGER_VARIANTS = {
    **{f"mit_b{i}": "mit_b0" for i in range(1, 6)},
    "resnet34": "resnet18",
    "resnet101": "resnet50",
    "resnet101_v1c": "resnet50_v1c",
    "vit_base_patch14_dinov2": "vit_small_patch14_dinov2",
}


def build_train_cases() -> list[Case]:
    in_baseline = set(BASELINE.covers)
    cases = [BASELINE]

    def add(group: str, option: str, extra: list[str] | None = None, **kw) -> None:
        covers = [f"{group}={option}"]
        if covers[0] not in in_baseline:
            cases.append(Case(covers, [f"{group}={option}", *LEAN, *(extra or [])], **kw))

    for option in options("model"):
        # every model on debug=fast's tiny backbone (it keeps pooling indices and dilates, so
        # every model runs on it). GAN-seg is trained by the adversarial task: one run for both
        if option == "ganseg":
            cases.append(
                Case(
                    ["model=ganseg", "task=adversarial"],
                    ["model=ganseg", "task=adversarial", *LEAN],
                )
            )
        elif option == "mask2former":  # trained by its own task: one run for both
            cases.append(
                Case(
                    ["model=mask2former", "task=mask_classification"],
                    ["model=mask2former", "task=mask_classification", *LEAN, *SMALL_MASK2FORMER],
                )
            )
        # every other model: the families sweep trains it on debug=fast (COVERED_ELSEWHERE)
        # and on the backbone its config picks (which debug=fast replaces): full size, slow
        if paper_backbone(option):
            extra = [f"model={option}", f"backbone={paper_backbone(option)}", *LEAN]
            cases.append(
                Case([f"model={option}"], extra, variant="paper-backbone", marks=[pytest.mark.slow])
            )
    for option in options("backbone"):
        # on FCN-8s at 64x64; a plain ViT (one level, stride 14) on the linear probe it is for.
        # A larger variant of a backbone whose smallest variant runs here runs the same code
        # with more layers or wider ones: slow (LARGER_VARIANTS)
        marks = [pytest.mark.slow] if option in LARGER_VARIANTS else []
        add(
            "backbone",
            option,
            ["model=linear_probe"] if option.startswith("vit_") else [],
            marks=marks,
        )
    for option in options("dataset"):
        add("dataset", option, data=lambda root, o=option: dataset_overrides(o, root))
    for group in ("loss", "optimizer"):
        for option in options(group):
            add(group, option)
    for option in options("scheduler"):
        # step: decay after the first step, so that two steps show it
        own = ["scheduler.step_size=1"] if option == "step" else []
        add("scheduler", option, [*TWO_STEPS, *own])
    for group in ("inference", "logger"):
        for option in options(group):
            add(group, option)
    # trainer=default's own device choice (auto), which debug=fast sets to the CPU
    add("trainer", "default", ["trainer.accelerator=auto"])
    add("trainer", "gpu", ["trainer.accelerator=gpu"], marks=[CUDA])
    add("trainer", "fast")  # the machine's precision (fp32 on a CPU without AMX) + NHWC
    cases.append(  # and bf16 forced: autocast on the CPU, as on a CPU with AMX
        Case(
            ["trainer=fast"],
            ["trainer=fast", "trainer.precision=bf16-mixed", *LEAN],
            variant="bf16",
        )
    )
    cases.append(
        Case(
            ["callbacks=evaluation"],
            ["callbacks=evaluation"],
            checks=[_evaluation_in_training],
            variant="train.py",
        )
    )
    for option in options("experiment"):
        cases += experiment_cases(option)
    # debug=fast on a dataset whose images vary in size (ADE20K's; VOC's too): it keeps the
    # dataset's eval_batch_size of 1
    cases.append(
        Case(
            ["debug=fast"],
            ["dataset=ade20k", "dataset.train_transform.crop=[32,32]", *LEAN],
            data=FAKE_DATA["ade20k"],
            variant="dataset=ade20k",
        )
    )
    return cases


TRAIN_CASES = build_train_cases()


@pytest.mark.parametrize("case", [c.param() for c in TRAIN_CASES])
def test_option_trains(case: Case, tmp_path):
    overrides = [*FAST, *case.overrides]
    if case.data is not None:
        overrides += case.data(tmp_path / "data")
    run_dir = tmp_path / "run"
    cfg = compose_config("train", overrides, run_dir)
    returned = train(cfg)
    res = read_results(run_dir)
    assert returned == res and res["kind"] == "train"
    assert_miou(res)
    assert (res["model"], res["backbone"], res["dataset"]) == (
        cfg.model.name,
        cfg.backbone.name,
        cfg.dataset.name,
    )
    for check in case.checks:
        check(res, run_dir)


# --- evaluate.py's callbacks -------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config("train", [*FAST, "logger=none", *LEAN], run_dir))
    return run_dir / "checkpoints" / "best.ckpt"


def _evaluate_callbacks(option: str) -> Check:
    def check(res: dict, run_dir: Path) -> None:
        _evaluation_callbacks(res, run_dir)
        # callbacks=evaluate keeps every prediction when asked; callbacks=evaluation never
        saved = list((run_dir / "predictions").glob("*.png"))
        assert len(saved) == (res["num_images"] if option == "evaluate" else 0)

    return check


EVAL_CASES = [
    Case(
        [f"callbacks={o}"],
        [f"callbacks={o}", "save_predictions=true"],
        None,
        [_evaluate_callbacks(o)],
        variant="evaluate.py" if o == "evaluation" else "",
    )
    for o in ("evaluate", "evaluation")
]


@pytest.mark.parametrize("case", [c.param() for c in EVAL_CASES])
def test_option_evaluates(case: Case, checkpoint, tmp_path):
    run_dir = tmp_path / "eval"
    overrides = [
        f"ckpt={checkpoint}",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "logger=none",
        *case.overrides,
    ]
    returned = evaluate(compose_config("evaluate", overrides, run_dir))
    res = read_results(run_dir)
    assert returned == res and res["kind"] == "evaluate" and res["checkpoint"] == str(checkpoint)
    assert_miou(res)
    for check in case.checks:
        check(res, run_dir)


# --- train.py in a subprocess: DDP launches its processes from a script ------------------------

SUBPROCESS_CASES = [
    # every GPU of the machine (one GPU: a world of one); trainer=ddp_cpu: COVERED_ELSEWHERE
    Case(["trainer=ddp"], ["trainer=ddp", "trainer.accelerator=gpu", *LEAN], marks=[CUDA]),
]


@pytest.mark.parametrize("case", [c.param() for c in SUBPROCESS_CASES])
def test_option_in_a_subprocess(case: Case, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train.py", *FAST, *case.overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    res = read_results(run_dir)
    assert_miou(res)
    assert res["config"]["trainer"]["strategy"] == "ddp"
    assert res["config"]["trainer"]["sync_batchnorm"] is True


# --- W&B twice in one process: what Hydra's sequential launcher does with logger=default -------


def test_wandb_logger_twice_in_one_process(tmp_path):
    """What Hydra's sequential launcher does with the default logger: each run ends its W&B
    run and puts back WANDB_MODE (Lightning's offline logger sets it to 'dryrun')."""
    for name in ("a", "b"):
        train(compose_config("train", [*FAST, *LEAN, "logger=wandb"], tmp_path / name))
    for name in ("a", "b"):
        assert read_results(tmp_path / name)["kind"] == "train"
        assert len(list((tmp_path / name / "wandb").glob("offline-run-*"))) == 1, name


# --- options that other test files run -------------------------------------------------------

# option -> (test module, test function, a string its source holds because it runs the option)
COVERED_ELSEWHERE = {
    "trainer=ddp_cpu": (
        "tests.test_ddp",
        "test_two_process_training_writes_one_results_file",
        '"trainer=ddp_cpu"',
    ),
    # a 2-job multirun with the default launcher, which conf/train.yaml sets (checked below)
    "hydra/launcher=sequential": (
        "tests.test_sweeps",
        "test_multirun_writes_the_leaderboard_of_its_own_sweep",
        '"-m"',
    ),
    "hydra/launcher=parallel": (  # slow there
        "tests.test_sweeps",
        "test_parallel_launcher_sweep_writes_the_leaderboard",
        '"hydra/launcher=parallel"',
    ),
    "hydra/sweeper=search": (  # slow there; test_optuna_search_maximises_... runs it in-process
        "tests.test_sweeps",
        "test_optuna_search_optimises_best_val_miou_of_real_runs",
        '"hydra/sweeper=search"',
    ),
}


# every model option but the two whose case also runs their task: trained on debug=fast by the
# families sweep (train.py -m model=<every option>), whose test checks each one's results
COVERED_ELSEWHERE.update(
    {
        f"model={option}": (
            "tests.test_families",
            "test_every_model_option_writes_valid_results",
            "assert sorted(sweep) == MODELS",
        )
        for option in options("model")
        if option not in ("ganseg", "mask2former") and f"model={option}" not in BASELINE.covers
    }
)


@pytest.mark.parametrize("option", sorted(COVERED_ELSEWHERE))
def test_option_run_by_another_test(option):
    module, name, needle = COVERED_ELSEWHERE[option]
    func = getattr(importlib.import_module(module), name, None)
    assert func is not None, f"{module}.{name}, which ran {option}, is gone: run it here"
    assert needle in inspect.getsource(func), f"{module}.{name} no longer runs {option}"
    if option == "hydra/launcher=sequential":
        defaults = OmegaConf.load(CONF / "train.yaml").defaults
        assert {"override hydra/launcher": "sequential"} in defaults


COMPOSED_ONLY = ["hydra/launcher=slurm"]


def test_slurm_launcher_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"
    pytest.skip(
        "hydra/launcher=slurm submits jobs to a SLURM cluster, which no test machine has: "
        "composed and instantiated only (tests/test_sweeps.py checks its sbatch script)"
    )


# --- every option file has a case --------------------------------------------------------------


def test_every_option_file_has_a_case():
    # conf/zoo is the registry of published checkpoints (ckpt=<source>:<name>), not a group
    # Hydra composes: tests/test_zoo.py and the converters' tests run its entries
    groups = {
        str(p.parent.relative_to(CONF))
        for p in CONF.rglob("*.yaml")
        if p.parent != CONF and p.parent.name != "zoo"
    }
    assert groups == set(GROUPS), f"groups without cases, or gone: {groups ^ set(GROUPS)}"
    wanted = {f"{g}={o}" for g in GROUPS for o in options(g)}
    cases = TRAIN_CASES + EVAL_CASES + SUBPROCESS_CASES
    run = {o for c in cases if not any(m.name == "xfail" for m in c.marks) for o in c.covers}
    covered = run | set(COVERED_ELSEWHERE) | set(COMPOSED_ONLY)
    assert wanted <= covered, f"options that no test runs: {sorted(wanted - covered)}"
    assert covered <= wanted, f"cases of no option file: {sorted(covered - wanted)}"
    for case in cases:  # each case names the options it runs
        named = [*FAST, *case.overrides]
        assert all(o in named for o in case.covers), (case.id, case.covers, named)
    # a run of each option in the fast suite too (slow: full-size models, again), but for the
    # larger variants of a backbone whose smaller variant runs there (LARGER_VARIANTS)
    fast = {o for c in cases if not any(m.name == "slow" for m in c.marks) for o in c.covers}
    larger = {f"backbone={b}" for b in LARGER_VARIANTS}
    assert wanted - fast - larger - set(COVERED_ELSEWHERE) - set(COMPOSED_ONLY) == set()
    assert {f"backbone={b}" for b in LARGER_VARIANTS.values()} <= fast
