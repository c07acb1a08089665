"""segmentation_models_pytorch (smp) checkpoints as segbench networks: smp (the test-only oracle)
builds each model with random weights and random BatchNorm statistics, ``save_pretrained``
writes it as the hub does (``config.json`` + ``model.safetensors``), and segbench builds the
network of :func:`smp_overrides`, loads the converted tensors strictly and must give the same
logits; plus the converters' refusals and the encoder options smp's topology needs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from segbench.checkpoints.network import build_model
from segbench.config import compose_train_config
from segbench.models.base import count_parameters
from segbench.models.convert import ConversionError
from segbench.models.smp_convert import convert_smp, smp_num_classes, smp_overrides

smp = pytest.importorskip("segmentation_models_pytorch")

TOL = 1e-4


def _randomise(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with random BatchNorm statistics and affine parameters."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(c, generator=generator) - 0.5)
    return model.eval()


def _saved(model: nn.Module, tmp_path: Path) -> tuple[dict, dict]:
    """``(config.json, model.safetensors)`` of ``model`` as ``save_pretrained`` writes them."""
    model.save_pretrained(tmp_path / "smp")
    config = json.loads((tmp_path / "smp" / "config.json").read_text())
    return config, load_file(tmp_path / "smp" / "model.safetensors")


def _network(config: dict) -> nn.Module:
    return build_model(compose_train_config(smp_overrides(config)).model).eval()


def _build_smp(cls, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _randomise(cls(encoder_weights=None, **kwargs))


def _check_parity(model: nn.Module, sizes, tmp_path: Path, any_size: bool = False) -> nn.Module:
    """Convert ``model`` and compare the logits at ``sizes``; ``any_size`` lifts smp's check
    that the sides divide by the encoder's output stride (its computation is defined anyway)."""
    config, state = _saved(model, tmp_path)
    net = _network(config)
    net.load_state_dict(convert_smp(state, config, "test checkpoint", net), strict=True)
    if any_size:
        model.requires_divisible_input_shape = False
    torch.manual_seed(2)
    for size in sizes:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            theirs, ours = model(x), net(x)["out"]
        if isinstance(theirs, tuple):  # (masks, labels) with aux_params: the mask is compared
            theirs = theirs[0]
        assert ours.shape == theirs.shape == (1, config["classes"], *size)
        assert (ours - theirs).abs().max().item() <= TOL, size
    return net


# --- Segformer ------------------------------------------------------------------------------


def test_segformer_mit_b0_matches_smp(tmp_path):
    model = _build_smp(smp.Segformer, encoder_name="mit_b0", classes=5)
    # smp refuses sides that do not divide by 32 but computes any multiple of 4 the same way
    net = _check_parity(model, [(64, 64), (40, 68)], tmp_path, any_size=True)
    assert count_parameters(net) == count_parameters(model)
    # the authors' LayerNorm epsilons (1e-6 in blocks and stage norms, 1e-5 elsewhere)
    eps = sorted(m.eps for m in net.encoder.modules() if isinstance(m, nn.LayerNorm))
    assert eps == sorted(m.eps for m in model.encoder.modules() if isinstance(m, nn.LayerNorm))
    assert {1e-5, 1e-6} == set(eps)


def test_segformer_refuses_other_encoders(tmp_path):
    config, _ = _saved(_build_smp(smp.Segformer, encoder_name="resnet18", classes=3), tmp_path)
    with pytest.raises(ValueError, match="MiT encoders"):
        smp_overrides(config)


# --- UPerNet --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoder", ["tu-convnext_atto", pytest.param("resnet18", marks=pytest.mark.slow)]
)
def test_upernet_matches_smp(encoder, tmp_path):
    model = _build_smp(smp.UPerNet, encoder_name=encoder, classes=4, decoder_channels=32)
    net = _check_parity(model, [(64, 64), (40, 68)], tmp_path, any_size=True)
    assert count_parameters(net) == count_parameters(model)
    assert net.aux_head is None and net.decoder.norms is not None


# --- Unet -----------------------------------------------------------------------------------


def test_unet_resnet18_matches_smp(tmp_path):
    model = _build_smp(smp.Unet, encoder_name="resnet18", classes=3)  # smp's default decoder
    net = _check_parity(model, [(64, 64), (41, 57)], tmp_path)  # smp takes any size
    assert count_parameters(net) == count_parameters(model)


@pytest.mark.slow  # a second encoder or option set of a family tested above
def test_unet_on_a_stride_4_timm_encoder_matches_smp(tmp_path):
    """ConvNeXt starts at stride 4: smp's decoder has two stages without skip (its empty
    stride-2 level, then the input size), bilinear here."""
    model = _build_smp(
        smp.Unet,
        encoder_name="tu-convnext_atto",
        classes=3,
        decoder_channels=(64, 32, 16, 8, 8),
        decoder_interpolation="bilinear",
    )
    _check_parity(model, [(64, 64), (72, 100)], tmp_path)


@pytest.mark.slow  # a second encoder or option set of a family tested above
def test_unet_shallow_encoder_without_norm_matches_smp(tmp_path):
    """encoder_depth=4: smp keeps ResNet's layer4 but never runs it (skipped, with a reason)."""
    model = _build_smp(
        smp.Unet,
        encoder_name="resnet18",
        classes=3,
        encoder_depth=4,
        decoder_channels=(32, 16, 8, 8),
        decoder_use_norm=False,
    )
    net = _check_parity(model, [(64, 64), (71, 97)], tmp_path)
    layer4 = sum(p.numel() for p in model.encoder.layer4.parameters())
    assert count_parameters(net) == count_parameters(model) - layer4


# --- PSPNet ---------------------------------------------------------------------------------


def test_pspnet_resnet18_matches_smp(tmp_path):
    """smp's default: encoder_depth 3 (pooling on the stride-8 level), upsampling 8; smp takes
    sides that divide by 8. Its aux_params classifier is skipped (image-level labels)."""
    model = _build_smp(
        smp.PSPNet,
        encoder_name="resnet18",
        classes=5,
        psp_out_channels=64,
        aux_params={"classes": 5},
    )
    net = _check_parity(model, [(64, 64), (40, 56)], tmp_path)
    assert net.encoder.strides == [2, 4, 8] and net.aux_head is None


# --- DeepLabV3Plus --------------------------------------------------------------------------


def test_deeplabv3plus_resnet18_matches_smp(tmp_path):
    """Output stride 16: smp takes sides that divide by 16 (the x4 upsampled ASPP map must
    meet the stride-4 level)."""
    model = _build_smp(smp.DeepLabV3Plus, encoder_name="resnet18", classes=5, decoder_channels=32)
    net = _check_parity(model, [(64, 64), (48, 80)], tmp_path)
    assert count_parameters(net) == count_parameters(model)
    # smp's make_dilated: every 3x3 conv of layer4 at rate 2, its first block's included
    ours = [m.dilation for m in net.encoder.model.layer4.modules() if _is_3x3(m)]
    theirs = [m.dilation for m in model.encoder.layer4.modules() if _is_3x3(m)]
    assert ours == theirs and set(ours) == {(2, 2)}


def _is_3x3(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)


@pytest.mark.slow  # a second encoder or option set of a family tested above
def test_deeplabv3plus_stride_8_full_aspp_matches_smp(tmp_path):
    model = _build_smp(
        smp.DeepLabV3Plus,
        encoder_name="resnet34",
        encoder_output_stride=8,
        classes=3,
        decoder_channels=32,
        decoder_aspp_separable=False,
    )
    _check_parity(model, [(64, 64), (72, 104)], tmp_path)


@pytest.mark.slow  # a second encoder or option set of a family tested above
def test_deeplabv3plus_timm_encoder_matches_smp(tmp_path):
    """tu- encoders are dilated by timm (first block at the previous rate), as segbench's."""
    model = _build_smp(
        smp.DeepLabV3Plus, encoder_name="tu-convnext_atto", classes=3, decoder_channels=32
    )
    _check_parity(model, [(64, 64), (80, 112)], tmp_path)


def test_dilate_first_block_is_what_changes_the_resnet():
    from segbench.models.encoders import TimmEncoder

    plain = TimmEncoder("resnet18", output_stride=16)
    whole = TimmEncoder("resnet18", output_stride=16, dilate_first_block=True)
    first = [m.dilation for m in plain.model.layer4[0].modules() if isinstance(m, nn.Conv2d)]
    assert (1, 1) in first
    for a, b in zip(plain.modules(), whole.modules(), strict=True):
        if isinstance(a, nn.Conv2d) and a.dilation != b.dilation:
            assert b.dilation == (2, 2) and b.padding == (2, 2)
    assert plain.strides == whole.strides == [2, 4, 8, 16, 16]


# --- refusals -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("unet")
    model = _build_smp(smp.Unet, encoder_name="resnet18", classes=3, decoder_channels=(8,) * 5)
    return _saved(model, tmp_path)


def test_converter_refuses_a_missing_tensor(saved_unet):
    config, state = saved_unet
    net = _network(config)
    state = dict(state)
    del state["decoder.blocks.2.conv1.0.weight"]
    with pytest.raises(ConversionError, match=r"decoder\.blocks\.2\.0\.0\.weight"):
        convert_smp(state, config, "test checkpoint", net)


def test_converter_refuses_an_extra_tensor(saved_unet):
    config, state = saved_unet
    state = {**state, "decoder.blocks.9.conv1.0.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"decoder\.blocks\.9\.0\.0\.weight"):
        convert_smp(state, config, "test checkpoint", _network(config))
    state = {**saved_unet[1], "decoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"left over in the file: decoder\.extra\.weight"):
        convert_smp(state, config, "test checkpoint")


def test_refuses_unsupported_classes_and_encoders(saved_unet):
    config, state = saved_unet
    for kind in ("FPN", "UnetPlusPlus", None):
        with pytest.raises(ValueError, match=f"_model_class {kind!r}.*Segformer, UPerNet, Unet"):
            smp_overrides({**config, "_model_class": kind})
        with pytest.raises(ValueError, match="not supported"):
            convert_smp(state, {**config, "_model_class": kind}, "test checkpoint")
    with pytest.raises(ValueError, match="encoder_name 'efficientnet-b0' is not supported.*mit_b0"):
        smp_overrides({**config, "encoder_name": "efficientnet-b0"})
    with pytest.raises(ValueError, match="Swin"):
        smp_overrides({**config, "encoder_name": "tu-swin_tiny_patch4_window7_224"})
    with pytest.raises(ValueError, match="attention"):
        smp_overrides({**config, "decoder_attention_type": "scse"})
    with pytest.raises(ValueError, match="classes=1"):
        smp_overrides({**config, "classes": 1})


def test_overrides_of_a_published_segformer_config():
    """The config.json of smp-hub/segformer-b2-1024x1024-city-160k as smp writes it (its
    arguments, read from the repository's model card: mit_b2, 768 decoder channels, 19 classes)."""
    config = {
        "_model_class": "Segformer",
        "encoder_name": "mit_b2",
        "encoder_depth": 5,
        "encoder_weights": None,
        "decoder_segmentation_channels": 768,
        "in_channels": 3,
        "classes": 19,
        "activation": None,
        "upsampling": 4,
        "aux_params": None,
    }
    overrides = smp_overrides(config)
    assert overrides[:3] == [
        "model=segformer",
        "backbone=mit_b2",
        "backbone.block_norm_eps=1e-06",
    ]
    assert "model.decoder_dim=768" in overrides and overrides[-1] == "model.num_classes=19"
    assert smp_num_classes(config) == 19
    cfg = compose_train_config(overrides)
    assert cfg.model.num_classes == 19 and cfg.backbone.name == "mit_b2"


# --- the smp options train on any backbone ---------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=segformer", "model.head_upsample=4", "model.decoder_dim=16"],
        [
            "model=upernet",
            "model.channels=16",
            "model.level_norms=true",
            "model.head_upsample=4",
            "model.aux=false",
        ],
        [
            "model=unet",
            "model.upsample=nearest",
            "model.full_resolution=true",
            "model.decoder_channels=[4,8,8,8,8]",
            "model.head_kernel=3",
        ],
        [
            "model=pspnet",
            "model.channels=16",
            "model.aux=false",
            "backbone.out_indices=[0,1,2]",
            "backbone.output_stride=null",
            "model.ppm_global_bn=false",
            "model.ppm_align_corners=true",
            "model.ppm_input_last=true",
            "model.conv_kernel=1",
            "model.head_kernel=3",
            "model.head_upsample=8",
        ],
        ["model=deeplabv3plus_smp", "model.channels=16"],
    ],
    ids=["segformer", "upernet", "unet", "pspnet", "deeplabv3plus_smp"],
)
@pytest.mark.slow  # the options' training path; model=deeplabv3plus_smp trains in test_families
def test_smp_options_train_on_the_tiny_backbone(overrides):
    cfg = compose_train_config([*overrides, "backbone=tiny", "dataset=shapes"])
    net = build_model(cfg.model).train()
    x = torch.randn(2, 3, 64, 72)
    out = net(x)["out"]
    assert out.shape == (2, cfg.model.num_classes, 64, 72)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


# --- ckpt=smp:<repo>: through the hub cache and segbench's loading path ----------------------


def _publish(model: nn.Module, home: Path, repo: str) -> None:
    """``model`` saved by smp into ``home`` laid out as the Hugging Face cache holds ``repo``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    model.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_ckpt_smp_loads_a_hub_repository_with_its_entry(tmp_path, monkeypatch):
    """ckpt=smp:smp-hub/segformer-b0-512x512-ade-160k (random weights in its place in the hub
    cache): the network is built from the repository's config.json, predicts smp's logits, and
    evaluates as the entry says (ADE20K, rescaled to fit 2048x512, sides multiples of 32).
    An unlisted repository needs dataset=, whose class count must be the file's."""
    from segbench.checkpoints.loader import load_model
    from segbench.models.pretrained import PretrainedUnavailable
    from segbench.zoo.registry import ZooEntryError

    model = _build_smp(smp.Segformer, encoder_name="mit_b0", classes=150)
    _publish(model, tmp_path / "hf", "smp-hub/segformer-b0-512x512-ade-160k")
    _publish(model, tmp_path / "hf", "lab/my-segformer")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("smp:smp-hub/segformer-b0-512x512-ade-160k", device="cpu")
    assert loaded.dataset == "ade20k" and loaded.eval_mode == "resize2048x512"
    assert loaded.inference.rescaled(256, 341) == (512, 704)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert (loaded.network(x)["out"] - model(x)).abs().max() <= TOL
    assert load_model("smp:lab/my-segformer", ["dataset=ade20k"], device="cpu").num_classes == 150
    with pytest.raises(ZooEntryError, match="dataset=<name>"):
        load_model("smp:lab/my-segformer", device="cpu")
    with pytest.raises(ZooEntryError, match="150 classes, dataset 'cityscapes' has 19"):
        load_model("smp:lab/my-segformer", ["dataset=cityscapes"], device="cpu")
    with pytest.raises(PretrainedUnavailable, match="segbench weights fetch hf:smp-hub/absent"):
        load_model("smp:smp-hub/absent", ["dataset=ade20k"], device="cpu")
