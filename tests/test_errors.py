"""Bad input stops the run before training, with an error naming the path or value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from segbench.checkpoints.store import CheckpointError, load_checkpoint
from segbench.engine.run import evaluate, train
from tests.conftest import compose_config, make_folder_dataset

FOLDER = [
    "dataset=folder",
    "backbone=tiny",
    "logger=csv",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "dataset.num_classes=3",
    "dataset.class_names=[a,b,c]",
    "dataset.num_workers=0",
]


def folder_cfg(tmp_path: Path, root: Path, *extra: str):
    return compose_config(
        "train", [*FOLDER, f"dataset.source.root={root}", *extra], tmp_path / "run"
    )


def assert_not_started(tmp_path: Path) -> None:
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "results.json").exists()


def test_missing_dataset_root_names_the_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        train(folder_cfg(tmp_path, missing))
    assert "images/" in str(err.value) and "masks/" in str(err.value)
    assert_not_started(tmp_path)


def test_label_outside_the_class_range_names_the_file(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n=10)
    bad = root / "masks" / "img07.png"
    mask = np.array(Image.open(bad))
    mask[5, 5] = 9
    Image.fromarray(mask).save(bad)
    with pytest.raises(ValueError, match=r"img07\.png.*\[9\].*\[0, 3\)"):
        train(folder_cfg(tmp_path, root, "dataset.eval_split=val"))
    assert_not_started(tmp_path)


def test_image_mask_size_mismatch_names_the_file(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n=10)
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(root / "masks" / "img03.png")
    with pytest.raises(ValueError, match=r"img03\.png.*32x32.*32x20"):
        train(folder_cfg(tmp_path, root, "dataset.eval_split=val"))
    assert_not_started(tmp_path)


def test_image_without_mask_is_reported(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n=10)
    (root / "masks" / "img04.png").unlink()
    with pytest.raises(ValueError, match=r"img04 \(image without mask\)"):
        train(folder_cfg(tmp_path, root))


def test_label_check_also_guards_each_loaded_sample(tmp_path):
    """Without the up-front scan the loader still refuses the bad mask (nothing skipped)."""
    root = make_folder_dataset(tmp_path / "data", n=4)
    bad = root / "masks" / "img01.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(bad)
    cfg = folder_cfg(
        tmp_path,
        root,
        "dataset.check_on_setup=false",
        "dataset.eval_split=val",
        "dataset.cache=none",
    )
    ds = instantiate(cfg.dataset).dataset("train")  # opened without scanning
    index = [mask.name for _, mask in ds.items].index("img01.png")
    with pytest.raises(ValueError, match=r"img01\.png.*\[7\]"):
        ds[index]
    # with the in-memory cache every sample is checked as it is cached: refused at opening
    cfg = folder_cfg(tmp_path, root, "dataset.check_on_setup=false", "dataset.cache=ram")
    with pytest.raises(ValueError, match=r"img01\.png.*\[7\]"):
        instantiate(cfg.dataset).dataset("train")


def test_model_dataset_num_classes_mismatch(tmp_path):
    cfg = compose_config("train", ["debug=fast", "model.num_classes=5"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"model.num_classes=5.*7 classes"):
        train(cfg)
    assert_not_started(tmp_path)


def test_class_names_must_match_num_classes(tmp_path):
    cfg = compose_config("train", ["debug=fast", "dataset.class_names=[a,b]"], tmp_path / "run")
    with pytest.raises(InstantiationException, match=r"2 class_names given for num_classes=7"):
        train(cfg)


def _eval_cfg(tmp_path: Path, ckpt, *extra: str):
    return compose_config(
        "evaluate", [f"ckpt={ckpt}", "logger=csv", "trainer=cpu", *extra], tmp_path / "eval"
    )


def _best(trained_run: Path) -> str:
    return json.loads((trained_run / "results.json").read_text())["checkpoint"]


def test_checkpoint_of_another_model_is_refused(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"trained with model 'fcn8s'.*model=fcn16s"):
        evaluate(_eval_cfg(tmp_path, _best(trained_run), "model=fcn16s"))
    with pytest.raises(CheckpointError, match=r"backbone 'tiny'.*backbone=resnet18"):
        evaluate(_eval_cfg(tmp_path, _best(trained_run), "backbone=resnet18"))


def test_checkpoint_whose_weights_do_not_fit_is_refused(trained_run, tmp_path):
    ckpt = torch.load(_best(trained_run), map_location="cpu", weights_only=True)
    ckpt["segbench"]["config"]["model"]["variant"] = "32s"  # claims FCN-32s, holds FCN-8s
    ckpt["segbench"]["config"]["model"]["name"] = "fcn32s"
    path = tmp_path / "mislabelled.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"mislabelled\.ckpt.*does not fit model 'fcn32s'"):
        evaluate(_eval_cfg(tmp_path, path))


def test_checkpoint_with_other_classes_is_refused(trained_run, tmp_path):
    root = make_folder_dataset(tmp_path / "data", n=4)
    with pytest.raises(CheckpointError, match=r"7 classes of 'shapes'.*\['a', 'b', 'c'\]"):
        evaluate(
            _eval_cfg(
                tmp_path,
                _best(trained_run),
                "dataset=folder",
                f"dataset.source.root={root}",
                "dataset.num_classes=3",
                "dataset.class_names=[a,b,c]",
            )
        )


class Payload:
    """An arbitrary object: weights-only loading must never unpickle it."""


def test_checkpoint_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt.*not tensors or plain containers"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="no segbench metadata"):
        evaluate(_eval_cfg(tmp_path, tmp_path / "plain.ckpt"))


def test_backbone_without_imagenet_weights_and_a_missing_file_are_named(tmp_path):
    cfg = compose_config("train", ["debug=fast", "backbone.pretrained=true"], tmp_path / "run")
    with pytest.raises(InstantiationException, match="no ImageNet weights exist"):
        train(cfg)
    cfg = compose_config(
        "train", ["debug=fast", f"backbone.weights={tmp_path}/w.pth"], tmp_path / "run"
    )
    with pytest.raises(InstantiationException, match=r"w\.pth.*does not exist"):
        train(cfg)


def test_a_scanned_dataset_is_not_checked_again_on_load(tmp_path, monkeypatch):
    import segbench.data.base as base

    root = make_folder_dataset(tmp_path / "data", n=4)
    # not cached, so that every sample is read from its files (a cached one was checked when
    # it was cached)
    cfg = folder_cfg(tmp_path, root, "dataset.eval_split=val", "dataset.cache=none")
    ds = instantiate(cfg.dataset).dataset("train")  # check_on_setup: scanned when opened
    assert ds.verified
    calls = []
    monkeypatch.setattr(base, "validate_sample", lambda *a: calls.append(a))
    ds[0]
    assert calls == []  # the loader's hot path does not repeat the scan
    ds.verified = False
    ds[0]
    assert len(calls) == 1
