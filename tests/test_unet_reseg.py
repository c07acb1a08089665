"""U-Net and ReSeg: shapes at odd sizes, gradients, skip concatenation, ReNet sweep order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segbench.engine.build import build_model
from segbench.models.base import count_parameters
from segbench.models.encoders import TimmEncoder, VGGEncoder
from segbench.models.reseg import ReNetLayer, ReSeg, ReSegDecoder
from segbench.models.segnet import SegNet
from segbench.models.unet import UNet, UNetEncoder
from tests.conftest import compose_config

ENCODERS = {
    "vgg_tiny": lambda **kw: VGGEncoder(
        "tiny", stages=[[8], [16], [32], [32], [32]], batch_norm=True, **kw
    ),
    "test_resnet": lambda **kw: TimmEncoder("test_resnet", **kw),
    "unet_small": lambda **kw: UNetEncoder(widths=[8, 16, 32], **kw),
}
MODELS = {
    "unet": lambda enc: UNet(enc, 5, decoder_channels=None),
    "reseg": lambda enc: ReSeg(enc, 5, renet_hidden=[8, 8], upsample_channels=8),
}
# ReSeg reads the stride-4 level: its encoder is built to stop there
ENCODER_KW = {"unet": {}, "reseg": {"until_stride": 4}}


def _encoder_grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in model.encoder.parameters()]


@pytest.mark.parametrize("size", [(65, 97), (64, 64)])
@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_output_size_gradients_and_eval(model_name, encoder, size):
    torch.manual_seed(0)
    model = MODELS[model_name](ENCODERS[encoder](**ENCODER_KW[model_name]))
    x = torch.randn(2, 3, *size)
    out = model.train()(x)
    assert set(out) == {"out"} and out["out"].shape == (2, 5, *size)
    out["out"].logsumexp(1).mean().backward()
    grads = _encoder_grads(model)
    # every encoder parameter is used (ReSeg's encoder stops at the level it reads): DDP-safe
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        model.eval()
        first, second = model(x)["out"], model(x)["out"]
    assert first.shape == (2, 5, *size) and torch.isfinite(first).all()
    torch.testing.assert_close(first, second)  # eval mode is deterministic


def test_unet_encoder_levels_and_refusals():
    enc = UNetEncoder(widths=[4, 4, 4, 4, 4])
    feats = enc(torch.zeros(1, 3, 64, 96))
    assert enc.strides == [1, 2, 4, 8, 16]
    assert [64 // f.shape[-2] for f in feats] == [96 // f.shape[-1] for f in feats] == enc.strides
    assert [f.shape[1] for f in feats] == enc.channels
    assert UNetEncoder(widths=[4, 4, 4, 4, 4], output_stride=16).output_stride == 16
    with pytest.raises(ValueError, match="cannot dilate.*output_stride must be null or 16"):
        UNetEncoder(widths=[4, 4, 4, 4, 4], output_stride=8)
    with pytest.raises(ValueError, match="no pretrained weights"):
        UNetEncoder(widths=[4], pretrained=True)
    # without BatchNorm the layers are the paper's: conv (with bias) → ReLU
    plain = UNetEncoder(widths=[4, 8], batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_unet_concatenates_every_skip():
    torch.manual_seed(0)
    enc = UNetEncoder(widths=[8, 16, 32, 64])
    model = UNet(enc, 3, decoder_channels=[6, 10, 12])
    dec = model.decoder
    skips = enc.channels[-2::-1]  # coarse to fine: 32, 16, 8
    assert len(dec.ups) == len(dec.blocks) == 3
    for up, block, skip, width in zip(dec.ups, dec.blocks, skips, [12, 10, 6]):
        assert up.kernel_size == up.stride == (2, 2)  # the 2×2 up-convolution
        assert up.out_channels == up.in_channels // 2  # halves the channels
        first_conv = block[0][0]
        assert first_conv.in_channels == up.out_channels + skip
        assert block[1][0].out_channels == width
    # the skip really feeds the output: perturbing the finest feature changes the prediction
    x = torch.randn(1, 3, 33, 47)
    feats = [f.detach() for f in enc.eval()(x)]
    model.eval()
    base = model.head(dec(feats))
    feats[0] = feats[0] + 1.0
    assert not torch.allclose(base, model.head(dec(feats)))


def test_unet_refuses_single_level_encoder():
    with pytest.raises(ValueError, match="U-Net needs an encoder with at least two.*'one'"):
        UNet(UNetEncoder("one", widths=[8]), 3)


def test_unet_on_timm_encoder_upsamples_bilinearly():
    model = UNet(TimmEncoder("test_resnet"), 4)
    x = torch.randn(1, 3, 65, 97)
    logits = model.head(model.decoder(model.encoder(x)))
    assert logits.shape[-2:] == (33, 49)  # stride 2: the base class resizes to the input
    assert model(x)["out"].shape == (1, 4, 65, 97)


def test_unet_levels_stay_anchored_at_the_top_left_whatever_the_size():
    """A size that is no multiple of the total stride (CamVid's 360 rows, 270 at scale 0.75)
    gives timm's encoder one cell too many at a coarse level; the surplus is at the bottom and
    right. Cropped there, the decoder's features near the top-left corner do not depend on what
    lies beyond it: the same as for a multiple of 32 holding the same pixels (a centre crop
    would shift them by a coarse cell and change them)."""
    torch.manual_seed(0)
    model = UNet(TimmEncoder("test_resnet"), 4).eval()
    x = torch.randn(1, 3, 256, 320)
    larger = torch.randn(1, 3, 270, 360)  # 270 = 256 + 14: ceil-rounded levels one cell longer
    larger[..., :256, :320] = x
    with torch.no_grad():
        a = model.decoder(model.encoder(x))  # (1, C, 128, 160)
        b = model.decoder(model.encoder(larger))  # (1, C, 135, 180)
    assert b.shape[-2:] == (135, 180)
    assert torch.equal(a[..., :32, :32], b[..., :32, :32])


def test_unet_decodes_to_stride_4_when_the_backbone_leaves_out_stride_2(tmp_path):
    """backbone.out_indices=[1,2,3,4] (the CamVid CPU experiment): no stride-2 skip, a decoder
    one stage shorter, logits upsampled from stride 4; the encoder's weights are those of the
    full encoder (the same seeded layers, one fewer level returned)."""
    cfg = compose_config(
        "train",
        ["model=unet", "backbone=tiny_resnet", "backbone.out_indices=[1,2,3,4]"],
        tmp_path,
    )
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert model.encoder.strides == [4, 8, 16, 32]
    assert len(model.decoder.blocks) == 3
    torch.manual_seed(0)
    full = TimmEncoder("test_resnet")
    kept = model.encoder.state_dict()
    assert kept and all(torch.equal(v, full.state_dict()[k]) for k, v in kept.items())
    x = torch.randn(1, 3, 65, 97)
    logits = model.head(model.decoder(model.encoder(x)))
    assert logits.shape[-2:] == (17, 25)
    assert model(x)["out"].shape == (1, cfg.dataset.num_classes, 65, 97)
    with pytest.raises(ValueError, match=r"backbone\.out_indices=\[5\] does not fit timm model"):
        TimmEncoder("test_resnet", out_indices=[5])


@pytest.mark.parametrize("name", ["vgg_tiny", "unet_small"])
def test_every_encoder_takes_out_indices_as_timm_numbers_them(name):
    """backbone.out_indices on a VGG or U-Net encoder returns those levels of the full
    encoder's output (same seeded weights), so an experiment that sets it also runs with
    debug=fast's tiny backbone; a misfit is named, and SegNet refuses a partial encoder."""
    torch.manual_seed(0)
    full = ENCODERS[name]()
    torch.manual_seed(0)
    part = ENCODERS[name](out_indices=[1, 2])
    assert part.strides == [full.strides[1], full.strides[2]]
    assert part.channels == [full.channels[1], full.channels[2]]
    x = torch.randn(2, 3, 40, 56)
    full.eval(), part.eval()
    want = full(x)
    got = part(x)
    assert len(got) == 2
    assert torch.equal(got[0], want[1]) and torch.equal(got[1], want[2])
    with pytest.raises(ValueError, match=r"backbone\.out_indices=\[2, 1\] does not fit encoder"):
        ENCODERS[name](out_indices=[2, 1])
    if name == "vgg_tiny":
        with pytest.raises(ValueError, match=r"set backbone\.out_indices=null"):
            SegNet(ENCODERS[name](out_indices=[1, 2, 3, 4]), 5)


def test_renet_vertical_sweep_stays_in_its_column():
    torch.manual_seed(0)
    layer = ReNetLayer(3, 4, patch_size=(2, 2)).eval()
    x = torch.randn(1, 3, 12, 10)
    y = x.clone()
    y[0, :, 5, 7] += 3.0  # a pixel in patch row 2, patch column 3
    with torch.no_grad():
        vx = layer.sweep_vertical(layer.patches(x))
        vy = layer.sweep_vertical(layer.patches(y))
        assert vx.shape == (1, 8, 6, 5)
        changed = (vx - vy).abs().amax(dim=(0, 1)) > 1e-6  # (H', W')
        assert changed[:, 3].all()  # the whole column, both directions
        assert not changed[:, [0, 1, 2, 4]].any()  # no other column
        full = (layer(x) - layer(y)).abs().amax(dim=(0, 1)) > 1e-6
    assert full.all()  # the horizontal sweep spreads it over the whole map


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_reseg_rnn_options_and_shapes(rnn):
    torch.manual_seed(0)
    layer = ReNetLayer(3, 5, patch_size=(2, 3), rnn=rnn)
    assert isinstance(layer.vertical, nn.GRU if rnn == "gru" else nn.LSTM)
    assert layer(torch.randn(2, 3, 7, 8)).shape == (2, 10, 4, 3)  # padded to 8×9, then patched
    enc = ENCODERS["vgg_tiny"](until_stride=4)
    model = ReSeg(enc, 3, renet_hidden=[6], patch_sizes=[[2, 2]], rnn=rnn)
    out = model(torch.randn(2, 3, 65, 97))["out"]
    assert out.shape == (2, 3, 65, 97)
    out.mean().backward()
    assert model.decoder.renets[0].horizontal.weight_ih_l0.grad.abs().sum() > 0


def test_reseg_reads_the_stride_4_level_and_drops_deeper_ones():
    torch.manual_seed(0)
    enc = ENCODERS["vgg_tiny"](until_stride=4)
    model = ReSeg(enc, 3, renet_hidden=[4, 4], upsample_channels=[5, 6, 7])
    assert model.feature_index == 1
    assert enc.strides == [2, 4] and enc.channels == [8, 16]
    dec = model.decoder
    assert dec.renets[0].vertical.input_size == 16 * 2 * 2  # flattened 2×2 patches of pool2
    ups = [m for m in dec.upsample if isinstance(m, nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == [5, 6, 7]  # ×8: stride 4 × patch 2
    one = {"renet_hidden": [4], "patch_sizes": [[2, 2]]}
    assert ReSeg(UNetEncoder(widths=[4, 4, 4, 4], until_stride=4), 3, **one).feature_index == 2
    assert ReSeg(TimmEncoder("test_resnet", until_stride=4), 3, **one).encoder.strides == [2, 4]
    # an encoder with levels deeper than the one read is refused: they would get no gradient
    with pytest.raises(ValueError, match=r"ReSeg reads level 1 \(stride 4\).*until_stride=4"):
        ReSeg(ENCODERS["vgg_tiny"](), 3)
    with pytest.raises(ValueError, match="ReSeg: feature_index 7 is out of range.*'tiny'"):
        ReSeg(ENCODERS["vgg_tiny"](), 3, feature_index=7)
    with pytest.raises(ValueError, match="upsample_channels needs 3 widths"):
        ReSeg(ENCODERS["vgg_tiny"](until_stride=4), 3, upsample_channels=[4, 4])
    with pytest.raises(ValueError, match="rnn must be one of"):
        ReNetLayer(3, 4, rnn="rnn")


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_until_stride_keeps_the_seeded_weights_of_the_levels_it_keeps(encoder):
    """An encoder stopped at stride 4 holds the full encoder's first layers with the same
    weights from the same seed, and leaves the RNG where the full one does (so that a decoder
    built after it gets the same weights too)."""
    torch.manual_seed(0)
    full = ENCODERS[encoder]()
    after_full = torch.randn(3)
    torch.manual_seed(0)
    stopped = ENCODERS[encoder](until_stride=4)
    torch.testing.assert_close(torch.randn(3), after_full, rtol=0, atol=0)
    n = full.strides.index(4) + 1
    assert stopped.strides == full.strides[:n] and stopped.channels == full.channels[:n]
    kept, whole = stopped.state_dict(), full.state_dict()
    assert set(kept) <= set(whole) and all(torch.equal(v, whole[k]) for k, v in kept.items())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(stopped.eval()(x), full.eval()(x)[:n], strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "overrides, backbone, cls",
    [
        (["model=unet", "backbone.widths=[8,16,32,64,128]"], "unet", UNetEncoder),
        (["model=unet", "backbone=tiny_resnet"], "test_resnet", TimmEncoder),
        (["model=reseg", "backbone=tiny"], "tiny", VGGEncoder),
        (["model=unet", "debug=fast"], "tiny", VGGEncoder),
    ],
)
def test_configs_compose_and_build(tmp_path, overrides, backbone, cls):
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.backbone.name == backbone
    net = build_model(cfg.model)
    assert isinstance(net, UNet if "model=unet" in overrides else ReSeg)
    assert isinstance(net.encoder, cls) and net.num_classes == cfg.dataset.num_classes
    x = torch.randn(2, 3, 64, 64)
    assert net(x)["out"].shape == (2, cfg.dataset.num_classes, 64, 64)


def test_unet_backbone_without_batch_norm_gives_a_plain_decoder(tmp_path):
    overrides = ["model=unet", "backbone.widths=[4,8]", "backbone.batch_norm=false"]
    net = build_model(compose_config("train", overrides, tmp_path).model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.slow
def test_original_unet_has_about_31m_parameters():
    """The paper's network (no BatchNorm, 2 classes): published ≈31.0M."""
    count = count_parameters(UNet(UNetEncoder(batch_norm=False), 2, batch_norm=False))
    assert abs(count - 31.0e6) / 31.0e6 < 0.05
    assert count == 31_031_810


def test_reseg_upsampling_keeps_the_signal_scale_at_initialisation():
    """He-initialised transposed convs: the head sees activations of the input's scale (with
    PyTorch's default init they shrank stage after stage and SGD stalled at the class prior)."""
    torch.manual_seed(0)
    decoder = ReSegDecoder(16, 4, [32, 32], [(2, 2), (1, 1)])
    assert len(decoder.upsample) == 6  # three x2 stages back from stride 8
    x = torch.randn(64, 64, 4, 4)  # the last ReNet layer's output: 2 * 32 channels
    y = decoder.upsample(x)
    ratio = (y.pow(2).mean() / x.pow(2).mean()).sqrt().item()
    assert 0.5 < ratio < 2.0, ratio
