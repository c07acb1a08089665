"""Mask2Former: deformable attention against direct bilinear sampling, the network against
transformers' ``Mask2FormerForUniversalSegmentation`` on the same weights, the set loss against
transformers' ``Mask2FormerLoss`` and the matcher against a brute-force assignment, training
through the mask-classification task, and the ONNX export."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from segbench.losses.set_criterion import (
    HungarianMatcher,
    SetCriterion,
    point_sample,
    semantic_targets,
)
from segbench.models.convert import ConversionError
from segbench.models.encoders import TimmEncoder
from segbench.models.mask2former import Mask2Former
from segbench.models.mask2former_hf import convert_mask2former, mask2former_settings
from segbench.models.msdeform import MSDeformAttention, ms_deform_attn
from tests.conftest import compose_config

transformers = pytest.importorskip("transformers")

K = 5  # classes of the small models
SMALL = [  # a small Mask2Former for the task and the export
    "model.hidden_dim=32",
    "model.heads=4",
    "model.dim_feedforward=64",
    "model.enc_dim_feedforward=64",
    "model.enc_layers=2",
    "model.dec_layers=3",
    "model.num_queries=10",
]


# --- deformable attention -------------------------------------------------------------------


def _bilinear(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``value (D, h, w)`` at ``(x, y)`` in [0, 1] (align_corners=False), zero outside."""
    _, h, w = value.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(value.shape[0], dtype=value.dtype)
    for xi, yi in itertools.product((x0, x0 + 1), (y0, y0 + 1)):
        if 0 <= xi < w and 0 <= yi < h:
            out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * value[:, yi, xi]
    return out


def test_deformable_attention_is_a_weighted_sum_of_bilinear_samples():
    torch.manual_seed(0)
    b, m, d, q, p = 2, 2, 3, 4, 3
    shapes = [(3, 5), (2, 2)]
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, dtype=torch.float64)
    locations = torch.rand(b, q, m, len(shapes), p, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, q, m, len(shapes), p, dtype=torch.float64)
    got = ms_deform_attn(value, shapes, locations, weights)  # (B, Q, M*D)
    expected = torch.zeros_like(got)
    for bi, qi, mi in itertools.product(range(b), range(q), range(m)):
        start = 0
        for level, (h, w) in enumerate(shapes):
            v = value[bi, start : start + h * w, mi].T.reshape(d, h, w)
            start += h * w
            for pi in range(p):
                x, y = locations[bi, qi, mi, level, pi].tolist()
                sample = _bilinear(v, x, y)
                expected[bi, qi, mi * d : (mi + 1) * d] += weights[bi, qi, mi, level, pi] * sample
    assert torch.allclose(got, expected, atol=1e-12)
    assert (locations < 0).any() and (locations > 1).any()  # points outside read zeros


def test_deformable_attention_starts_uniform_around_the_reference_point():
    attn = MSDeformAttention(16, heads=4, levels=2, points=3)
    query = torch.randn(1, 5, 16)
    w = attn.attention_weights(query).view(1, 5, 4, 6).softmax(-1)
    assert torch.allclose(w, torch.full_like(w, 1 / 6))
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(offsets[:, :, 2], 3 * offsets[:, :, 0])  # points at 1, 2, 3 steps


# --- parity with transformers -----------------------------------------------------------------


STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _backbone(kind: str):
    """A small transformers backbone config and the TimmEncoder of the same network."""
    from transformers import ResNetConfig, SwinConfig

    if kind == "swin":
        small = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
        config = SwinConfig(**small, window_size=7, out_features=STAGES)
        name = "swin_tiny_patch4_window7_224"
        return config, TimmEncoder(name, out_norms=True, model_kwargs=small)
    config = ResNetConfig(  # timm's plain ResNet stem is 64 wide, whatever the stages
        embedding_size=64,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=STAGES,
    )
    small = dict(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128])
    return config, TimmEncoder("resnet18", model_kwargs=small)


def _hf_pair(kind: str):
    """transformers' Mask2Former (small backbone ``kind``, random weights, eval) and segbench's
    with the converted weights."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    backbone, encoder = _backbone(kind)
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=2,
        decoder_layers=4,  # the prediction before the first layer + 3 layers
        num_attention_heads=4,
        num_queries=10,
        num_labels=K,
    )
    hf = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # leave nothing at a trivial initialisation
        for name, p in hf.named_parameters():
            if "sampling_offsets" in name or "attention_weights" in name:
                p.normal_(0, 0.3)
            elif "hidden_states_norms" in name:
                p.uniform_(0.5, 1.5)
        for name, buf in hf.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    ours = Mask2Former(encoder, K, **mask2former_settings(config.to_dict())).eval()
    state = convert_mask2former(hf.state_dict(), config.to_dict(), "test checkpoint", ours)
    ours.load_state_dict(state, strict=False)  # num_batches_tracked: checked by result(ours)
    return hf, ours, config


@pytest.fixture(scope="module")
def hf_pair():
    return _hf_pair("resnet")


def _compare_every_layer(hf, ours, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = hf(pixel_values=x, output_auxiliary_logits=True)
        got = ours(x)
    classes, masks = got["class_logits"], got["mask_logits"]
    assert classes.shape == (4, x.shape[0], 10, K + 1)
    assert masks.shape[-2:] == expected.masks_queries_logits.shape[-2:]
    layers = [*expected.auxiliary_logits, {
        "class_queries_logits": expected.class_queries_logits,
        "masks_queries_logits": expected.masks_queries_logits,
    }]  # fmt: skip
    for i, layer in enumerate(layers):
        assert (classes[i] - layer["class_queries_logits"]).abs().max() <= 1e-4, i
        assert (masks[i] - layer["masks_queries_logits"]).abs().max() <= 1e-4, i
    # the masked attention masked something (and not everything) on the way
    blocked = [ours.head.attention_mask(m, (4, 4)).float().mean() for m in masks[:-1]]
    assert any(0 < float(f) < 1 for f in blocked)


@pytest.mark.parametrize("size", [(64, 64), (72, 100)])
def test_every_layer_matches_transformers(hf_pair, size):
    hf, ours, _ = hf_pair
    torch.manual_seed(1)
    _compare_every_layer(hf, ours, torch.randn(2, 3, *size))


def test_every_layer_matches_transformers_on_a_swin_backbone():
    """Sizes 64x64 and 66x98 (no multiple of 4: the image and every window padded)."""
    hf, ours, config = _hf_pair("swin")
    for size in [(64, 64), (66, 98)]:
        torch.manual_seed(1)
        _compare_every_layer(hf, ours, torch.randn(2, 3, *size))
    # without the model, the decoders are checked against those the config describes
    state = convert_mask2former(hf.state_dict(), config.to_dict(), "test checkpoint")
    assert set(state) == set(ours.state_dict())


@pytest.mark.parametrize("size", [(64, 64), (72, 100)])
def test_semantic_map_is_the_image_processors(hf_pair, size, monkeypatch):
    """transformers' post_process_semantic_segmentation, its (384, 384) intermediate size set
    to the input size (the paper's: mask logits upsampled to the image, then combined), gives
    exp(out) and the same class map."""
    from transformers import Mask2FormerImageProcessor

    hf, ours, _ = hf_pair
    torch.manual_seed(2)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = hf(pixel_values=x)
        got = ours(x)["out"]
    interpolate = F.interpolate

    def to_input_size(t, size=None, **kwargs):
        return interpolate(t, size=x.shape[-2:] if tuple(size) == (384, 384) else size, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", to_input_size)
    processed = Mask2FormerImageProcessor().post_process_semantic_segmentation(
        expected, target_sizes=[size] * 2, return_segmentation_scores=True
    )
    for i, result in enumerate(processed):
        assert (got[i].exp() - result["segmentation_scores"]).abs().max() <= 1e-5
        assert torch.equal(got[i].argmax(0), result["segmentation"])


def test_converter_names_a_missing_and_an_extra_tensor(hf_pair):
    hf, ours, config = hf_pair
    state = dict(hf.state_dict())
    removed = "model.transformer_module.decoder.layers.1.fc2.weight"
    del state[removed]
    state["model.transformer_module.decoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError) as err:
        convert_mask2former(state, config.to_dict(), "test checkpoint")
    message = str(err.value)
    assert "missing from the file: head.layers.1.fc2.weight" in message
    assert "left over in the file: model.transformer_module.decoder.extra.weight" in message
    with pytest.raises(ConversionError, match=r"missing from the file: head\.layers\.1\.fc2"):
        convert_mask2former(state, config.to_dict(), "test checkpoint", model=ours)
    with pytest.raises(ConversionError, match="pre_norm"):
        convert_mask2former(hf.state_dict(), {**config.to_dict(), "pre_norm": True})


# --- the set loss ---------------------------------------------------------------------------


def test_semantic_targets_one_mask_per_class_present_without_the_ignored_pixels():
    target = torch.tensor([[[0, 0, 3], [255, 3, 3]], [[255, 255, 255], [255, 255, 255]]])
    (classes, masks), (none, empty) = semantic_targets(target, 4, 255)
    assert classes.tolist() == [0, 3] and none.numel() == 0 and empty.shape == (0, 2, 3)
    assert masks.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]
    with pytest.raises(ValueError, match=r"\[7\]"):
        semantic_targets(torch.full((1, 2, 2), 7), 4, 255)


def test_matcher_finds_the_least_cost_assignment_of_a_brute_force_cost():
    from scipy.optimize import linear_sum_assignment

    torch.manual_seed(3)
    q, p = 6, 64
    class_logits = torch.randn(2, q, K + 1)
    mask_logits = torch.randn(2, q, 8, 8)
    targets = semantic_targets(torch.randint(0, 3, (2, 16, 16)) * 2, K, 255)
    torch.manual_seed(4)
    matches = HungarianMatcher(num_points=p)(class_logits, mask_logits, targets)
    torch.manual_seed(4)  # the same points: one torch.rand(P, 2) per image
    for i, (classes, masks) in enumerate(targets):
        points = torch.rand(p, 2)
        pred = point_sample(mask_logits[i], points[None].expand(q, -1, -1))  # (Q, P)
        gt = point_sample(masks, points[None].expand(len(classes), -1, -1))  # (T, P)
        prob = class_logits[i].softmax(-1)
        cost = torch.zeros(q, len(classes))
        for a, t in itertools.product(range(q), range(len(classes))):
            x, y = pred[a], gt[t]
            bce = -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)).mean()
            s = x.sigmoid()
            dice = 1 - (2 * (s * y).sum() + 1) / (s.sum() + y.sum() + 1)
            cost[a, t] = -2 * prob[a, classes[t]] + 5 * bce + 5 * dice
        rows, cols = linear_sum_assignment(cost.numpy())
        assert matches[i][0].tolist() == rows.tolist()
        assert matches[i][1].tolist() == cols.tolist()
        best = min(  # every injective assignment of the targets to queries
            sum(float(cost[a, t]) for t, a in enumerate(perm))
            for perm in itertools.permutations(range(q), len(classes))
        )
        assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def test_set_criterion_equals_transformers_loss():
    """Both losses draw their points with torch.rand in the same order (matching per image,
    then the oversampled and the uniform points of the mask loss; the last layer, then the
    others): seeded identically before each, they see the same points."""
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    reference = Mask2FormerLoss(Mask2FormerConfig(num_labels=K, train_num_points=500), weights)
    ours = SetCriterion(K, 255, num_points=500)
    torch.manual_seed(5)
    layers, q = 4, 10
    class_logits = torch.randn(layers, 2, q, K + 1, requires_grad=True)
    mask_logits = (3 * torch.randn(layers, 2, q, 16, 20)).requires_grad_()
    target = torch.randint(0, K, (2, 64, 80))
    target[0, :10] = 255  # ignored pixels
    target[1][target[1] == 2] = 4  # a class absent from one image
    targets = semantic_targets(target, K, 255)
    torch.manual_seed(6)
    parts = reference(
        mask_logits[-1],
        class_logits[-1],
        [m for _, m in targets],
        [c for c, _ in targets],
        [
            {"masks_queries_logits": mask_logits[i], "class_queries_logits": class_logits[i]}
            for i in range(layers - 1)
        ],
    )
    expected = sum(v * next(w for k, w in weights.items() if k in n) for n, v in parts.items())
    torch.manual_seed(6)
    loss, terms = ours(class_logits, mask_logits, target)
    assert abs(float(loss - expected)) <= 1e-5
    assert float(sum(terms.values())) == pytest.approx(float(loss), abs=1e-5)
    ce = sum(v for n, v in parts.items() if "cross_entropy" in n)
    assert float(terms["class"]) == pytest.approx(2 * float(ce), abs=1e-5)
    grads = torch.autograd.grad(expected, [class_logits, mask_logits])
    for ours_grad, theirs in zip(torch.autograd.grad(loss, [class_logits, mask_logits]), grads):
        assert (ours_grad - theirs).abs().max() <= 1e-6


def test_set_criterion_without_any_target_is_zero_mask_loss_with_a_graph():
    criterion = SetCriterion(K, 255, num_points=16)
    class_logits = torch.randn(2, 1, 4, K + 1, requires_grad=True)
    mask_logits = torch.randn(2, 1, 4, 8, 8, requires_grad=True)
    loss, terms = criterion(class_logits, mask_logits, torch.full((1, 32, 32), 255))
    assert float(terms["mask"]) == 0 and float(terms["dice"]) == 0 and float(terms["class"]) > 0
    loss.backward()
    assert mask_logits.grad is not None and class_logits.grad.abs().sum() > 0


# --- the task, the config and the export ----------------------------------------------------


def test_paper_configuration_has_the_papers_parameter_count(tmp_path):
    """At 150 classes (ADE20K), the paper's table: R50 44M, Swin-T 47M parameters."""
    from segbench.engine.build import build_model
    from segbench.models.base import count_parameters

    cfg = compose_config(
        "train", ["model=mask2former", "dataset.num_classes=150"], tmp_path / "run"
    )
    assert cfg.backbone.name == "resnet50" and cfg.task._target_.endswith("MaskClassificationTask")
    counts = {}
    for backbone in ("resnet50", "swin_tiny"):
        overrides = ["model=mask2former", f"backbone={backbone}", "dataset.num_classes=150"]
        with torch.device("meta"):
            net = build_model(compose_config("train", overrides, tmp_path / "run").model)
        counts[backbone] = count_parameters(net)
    assert counts == {"resnet50": 44_041_367, "swin_tiny": 47_439_633}


def test_trains_through_the_mask_classification_task(tmp_path):
    import csv

    from segbench.engine.run import train

    overrides = [
        "debug=fast",
        "model=mask2former",
        "trainer.max_epochs=1",
        "dataset.subset.train=4",
        "dataset.subset.val=2",
        "dataset.subset.test=2",
        "callbacks.run_plots=null",
        "callbacks.eval_outputs=null",
        "task.num_points=256",
        *SMALL,
    ]
    results = train(compose_config("train", overrides, tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["model"] == "mask2former" and 0 <= written["metrics"]["mIoU"] <= 1
    assert written["params"] > 0 and written["gflops"] > 0  # FLOPs counted through the model
    assert results is not None
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    parts = [f"train/loss/{name}_step" for name in ("class", "mask", "dice")]
    assert set(parts) | {"train/loss_step", "val/loss", "test/loss"} <= logged
    row = next(r for r in rows if r.get("train/loss_step"))
    total = sum(float(row[k]) for k in parts)
    assert total == pytest.approx(float(row["train/loss_step"]), rel=1e-4)


@pytest.mark.slow
def test_exports_to_onnx_with_dynamic_size_and_passes_its_parity_check(tmp_path, capsys):
    from segbench.cli import main as segbench
    from tests.fixtures.checkpoints import untrained_checkpoint

    ckpt = untrained_checkpoint("mask2former", tmp_path / "m2f.ckpt", *SMALL)
    out = tmp_path / "m2f.onnx"
    args = ["export", f"ckpt={ckpt}", "format=onnx", f"out={out}", "size=64x64", "speed=false"]
    assert segbench(args) == 0, capsys.readouterr()
    record = json.loads(out.with_name(out.name + ".parity.json").read_text())
    assert record["passed"] and record["parity"]["max_abs_logit_diff"] <= 1e-4
    assert record["dynamic_hw"] is True, record["fixed_size_because"]
