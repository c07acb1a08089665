"""ema.decay: the moving average of the weights is what a run validates, chooses, saves and
evaluates, computed here again from the trained weights step by step; a run resumed from a
checkpoint taken mid-epoch ends with the figures of the uninterrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segbench.checkpoints.store import load_checkpoint
from segbench.engine.ema import ema_decay
from segbench.engine.run import evaluate, train
from tests.conftest import compose_config

FAST = [
    "debug=fast",
    "trainer.enable_progress_bar=false",
    "dataset.subset.train=16",  # 4 batches an epoch; val and test: debug=fast's 8 images
    "trainer.max_epochs=2",
]
DECAY = 0.6  # far from 1, so that the average differs visibly from the weights in 8 steps


class Recorder(pl.Callback):
    """Test-only: the network's state before training and after every optimizer step, and a
    copy of ``last.ckpt`` as the run state wrote it at the start of step ``copy_at``."""

    states: list[dict[str, torch.Tensor]] = []
    copy_at: int | None = None
    copy_to: str | None = None

    def __init__(self) -> None:
        Recorder.states = []

    def on_fit_start(self, trainer, pl_module) -> None:
        if not Recorder.states:
            Recorder.states.append(_state(pl_module.model))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if Recorder.copy_at is not None and trainer.global_step == Recorder.copy_at:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            shutil.copy(last, Recorder.copy_to)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        Recorder.states.append(_state(pl_module.model))


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _network(state_dict: dict) -> dict[str, torch.Tensor]:
    return {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[Path, dict]:
    out = tmp_path / name
    overrides = [*FAST, f"ema.decay={DECAY}", f"+callbacks.recorder._target_={__name__}.Recorder"]
    return out, train(compose_config("train", [*overrides, *extra], out))


def test_checkpoints_hold_the_moving_average_and_validation_scores_it(tmp_path):
    out, res = _run(tmp_path, "ema")
    states = Recorder.states
    assert len(states) == 1 + 8  # the start, then 2 epochs x 4 optimizer steps
    # the average, computed again from the recorded weights with the documented formula
    expected = {k: v.clone() for k, v in states[0].items()}
    for step, weights in enumerate(states[1:], start=1):
        d = min(DECAY, (1 + step) / (10 + step))
        assert ema_decay(DECAY, step) == d
        for k, w in weights.items():
            if w.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * w
            else:
                expected[k] = w.clone()
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    saved = _network(last["state_dict"])
    assert saved.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(saved[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    for k, w in states[-1].items():  # the trained weights, kept for resuming
        assert torch.equal(last["ema"]["weights"][k], w), k
    assert last["ema"]["decay"] == DECAY
    assert any(not torch.equal(saved[k], states[-1][k]) for k in saved)  # not the same weights

    # validation scored the average: best.ckpt (the average at its epoch) evaluated on val by
    # evaluate.py gives the run's best val/mIoU, and the final figures are best.ckpt's
    val = evaluate(
        compose_config(
            "evaluate",
            [f"ckpt={out / 'checkpoints' / 'best.ckpt'}", "split=val", "debug=fast"],
            tmp_path / "eval_val",
        )
    )
    assert val["metrics"]["mIoU"] == pytest.approx(res["best_val_mIoU"], abs=1e-6)
    test = evaluate(
        compose_config(
            "evaluate", [f"ckpt={out / 'checkpoints' / 'best.ckpt'}", "debug=fast"], tmp_path / "ev"
        )
    )
    assert test["metrics"]["mIoU"] == res["metrics"]["mIoU"]


def test_resumed_from_mid_epoch_it_ends_as_the_uninterrupted_run(tmp_path):
    mid = tmp_path / "mid.ckpt"
    Recorder.copy_at, Recorder.copy_to = 6, str(mid)  # written at the start of step 7 of 8
    try:
        full_dir, full = _run(tmp_path, "full", "callbacks.run_state.every_n_steps=3")
    finally:
        Recorder.copy_at = None
    ckpt = load_checkpoint(mid)
    assert ckpt["global_step"] == 6 and "ema" in ckpt
    resumed_dir, resumed = _run(
        tmp_path, "resumed", "callbacks.run_state.every_n_steps=3", f"resume={mid}"
    )
    assert len(Recorder.states) == 1 + 2  # only the two steps left were trained
    assert resumed["metrics"] == full["metrics"]
    assert resumed["best_val_mIoU"] == full["best_val_mIoU"]
    a = load_checkpoint(full_dir / "checkpoints" / "last.ckpt")
    b = load_checkpoint(resumed_dir / "checkpoints" / "last.ckpt")
    for k, v in a["state_dict"].items():
        assert torch.equal(b["state_dict"][k], v), k
    history = json.loads((resumed_dir / "history.json").read_text())
    assert history == json.loads((full_dir / "history.json").read_text())


def test_resuming_without_the_average_it_was_trained_with_is_refused(tmp_path):
    out, _ = _run(tmp_path, "ema", "trainer.max_epochs=1")
    with pytest.raises(ValueError, match=r"ema\.decay: 0\.6 in the checkpoint, None now"):
        train(
            compose_config(
                "train",
                [*FAST, "trainer.max_epochs=1", f"resume={out / 'checkpoints' / 'last.ckpt'}"],
                tmp_path / "plain",
            )
        )


@pytest.mark.parametrize("decay", ["1.0", "-0.1"])
def test_a_decay_outside_0_1_is_refused_before_training(tmp_path, decay):
    cfg = compose_config("train", [*FAST, f"ema.decay={decay}"], tmp_path / "bad")
    with pytest.raises(ValueError, match=r"ema\.decay must be in \[0, 1\)"):
        train(cfg)
    assert not (tmp_path / "bad" / "checkpoints").exists()
