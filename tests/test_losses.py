"""Losses: ignored pixels change nothing, gradients flow, a perfect prediction is the minimum,
and each loss agrees with hand-computed cases or an independent numpy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from segbench.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszSoftmaxLoss,
    OHEMCrossEntropyLoss,
    WeightedSum,
    lovasz_grad,
)
from tests.conftest import CONF, compose_config

K = 4
IGNORE = 255


def weighted_sum(num_classes: int = K, ignore_index: int = IGNORE) -> WeightedSum:
    return WeightedSum(
        {
            "ce": {"loss": CrossEntropyLoss(num_classes, ignore_index), "weight": 1.0},
            "lovasz": {"loss": LovaszSoftmaxLoss(num_classes, ignore_index), "weight": 0.5},
            "dice": {"loss": DiceLoss(num_classes, ignore_index), "weight": 2.0},
        }
    )


# every loss, with settings that exercise its options on 2x4x5x6 batches
BUILDERS = {
    "ce": lambda: CrossEntropyLoss(K, IGNORE, class_weights=[1.0, 2.0, 0.5, 1.0]),
    "ce_smooth": lambda: CrossEntropyLoss(K, IGNORE, label_smoothing=0.1),
    "focal": lambda: FocalLoss(K, IGNORE, gamma=2.0, class_weights=[1.0, 2.0, 0.5, 1.0]),
    "focal_half": lambda: FocalLoss(K, IGNORE, gamma=0.5),
    "ohem": lambda: OHEMCrossEntropyLoss(K, IGNORE, thresh=0.3, min_kept=5),
    "ohem_hardest": lambda: OHEMCrossEntropyLoss(K, IGNORE, thresh=0.0, min_kept=7),
    "dice": lambda: DiceLoss(K, IGNORE),
    "dice_all": lambda: DiceLoss(K, IGNORE, classes="all", class_weights=[1.0, 2.0, 0.5, 1.0]),
    "jaccard": lambda: JaccardLoss(K, IGNORE),
    "lovasz": lambda: LovaszSoftmaxLoss(K, IGNORE),
    "lovasz_image_all": lambda: LovaszSoftmaxLoss(K, IGNORE, classes="all", per_image=True),
    "sum": weighted_sum,
}
NAMES = list(BUILDERS)


def batch(seed: int = 0, shape: tuple[int, int, int] = (2, 5, 6)):
    """Random logits (B, K, H, W) and labels with an ignored block in image 0."""
    gen = torch.Generator().manual_seed(seed)
    b, h, w = shape
    logits = torch.randn(b, K, h, w, generator=gen) * 2
    target = torch.randint(0, K, (b, h, w), generator=gen)
    target[0, :2, :3] = IGNORE
    return logits, target


def loss_and_grad(loss, logits, target):
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    return value.detach(), logits.grad


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_valid_logits_only(name):
    logits, target = batch()
    value, grad = loss_and_grad(BUILDERS[name](), logits, target)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    assert torch.isfinite(grad).all()
    ignored = (target == IGNORE)[:, None].expand_as(grad)
    assert (grad[ignored] == 0).all()
    assert grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_logits_at_ignored_pixels_change_nothing(name):
    loss = BUILDERS[name]()
    logits, target = batch(1)
    ignored = (target == IGNORE)[:, None].expand_as(logits)
    value, grad = loss_and_grad(loss, logits, target)
    changed = logits.clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 50
    value2, grad2 = loss_and_grad(loss, changed, target)
    torch.testing.assert_close(value2, value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad2[~ignored], grad[~ignored], rtol=1e-5, atol=1e-7)
    # the same change at one valid pixel does change the loss: the check above has teeth
    moved = logits.clone()
    moved[1, :, 0, 0] = torch.tensor([9.0, -9.0, 4.0, -4.0])
    assert not torch.isclose(loss(moved, target), value)


@pytest.mark.parametrize("name", NAMES)
def test_padding_with_ignored_pixels_and_images_gives_the_same_loss(name):
    loss = BUILDERS[name]()
    logits, target = batch(2)
    value = loss(logits, target)
    # pad 2 rows and 3 columns of ignored pixels, and add a third image that is all ignored
    padded_logits = torch.randn(3, K, 7, 9) * 5
    padded_target = torch.full((3, 7, 9), IGNORE)
    padded_logits[:2, :, :5, :6] = logits
    padded_target[:2, :5, :6] = target
    torch.testing.assert_close(loss(padded_logits, padded_target), value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "ce_smooth"])  # see the next test
def test_a_perfect_prediction_is_the_minimum(name):
    loss = BUILDERS[name]()
    _, target = batch(3)
    labels = torch.where(target == IGNORE, 0, target)
    perfect = F.one_hot(labels, K).permute(0, 3, 1, 2).float() * 30  # p(true) = 1 - 3e-13
    best = loss(perfect, target)
    assert 0 <= best.item() < 1e-5
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        noisy = perfect + torch.randn(perfect.shape, generator=gen) * 10
        assert loss(noisy, target) > best
    wrong = perfect.clone()
    wrong[1, :, 2, 2] = wrong[1, :, 2, 2].roll(1)  # one pixel confidently wrong
    assert loss(wrong, target) > best + 1e-3


def test_with_label_smoothing_the_minimum_is_the_smoothed_target():
    # eps = 0.1, K = 4: the loss is the cross-entropy to q = 0.925 on the label, 0.025 elsewhere,
    # minimal at p = q (where it is q's entropy), not at a confident prediction
    loss = CrossEntropyLoss(K, IGNORE, label_smoothing=0.1)
    _, target = batch(3)
    labels = torch.where(target == IGNORE, 0, target)
    q = F.one_hot(labels, K).permute(0, 3, 1, 2) * 0.9 + 0.1 / K
    entropy = -(0.925 * math.log(0.925) + 3 * 0.025 * math.log(0.025))
    torch.testing.assert_close(loss(q.log(), target).item(), entropy)
    assert loss(q.log() + torch.randn(q.shape), target) > entropy
    assert loss(q.log() * 10, target) > entropy


@pytest.mark.parametrize("name", NAMES)
def test_an_all_ignored_batch_gives_zero_with_a_graph(name):
    logits = torch.randn(2, K, 3, 3)
    value, grad = loss_and_grad(BUILDERS[name](), logits, torch.full((2, 3, 3), IGNORE))
    assert value.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


# --- Dice and Jaccard against a hand-computed case ------------------------------------------
# One image of 2x2 pixels, K = 3. Softmax probabilities and labels:
#   pixel a: p = (0.7, 0.2, 0.1), label 0
#   pixel b: p = (0.1, 0.8, 0.1), label 1
#   pixel c: p = (0.3, 0.5, 0.2), label 1
#   pixel d: p = (0.2, 0.2, 0.6), ignored
# Over a, b, c:
#   class 0: sum(p g) = 0.7, sum(p) = 1.1, sum(g) = 1  -> Dice 1.4/2.1 = 2/3,   loss 1/3
#                                                         IoU 0.7/1.4 = 1/2,    loss 1/2
#   class 1: sum(p g) = 1.3, sum(p) = 1.5, sum(g) = 2  -> Dice 2.6/3.5 = 26/35, loss 9/35
#                                                         IoU 1.3/2.2 = 13/22,  loss 9/22
#   class 2: absent, sum(p) = 0.4                      -> Dice 0 (smooth 0),    loss 1
#                                                         smooth 1: 1/1.4,      loss 2/7
PROBS = torch.tensor(
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6]]
)  # (pixel, class)
HAND_LOGITS = PROBS.log().T.reshape(1, 3, 2, 2)
HAND_TARGET = torch.tensor([[[0, 1], [1, IGNORE]]])


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (DiceLoss(3, smooth=0.0), (1 / 3 + 9 / 35) / 2),
        (DiceLoss(3, smooth=0.0, classes="all"), (1 / 3 + 9 / 35 + 1) / 3),
        (DiceLoss(3, smooth=0.0, class_weights=[1.0, 3.0, 5.0]), (1 / 3 + 3 * 9 / 35) / 4),
        # smooth 1: class 0 1 - 2.4/3.1, class 1 1 - 3.6/4.5, class 2 2/7
        (DiceLoss(3, smooth=1.0, classes="all"), (0.7 / 3.1 + 0.9 / 4.5 + 2 / 7) / 3),
        (JaccardLoss(3, smooth=0.0), (1 / 2 + 9 / 22) / 2),
        (JaccardLoss(3, smooth=0.0, classes="all"), (1 / 2 + 9 / 22 + 1) / 3),
    ],
)
def test_dice_and_jaccard_match_the_hand_computed_case(loss, expected):
    torch.testing.assert_close(loss(HAND_LOGITS, HAND_TARGET).item(), expected)


# --- Lovász ----------------------------------------------------------------------------------


def test_lovasz_grad_matches_the_hand_computed_jaccard_steps():
    # truth of the pixels sorted by decreasing error: 1, 0, 1, 0 (2 true pixels). Making the
    # first i pixels wrong gives Jaccard losses (1 - |T ∩ P| / |T ∪ P|):
    #   i=0: 0;  i=1: 1 - 1/2 = 1/2;  i=2: 1 - 1/3 = 2/3;  i=3: 1 - 0/3 = 1;  i=4: 1 - 0/4 = 1
    # so the steps are 1/2, 1/6, 1/3, 0.
    grad = lovasz_grad(torch.tensor([1, 0, 1, 0]))
    torch.testing.assert_close(grad, torch.tensor([1 / 2, 1 / 6, 1 / 3, 0.0], dtype=grad.dtype))


def test_lovasz_grad_stays_exact_over_millions_of_pixels():
    # all n pixels true: making the first i wrong gives a Jaccard loss of i / n, so every step
    # is 1 / n (float32 would get some steps wrong by ~20% near 1)
    n = 3_000_017
    grad = lovasz_grad(torch.ones(n, dtype=torch.long))
    torch.testing.assert_close(grad, torch.full_like(grad, 1 / n), rtol=1e-6, atol=0)


def test_lovasz_matches_the_hand_computed_case():
    # 4 pixels, K = 2, labels 1 0 1 0, p(class 1) = 0.8 0.4 0.3 0.1.
    # Class 1: errors |g - p| = 0.2 0.4 0.7 0.1, sorted 0.7 (true) 0.4 (false) 0.2 (true)
    #   0.1 (false): truth 1 0 1 0, steps 1/2 1/6 1/3 0 (test above):
    #   0.7/2 + 0.4/6 + 0.2/3 = 0.483333
    # Class 0: same errors, sorted truth 0 1 0 1. Jaccard losses of the prefixes:
    #   i=1: predicted {b, d, a wrongly} -> 1 - 2/3;  i=2: 1 - 1/3;  i=3: 1 - 1/4;  i=4: 1
    #   steps 1/3 1/3 1/12 1/4: 0.7/3 + 0.4/3 + 0.2/12 + 0.1/4 = 0.408333
    # Mean over the 2 present classes: 0.445833.
    p1 = torch.tensor([0.8, 0.4, 0.3, 0.1])
    logits = torch.stack([1 - p1, p1]).log().reshape(1, 2, 1, 4)
    target = torch.tensor([[[1, 0, 1, 0]]])
    value = LovaszSoftmaxLoss(2)(logits, target)
    torch.testing.assert_close(value.item(), (0.483333333 + 0.408333333) / 2)


def lovasz_by_definition(probs: np.ndarray, labels: np.ndarray, classes: str) -> float:
    """The Lovász extension from its definition: sum over sorted errors of the Jaccard loss of
    each prefix (as a set of wrong pixels) minus that of the previous prefix. ``probs (K, N)``."""
    losses = []
    for c in range(probs.shape[0]):
        truth = labels == c
        if classes == "present" and not truth.any():
            continue
        errors = np.abs(truth - probs[c])
        order = np.argsort(-errors, kind="stable")

        def jaccard_loss(wrong: np.ndarray, truth=truth) -> float:
            predicted = truth ^ wrong
            union = (truth | predicted).sum()
            return 0.0 if union == 0 else 1.0 - (truth & predicted).sum() / union

        wrong = np.zeros_like(truth)
        total, previous = 0.0, 0.0
        for i in order:
            wrong[i] = True
            current = jaccard_loss(wrong)
            total += errors[i] * (current - previous)
            previous = current
        losses.append(total)
    return float(np.mean(losses))


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_matches_its_definition_and_per_image_averages_images(classes):
    logits, target = batch(4, shape=(2, 3, 4))
    target[1][target[1] == 3] = 2  # class 3 absent from image 1
    probs = logits.softmax(1).double().numpy()
    valid = (target != IGNORE).numpy()
    labels = target.numpy()
    # batch-wide: one pool of the valid pixels of both images
    pooled = np.concatenate([probs[b][:, valid[b]] for b in range(2)], axis=1)
    expected = lovasz_by_definition(
        pooled, np.concatenate([labels[b][valid[b]] for b in (0, 1)]), classes
    )
    value = LovaszSoftmaxLoss(K, IGNORE, classes=classes)(logits, target)
    torch.testing.assert_close(value.item(), expected, rtol=1e-5, atol=1e-6)
    per_image = [
        lovasz_by_definition(probs[b][:, valid[b]], labels[b][valid[b]], classes) for b in (0, 1)
    ]
    value = LovaszSoftmaxLoss(K, IGNORE, classes=classes, per_image=True)(logits, target)
    torch.testing.assert_close(value.item(), float(np.mean(per_image)), rtol=1e-5, atol=1e-6)


def test_lovasz_of_a_hard_prediction_is_one_minus_iou():
    logits, target = batch(5, shape=(2, 6, 6))
    predicted = logits.argmax(1)
    hard = F.one_hot(predicted, K).permute(0, 3, 1, 2).float() * 40
    valid = target != IGNORE
    ious = []
    for c in range(K):
        truth, pred = (target == c) & valid, (predicted == c) & valid
        if truth.any():
            ious.append((truth & pred).sum().item() / (truth | pred).sum().item())
    value = LovaszSoftmaxLoss(K, IGNORE)(hard, target)
    torch.testing.assert_close(value.item(), 1 - float(np.mean(ious)), rtol=1e-5, atol=1e-6)


# --- focal and OHEM against cross-entropy ----------------------------------------------------


def test_focal_with_gamma_0_is_cross_entropy_and_gamma_2_matches_the_formula():
    logits, target = batch(6)
    weights = [0.5, 1.0, 2.0, 3.0]
    torch.testing.assert_close(
        FocalLoss(K, IGNORE, gamma=0.0, class_weights=weights)(logits, target),
        CrossEntropyLoss(K, IGNORE, class_weights=weights)(logits, target),
    )
    # one pixel with p(true) = 0.25: -(1 - 0.25)^2 log 0.25 = 0.5625 * 1.386294 = 0.779791
    one = torch.tensor([0.25, 0.75]).log().reshape(1, 2, 1, 1)
    value = FocalLoss(2, gamma=2.0)(one, torch.zeros(1, 1, 1, dtype=torch.long))
    torch.testing.assert_close(value.item(), 0.5625 * math.log(4))


def ohem_reference(logits, target, thresh, min_kept, weights=None):
    """numpy: keep p(true) <= thresh, or else the min_kept * images lowest p(true)."""
    logp = torch.log_softmax(logits.double(), 1).numpy()
    labels, valid = target.numpy(), (target != IGNORE).numpy()
    b, h, w = np.nonzero(valid)
    nll = -logp[b, labels[b, h, w], h, w]
    prob = np.exp(-nll)
    images = valid.reshape(valid.shape[0], -1).any(1).sum()
    kept = prob <= thresh
    if kept.sum() < min_kept * images:
        kept = np.zeros_like(kept)
        kept[np.argsort(prob)[: min_kept * images]] = True
    w = np.ones_like(nll) if weights is None else np.asarray(weights)[labels[b, h, w]]
    return (w * nll)[kept].sum() / w[kept].sum(), int(kept.sum())


def test_ohem_with_threshold_1_is_cross_entropy():
    logits, target = batch(7)
    weights = [0.5, 1.0, 2.0, 3.0]
    torch.testing.assert_close(
        OHEMCrossEntropyLoss(K, IGNORE, thresh=1.0, min_kept=0, class_weights=weights)(
            logits, target
        ),
        CrossEntropyLoss(K, IGNORE, class_weights=weights)(logits, target),
    )


# this batch has 54 valid pixels, 40 of them with p(true) <= 0.5 and none <= 0
@pytest.mark.parametrize(
    ("thresh", "min_kept", "kept"),
    [
        (0.0, 7, 14),  # none under the threshold: exactly the hardest 2 images x 7
        (0.0, 100, 54),  # fewer valid pixels than min_kept asks: all of them
        (0.5, 2, 40),  # enough under the threshold: those
        (0.5, 25, 50),  # 40 under, 50 asked: the hardest 50
    ],
)
def test_ohem_keeps_the_hard_pixels_like_a_numpy_reimplementation(thresh, min_kept, kept):
    logits, target = batch(8)
    expected, kept_ref = ohem_reference(logits, target, thresh, min_kept, [1.0, 2.0, 1.0, 0.5])
    assert kept_ref == kept
    loss = OHEMCrossEntropyLoss(K, IGNORE, thresh, min_kept, class_weights=[1.0, 2.0, 1.0, 0.5])
    torch.testing.assert_close(loss(logits, target).item(), expected, rtol=1e-5, atol=1e-6)


# --- weighted sum ----------------------------------------------------------------------------


def test_weighted_sum_is_the_weighted_sum_of_its_terms():
    logits, target = batch(9)
    total = weighted_sum()
    parts = {
        "ce": CrossEntropyLoss(K, IGNORE)(logits, target),
        "lovasz": LovaszSoftmaxLoss(K, IGNORE)(logits, target),
        "dice": DiceLoss(K, IGNORE)(logits, target),
    }
    value = total(logits, target)
    torch.testing.assert_close(value, parts["ce"] + 0.5 * parts["lovasz"] + 2.0 * parts["dice"])
    assert set(total.last_terms) == set(parts)
    for name, part in parts.items():
        torch.testing.assert_close(total.last_terms[name], part)
        assert not total.last_terms[name].requires_grad
    assert (total.num_classes, total.ignore_index) == (K, IGNORE)


def test_weighted_sum_skips_zero_weights_and_refuses_bad_terms():
    logits, target = batch(10)
    ce = CrossEntropyLoss(K, IGNORE)
    only_ce = WeightedSum(
        {"ce": {"loss": ce, "weight": 2.0}, "dice": {"loss": DiceLoss(K), "weight": 0}}
    )
    torch.testing.assert_close(only_ce(logits, target), 2.0 * ce(logits, target))
    assert list(only_ce.last_terms) == ["ce"]

    def build(**dice):
        return WeightedSum({"ce": {"loss": ce, "weight": 1.0}, "dice": dice})

    with pytest.raises(ValueError, match=r"loss.terms.dice.loss.ignore_index=0 but loss.terms.ce"):
        build(loss=DiceLoss(K, ignore_index=0), weight=1.0)
    with pytest.raises(ValueError, match=r"loss.terms.dice.loss.num_classes=5 but"):
        build(loss=DiceLoss(5, IGNORE), weight=1.0)
    with pytest.raises(ValueError, match=r"loss.terms.dice.weight=-1.0, expected"):
        build(loss=DiceLoss(K, IGNORE), weight=-1.0)
    with pytest.raises(ValueError, match=r"loss.terms.dice has \['loss', 'wieght'\]"):
        build(loss=DiceLoss(K, IGNORE), wieght=1.0)
    with pytest.raises(ValueError, match=r"loss.terms.dice.loss is a str"):
        build(loss="dice", weight=1.0)
    with pytest.raises(ValueError, match="every loss.terms weight is 0"):
        WeightedSum({"ce": {"loss": ce, "weight": 0.0}})


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls", [CrossEntropyLoss, FocalLoss, OHEMCrossEntropyLoss, DiceLoss, JaccardLoss]
)
def test_class_weights_are_validated_naming_the_key(cls):
    with pytest.raises(
        ValueError, match=r"loss.class_weights has 3 entries, expected one per class \(4\)"
    ):
        cls(K, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="loss.class_weights must be non-negative"):
        cls(K, class_weights=[1.0, -2.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="loss.class_weights='median_frequency' reached the"):
        cls(K, class_weights="median_frequency")


def test_options_and_inputs_are_validated_naming_the_key():
    for make, key in [
        (lambda: DiceLoss(K, classes="some"), "loss.classes='some'"),
        (lambda: LovaszSoftmaxLoss(K, classes="every"), "loss.classes='every'"),
        (lambda: JaccardLoss(K, smooth=-1.0), "loss.smooth=-1.0"),
        (lambda: FocalLoss(K, gamma=-2.0), "loss.gamma=-2.0"),
        (lambda: OHEMCrossEntropyLoss(K, thresh=1.5), "loss.thresh=1.5"),
        (lambda: OHEMCrossEntropyLoss(K, min_kept=-1), "loss.min_kept=-1"),
    ]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            make()
    logits, target = batch(11)
    target[1, 0, 0] = 7  # neither a class nor ignore_index
    with pytest.raises(
        ValueError, match=r"labels \[7\] outside 0..3 that are not loss.ignore_index=255"
    ):
        DiceLoss(K)(logits, target)
    with pytest.raises(ValueError, match=r"expected \(B, 5, H, W\) \(loss.num_classes=5\)"):
        LovaszSoftmaxLoss(5)(logits, target)


# --- configs ---------------------------------------------------------------------------------

CONFIG_TYPES = {
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "jaccard": JaccardLoss,
    "focal": FocalLoss,
    "lovasz": LovaszSoftmaxLoss,
    "ohem": OHEMCrossEntropyLoss,
    "ce_dice": WeightedSum,
    "ce_lovasz": WeightedSum,
}


def test_every_loss_config_is_covered():
    assert sorted(p.stem for p in (CONF / "loss").glob("*.yaml")) == sorted(CONFIG_TYPES)


@pytest.mark.parametrize("name", CONFIG_TYPES)
def test_each_loss_config_composes_and_follows_the_dataset(name, tmp_path):
    cfg = compose_config("train", [f"loss={name}", "dataset.ignore_index=250"], tmp_path)
    loss = instantiate(cfg.loss)
    assert type(loss) is CONFIG_TYPES[name]
    assert (loss.num_classes, loss.ignore_index) == (cfg.dataset.num_classes, 250)
    logits, target = (
        torch.randn(2, loss.num_classes, 8, 8),
        torch.randint(0, loss.num_classes, (2, 8, 8)),
    )
    assert torch.isfinite(loss(logits, target))


def test_a_weighted_sum_term_weight_is_overridden_from_the_command_line(tmp_path):
    cfg = compose_config("train", ["loss=ce_dice", "loss.terms.dice.weight=0.5"], tmp_path)
    loss = instantiate(cfg.loss)
    assert loss.weights == {"ce": 1.0, "dice": 0.5}
    assert isinstance(loss.terms["dice"], DiceLoss)
