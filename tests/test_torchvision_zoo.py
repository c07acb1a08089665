"""torchvision's segmentation models as segbench networks: the converted weights give the same
logits (``out``, and the auxiliary head's), the parameter counts are torchvision's, a state dict
with a tensor too few or too many is refused by name; the MobileNetV3-Large encoder computes
torchvision's ``features`` and LR-ASPP trains, on it and on debug=fast's tiny backbone.

torchvision is the oracle here only (segbench never imports ``torchvision.models``). Inputs are
small (64x64 and 72x100); the ResNet-101 parity is ``slow``.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from segbench.checkpoints.network import build_model
from segbench.config import compose_train_config
from segbench.models.base import count_parameters
from segbench.models.convert import ConversionError
from segbench.models.encoders import MobileNetV3Encoder
from segbench.models.torchvision_convert import convert_torchvision
from segbench.zoo.registry import entries

# the overrides of conf/zoo/torchvision.yaml building each model's segbench network
TORCHVISION_MODELS = {
    spec.name: [*entry.overrides, f"dataset={entry.dataset}"]
    for spec, entry in entries().items()
    if spec.source == "torchvision"
}

tvm = pytest.importorskip("torchvision.models")
tvs = pytest.importorskip("torchvision.models.segmentation")

FAST = [
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
]
RESNET101 = ["fcn_resnet101", "deeplabv3_resnet101"]
SIZES = [(64, 64), (72, 100)]  # one not a multiple of 32 (nor of 16)
WEIGHTS = {  # the weights enum of every model: their meta's num_params is checked
    "fcn_resnet50": "FCN_ResNet50_Weights",
    "fcn_resnet101": "FCN_ResNet101_Weights",
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights",
    "deeplabv3_resnet101": "DeepLabV3_ResNet101_Weights",
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights",
    "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights",
}


def test_every_torchvision_model_has_overrides():
    assert set(TORCHVISION_MODELS) == set(WEIGHTS)
    assert all("dataset=voc" in overrides for overrides in TORCHVISION_MODELS.values())


def _randomise_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """BatchNorm statistics from a training-mode pass over ``x`` (so that the logits keep a
    sensible scale through 100 layers), then perturbed, with random affine parameters."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = 1.0  # running statistics := this batch's
    model.train()
    with torch.no_grad():
        model(x)
        gen = torch.Generator().manual_seed(1)
        for bn in norms:
            n = bn.num_features
            bn.running_mean += 0.1 * torch.randn(n, generator=gen) * bn.running_var.sqrt()
            # at least 0.01: a pooled 1x1 map's variance over a few images may be about 0
            bn.running_var.clamp_(min=0.01).mul_(0.8 + 0.45 * torch.rand(n, generator=gen))
            bn.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(n, generator=gen))
            bn.momentum = 0.1
    model.eval()


def _torchvision(arch: str) -> torch.nn.Module:
    """torchvision's model ``arch`` as its published weights are built (21 classes, the
    auxiliary classifier but for LR-ASPP), randomly initialised."""
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": 21}
    if not arch.startswith("lraspp_"):
        kwargs["aux_loss"] = True
    return getattr(tvs, arch)(**kwargs)


@functools.cache
def _pair(arch: str):
    """(torchvision's model with random weights, the segbench network with them converted)."""
    torch.manual_seed(0)
    reference = _torchvision(arch)
    _randomise_batchnorm(reference, torch.randn(2, 3, 64, 64))
    network = build_model(compose_train_config(TORCHVISION_MODELS[arch]).model).eval()
    state = convert_torchvision(arch, reference.state_dict(), f"torchvision {arch}", network)
    network.load_state_dict(state, strict=True)
    return reference, network


def _check_parity(arch: str) -> None:
    reference, network = _pair(arch)
    levels = []  # the encoder's output during network(x), for the auxiliary head
    hook = network.encoder.register_forward_hook(lambda m, i, out: levels.append(out))
    torch.manual_seed(1)
    try:
        for size in SIZES:
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                want = reference(x)
                got = network(x)
                assert set(got) == {"out"}  # eval mode: no auxiliary output
                assert want["out"].abs().max() > 0.05  # not a trivially small output
                assert (got["out"] - want["out"]).abs().max().item() <= 1e-4, (arch, size)
                if "aux" in want:  # the auxiliary head on its encoder level, called directly
                    aux = network.aux_head(levels[-1][network.aux_index])
                    aux = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
                    assert (aux - want["aux"]).abs().max().item() <= 1e-4, (arch, size)
    finally:
        hook.remove()


@pytest.mark.parametrize("arch", FAST)
def test_same_logits_as_torchvision(arch):
    _check_parity(arch)


@pytest.mark.slow  # 5-10 s each on a loaded 2-core machine (2 s alone)
@pytest.mark.parametrize("arch", RESNET101)
def test_same_logits_as_torchvision_resnet101(arch):
    _check_parity(arch)


@pytest.mark.parametrize("arch", [*FAST, *RESNET101])
def test_parameter_count_is_torchvisions(arch):
    """segbench's network, torchvision's model (both built on the meta device: no memory, no
    initialisation) and the weights' published count agree."""
    with torch.device("meta"):
        reference = _torchvision(arch)
        network = build_model(compose_train_config(TORCHVISION_MODELS[arch]).model)
    want = getattr(tvs, WEIGHTS[arch]).COCO_WITH_VOC_LABELS_V1.meta["num_params"]
    assert count_parameters(network) == count_parameters(reference) == want


@pytest.mark.parametrize("arch", FAST)
def test_a_missing_tensor_is_refused_by_name(arch):
    reference, network = _pair(arch)
    state = dict(reference.state_dict())
    removed = next(k for k in reversed(state) if k.endswith(".weight"))  # a classifier's
    del state[removed]
    with pytest.raises(ConversionError, match="missing from the file: ") as err:
        convert_torchvision(arch, state, "a torchvision file", network)
    assert "Nothing was loaded" in str(err.value)


@pytest.mark.parametrize("arch", FAST)
def test_an_extra_tensor_is_refused_by_name(arch):
    reference, network = _pair(arch)
    state = {**reference.state_dict(), "classifier.extra.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"left over in the file: classifier\.extra\.weight"):
        convert_torchvision(arch, state, "a torchvision file", network)
    state = {**reference.state_dict(), "backbone.99.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"backbone\.99\.weight"):
        convert_torchvision(arch, state, "a torchvision file", network)


def test_a_missing_tensor_names_the_segbench_key():
    reference, network = _pair("lraspp_mobilenet_v3_large")
    state = {k: v for k, v in reference.state_dict().items() if k != "classifier.cbr.1.bias"}
    with pytest.raises(ConversionError, match=r"missing from the file: decoder\.cbr\.1\.bias"):
        convert_torchvision("lraspp_mobilenet_v3_large", state, "a torchvision file", network)


def test_another_models_file_and_an_unknown_model_are_refused():
    deeplab, _ = _pair("deeplabv3_resnet50")
    _, fcn = _pair("fcn_resnet50")
    with pytest.raises(ConversionError, match="left over in the file: classifier.0.convs"):
        convert_torchvision("fcn_resnet50", deeplab.state_dict(), "a DeepLab file", fcn)
    with pytest.raises(ConversionError, match="fcn_resnet50, fcn_resnet101"):
        convert_torchvision("fcn_resnet18", deeplab.state_dict(), "a file")


# --- the MobileNetV3-Large encoder --------------------------------------------------------------


@pytest.mark.parametrize(("taps", "dilated"), [("last", True), ("first", False)])
def test_encoder_computes_torchvisions_features(taps, dilated):
    torch.manual_seed(0)
    reference = tvm.mobilenet_v3_large(weights=None, dilated=dilated).features
    _randomise_batchnorm(reference, torch.randn(2, 3, 32, 32))
    encoder = MobileNetV3Encoder(taps=taps, output_stride=16 if dilated else 32).eval()
    encoder.features.load_state_dict(reference.state_dict())
    at = [0, 2, 4, 7, 16] if taps == "first" else [1, 3, 6, 12, 16]
    assert encoder.taps_at == at
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        want, y = [], x
        for i, layer in enumerate(reference):
            y = layer(y)
            if i in at:
                want.append(y)
        got = encoder(x)
    assert [f.shape[1] for f in got] == encoder.channels
    assert encoder.strides == ([2, 4, 8, 16, 16] if dilated else [2, 4, 8, 16, 32])
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


def test_encoder_loads_torchvisions_imagenet_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = tvm.mobilenet_v3_large(weights=None)
    torch.save(reference.state_dict(), tmp_path / "mobilenet_v3_large.pth")
    encoder = MobileNetV3Encoder(weights=str(tmp_path / "mobilenet_v3_large.pth"))
    for key, value in encoder.features.state_dict().items():
        assert torch.equal(value, reference.features.state_dict()[key]), key
    state = reference.state_dict()
    del state["features.4.block.2.fc1.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"features\.4\.block\.2\.fc1\.bias"):
        MobileNetV3Encoder(weights=str(tmp_path / "short.pth"))


def test_encoder_refuses_what_it_cannot_be():
    with pytest.raises(ValueError, match="no stride-8 form"):
        MobileNetV3Encoder(output_stride=8)
    with pytest.raises(ValueError, match="taps must be"):
        MobileNetV3Encoder(taps="middle")
    with pytest.raises(ValueError, match="backbone.weights="):
        MobileNetV3Encoder(pretrained=True)
    with pytest.raises(ValueError, match="only mobilenetv3_large"):
        MobileNetV3Encoder(name="mobilenetv3_small")


def test_encoder_stops_at_until_stride_and_picks_out_indices():
    encoder = MobileNetV3Encoder(until_stride=8)
    assert encoder.strides == [2, 4, 8] and len(encoder.features) == 7
    encoder = MobileNetV3Encoder(taps="first", output_stride=16, out_indices=[2, 4])
    assert encoder.channels == [40, 960] and encoder.strides == [8, 16]
    assert encoder.taps_at == [4, 16] and len(encoder.features) == 17


# --- training ------------------------------------------------------------------------------------


def _train_step(overrides: list[str], size: tuple[int, int] = (64, 64)) -> dict:
    """One SGD step in training mode; every parameter gets a gradient (as DDP requires)."""
    torch.manual_seed(0)
    cfg = compose_train_config(overrides)
    net = build_model(cfg.model).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    out = net(torch.randn(2, 3, *size))
    target = torch.randint(0, cfg.model.num_classes, (2, *size))
    loss = F.cross_entropy(out["out"], target)
    if "aux" in out:
        loss = loss + net.aux_weight * F.cross_entropy(out["aux"], target)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    optimizer.step()
    return out


def test_lraspp_trains_on_debug_fast():
    cfg = compose_train_config(["model=lraspp", "debug=fast"])
    assert cfg.backbone.name == "tiny"
    out = _train_step(["model=lraspp", "debug=fast"], (65, 97))
    assert out["out"].shape == (2, 7, 65, 97)


def test_lraspp_trains_on_mobilenetv3():
    out = _train_step(["model=lraspp"], (32, 48))
    assert out["out"].shape == (2, 7, 32, 48)


def test_deeplabv3_with_aux_trains_on_mobilenetv3():
    out = _train_step(TORCHVISION_MODELS["deeplabv3_mobilenet_v3_large"], (32, 48))
    assert out["out"].shape == out["aux"].shape == (2, 21, 32, 48)


def test_lraspp_refuses_an_encoder_without_a_low_level():
    cfg = compose_train_config(["model=lraspp", "debug=fast", "model.low_stride=4"])
    assert build_model(cfg.model).decoder.low_index == 1
    cfg = compose_train_config(["model=lraspp", "debug=fast", "model.low_stride=32"])
    with pytest.raises(Exception, match="no level at stride 32"):
        build_model(cfg.model)
