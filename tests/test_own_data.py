"""Your own data: a folder dataset whose masks use a void label other than 255 (the checker and
training name the ``dataset.ignore_index`` that explains it, and the pasted override trains),
and fine-tuning from a segbench checkpoint (``init_from``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.checkpoints.loader import network_weights
from segbench.checkpoints.store import CheckpointError, load_checkpoint
from segbench.data.check import main as check_main
from segbench.data.errors import DataError
from segbench.data.labels import format_problems, sample_problems, validate_sample
from segbench.engine.build import build_datamodule, build_model, build_task
from tests.conftest import ROOT, compose_config, run_cli

K = 11  # CamVid's classes; 11 is its void label
NAMES = "[" + ",".join(f"c{i}" for i in range(K)) + "]"
OWN = ["debug=fast", "dataset=folder", f"dataset.num_classes={K}", f"dataset.class_names={NAMES}"]


def void_dataset(root: Path, void: int = K, n: int = 8, size: int = 32) -> Path:
    """A folder dataset of ``n`` images whose masks hold the classes 0..K-1 in stripes and a
    top row of ``void``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = (np.arange(size)[None, :].repeat(size, 0) * K // size).astype(np.uint8)
        mask[0, :] = void
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    (root / "splits").mkdir()
    for split, stems in (("train", range(n - 2)), ("val", range(n - 2, n))):
        (root / "splits" / f"{split}.txt").write_text("".join(f"img{i:02d}\n" for i in stems))
    return root


# --- the suggestion ------------------------------------------------------------------------


def test_one_value_outside_the_classes_suggests_it_as_the_ignore_index():
    image = (4, 4, 3)
    mask = np.array([[0, 1], [2, 11]], np.uint8).repeat(2, 0).repeat(2, 1)
    problems = sample_problems(image, mask, 11, 255, "a.png")
    problems += sample_problems(image, mask, 11, 255, "b.png")
    text = format_problems("mine [train]", problems)
    assert "every label outside [0, 11) is 11 (2 files)" in text.lower()
    assert "dataset.ignore_index=11" in text
    with pytest.raises(DataError, match="dataset.ignore_index=11"):  # one sample, as loaded
        validate_sample(image, mask, 11, 255, "a.png")
    # two values outside: no single ignore index explains them, nothing is suggested
    other = mask.copy()
    other[0, 0] = 12
    both = problems + sample_problems(image, other, 11, 255, "c.png")
    assert "ignore_index=" not in format_problems("mine [train]", both)
    # a two-class mask of 0/255 (with another ignore index): a foreground stored as 255
    binary = np.array([[0, 255], [0, 255]], np.uint8)
    found = sample_problems((2, 2, 3), binary, 2, 0, "d.png")
    assert found and "ignore_index=" not in format_problems("bin", found)


def test_check_suggests_the_ignore_index_and_the_pasted_override_passes(tmp_path, capsys):
    root = void_dataset(tmp_path / "mine")
    args = [a for a in OWN if a != "debug=fast"] + [f"dataset.source.root={root}"]
    assert check_main(args) == 1
    out = capsys.readouterr().out
    assert "label values [11] lie outside [0, 11)" in out
    assert "run with dataset.ignore_index=11" in out
    assert check_main([*args, "dataset.ignore_index=11"]) == 0
    assert "folder/train: ok" in capsys.readouterr().out


def test_training_names_the_override_which_then_trains(tmp_path):
    root = void_dataset(tmp_path / "mine")
    args = [*OWN, f"dataset.source.root={root}"]
    first = f"hydra.run.dir={tmp_path / 'a'}"
    refused = run_cli("train.py", *args, first, cwd=tmp_path, check=False)
    assert refused.returncode != 0
    assert "dataset.ignore_index=11" in refused.stderr, refused.stderr[-2000:]
    run_dir = tmp_path / "b"
    run_cli("train.py", *args, "dataset.ignore_index=11", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["ignore_index"] == 11 and results["num_classes"] == K
    assert sum(map(sum, results["confusion_matrix"])) == 2 * 31 * 32  # the void row left out


# --- init_from -----------------------------------------------------------------------------


def _task(tmp_path: Path, overrides: list[str]):
    cfg = compose_config("train", overrides, tmp_path / "run")
    dm = build_datamodule(cfg.dataset, ["train"], seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # as a run seeds before building its network
    return cfg, build_task(cfg, dm, build_model(cfg.model), run_config={})


def test_init_from_the_same_classes_starts_from_exactly_the_checkpoint(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    _, task = _task(tmp_path, ["debug=fast", f"init_from={ckpt}"])
    saved = network_weights(load_checkpoint(ckpt)["state_dict"], str(ckpt))
    own = task.model.state_dict()
    assert set(own) == set(saved)
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    assert task.init_from["reinitialised"] == [] and len(task.init_from["sha256"]) == 64


def test_init_from_onto_other_classes_reinitialises_the_head_only(trained_run, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    root = void_dataset(tmp_path / "mine")
    own_data = [*OWN, f"dataset.source.root={root}", "dataset.ignore_index=11"]
    _, fresh = _task(tmp_path / "fresh", own_data)
    _, task = _task(tmp_path / "init", [*own_data, f"init_from={ckpt}"])
    saved = network_weights(load_checkpoint(ckpt)["state_dict"], str(ckpt))
    model = task.model.state_dict()
    encoder = [k for k in saved if k.startswith("encoder.")]
    assert encoder and all(torch.equal(model[k], saved[k]) for k in encoder)
    head = task.init_from["reinitialised"]
    assert "decoder.score_fr.weight" in head and all(not k.startswith("encoder.") for k in head)
    assert model["decoder.score_fr.weight"].shape[0] == K  # the new class count
    assert all(torch.equal(model[k], saved[k]) for k in saved if k not in head)
    # the re-initialised tensors are the new network's own initialisation, not the checkpoint's
    assert all(torch.equal(model[k], fresh.model.state_dict()[k]) for k in head)
    assert task.init_from["num_classes"] == 7


def test_init_from_a_different_network_is_refused_naming_the_tensor(trained_run, tmp_path):
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.ckpt")
    name = next(k for k in ckpt["state_dict"] if k.startswith("model.encoder.") and "weight" in k)
    ckpt["state_dict"][name] = torch.zeros(3, 3)  # another shape, outside the head
    changed = tmp_path / "changed.ckpt"
    torch.save(ckpt, changed)
    with pytest.raises(CheckpointError, match=rf"another shape: {name[len('model.') :]}"):
        _task(tmp_path, ["debug=fast", f"init_from={changed}"])
    del ckpt["state_dict"][name]
    torch.save(ckpt, changed)
    with pytest.raises(CheckpointError, match=rf"missing from the checkpoint: {name[6:]}"):
        _task(tmp_path / "b", ["debug=fast", f"init_from={changed}"])


@pytest.mark.slow  # a command-line training (12 s); init_from itself is tested in-process above
def test_fine_tuning_run_records_its_starting_checkpoint(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    root = void_dataset(tmp_path / "mine")
    run_dir = tmp_path / "ft"
    proc = run_cli(
        "train.py",
        *OWN,
        f"dataset.source.root={root}",
        "dataset.ignore_index=11",
        f"init_from={ckpt}",
        f"hydra.run.dir={run_dir}",
        cwd=ROOT,
    )
    assert "re-initialised for 11 classes (the checkpoint has 7)" in proc.stdout + proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["init_from"] == str(ckpt) and results["num_classes"] == K
    stored = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["segbench"]["init_from"]
    assert stored["path"] == str(ckpt.resolve()) and len(stored["sha256"]) == 64
    assert "decoder.score_fr.weight" in stored["reinitialised"]
