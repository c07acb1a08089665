"""Checkpoints written before the package layout (classes at their old import paths, GAN-seg's
training settings among the model's keys, ReSeg truncating its encoder after building it) are
upgraded when read, and evaluate to the same figures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segbench.checkpoints.store import upgrade_config
from segbench.engine.build import build_model
from segbench.engine.run import evaluate
from tests.conftest import compose_config


def resolved(overrides: list[str], tmp_path: Path) -> dict:
    return OmegaConf.to_container(compose_config("train", overrides, tmp_path), resolve=True)


def test_a_checkpoint_naming_moved_classes_evaluates_to_the_same_figures(trained_run, tmp_path):
    best = json.loads((trained_run / "results.json").read_text())["checkpoint"]
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert (
        ckpt["segbench"]["config"]["backbone"]["_target_"] == "segbench.models.encoders.VGGEncoder"
    )
    legacy = copy.deepcopy(ckpt)
    for part in (
        legacy["segbench"]["config"]["backbone"],
        legacy["segbench"]["config"]["model"]["encoder"],
    ):
        part["_target_"] = "segbench.models.vgg.VGGEncoder"  # where the class lived before
    del legacy["segbench"]["config"]["task"]  # no task group then: the segmentation task
    torch.save(legacy, tmp_path / "legacy.ckpt")
    figures = []
    for name, path in (("today", best), ("legacy", tmp_path / "legacy.ckpt")):
        cfg = compose_config(
            "evaluate", [f"ckpt={path}", "logger=csv", "trainer=cpu"], tmp_path / name
        )
        figures.append(evaluate(cfg)["metrics"])
    assert figures[0] == figures[1]


def test_gan_seg_training_settings_move_from_the_model_to_the_task(tmp_path):
    today = resolved(["model=ganseg", "backbone=tiny", "task.d_steps=2"], tmp_path)
    legacy = copy.deepcopy(today)
    task = legacy.pop("task")
    for key in ("adversarial_weight", "d_steps", "discriminator_optimizer"):
        legacy["model"][key] = task[key]
    legacy["model"]["aux_weight"] = 0.0  # the wrapper repeated its segmenter's
    upgraded = upgrade_config(legacy)
    assert upgraded == today
    assert upgraded["task"]["d_steps"] == 2 and "aux_weight" not in upgraded["model"]
    assert "d_steps" in legacy["model"]  # the stored config itself is not edited
    partial = instantiate(upgraded["task"])
    assert partial.keywords["d_steps"] == 2
    build_model(upgraded["model"])  # GANSeg takes none of the moved keys


def test_a_legacy_reseg_encoder_stops_at_the_level_it_read(tmp_path):
    today = resolved(["model=reseg", "backbone=tiny"], tmp_path)
    legacy = copy.deepcopy(today)
    del legacy["model"]["feature_stride"]
    for encoder in (legacy["backbone"], legacy["model"]["encoder"]):
        del encoder["until_stride"]
    upgraded = upgrade_config(legacy)
    assert upgraded["backbone"]["until_stride"] == upgraded["model"]["encoder"]["until_stride"] == 4
    torch.manual_seed(0)
    old = build_model(upgraded["model"]).state_dict()
    torch.manual_seed(0)
    new = build_model(today["model"]).state_dict()
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


def test_todays_configs_pass_through_unchanged(tmp_path):
    for overrides in (["model=pspnet", "backbone=tiny"], ["model=deeplabv1_crf", "backbone=tiny"]):
        today = resolved(overrides, tmp_path)
        assert upgrade_config(today) == today
