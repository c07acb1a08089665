"""The poly schedule's warm-up and the per-part learning-rate multipliers
(``scheduler.warmup_steps``, ``optimizer.lr_mult``; segbench/optim.py)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from segbench.engine.build import build_model, build_optimizer, build_task
from segbench.optim import poly
from tests.conftest import compose_config


def _rates(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_poly_warms_up_linearly_then_decays_over_the_rest():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rates = _rates(poly(opt, total_steps=10, power=1.0, warmup_steps=4, warmup_ratio=0.0), 10)
    assert rates[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert rates[5:] == pytest.approx([1 - k / 6 for k in range(1, 6)])


def test_poly_without_warmup_is_torchs_polynomial_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ours = _rates(poly(opt, total_steps=7, power=0.9), 7)
    theirs = _rates(torch.optim.lr_scheduler.PolynomialLR(ref, total_iters=7, power=0.9), 7)
    assert ours == theirs
    with pytest.raises(ValueError, match="scheduler.warmup_steps=-1"):
        poly(opt, total_steps=7, warmup_steps=-1)


def test_a_run_shorter_than_its_warmup_warms_up_throughout():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rates = _rates(poly(opt, total_steps=3, warmup_steps=10, warmup_ratio=0.0), 3)
    assert rates == pytest.approx([0.0, 0.1, 0.2])


def test_lr_mult_gives_each_part_its_rate_and_refuses_an_unknown_part(tmp_path):
    cfg = compose_config(
        "train",
        ["debug=fast", "optimizer=adamw", "optimizer.lr=0.01", "optimizer.lr_mult={encoder: 0.1}"],
        tmp_path,
    )
    model = build_model(cfg.model)
    task = build_task(cfg, instantiate(cfg.dataset), model)
    optimizer = task.optimizer_factory(task.named_parameters())
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert rates[id(p)] == pytest.approx(0.001 if name.startswith("encoder.") else 0.01), name
    assert len(rates) == sum(1 for _ in model.parameters())
    cfg.optimizer.lr_mult = {"backbone": 0.1}
    factory = build_optimizer(cfg.optimizer)
    with pytest.raises(ValueError, match="optimizer.lr_mult.backbone"):
        factory(model.named_parameters())
