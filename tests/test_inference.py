"""Evaluation modes: whole, sliding window, multi-scale and flip test-time augmentation, the CRF
run once on the averaged scores, Bayesian SegNet's uncertainty through every mode, configs and
the timing benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from segbench.bench.inference import DEFAULT_ROUNDS, main, run_benchmark
from segbench.engine.build import build_model
from segbench.inference import Inference, sliding_windows
from segbench.inference.crf import DenseCRF
from segbench.models.encoders import VGGEncoder
from segbench.models.segnet import BayesianSegNet
from tests.conftest import CONF, compose_config

K = 4


class ConvNet(nn.Module):
    """Tiny fully convolutional models returning ``{"out": logits}``: ``kernel`` 1 is purely
    local (per pixel); 3 with ``layers`` 2 sees its neighbours, so window borders matter."""

    def __init__(self, kernel: int = 3, layers: int = 2, symmetric: bool = False) -> None:
        super().__init__()
        widths = [3] + [8] * (layers - 1) + [K]
        convs = []
        for a, b in zip(widths[:-1], widths[1:]):
            conv = nn.Conv2d(a, b, kernel, padding=kernel // 2)
            if symmetric:  # mirror-symmetric kernels: the model commutes with a horizontal flip
                conv.weight.data = (conv.weight.data + conv.weight.data.flip(-1)) / 2
            convs += [conv, nn.ReLU()]
        self.net = nn.Sequential(*convs[:-1])
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.seen.append(tuple(x.shape[-2:]))
        return {"out": self.net(x)}  # (B, K, H, W)


def naive_starts(n: int, crop: int, stride: int) -> list[int]:
    """Window starts every ``stride`` while the window fits, plus one ending at the border."""
    starts = list(range(0, max(n - crop, 0) + 1, stride))
    if starts[-1] + crop < n:
        starts.append(n - crop)
    return starts


def naive_slide(model: nn.Module, x: Tensor, crop, stride) -> np.ndarray:
    """Sum of window logits divided by the count, accumulated in numpy (image ≥ crop)."""
    b, _, h, w = x.shape
    total, count = np.zeros((b, K, h, w)), np.zeros((h, w))
    for y in naive_starts(h, crop[0], stride[0]):
        for xx in naive_starts(w, crop[1], stride[1]):
            window = x[:, :, y : y + crop[0], xx : xx + crop[1]]
            total[:, :, y : y + crop[0], xx : xx + crop[1]] += model(window)["out"].numpy()
            count[y : y + crop[0], xx : xx + crop[1]] += 1
    return total / count


def log_mean_softmax(score_list: list[Tensor]) -> np.ndarray:
    """log of the mean numpy softmax over ``score_list`` of (B, K, H, W)."""
    probs = []
    for s in score_list:
        e = np.exp(s.double().numpy() - s.double().numpy().max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
    return np.log(np.mean(probs, axis=0))


@pytest.fixture(scope="module")
def fcn8s(tmp_path_factory) -> nn.Module:
    cfg = compose_config("train", ["debug=fast", "model=fcn8s"], tmp_path_factory.mktemp("fcn"))
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


# ------------------------------------------------------------------------------------- slide


@torch.no_grad()
def test_slide_with_one_window_covering_the_image_equals_whole(fcn8s):
    x = torch.randn(2, 3, 64, 96)
    whole = Inference()(fcn8s, x)["out"]
    for stride in ([64, 96], [10, 17]):
        slide = Inference("slide", crop=[64, 96], stride=stride)(fcn8s, x)["out"]
        assert slide.shape == whole.shape
        torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


@torch.no_grad()
def test_slide_with_overlaps_equals_a_naive_window_loop_and_whole_for_a_local_model():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 37, 53)
    crop, stride = (16, 16), (10, 10)
    slide = Inference("slide", crop=crop, stride=stride)
    # a 3x3 two-layer net: each window sees only itself, so slide != whole, = the naive loop
    conv = ConvNet(kernel=3).eval()
    out = slide(conv, x)["out"]
    np.testing.assert_allclose(out.numpy(), naive_slide(conv, x, crop, stride), atol=1e-5)
    assert not torch.allclose(out, conv(x)["out"], atol=1e-3)
    # a per-pixel model: overlapping windows agree, so slide = whole
    local = ConvNet(kernel=1).eval()
    out = slide(local, x)["out"]
    np.testing.assert_allclose(out.numpy(), naive_slide(local, x, crop, stride), atol=1e-5)
    torch.testing.assert_close(out, local(x)["out"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("size", "crop", "stride"),
    [
        ((37, 53), (16, 16), (10, 10)),
        ((1024, 2048), (512, 1024), (341, 683)),
        ((16, 9), (16, 4), (3, 4)),
    ],
)
def test_windows_cover_every_pixel_with_the_last_aligned_to_the_border(size, crop, stride):
    windows = sliding_windows(size, crop, stride)
    count = np.zeros(size, dtype=int)
    for y1, y2, x1, x2 in windows:
        assert (y2 - y1, x2 - x1) == crop and 0 <= y1 and y2 <= size[0] and x2 <= size[1]
        count[y1:y2, x1:x2] += 1
    assert (count > 0).all()
    ys = sorted({w[0] for w in windows})
    xs = sorted({w[2] for w in windows})
    assert ys == naive_starts(size[0], crop[0], stride[0])
    assert xs == naive_starts(size[1], crop[1], stride[1])
    assert len(windows) == len(ys) * len(xs)
    if size == (37, 53):  # starts 0, 10, 20, 21 and 0, 10, 20, 30, 37
        assert ys == [0, 10, 20, 21] and xs == [0, 10, 20, 30, 37]


class Ones(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": x.new_ones(x.shape[0], K, *x.shape[-2:])}


@torch.no_grad()
@pytest.mark.parametrize("size", [(37, 53), (10, 7), (10, 40)])
def test_slide_divides_by_the_count_and_pads_images_smaller_than_the_crop(size):
    x = torch.randn(1, 3, *size)
    slide = Inference("slide", crop=[16, 16], stride=[10, 10])
    out = slide(Ones(), x)["out"]  # each pixel: sum of n ones / n
    assert out.shape == (1, K, *size) and torch.equal(out, torch.ones_like(out))
    if max(size) <= 16:  # one padded window: zeros at the bottom/right are what a single
        # zero-padded conv already sees there, so one 3x3 conv reproduces the whole image
        one_conv = ConvNet(kernel=3, layers=1).eval()
        out = slide(one_conv, x)["out"]
        torch.testing.assert_close(out, one_conv(x)["out"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------- TTA


@torch.no_grad()
def test_flip_tta_of_a_flip_equivariant_model_equals_its_plain_output():
    torch.manual_seed(0)
    model = ConvNet(kernel=3, symmetric=True).eval()
    x = torch.randn(2, 3, 20, 28)
    plain = model(x)["out"]
    torch.testing.assert_close(model(x.flip(-1))["out"].flip(-1), plain)  # really equivariant
    out = Inference(flip=True)(model, x)["out"]
    assert torch.equal(out.argmax(1), plain.argmax(1))
    torch.testing.assert_close(out.exp(), F.softmax(plain, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(out, F.log_softmax(plain, 1), rtol=0, atol=1e-5)


@torch.no_grad()
def test_single_scale_without_flip_is_the_model_output_unchanged(fcn8s):
    x = torch.randn(2, 3, 64, 64)
    plain = fcn8s(x)["out"]
    assert torch.equal(Inference(scales=[1.0])(fcn8s, x)["out"], plain)
    assert torch.equal(Inference()(fcn8s, x)["out"], plain)


@torch.no_grad()
def test_multi_scale_flip_averages_softmax_at_the_input_size():
    torch.manual_seed(0)
    model = ConvNet(kernel=3).eval()  # not flip-equivariant: the flipped pass differs
    x = torch.randn(2, 3, 13, 21)
    scales = [0.75, 1.0, 1.25]
    model.seen.clear()
    out = Inference(scales=scales, flip=True)(model, x)["out"]
    # 13 x 0.75 = 9.75 -> 10, 21 x 0.75 = 15.75 -> 16; x 1.25: 16.25 -> 16, 26.25 -> 26
    assert model.seen == [(10, 16), (10, 16), (13, 21), (13, 21), (16, 26), (16, 26)]
    passes = []
    for size in [(10, 16), (13, 21), (16, 26)]:
        xs = x if size == (13, 21) else F.interpolate(x, size, mode="bilinear")
        for mirrored in (False, True):
            s = model(xs.flip(-1))["out"].flip(-1) if mirrored else model(xs)["out"]
            passes.append(F.interpolate(s, (13, 21), mode="bilinear") if size != (13, 21) else s)
    assert out.dtype == torch.float32 and out.shape == (2, K, 13, 21)
    np.testing.assert_allclose(out.numpy(), log_mean_softmax(passes), atol=1e-5)
    assert not np.allclose(out.numpy(), log_mean_softmax(passes[2:3]), atol=1e-3)


@torch.no_grad()
def test_slide_inside_multi_scale_windows_every_rescaled_image():
    torch.manual_seed(0)
    model = ConvNet(kernel=3).eval()
    x = torch.randn(1, 3, 24, 24)
    out = Inference("slide", crop=[16, 16], stride=[12, 12], scales=[1.0, 1.5])(model, x)["out"]
    big = F.interpolate(x, (36, 36), mode="bilinear")
    small_pass = torch.from_numpy(naive_slide(model, x, (16, 16), (12, 12))).float()
    big_pass = torch.from_numpy(naive_slide(model, big, (16, 16), (12, 12))).float()
    expected = log_mean_softmax([small_pass, F.interpolate(big_pass, (24, 24), mode="bilinear")])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


# --------------------------------------------------------------------------------------- CRF


class CountingCRF(nn.Module):
    def __init__(self, crf: nn.Module) -> None:
        super().__init__()
        self.crf, self.calls = crf, []

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        self.calls.append((tuple(logits.shape), image))
        return self.crf(logits, image)


def test_log_probabilities_are_valid_crf_unaries():
    """softmax(log p) = p: the CRF of the averaged log-probabilities is that of any logits
    with the same softmax."""
    torch.manual_seed(0)
    logits, image = torch.randn(1, K, 12, 12) * 3, torch.randn(1, 3, 12, 12)
    crf = DenseCRF(iterations=3)
    torch.testing.assert_close(crf(F.log_softmax(logits, 1), image), crf(logits, image))
    torch.testing.assert_close(crf(logits + 5.0, image), crf(logits, image))


@torch.no_grad()
def test_crf_runs_once_on_the_averaged_scores_never_per_pass(tmp_path):
    cfg = compose_config(
        "train", ["debug=fast", "model=deeplabv1_crf", "model.crf.iterations=2"], tmp_path
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    counter = CountingCRF(model.crf)
    model.crf = counter
    x = torch.randn(2, 3, 32, 40)
    Inference()(model, x)
    assert len(counter.calls) == 1  # the model's own forward, single pass
    for inference in (
        Inference(scales=[1.0, 1.25], flip=True),
        Inference("slide", crop=[32, 32], stride=[16, 16]),
        Inference("slide", crop=[32, 32], stride=[16, 16], scales=[1.0, 1.25], flip=True),
    ):
        counter.calls.clear()
        out = inference(model, x)["out"]
        assert [c[0] for c in counter.calls] == [(2, cfg.dataset.num_classes, 32, 40)]
        assert counter.calls[0][1] is x and model.crf is counter
        model.crf = None
        expected = counter.crf(inference(model, x)["out"], x)
        model.crf = counter
        torch.testing.assert_close(out, expected)


def test_crf_is_restored_when_a_pass_fails():
    class Failing(ConvNet):
        def forward(self, x):
            assert self.crf is None, "the CRF must be off during the passes"
            raise RuntimeError("out of memory")

    model = Failing().eval()
    model.crf = CountingCRF(DenseCRF())
    crf = model.crf
    with pytest.raises(RuntimeError, match="out of memory"):
        Inference(flip=True)(model, torch.randn(1, 3, 8, 8))
    assert model.crf is crf and crf.calls == []


class WithCRF(ConvNet):
    """Applies ``self.crf`` in eval mode, as DeepLab v1 does."""

    def __init__(self, crf: nn.Module) -> None:
        super().__init__()
        self.crf = crf

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = super().forward(x)
        if self.crf is not None and not self.training:
            out["out"] = self.crf(out["out"], x)
        return out


class Wrapper(nn.Module):
    """A GAN-seg-like model: predictions come from the segmenter it wraps."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.segmenter(x)


@torch.no_grad()
def test_crf_of_a_wrapped_segmenter_also_runs_once():
    segmenter = WithCRF(CountingCRF(DenseCRF(iterations=1))).eval()
    out = Inference(scales=[1.0, 0.5], flip=True)(Wrapper(segmenter), torch.randn(1, 3, 12, 12))
    assert len(segmenter.crf.calls) == 1 and out["out"].shape == (1, K, 12, 12)


# -------------------------------------------------------------------------- Bayesian SegNet


@torch.no_grad()
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_bayesian_segnet_uncertainty_passes_through_every_mode(dropout):
    torch.manual_seed(0)
    encoder = VGGEncoder("tiny", stages=[[8], [16], [16]], batch_norm=True)
    model = BayesianSegNet(encoder, K, dropout=dropout, mc_samples=3).eval()
    x = torch.randn(2, 3, 32, 40)
    for inference in (
        Inference(),
        Inference("slide", crop=[16, 24], stride=[8, 8]),
        Inference(scales=[0.5, 1.0], flip=True),
        Inference("slide", crop=[16, 16], stride=[16, 16], flip=True),
    ):
        out = inference(model, x)
        assert out["out"].shape == (2, K, 32, 40)
        unc = out["uncertainty"]
        assert unc.shape == (2, 32, 40) and (unc >= 0).all()
        if dropout == 0:  # identical samples: no variance anywhere
            assert (unc == 0).all()
        else:
            assert (unc > 0).float().mean() > 0.5


# ---------------------------------------------------------------------- labels and configs


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({}, "single-scale"),
        ({"flip": True}, "flip"),
        ({"scales": [0.75, 1.0, 1.25]}, "ms"),
        ({"scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": True}, "ms+flip"),
        ({"scales": [0.5]}, "scale0.5"),
        ({"mode": "slide", "crop": [8, 8], "stride": [4, 4]}, "slide"),
        ({"mode": "slide", "crop": [8, 8], "stride": [4, 4], "flip": True}, "slide+flip"),
        (
            {"mode": "slide", "crop": [8, 8], "stride": [8, 8], "scales": [1, 2], "flip": True},
            "slide+ms+flip",
        ),
    ],
)
def test_labels(kwargs, label):
    assert Inference(**kwargs).label == label


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mode": "sliding"}, ["inference.mode", "'sliding'", "whole", "slide"]),
        ({"mode": "slide"}, ["inference.crop", "inference.stride"]),
        ({"mode": "slide", "crop": [8, 8]}, ["inference.stride", "None"]),
        ({"mode": "slide", "crop": [8, 8], "stride": [4, 9]}, ["inference.stride", "[4, 9]"]),
        ({"mode": "slide", "crop": [8, 0], "stride": [4, 4]}, ["inference.crop", "positive"]),
        ({"mode": "slide", "crop": [8], "stride": [4, 4]}, ["inference.crop", "[h, w]"]),
        ({"crop": [8, 8], "stride": [4, 4]}, ["inference.crop", "mode=slide"]),
        ({"mode": "slide", "crop": ["a", 8], "stride": [4, 4]}, ["inference.crop", "'a'"]),
        ({"scales": []}, ["inference.scales"]),
        ({"scales": ["big"]}, ["inference.scales", "'big'"]),
        ({"scales": [1.0, -0.5]}, ["inference.scales", "-0.5"]),
        ({"flip": "yes"}, ["inference.flip", "'yes'"]),
    ],
)
def test_bad_settings_are_refused_naming_the_key(kwargs, words):
    with pytest.raises(ValueError) as err:
        Inference(**kwargs)
    for word in words:
        assert word in str(err.value)


EXPECTED_LABELS = {"whole": "single-scale", "slide": "slide", "ms_flip": "ms+flip"}


def test_every_inference_config_instantiates_and_composes(tmp_path):
    files = sorted(p.stem for p in (CONF / "inference").glob("*.yaml"))
    assert set(EXPECTED_LABELS) <= set(files)
    base = compose_config("train", [], tmp_path)
    add = "" if "inference" in base else "+"  # before and after train.yaml lists the group
    for name in files:
        inference = instantiate(OmegaConf.load(CONF / "inference" / f"{name}.yaml"))
        assert isinstance(inference, Inference)
        cfg = compose_config("train", [f"{add}inference={name}"], tmp_path)
        composed = instantiate(cfg.inference)
        assert composed.label == inference.label == EXPECTED_LABELS.get(name, inference.label)
        fewer = compose_config(
            "train", [f"{add}inference={name}", "inference.scales=[0.75,1.0,1.25]"], tmp_path
        )
        assert instantiate(fewer.inference).scales == (0.75, 1.0, 1.25)
    slide = instantiate(OmegaConf.load(CONF / "inference" / "slide.yaml"))
    assert slide.crop == (512, 1024) and slide.stride == (341, 683)
    assert len(sliding_windows((1024, 2048), slide.crop, slide.stride)) == 9


# --------------------------------------------------------------------------------- benchmark


MODES = ["whole", "slide", "flip", "ms", "ms+flip", "CRF"]


def test_run_benchmark_times_every_mode_and_restores_the_model():
    torch.manual_seed(0)
    rows = run_benchmark(ConvNet().train(), torch.randn(2, 3, 24, 24))
    assert [r["mode"] for r in rows] == MODES
    assert all(r["seconds"] > 0 and r["ratio"] > 0 for r in rows) and rows[0]["ratio"] == 1.0

    encoder = VGGEncoder("tiny", stages=[[8], [8]], batch_norm=True)
    model = BayesianSegNet(encoder, K, mc_samples=3).train()
    model.crf = CountingCRF(DenseCRF(iterations=1))
    crf = model.crf
    rows = run_benchmark(model, torch.randn(1, 3, 16, 16))
    assert [r["mode"] for r in rows] == [*MODES, "MC dropout x3"]
    assert all(r["seconds"] > 0 for r in rows)
    assert len(crf.calls) == 1 + DEFAULT_ROUNDS  # only in the CRF row (warm-up + 1 image a
    # round), its own CRF
    assert model.crf is crf and model.mc_samples == 3 and model.training


def test_benchmark_command_prints_a_table(capsys):
    assert main(["debug=fast", "--images", "1", "--size", "64", "64", "dataset.num_classes=3"]) == 0
    out = capsys.readouterr().out
    assert "model fcn8s, backbone tiny, 3 classes" in out
    for mode in MODES:
        assert f"| {mode} |" in out
