"""SegNet, SegNet-Basic, Bayesian SegNet and DeconvNet: shapes, unpooling with the encoder's
switches, Monte Carlo dropout, DeconvNet's fc6 padding, configs and paper parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException

from segbench.engine.build import build_model
from segbench.models.base import count_parameters
from segbench.models.deconvnet import DeconvNet
from segbench.models.encoders import TimmEncoder, VGGEncoder
from segbench.models.segnet import BayesianSegNet, MaxUnpool, SegNet
from tests.conftest import compose_config

MODELS = ["segnet", "segnet_basic", "bayesian_segnet", "deconvnet"]


def tiny_encoder(**kw) -> VGGEncoder:
    return VGGEncoder("tiny", stages=[[8], [16], [32], [32], [32]], batch_norm=True, **kw)


def make(model: str, num_classes: int = 5, **kw) -> torch.nn.Module:
    """Each model on the tiny VGG encoder (SegNet-Basic's decoder settings on it)."""
    if model == "segnet":
        return SegNet(tiny_encoder(), num_classes, **kw)
    if model == "segnet_basic":
        return SegNet(tiny_encoder(), num_classes, head_kernel=1, decoder_relu=False, **kw)
    if model == "bayesian_segnet":
        return BayesianSegNet(tiny_encoder(), num_classes, mc_samples=3, **kw)
    return DeconvNet(tiny_encoder(), num_classes, fc_channels=kw.pop("fc_channels", 16), **kw)


@pytest.mark.parametrize("size", [(65, 97), (64, 64)])
@pytest.mark.parametrize("model_name", MODELS)
def test_output_size_gradients_and_eval(model_name, size):
    torch.manual_seed(0)
    model = make(model_name)
    x = torch.randn(2, 3, *size)
    out = model(x)["out"]
    assert out.shape == (2, 5, *size)
    F.cross_entropy(out, torch.randint(0, 5, (2, *size))).backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out["out"].shape == (2, 5, *size) and torch.isfinite(out["out"]).all()


@pytest.mark.parametrize("model_name", MODELS)
def test_config_composes_and_builds_on_tiny(model_name, tmp_path):
    cfg = compose_config("train", [f"model={model_name}", "backbone=tiny"], tmp_path)
    assert cfg.backbone.name == "tiny" and cfg.model.name == model_name
    torch.manual_seed(0)
    net = build_model(cfg.model).eval()
    assert net.num_classes == cfg.dataset.num_classes
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))["out"]
    assert out.shape == (2, cfg.dataset.num_classes, 64, 64)


@pytest.mark.parametrize(
    ("model_name", "backbone", "kernel"),
    [
        ("segnet", "vgg16_bn", None),
        ("segnet_basic", "segnet_basic", 7),
        ("bayesian_segnet", "vgg16_bn", None),
        ("deconvnet", "vgg16_bn", None),
    ],
)
def test_paper_backbone_is_the_default(model_name, backbone, kernel, tmp_path):
    """Compose only: the paper-size models are built in the slow tests."""
    cfg = compose_config("train", [f"model={model_name}"], tmp_path)
    assert cfg.backbone.name == backbone
    assert (
        cfg.backbone._target_ == "segbench.models.encoders.VGGEncoder" and cfg.backbone.batch_norm
    )
    if kernel is not None:
        assert cfg.backbone.kernel_size == kernel and list(cfg.backbone.stages) == [[64]] * 4
        assert cfg.model.decoder_relu is False and cfg.model.head_kernel == 1
    fast = compose_config("train", [f"model={model_name}", "debug=fast"], tmp_path)
    assert fast.backbone.name == "tiny"


def test_unpool_puts_values_exactly_at_the_pooled_argmax():
    x = torch.tensor(
        [[1.0, 5.0, 2.0, 0.0, 3.0], [4.0, 2.0, 7.0, 1.0, 9.0], [6.0, 0.5, 8.0, 2.5, 1.5]]
    )
    x = x[None, None]  # (1, 1, 3, 5): odd sizes, the last row and column are dropped by the pool
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    assert pooled.flatten().tolist() == [5.0, 7.0]
    up = MaxUnpool()(pooled, idx, x.shape)
    expected = torch.zeros_like(x)
    expected[0, 0, 0, 1], expected[0, 0, 1, 2] = 5.0, 7.0
    assert up.shape == x.shape and torch.equal(up, expected)


def test_unpool_matches_max_unpool2d_and_runs_in_deterministic_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 13)
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    ref = F.max_unpool2d(pooled, idx, 2, 2, output_size=[9, 13])
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        up = MaxUnpool()(pooled, idx, x.shape)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(up, ref)


def test_decoder_unpools_with_the_encoder_switches_and_gets_no_skip_features():
    torch.manual_seed(0)
    model = SegNet(tiny_encoder(), 3).eval()
    x = torch.randn(2, 3, 65, 97)
    seen: dict = {}
    model.decoder.register_forward_pre_hook(lambda m, args: seen.update(decoder=args))
    model.decoder.unpools[-1].register_forward_hook(
        lambda m, args, out: seen.update(unpool=(args, out))
    )
    with torch.no_grad():
        features, indices, sizes = model.encoder.forward_with_indices(x)
        model(x)
    # the decoder is handed the deepest feature, the switches and the sizes, nothing else
    deepest, got_indices, got_sizes = seen["decoder"]
    assert len(seen["decoder"]) == 3 and torch.equal(deepest, features[-1])
    assert all(i.dtype == torch.int64 for i in got_indices) and len(got_indices) == 5
    assert [tuple(s) for s in got_sizes] == [(65, 97), (32, 48), (16, 24), (8, 12), (4, 6)]
    (pooled, idx, size), up = seen["unpool"]
    assert up.shape[-2:] == (4, 6) == tuple(size)
    flat = up.flatten(2)  # (B, C, 4*6)
    assert torch.equal(flat.gather(2, idx.flatten(2)), pooled.flatten(2))  # values at argmax
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, idx.flatten(2), True)
    assert (flat[~mask] == 0).all() and (pooled != 0).any()


def test_deconvnet_decoder_starts_from_deconv_fc6():
    torch.manual_seed(0)
    model = make("deconvnet").eval()
    seen: dict = {}
    model.decoder.register_forward_pre_hook(lambda m, args: seen.update(args=args))
    model.deconv_fc6.register_forward_hook(lambda m, args, out: seen.update(fc=out))
    with torch.no_grad():
        model(torch.randn(2, 3, 65, 97))
    assert len(seen["args"]) == 3 and seen["args"][0] is seen["fc"]
    assert seen["fc"].shape == (2, 32, 2, 3)  # back to pool5's width and size


def test_bayesian_segnet_samples_differ_and_uncertainty_is_a_variance():
    torch.manual_seed(0)
    model = make("bayesian_segnet").eval()
    assert model.dropout_stages == [3, 4, 5] and model.decoder.dropout == [0, 0, 0.5, 0.5, 0.5]
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        a, b = model.logits(x), model.logits(x)  # dropout stays on in eval mode
        probs, unc = model.mc_predict(x, 4)
        out = model(x)
    assert not torch.allclose(a, b)
    assert unc.shape == (2, 33, 47) and (unc >= 0).all() and (unc > 0).any()
    assert torch.allclose(probs.sum(1), torch.ones(2, 33, 47), atol=1e-5)
    # eval output: log of the mean softmax, with its uncertainty
    assert set(out) == {"out", "uncertainty"} and out["uncertainty"].shape == (2, 33, 47)
    torch.testing.assert_close(out["out"].logsumexp(1), torch.zeros(2, 33, 47), atol=1e-5, rtol=0)
    model.train()
    train_out = model(x)
    assert set(train_out) == {"out"} and train_out["out"].logsumexp(1).abs().mean() > 1e-3


def test_bayesian_segnet_without_dropout_has_zero_uncertainty():
    torch.manual_seed(0)
    model = make("bayesian_segnet", dropout=0.0).eval()
    with torch.no_grad():
        probs, unc = model.mc_predict(torch.randn(2, 3, 32, 32), 5)
    assert torch.equal(unc, torch.zeros(2, 32, 32)) and probs.shape == (2, 5, 32, 32)


def test_bayesian_segnet_weight_averaging_turns_dropout_off():
    """mc_samples=0: the paper's weight-averaging baseline, one pass with dropout off, which is
    the same network without dropout (inverted dropout needs no rescaling at test time)."""
    torch.manual_seed(0)
    model = make("bayesian_segnet").eval()
    plain = make("bayesian_segnet", dropout=0.0).eval()
    plain.load_state_dict(model.state_dict())
    model.mc_samples = 0
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        a, b = model(x), model(x)
        reference = plain.logits(x)
        sampled = model.logits(x)  # dropout is back on after the weight-averaged pass
    assert set(a) == {"out"}  # no uncertainty without sampling
    assert torch.equal(a["out"], b["out"])
    torch.testing.assert_close(a["out"], reference)
    assert not torch.allclose(sampled, reference)
    with pytest.raises(ValueError, match=r"mc_samples must be >= 1 .* or 0 \(dropout off"):
        BayesianSegNet(tiny_encoder(), 3, mc_samples=-1)


def test_bayesian_segnet_dropout_stages_are_configurable_and_checked():
    model = BayesianSegNet(tiny_encoder(), 3, dropout=0.2, dropout_stages=[1, 5])
    assert model.decoder.dropout == [0.2, 0, 0, 0, 0.2]
    pools = [m for m in model.encoder.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert [getattr(p, "p", 0) for p in pools] == [0.2, 0, 0, 0, 0.2]
    with pytest.raises(ValueError, match=r"dropout_stages are stage numbers 1\.\.5"):
        BayesianSegNet(tiny_encoder(), 3, dropout_stages=[0])


def test_deconvnet_valid_padding_is_the_papers_and_refuses_small_inputs():
    torch.manual_seed(0)
    model = make("deconvnet", fc_padding="valid")
    seen: dict = {}
    model.fc6.register_forward_hook(lambda m, args, out: seen.update(fc6=out.shape))
    out = model(torch.randn(2, 3, 224, 224))["out"]
    assert seen["fc6"] == (2, 16, 1, 1) and out.shape == (2, 5, 224, 224)
    assert make("deconvnet")(torch.randn(2, 3, 64, 64))["out"].shape == (2, 5, 64, 64)
    with pytest.raises(ValueError, match=r"fc_padding='valid'.*7x7.*224x224.*got 2x3"):
        model(torch.randn(2, 3, 65, 97))
    with pytest.raises(ValueError, match="fc_padding must be"):
        make("deconvnet", fc_padding="full")


@pytest.mark.parametrize("model_name", MODELS)
def test_encoders_without_switches_or_dilated_are_refused(model_name, tmp_path):
    kw = {"fc_channels": 8} if model_name == "deconvnet" else {}
    cls = {"deconvnet": DeconvNet, "bayesian_segnet": BayesianSegNet}.get(model_name, SegNet)
    with pytest.raises(ValueError, match=r"'test_resnet'.*forward_with_indices.*backbone=vgg16_bn"):
        cls(TimmEncoder("test_resnet"), 3, **kw)
    with pytest.raises(ValueError, match=r"'tiny' is dilated \(output_stride=8.*=null"):
        cls(tiny_encoder(output_stride=8), 3, **kw)
    cfg = compose_config("train", [f"model={model_name}", "backbone=tiny_resnet"], tmp_path)
    with pytest.raises(InstantiationException, match="backbone=segnet_basic or backbone=tiny"):
        build_model(cfg.model)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_name", "num_classes", "published"),
    [("segnet", 11, 29.5e6), ("segnet_basic", 11, 1.425e6), ("deconvnet", 21, 252e6)],
)
def test_paper_parameter_counts(model_name, num_classes, published, tmp_path):
    overrides = [f"model={model_name}", "dataset=folder", f"dataset.num_classes={num_classes}"]
    cfg = compose_config("train", overrides, tmp_path)
    net = build_model(cfg.model)
    assert abs(count_parameters(net) - published) / published < 0.05
