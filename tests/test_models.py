"""Encoders and FCN: shapes at odd sizes, gradients, bilinear initialisation, skip wiring."""

from __future__ import annotations

import pytest
import torch

from segbench.models.encoders import TimmEncoder
from segbench.models.fcn import FCN, _learned_upsample, bilinear_kernel


@pytest.fixture(scope="module")
def encoder_factory():
    return lambda **kw: TimmEncoder("test_resnet", **kw)


def test_encoder_exposes_channels_and_strides(encoder_factory):
    enc = encoder_factory()
    feats = enc(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == enc.channels
    assert [64 // f.shape[-1] for f in feats] == enc.strides == [2, 4, 8, 16, 32]
    dilated = encoder_factory(output_stride=8)
    assert dilated.strides[-1] == 8


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("output_stride", [32, 8])
def test_fcn_output_size_and_gradients(encoder_factory, variant, output_stride):
    model = FCN(
        encoder_factory(output_stride=output_stride), 5, variant, fc_channels=16, fc_kernel=3
    )
    x = torch.randn(2, 3, 65, 97)
    out = model(x)["out"]
    assert out.shape == (2, 5, 65, 97)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_fcn_skip_layers_per_variant(encoder_factory):
    counts = {
        v: len(FCN(encoder_factory(), 3, v, 8, 3).decoder.score_skips) for v in ("32s", "16s", "8s")
    }
    assert counts == {"32s": 0, "16s": 1, "8s": 2}


def test_zero_initialised_skips_start_from_the_coarse_prediction(encoder_factory):
    """As in the paper, FCN-8s at initialisation predicts what its FCN-32s trunk predicts."""
    torch.manual_seed(0)
    fcn8 = FCN(encoder_factory(), 4, "8s", 8, 3, dropout=0.0).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = fcn8.encoder(x)
    coarse = fcn8.decoder.score_fr(fcn8.decoder.fc(feats[-1]))
    fused = fcn8.decoder(feats)
    expected = fcn8.decoder.upscores[1](fcn8.decoder.upscores[0](coarse))
    torch.testing.assert_close(fused, expected)


def test_learned_upsampling_starts_as_bilinear():
    up = _learned_upsample(2, 2)
    x = torch.randn(1, 2, 6, 6)
    y = up(x)
    assert y.shape == (1, 2, 12, 12)
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])  # equal off the border
    k = bilinear_kernel(1, 4)[0, 0]
    assert torch.allclose(k, k.T) and k.max() == k[1, 1]


def test_unknown_variant_and_backbone_are_refused(encoder_factory):
    with pytest.raises(ValueError, match="variant must be one of"):
        FCN(encoder_factory(), 3, "4s")
    with pytest.raises(ValueError, match="not a timm model"):
        TimmEncoder("resnet_nope")


def test_backbone_weights_load_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("test_resnet")
    first = next(source.parameters())
    torch.nn.init.constant_(first, 0.125)
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    enc = TimmEncoder("test_resnet", weights=str(path))
    assert torch.all(next(enc.model.parameters()) == 0.125)
    assert not torch.all(next(TimmEncoder("test_resnet").model.parameters()) == 0.125)


def test_auxiliary_head_output_and_weighted_loss(encoder_factory):
    """``aux`` appears in training only, and the task adds it with the model's ``aux_weight``."""
    from segbench.engine.task import SegmentationTask
    from segbench.losses import CrossEntropyLoss
    from segbench.metrics import Evaluator
    from segbench.models.base import SegmentationModel

    enc = encoder_factory()
    model = SegmentationModel(
        enc,
        decoder=lambda feats: feats[-1],
        head=torch.nn.Conv2d(enc.channels[-1], 3, 1),
        num_classes=3,
        aux_head=torch.nn.Conv2d(enc.channels[-2], 3, 1),
        aux_weight=0.4,
    )
    x, y = torch.randn(2, 3, 33, 47), torch.randint(0, 3, (2, 33, 47))
    out = model.train()(x)
    assert out["out"].shape == out["aux"].shape == (2, 3, 33, 47)
    assert "aux" not in model.eval()(x)
    loss = CrossEntropyLoss(3)
    assert model.aux_weight == 0.4
    task = SegmentationTask(model, loss, None, None, Evaluator(3, 255, ["a", "b", "c"]))
    assert task.aux_weight == 0.4  # read from the model, which carries its head's weight
    expected = loss(out["out"], y) + 0.4 * loss(out["aux"], y)
    torch.testing.assert_close(task._loss(out, y), expected)
