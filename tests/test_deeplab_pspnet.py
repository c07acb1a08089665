"""DeepLab v1/v3/v3+ and PSPNet: shapes, gradients, dilation, ASPP, decoder skip, aux, CRF hook."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from torch import nn

from segbench.engine.build import build_model
from segbench.models.base import count_parameters
from segbench.models.deeplab import ASPPPooling, DeepLabV1, DeepLabV3, DeepLabV3Plus
from segbench.models.encoders import TimmEncoder, VGGEncoder
from segbench.models.pspnet import PSPNet
from tests.conftest import compose_config

K = 5
# each model's paper output stride, and a narrow build of it for fast tests
OUTPUT_STRIDE = {"deeplabv1": 8, "deeplabv3": 16, "deeplabv3plus": 16, "pspnet": 8}
BUILD = {
    "deeplabv1": lambda enc, os: DeepLabV1(enc, K, os, fc_channels=16),
    "deeplabv3": lambda enc, os: DeepLabV3(enc, K, os, channels=16),
    "deeplabv3plus": lambda enc, os: DeepLabV3Plus(enc, K, os, channels=16, low_level_channels=8),
    "pspnet": lambda enc, os: PSPNet(enc, K, os, channels=16, aux_channels=8),
}


def tiny_vgg(output_stride: int | None = None) -> VGGEncoder:
    stages = [[8], [16], [32], [32], [32]]
    return VGGEncoder("tiny", stages=stages, batch_norm=True, output_stride=output_stride)


def tiny_resnet(output_stride: int | None = None, **kw) -> TimmEncoder:
    return TimmEncoder("test_resnet", output_stride=output_stride, **kw)


ENCODERS = {"tiny_vgg": tiny_vgg, "tiny_resnet": tiny_resnet}


def build(model: str, encoder: str = "tiny_vgg", output_stride: int | None = None) -> nn.Module:
    os = output_stride or OUTPUT_STRIDE[model]
    return BUILD[model](ENCODERS[encoder](os), os)


@pytest.mark.parametrize("size", [(65, 97), (64, 64)])
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("model", sorted(BUILD))
def test_output_size_gradients_and_eval(model, encoder, size):
    torch.manual_seed(0)
    net = build(model, encoder)
    x = torch.randn(2, 3, *size)
    out = net(x)
    assert out["out"].shape == (2, K, *size)
    assert ("aux" in out) == (model == "pspnet")
    loss = sum(v.logsumexp(1).mean() for v in out.values())
    loss.backward()
    grads = [p.grad for p in net.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    net.eval()
    with torch.no_grad():
        out = net(x[:1])
    assert set(out) == {"out"} and out["out"].shape == (1, K, *size)
    assert torch.isfinite(out["out"]).all()


@pytest.mark.parametrize("backbone", ["tiny", "tiny_resnet"])
@pytest.mark.parametrize("model", sorted(BUILD))
def test_config_composes_builds_and_dilates_the_backbone(model, backbone, tmp_path):
    cfg = compose_config("train", [f"model={model}", f"backbone={backbone}"], tmp_path)
    net = build_model(cfg.model)
    assert net.num_classes == cfg.dataset.num_classes
    assert net.output_stride == OUTPUT_STRIDE[model] == cfg.model.output_stride
    assert net.encoder.strides[-1] == OUTPUT_STRIDE[model]  # really dilated, not just labelled
    x = torch.randn(1, 3, 65, 97)
    feats = net.encoder(x)
    h, w = feats[-1].shape[-2:]  # VGG pools floor, ResNet convs ceil
    assert abs(h - 65 / net.output_stride) < 1 and abs(w - 97 / net.output_stride) < 1
    net.eval()
    with torch.no_grad():
        assert net(x)["out"].shape == (1, cfg.dataset.num_classes, 65, 97)


def test_paper_backbones_are_the_defaults_and_stay_overridable(tmp_path):
    v1 = compose_config("train", ["model=deeplabv1"], tmp_path)
    assert v1.backbone.name == "vgg16" and v1.backbone.output_stride == 8
    assert v1.model.crf is None
    assert compose_config("train", ["model=deeplabv1", "debug=fast"], tmp_path).backbone.name == (
        "tiny"
    )
    psp = compose_config("train", ["model=pspnet"], tmp_path)
    assert psp.backbone.name == "resnet18" and psp.backbone.output_stride == 8
    assert psp.model.aux_weight == 0.4
    # the auxiliary loss weight is a model argument: the task reads it from the model
    overrides = ["model=pspnet", "backbone=tiny", "model.aux_weight=0.3"]
    assert build_model(compose_config("train", overrides, tmp_path).model).aux_weight == 0.3
    v3 = compose_config("train", ["model=deeplabv3", "backbone=resnet50"], tmp_path)
    assert v3.backbone.name == "resnet50" and v3.backbone.output_stride == 16


def _atrous_dilations(aspp: nn.Module) -> list[int]:
    return [
        m.dilation[0]
        for branch in aspp.branches
        for m in branch.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]


@pytest.mark.parametrize("model", ["deeplabv3", "deeplabv3plus"])
def test_aspp_rates_and_image_pooling_branch(model):
    torch.manual_seed(0)
    net16 = build(model, "tiny_resnet", 16)
    aspp = net16.decoder.aspp
    assert _atrous_dilations(aspp) == [6, 12, 18]
    assert _atrous_dilations(build(model, "tiny_resnet", 8).decoder.aspp) == [12, 24, 36]
    custom = DeepLabV3(tiny_vgg(16), K, 16, atrous_rates=[1, 2, 3], channels=8)
    assert _atrous_dilations(custom.decoder.aspp) == [1, 2, 3]
    # 1x1 branch + 3 atrous + image pooling, each 16 wide, projected back to 16
    kernels = [branch[0].kernel_size for branch in aspp.branches[:4]]
    assert kernels == [(1, 1), (3, 3), (3, 3), (3, 3)]
    pooling = aspp.branches[-1]
    assert isinstance(pooling, ASPPPooling) and pooling.pool.output_size == 1
    assert aspp.project[0][0].in_channels == 5 * 16
    # the image-level branch is constant over the map: it carries global context
    pooling.eval()
    with torch.no_grad():
        y = pooling(torch.randn(2, net16.encoder.channels[-1], 5, 7))
    assert y.shape == (2, 16, 5, 7)
    torch.testing.assert_close(y, y[..., :1, :1].expand_as(y))


def test_aspp_image_pooling_refuses_a_training_batch_of_one():
    net = build("deeplabv3")
    with pytest.raises(ValueError, match="batch of at least 2"):
        net(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_v3plus_fuses_the_stride_4_feature(encoder):
    net = build("deeplabv3plus", encoder)
    enc, dec = net.encoder, net.decoder
    assert enc.strides[dec.low_index] == 4
    assert dec.low_proj[0].in_channels == enc.channels[enc.strides.index(4)]
    assert dec.low_proj[0].out_channels == 8  # low_level_channels (48 in the paper)
    x = torch.randn(2, 3, 65, 97)
    feats = enc(x)
    assert dec(feats).shape[-2:] == feats[dec.low_index].shape[-2:]  # decoded at stride 4


def test_v3plus_falls_back_to_the_finest_level_and_refuses_without_one():
    enc = tiny_resnet(16, out_indices=[2, 3, 4])  # strides [8, 16, 16]: no stride-4 level
    net = DeepLabV3Plus(enc, K, 16, channels=8, low_level_channels=4)
    assert net.decoder.low_index == 0 and enc.strides[0] == 8

    class TwoLevels(nn.Module):
        name = "two_levels"
        channels, strides = [8, 8], [2, 16]

    with pytest.raises(ValueError, match="DeepLabV3Plus: encoder 'two_levels'.*no low-level"):
        DeepLabV3Plus(TwoLevels(), K, 16)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_pspnet_aux_in_training_only_and_bins(encoder):
    torch.manual_seed(0)
    net = build("pspnet", encoder)
    assert net.aux_index == -2 and net.aux_head is not None and net.aux_weight == 0.4
    pooled = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: pooled.append(tuple(o.shape[-2:])))
        for m in net.decoder.ppm.modules()
        if isinstance(m, nn.AdaptiveAvgPool2d)
    ]
    x = torch.randn(2, 3, 65, 97)
    out = net.train()(x)
    assert out["aux"].shape == out["out"].shape == (2, K, 65, 97)
    assert pooled == [(1, 1), (2, 2), (3, 3), (6, 6)]
    c = net.encoder.channels[-1]
    assert net.decoder.conv[0].in_channels == c + 4 * (c // 4)  # features + 4 bins of C/4
    assert net.aux_head[0][0].in_channels == net.encoder.channels[-2]
    for h in hooks:
        h.remove()
    with torch.no_grad():
        assert set(net.eval()(x)) == {"out"}
    no_aux = PSPNet(tiny_vgg(8), K, 8, channels=8, aux=False)
    assert set(no_aux.train()(x)) == {"out"}


class RecordingCRF(nn.Module):
    """Stands in for a dense CRF: records its inputs and doubles the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Size, torch.Tensor]] = []

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self.calls.append((logits.shape, image))
        return logits * 2


def test_deeplabv1_crf_runs_in_eval_only():
    torch.manual_seed(0)
    crf = RecordingCRF()
    net = DeepLabV1(tiny_vgg(8), K, 8, fc_channels=16, crf=crf)
    x = torch.randn(2, 3, 65, 97)
    net.train()(x)
    assert crf.calls == []
    net.eval()
    with torch.no_grad():
        refined = net(x)["out"]
        net.crf = None
        plain = net(x)["out"]
    assert len(crf.calls) == 1
    shape, image = crf.calls[0]
    assert shape == (2, K, 65, 97) and image is x  # after upsampling, with the input image
    torch.testing.assert_close(refined, plain * 2)


def test_deeplabv1_fc6_dilation_follows_the_output_stride():
    v1 = DeepLabV1(tiny_vgg(8), K, 8, fc_channels=8)
    assert v1.decoder.fc6.dilation == (12, 12) and v1.decoder.fc6.kernel_size == (3, 3)
    assert DeepLabV1(tiny_vgg(16), K, 16, fc_channels=8).decoder.fc6.dilation == (6, 6)
    assert isinstance(v1.head, nn.Conv2d) and v1.head.kernel_size == (1, 1)


@pytest.mark.parametrize("model", sorted(BUILD))
def test_wrong_output_stride_and_encoder_are_refused(model, tmp_path):
    name = type(build(model)).__name__
    os = OUTPUT_STRIDE[model]
    with pytest.raises(
        ValueError, match=rf"{name}: encoder 'tiny' ends at stride 32.*output_stride={os}"
    ):
        BUILD[model](tiny_vgg(), os)  # a plain, undilated encoder
    with pytest.raises(
        ValueError, match=rf"{name}: output_stride must be one of \[8, 16\], got 32"
    ):
        BUILD[model](tiny_vgg(), 32)
    with pytest.raises(ValueError, match=rf"{name}: encoder 'Conv2d' must expose `channels`"):
        BUILD[model](nn.Conv2d(3, 8, 3), os)
    # the backbone forced to another stride than the model's
    other = 16 if os == 8 else 8
    cfg = compose_config(
        "train", [f"model={model}", "backbone=tiny", f"backbone.output_stride={other}"], tmp_path
    )
    with pytest.raises(
        InstantiationException, match=rf"{name}: encoder 'tiny' ends at stride {other}"
    ):
        build_model(cfg.model)


@pytest.mark.slow
def test_deeplabv1_vgg16_matches_the_published_parameter_count():
    net = DeepLabV1(VGGEncoder("vgg16", output_stride=8), 21)
    assert abs(count_parameters(net) / 20.5e6 - 1) < 0.01  # 20.5M in the paper
