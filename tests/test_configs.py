"""Every option of every config group composes and builds; typos fail at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segbench.engine.build import build_model, build_optimizer
from segbench.models.base import segmenter_of
from tests.conftest import CONFIG_GROUPS, compose_config, make_folder_dataset, options
from tests.fixtures.ade20k import write_ade20k
from tests.fixtures.camvid import write_camvid
from tests.fixtures.cityscapes import write_cityscapes
from tests.fixtures.voc import write_sbd, write_voc


def test_groups_exist():
    for group in CONFIG_GROUPS:
        assert options(group), f"conf/{group}/ is empty"


# backbone options small enough to build every model on in the fast suite (shrunk where needed)
SMALL_BACKBONES = {
    "tiny": [],
    "tiny_resnet": [],
    "unet": ["backbone.widths=[8,16,32,64,128]"],
    "segnet_basic": ["backbone.stages=[[8],[8],[8],[8]]"],
}
# models that upsample with max-pooling switches, and models that need output stride 8
NEEDS_SWITCHES = {"segnet", "segnet_basic", "bayesian_segnet", "deconvnet"}
NEEDS_STRIDE_8 = {"deeplabv1", "deeplabv1_crf", "pspnet", "dilated_fcn"}
# the encoders that keep max-pooling switches; those that cannot be dilated (the transformers),
# and the models that dilate their encoder (to stride 8 or 16)
SWITCHES = {"vgg16", "vgg16_bn", "segnet_basic", "tiny"}
NOT_DILATABLE = {*(f"mit_b{i}" for i in range(6)), "swin_tiny"} | {
    b for b in options("backbone") if b.startswith("vit_")
}
NEEDS_DILATION = NEEDS_STRIDE_8 | {"deeplabv3", "deeplabv3plus", "deeplabv3plus_smp", "lraspp"}
# MobileNetV3 dilates its last stage only (to stride 16, as torchvision's segmentation models)
STRIDE_16_ONLY = {"mobilenetv3_large"}


def refused(model: str, backbone: str) -> bool:
    """Combinations the papers' designs exclude (documented in docs/reference/models.md)."""
    no_switches = backbone not in SWITCHES
    if model in NEEDS_SWITCHES and no_switches:
        return True
    if backbone in NOT_DILATABLE and model in NEEDS_DILATION:
        return True
    return model in NEEDS_STRIDE_8 and backbone in {"unet", *STRIDE_16_ONLY}


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("backbone", sorted(SMALL_BACKBONES))
def test_every_model_on_every_small_backbone(model, backbone, tmp_path):
    overrides = [f"model={model}", f"backbone={backbone}", *SMALL_BACKBONES[backbone]]
    cfg = compose_config("train", overrides, tmp_path)
    if refused(model, backbone):
        with pytest.raises(InstantiationException, match=cfg.backbone.name):
            build_model(cfg.model)
        return
    net = build_model(cfg.model)
    assert net.num_classes == cfg.dataset.num_classes == 7
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 65, 97))["out"]
    assert out.shape == (1, 7, 65, 97)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_trains_at_an_odd_size(model, tmp_path):
    """Forward + backward in training mode at 65x97: logits at input size, and the loss's
    gradient reaches the encoder."""
    cfg = compose_config("train", [f"model={model}", "backbone=tiny"], tmp_path)
    torch.manual_seed(0)
    net = build_model(cfg.model).train()
    out = net(torch.randn(2, 3, 65, 97))
    assert out["out"].shape == (2, 7, 65, 97)
    if "aux" in out:
        assert out["aux"].shape == (2, 7, 65, 97)
    target = torch.randint(0, 7, (2, 65, 97))
    torch.nn.functional.cross_entropy(out["out"], target).backward()
    encoder = segmenter_of(net).encoder
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    if cfg.backbone.freeze:  # the linear probe's: the gradient stops at the frozen encoder
        assert not grads and any(p.grad is not None for p in segmenter_of(net).head.parameters())
        return
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.slow  # 20 models x 18 backbones, 55 s; the fast suite composes and builds every
# model on the small backbones (above), every backbone under FCN-8s (test_every_option.py)
@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_on_every_backbone(model, tmp_path):
    for backbone in options("backbone"):
        cfg = compose_config("train", [f"model={model}", f"backbone={backbone}"], tmp_path)
        OmegaConf.resolve(cfg)
        assert cfg.backbone.name and cfg.model.num_classes == 7
        # a model that asks for a dilated encoder gets one from every backbone config
        assert cfg.backbone.output_stride == cfg.model.get("output_stride")


@pytest.mark.slow
@pytest.mark.parametrize("model", options("model"))
def test_every_model_builds_on_every_full_size_backbone(model, tmp_path):
    for backbone in sorted(set(options("backbone")) - set(SMALL_BACKBONES)):
        cfg = compose_config("train", [f"model={model}", f"backbone={backbone}"], tmp_path)
        if refused(model, backbone):
            with pytest.raises(InstantiationException, match=cfg.backbone.name):
                build_model(cfg.model)
            continue
        net = build_model(cfg.model).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 3, 65, 97))["out"].shape == (1, 7, 65, 97)


def _voc(data: Path) -> None:
    write_voc(data / "VOCdevkit/VOC2012", ["2007_000032", "2007_000039"], ["2007_000033"])
    write_sbd(data / "benchmark_RELEASE/dataset", ["2008_000008"], ["2007_000039"])


REAL_DATASETS = {
    "voc": _voc,
    "voc_aug": _voc,
    "camvid": lambda data: write_camvid(data / "CamVid"),
    "cityscapes": lambda data: write_cityscapes(data / "cityscapes"),
    "ade20k": lambda data: write_ade20k(data / "ADEChallengeData2016"),
}


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_builds(option, tmp_path):
    overrides = [f"dataset={option}", "backbone=tiny"]
    if option == "folder":  # the user's own data: root, classes and names are theirs to give
        root = make_folder_dataset(tmp_path / "data", n=10)
        overrides += [
            f"dataset.source.root={root}",
            "dataset.num_classes=3",
            "dataset.class_names=[a,b,c]",
        ]
    elif option in REAL_DATASETS:  # a tiny copy of the release, in its official layout
        REAL_DATASETS[option](tmp_path / "data")
        overrides.append(f"data_root={tmp_path / 'data'}")
    cfg = compose_config("train", overrides, tmp_path / "run")
    OmegaConf.resolve(cfg)
    assert cfg.model.num_classes == cfg.dataset.num_classes  # by interpolation
    dm = instantiate(cfg.dataset)
    sample = dm.dataset("train")[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape[0] == 3
    assert sample["mask"].shape == sample["image"].shape[1:]
    assert len(dm.class_names) == dm.num_classes


@pytest.mark.parametrize("loss", options("loss"))
def test_every_loss_builds(loss, tmp_path):
    cfg = compose_config("train", [f"loss={loss}"], tmp_path)
    criterion = instantiate(cfg.loss)
    assert criterion.ignore_index == cfg.dataset.ignore_index
    logits = torch.randn(2, 7, 8, 8, requires_grad=True)
    target = torch.randint(0, 7, (2, 8, 8))
    criterion(logits, target).backward()
    assert logits.grad is not None


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler(optimizer, scheduler, tmp_path):
    overrides = [f"optimizer={optimizer}", f"scheduler={scheduler}"]
    if scheduler == "step":  # x0.1 every 3 of the 10 steps (DeepLab v1's: every 2,000)
        overrides.append("scheduler.step_size=3")
    cfg = compose_config("train", overrides, tmp_path)
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(cfg.optimizer)(params)
    if cfg.scheduler:
        sched = instantiate(cfg.scheduler)(opt, total_steps=10)
        lrs = []
        for _ in range(10):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert lrs[-1] < cfg.optimizer.lr  # every schedule decays over the run
        if scheduler == "step":  # after steps 3, 6, 9: three decays of 10x
            assert lrs[-1] == pytest.approx(cfg.optimizer.lr * 1e-3)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_every_trainer_composes(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if cfg.trainer.accelerator in ("cpu", "auto") and cfg.trainer.devices == 1:
        t = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert t.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_builds(logger, tmp_path):
    cfg = compose_config("train", [f"logger={logger}"], tmp_path)
    built = [instantiate(c) for c in (cfg.logger or {}).values()]
    expected = {"default": 2, "csv": 1, "wandb": 1, "none": 0}[logger]
    assert len(built) == expected


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    # backbone.pretrained=false: the tests never download (tests/test_reference.py checks what
    # an experiment that starts from ImageNet weights says when they are not cached)
    overrides = [f"experiment={experiment}", "backbone.pretrained=false"]
    cfg = compose_config("train", overrides, tmp_path)
    assert build_model(cfg.model).num_classes == cfg.dataset.num_classes


def test_debug_fast(tmp_path):
    cfg = compose_config("train", ["debug=fast"], tmp_path)
    assert cfg.backbone.name == "tiny" and cfg.dataset.name == "shapes"
    assert cfg.dataset.source.image_size == 64
    assert cfg.trainer.accelerator == "cpu"


def test_command_line_swaps_every_group(tmp_path):
    cfg = compose_config(
        "train",
        [
            "model=fcn16s",
            "backbone=resnet50",
            "dataset=shapes",
            "loss=ce",
            "optimizer=adamw",
            "scheduler=cosine",
            "trainer=cpu",
            "logger=csv",
            "trainer.max_epochs=3",
        ],
        tmp_path,
    )
    assert (cfg.model.name, cfg.model.variant, cfg.backbone.name) == ("fcn16s", "16s", "resnet50")
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.accelerator == "cpu"


def test_num_classes_and_ignore_index_come_from_the_dataset(tmp_path):
    cfg = compose_config("train", ["dataset.num_classes=7", "dataset.ignore_index=254"], tmp_path)
    assert cfg.model.num_classes == 7
    assert cfg.loss.num_classes == 7
    assert cfg.loss.ignore_index == 254
    assert cfg.dataset.source.ignore_index == 254


def test_misspelt_option_lists_the_available_ones(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("train", ["model=fcn9s"], tmp_path)
    message = str(err.value) + str(err.value.__cause__)
    assert "fcn9s" in message and "fcn8s" in message and "fcn32s" in message


def test_misspelt_key_fails(tmp_path):
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose_config("train", ["trainer.max_epoch=3"], tmp_path)


def test_evaluate_config_composes(tmp_path):
    cfg = compose_config("evaluate", ["ckpt=some.ckpt"], tmp_path)
    assert cfg.ckpt == "some.ckpt" and cfg.get("model") is None
    # the dataset as trained: only the usual tweaks, unset (see evaluation_config)
    # (and no in-memory cache: one pass reads each image once)
    tweaks = {k: v for k, v in cfg.dataset.items() if k != "cache"}
    assert "_target_" not in cfg.dataset and not any(tweaks.values())
    assert cfg.dataset.cache == "none"
    cfg = compose_config("evaluate", ["ckpt=x", "model=fcn8s", "dataset=shapes"], tmp_path)
    assert cfg.model.name == "fcn8s"
