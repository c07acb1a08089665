"""UPerNet (segbench.models.upernet) against transformers' UperNetForSemanticSegmentation on the
same random weights, the backbone converter (segbench.models.hf_backbones) for ConvNeXt, Swin
and ResNet, and the TimmEncoder options they need (channels-last Swin, out_norms, refusals)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segbench.models.base import count_parameters
from segbench.models.convert import ConversionError, StateDictConverter
from segbench.models.encoders import TimmEncoder
from segbench.models.hf_backbones import convert_backbone
from segbench.models.upernet import UPerNet
from segbench.models.upernet_hf import convert_upernet

transformers = pytest.importorskip("transformers")

STAGES = ["stage1", "stage2", "stage3", "stage4"]
SWIN = "swin_tiny_patch4_window7_224"


def _hf_backbone_config(kind: str):
    """A small transformers backbone config, and the TimmEncoder arguments of the same net."""
    if kind == "convnext":
        cfg = transformers.ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], out_features=STAGES
        )
        return cfg, dict(name="convnext_tiny", out_norms=True,
                         model_kwargs=dict(dims=[8, 16, 24, 32], depths=[1, 1, 2, 1]))  # fmt: skip
    if kind == "swin":
        cfg = transformers.SwinConfig(
            embed_dim=8, depths=[1, 2, 2, 1], num_heads=[1, 1, 2, 2], window_size=7,
            out_features=STAGES,
        )  # fmt: skip
        small = dict(embed_dim=8, depths=[1, 2, 2, 1], num_heads=[1, 1, 2, 2])
        return cfg, dict(name=SWIN, out_norms=True, model_kwargs=small)
    cfg = transformers.ResNetConfig(  # timm's ResNet stem is 64 wide whatever the stages
        embedding_size=64, hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 1, 1], out_features=STAGES
    )
    return cfg, dict(
        name="resnet50", model_kwargs=dict(channels=[4, 8, 12, 16], layers=[1, 2, 1, 1])
    )


# sizes: 64x64 and one that is no multiple of 32 (Swin's: no multiple of 4 either, so that the
# image, every window and every patch merging is padded)
SIZES = {"convnext": [(64, 64), (72, 100)], "swin": [(64, 64), (66, 98)],
         "resnet": [(64, 64), (72, 100)]}  # fmt: skip


@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Every parameter and BatchNorm statistic random at a scale that keeps the logits O(1)
    (transformers' init has LayerScale 1e-6 and near-zero heads, which would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        values = torch.rand(tensor.shape, generator=gen) * 0.6 - 0.3
        if name.endswith("running_var"):
            values = values + 1.0
        elif tensor.dim() == 1 and name.endswith("weight"):  # norm scales
            values = values + 1.0
        elif "layer_scale" in name:
            values = values + 0.5
        tensor.copy_(values)


def _converted_encoder(kind: str) -> tuple[nn.Module, TimmEncoder]:
    cfg, kwargs = _hf_backbone_config(kind)
    hf = transformers.AutoBackbone.from_config(cfg).eval()
    _randomize(hf)
    encoder = TimmEncoder(**kwargs).eval()
    converter = StateDictConverter(hf.state_dict(), f"random {kind} backbone")
    convert_backbone(converter, "", "", cfg.to_dict())
    converter.load_into(encoder)
    return hf, encoder


@pytest.mark.parametrize("kind", ["convnext", "swin", "resnet"])
def test_convert_backbone_gives_the_transformers_features(kind):
    torch.manual_seed(0)
    hf, encoder = _converted_encoder(kind)
    for size in SIZES[kind]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            theirs = hf(x).feature_maps
            ours = encoder(x)[-4:]  # a ResNet's stride-2 level aside
        assert [f.shape for f in ours] == [f.shape for f in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a.abs().max() > 0.1
            assert (a - b).abs().max() <= 1e-4, (kind, size)


def _upernet_pair(kind: str):
    """transformers' UperNet with a small backbone, random weights, and segbench's with them."""
    backbone, kwargs = _hf_backbone_config(kind)
    cfg = transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=32, auxiliary_channels=16, num_labels=5
    )
    hf = transformers.UperNetForSemanticSegmentation(cfg).eval()
    _randomize(hf)
    net = UPerNet(TimmEncoder(**kwargs), 5, channels=32, aux_channels=16).eval()
    state = convert_upernet(hf.state_dict(), cfg.to_dict(), f"random UperNet ({kind})", net)
    net.load_state_dict(state, strict=False)  # num_batches_tracked: checked by result(net)
    return hf, net, cfg


@pytest.mark.parametrize("kind", ["convnext", "swin", "resnet"])
def test_upernet_matches_transformers(kind):
    hf, net, _ = _upernet_pair(kind)
    for size in SIZES[kind]:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            theirs = hf(x).logits
            ours = net(x)["out"]
            # the auxiliary head on the same features as transformers' auxiliary_head
            aux_ours = net.aux_head(net.encoder(x)[net.aux_index])
            aux_theirs = hf.auxiliary_head(hf.backbone(x).feature_maps)
        assert ours.shape == theirs.shape == (1, 5, *size)
        assert theirs.std() > 0.1 and aux_theirs.std() > 0.1
        assert (ours - theirs).abs().max() <= 1e-4, (kind, size)
        assert (aux_ours - aux_theirs).abs().max() <= 1e-4, (kind, size)


def test_the_converter_refuses_a_missing_and_an_extra_tensor():
    hf, net, cfg = _upernet_pair("convnext")
    state = hf.state_dict()
    missing = dict(state)
    del missing["decode_head.fpn_convs.1.conv.weight"]
    with pytest.raises(ConversionError, match=r"decoder\.fpn_convs\.1\.0\.weight"):
        convert_upernet(missing, cfg.to_dict(), "a checkpoint", net)
    extra = {**state, "decode_head.extra.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"left over.*decode_head\.extra\.weight"):
        convert_upernet(extra, cfg.to_dict(), "a checkpoint", net)
    lost = dict(state)
    del lost["backbone.encoder.stages.2.layers.1.dwconv.weight"]
    with pytest.raises(ConversionError, match=r"stages_2\.blocks\.1\.conv_dw\.weight"):
        convert_upernet(lost, cfg.to_dict(), "a checkpoint", net)


def test_the_converter_reads_the_hub_key_names_of_swin():
    """The files on the hub have transformers 4's names (attention.self.query, ...,
    relative_position_index, no ``swin.`` level): same result as transformers 5's."""
    hf, net, cfg = _upernet_pair("swin")
    renames = [("swin.", ""), ("attention.q_proj", "attention.self.query"),
               ("attention.k_proj", "attention.self.key"),
               ("attention.v_proj", "attention.self.value"),
               ("attention.relative_position_bias.relative_position_bias_table",
                "attention.self.relative_position_bias_table"),
               ("attention.o_proj", "attention.output.dense"),
               ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]  # fmt: skip
    hub = {}
    for key, value in hf.state_dict().items():
        if key.startswith("backbone.swin.layernorm"):
            continue  # SwinBackbone's files have no final LayerNorm
        for old, new in renames:
            key = key.replace(old, new)
        hub[key] = value
        if key.endswith("attention.self.relative_position_bias_table"):
            index = key.replace("bias_table", "index")
            hub[index] = torch.zeros(49 * 49, dtype=torch.long)
    ours = convert_upernet(hf.state_dict(), cfg.to_dict(), "memory", net)
    from_hub = convert_upernet(hub, cfg.to_dict(), "hub", net)
    assert ours.keys() == from_hub.keys()
    assert all(torch.equal(ours[k], from_hub[k]) for k in ours)


def test_convert_backbone_refuses_other_backbones():
    converter = StateDictConverter({}, "a checkpoint")
    with pytest.raises(ConversionError, match="'dinat'"):
        convert_backbone(converter, "backbone.", "encoder.", {"model_type": "dinat"})
    resnet = {"model_type": "resnet", "downsample_in_bottleneck": True}
    with pytest.raises(ConversionError, match="downsample_in_bottleneck"):
        convert_backbone(converter, "backbone.", "encoder.", resnet)


def test_swin_encoder_is_channels_first_at_any_size_and_cannot_dilate():
    small = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
    enc = TimmEncoder(SWIN, out_norms=True, model_kwargs=small)
    assert enc.strides == [4, 8, 16, 32] and enc.channels == [8, 16, 32, 64]
    assert [n.eps for n in enc.out_norms] == [1e-5] * 4
    feats = enc(torch.randn(1, 3, 65, 97))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 17, 25), (1, 16, 9, 13), (1, 32, 5, 7),
                                               (1, 64, 3, 4)]  # fmt: skip
    for stride in (8, 16):
        with pytest.raises(ValueError, match=f"{SWIN}.*cannot dilate"):
            TimmEncoder(SWIN, output_stride=stride, model_kwargs=small)
    short = TimmEncoder(SWIN, until_stride=8, out_norms=True, model_kwargs=small)
    assert short.strides == [4, 8] and len(short.out_norms) == 2
    assert not any(k.startswith("model.layers_2") for k in short.state_dict())
    assert len(short(torch.randn(1, 3, 40, 40))) == 2


@pytest.mark.parametrize("output_stride", [8, 16])
def test_convnext_encoder_dilates(output_stride):
    small = dict(dims=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    enc = TimmEncoder("convnext_tiny", output_stride=output_stride, out_norms=True,
                      model_kwargs=small)  # fmt: skip
    assert enc.strides[-1] == output_stride and enc.output_stride == output_stride
    assert [n.eps for n in enc.out_norms] == [1e-6] * 4
    assert enc.strides == {8: [4, 8, 8, 8], 16: [4, 8, 16, 16]}[output_stride]
    sizes = [tuple(f.shape[-2:]) for f in enc(torch.randn(1, 3, 65, 97))]
    assert sizes == {8: [(16, 24), (8, 12), (8, 12), (8, 12)],
                     16: [(16, 24), (8, 12), (4, 6), (4, 6)]}[output_stride]  # fmt: skip


def test_resnet_encoder_has_no_out_norms_by_default():
    enc = TimmEncoder("test_resnet")
    assert enc.out_norms is None and not any("out_norms" in k for k in enc.state_dict())


@pytest.mark.parametrize("backbone", ["tiny", "tiny_resnet", "resnet18"])
def test_upernet_builds_and_trains_on_small_backbones(backbone, tmp_path):
    from segbench.engine.build import build_model
    from tests.conftest import compose_config

    cfg = compose_config("train", ["model=upernet", f"backbone={backbone}"], tmp_path)
    assert cfg.model.aux_weight == 0.4 and cfg.model.channels == 512
    cfg.model.channels = 64  # the paper's 512 adds nothing here but seconds
    torch.manual_seed(0)
    net = build_model(cfg.model).train()
    assert net.aux_weight == 0.4 and net.decoder.num_levels == 4  # strides 4..32
    out = net(torch.randn(2, 3, 65, 97))
    assert out["out"].shape == out["aux"].shape == (2, 7, 65, 97)
    (out["out"].mean() + out["aux"].mean()).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert set(net(torch.randn(1, 3, 65, 97))) == {"out"}


def test_upernet_refuses_a_single_level_encoder():
    enc = TimmEncoder("test_resnet", out_indices=[4])
    with pytest.raises(ValueError, match="test_resnet.*multi-level"):
        UPerNet(enc, 3)


def test_upernet_trains_through_the_engine(tmp_path):
    from segbench.engine.run import train
    from tests.conftest import compose_config

    overrides = ["debug=fast", "model=upernet", "trainer.max_epochs=1", "dataset.subset.train=4",
                 "dataset.subset.val=2", "dataset.subset.test=2", "callbacks.run_plots=null",
                 "callbacks.eval_outputs=null"]  # fmt: skip
    cfg = compose_config("train", overrides, tmp_path / "run")
    assert cfg.backbone.name == "tiny"
    result = train(cfg)
    assert result


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["convnext", "swin"])
def test_paper_size_upernet_matches_transformers_and_counts_60m(kind):
    """UPerNet ConvNeXt-T / Swin-T at 150 classes, as the papers: about 60M parameters with
    the auxiliary head (measured 60.24M / 59.94M; 59.32M / 59.02M without it)."""
    if kind == "convnext":
        backbone = transformers.ConvNextConfig(
            hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3], out_features=STAGES
        )
        encoder = TimmEncoder("convnext_tiny", out_norms=True)
    else:
        backbone = transformers.SwinConfig(
            embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], out_features=STAGES
        )
        encoder = TimmEncoder(SWIN, out_norms=True)
    cfg = transformers.UperNetConfig(backbone_config=backbone, num_labels=150)
    hf = transformers.UperNetForSemanticSegmentation(cfg).eval()
    net = UPerNet(encoder, 150).eval()
    total, aux = count_parameters(net), count_parameters(net.aux_head)
    unused = sum(p.numel() for n, p in hf.named_parameters() if "swin.layernorm" in n)
    assert total == count_parameters(hf) - unused  # SwinModel's final norm: never applied
    expected = {"convnext": (60_242_636, 923_798), "swin": (59_941_862, 923_798)}[kind]
    assert (total, aux) == expected
    net.load_state_dict(convert_upernet(hf.state_dict(), cfg.to_dict(), kind, net), strict=False)
    for size in [(64, 64), (72, 100)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert (net(x)["out"] - hf(x).logits).abs().max() <= 1e-4


def test_paper_configs_compose_and_small_variants_build_from_yaml(tmp_path):
    """model=upernet picks ConvNeXt-T; swin_tiny composes; timm arguments pass through the YAML
    (Hydra's lists included) as ``backbone.model_kwargs``; a training batch of 1 is refused."""
    from omegaconf import OmegaConf

    from segbench.engine.build import build_model
    from tests.conftest import compose_config

    cfg = compose_config("train", ["model=upernet"], tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.backbone.name == "convnext_tiny" and cfg.backbone.out_norms
    assert cfg.backbone.model_kwargs.drop_path_rate == 0.4
    assert cfg.backbone.output_stride is None and cfg.model.get("output_stride") is None
    small = [f"+backbone.model_kwargs.{k}" for k in ("embed_dim=8", "depths=[1,1,1,1]",
                                                      "num_heads=[1,1,1,1]")]  # fmt: skip
    cfg = compose_config("train", ["model=upernet", "backbone=swin_tiny", *small], tmp_path)
    assert cfg.backbone.model_kwargs.drop_path_rate == 0.3  # the paper's stochastic depth
    cfg.model.channels = 16
    net = build_model(cfg.model).eval()
    assert net.encoder.channels == [8, 16, 32, 64] and len(net.encoder.out_norms) == 4
    with torch.no_grad():
        assert net(torch.randn(1, 3, 50, 70))["out"].shape == (1, 7, 50, 70)
    net.train()
    with pytest.raises(ValueError, match="batch of at least 2"):
        net(torch.randn(1, 3, 64, 64))
