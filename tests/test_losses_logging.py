"""Cross-entropy with ignore index and class weights; W&B online/offline choice; optim schedules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbench.engine.loggers import wandb_mode
from segbench.losses import CrossEntropyLoss
from segbench.optim import poly


def test_ce_matches_torch_and_ignores_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    loss = CrossEntropyLoss(4, ignore_index=255)
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(loss(logits, target), expected)
    # changing the logits at ignored pixels changes nothing
    other = logits.clone()
    other[0, :, :2] = 100.0
    torch.testing.assert_close(loss(other, target), loss(logits, target))


def test_ce_class_weights_and_validation():
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    target = torch.tensor([[[0, 1]]])
    # equal logits: every pixel's nll is log 2 whatever the weights (weighted mean)
    weighted = CrossEntropyLoss(2, class_weights=[1.0, 3.0])
    torch.testing.assert_close(weighted(logits, target), torch.log(torch.tensor(2.0)))
    logits2 = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # pixel 0 right, pixel 1 unsure
    nll = F.cross_entropy(logits2, target, reduction="none")[0, 0]
    expected = (1.0 * nll[0] + 3.0 * nll[1]) / 4.0
    torch.testing.assert_close(weighted(logits2, target), expected)
    with pytest.raises(ValueError, match="3 entries, expected one per class \\(2\\)"):
        CrossEntropyLoss(2, class_weights=[1.0, 2.0, 3.0])


def test_ce_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = CrossEntropyLoss(3)(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_wandb_goes_online_only_with_a_key(monkeypatch, tmp_path):
    assert wandb_mode("auto") == "offline"  # conftest removes keys and points NETRC nowhere
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's environment wins
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        wandb_mode("auto")


def test_poly_schedule_follows_the_formula():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = poly(opt, total_steps=10, power=0.9)
    for step in range(1, 11):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * (1 - step / 10) ** 0.9)


def test_a_non_finite_training_loss_stops_with_the_key_and_step():
    from segbench.engine.task import SegmentationTask
    from segbench.metrics import Evaluator

    class NaNLoss(torch.nn.Module):
        def forward(self, logits, target):
            return logits.sum() * float("nan")

    model = torch.nn.Conv2d(3, 2, 1)
    task = SegmentationTask(
        model=lambda x: {"out": model(x)},
        loss=NaNLoss(),
        optimizer=None,
        scheduler=None,
        evaluator=Evaluator(2, 255, ["a", "b"]),
    )
    batch = {"image": torch.zeros(1, 3, 4, 4), "mask": torch.zeros(1, 4, 4, dtype=torch.long)}
    with pytest.raises(FloatingPointError, match=r"train/loss is nan at step 0; lower the"):
        task.training_step(batch, 0)


def test_a_weighted_sum_logs_each_term(tmp_path):
    import csv

    from segbench.engine.run import train
    from tests.conftest import compose_config

    cfg = compose_config(
        "train", ["debug=fast", "loss=ce_dice", "trainer.max_epochs=1"], tmp_path / "run"
    )
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    steps = [r for r in rows if r.get("train/loss_step")]
    assert steps
    for r in steps:  # the total is the sum of its weighted terms (both weights 1)
        total = float(r["train/loss_step"])
        parts = float(r["train/loss/ce_step"]) + float(r["train/loss/dice_step"])
        assert total == pytest.approx(parts, rel=1e-5)
