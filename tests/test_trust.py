"""A checkpoint's stored config runs no code of its choosing: every ``_target_`` is checked
before anything is built, in every command that loads a checkpoint (evaluate.py, predict,
export, serve), with harmless payloads of the kinds an attacker would use."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segbench.checkpoints.trust import UntrustedTargetError, check_targets, known_targets
from tests.conftest import compose_config, run_cli
from tests.fixtures.checkpoints import untrained_checkpoint


@pytest.fixture(scope="module")
def clean_ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trust") / "checkpoints"
    folder.mkdir()
    return untrained_checkpoint("fcn8s", folder / "best.ckpt")


def planted(clean: Path, tmp: Path, plant) -> tuple[Path, Path]:
    """A copy of ``clean`` whose config ``plant(config, marker)`` changed; the marker is the
    file the payload would write."""
    ckpt = torch.load(clean, weights_only=True)
    ckpt = copy.deepcopy(ckpt)
    marker = tmp / "pwned.txt"
    plant(ckpt["segbench"]["config"], marker)
    path = tmp / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path, marker


def savetxt(config, marker):  # numpy.savetxt at the top of the model group
    config["model"] = {"_target_": "numpy.savetxt", "fname": str(marker), "X": [[1.0]]}


def open_file(config, marker):  # builtins.open in a nested place: the encoder
    config["model"]["encoder"] = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


def write_text(config, marker):  # a method, as a partial, inside the dataset's source
    config["dataset"]["source"] = {
        "_target_": "pathlib.Path.write_text",
        "_partial_": True,
        "self": str(marker),
        "data": "x",
    }


def import_module(config, marker):  # importlib in the loss, through _args_
    config["loss"] = {"_target_": "importlib.import_module", "_args_": ["antigravity"]}


def args_nested(config, marker):  # a known target whose _args_ hold a payload
    config["inference"] = {
        "_target_": "segbench.inference.Inference",
        "_args_": [{"_target_": "numpy.savetxt", "fname": str(marker), "X": [[1.0]]}],
    }


def task_list(config, marker):  # in a list, in the task group
    config["task"]["extra"] = [{"_target_": "os.remove", "path": str(marker)}]


def new_group(config, marker):  # a group segbench does not have
    config["extras"] = {"hook": {"_target_": "numpy.savetxt", "fname": str(marker), "X": [[1]]}}


def machinery_as_model(config, marker):  # a logger factory of conf/logger, as the model
    config["model"] = {"_target_": "segbench.engine.loggers.wandb_logger", "save_dir": str(marker)}


PAYLOADS = [
    savetxt, open_file, write_text, import_module, args_nested, task_list, new_group,
    machinery_as_model,
]  # fmt: skip


@pytest.mark.parametrize("plant", PAYLOADS, ids=[p.__name__ for p in PAYLOADS])
def test_a_payload_is_refused_by_key_and_target_before_anything_is_built(
    plant, clean_ckpt, tmp_path
):
    from segbench.checkpoints import load_model

    path, marker = planted(clean_ckpt, tmp_path, plant)
    with pytest.raises(UntrustedTargetError, match=r"allow_targets=\[") as err:
        load_model(path)
    assert str(path) in str(err.value) and "_target_=" in str(err.value)
    assert not marker.exists()
    assert "antigravity" not in sys.modules


def test_the_shipped_configs_targets_are_known_and_a_clean_checkpoint_loads(clean_ckpt):
    from segbench.checkpoints import load_model

    known = known_targets()
    assert "segbench.models.fcn.FCN" in known and "torch.optim.SGD" in known
    assert "numpy.savetxt" not in known and "builtins.open" not in known
    # loggers, callbacks and the trainer are never built from a checkpoint: not known there
    assert "segbench.engine.loggers.wandb_logger" not in known
    assert "pytorch_lightning.Trainer" not in known
    loaded = load_model(clean_ckpt)
    assert loaded.num_classes == 7


def test_an_allowed_target_is_trusted_by_name_or_package():
    config = {"model": {"_target_": "mylab.models.Net", "encoder": {"_target_": "mylab.enc.E"}}}
    with pytest.raises(UntrustedTargetError, match=r"model._target_='mylab.models.Net'"):
        check_targets(config, "x.ckpt")
    with pytest.raises(UntrustedTargetError, match=r"model.encoder._target_='mylab.enc.E'"):
        check_targets(config, "x.ckpt", allow=["mylab.models.Net"])
    check_targets(config, "x.ckpt", allow=["mylab.*"])
    with pytest.raises(UntrustedTargetError, match="must be a dotted name"):
        check_targets({"model": {"_target_": ["numpy", "savetxt"]}}, "x.ckpt")


def test_evaluate_cli_refuses_it_and_the_suggested_option_is_accepted(clean_ckpt, tmp_path):
    path, marker = planted(clean_ckpt, tmp_path, savetxt)
    proc = run_cli("evaluate.py", f"ckpt={path}", "debug=fast", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and not marker.exists()
    assert "numpy.savetxt" in proc.stderr and "'allow_targets=[numpy.savetxt]'" in proc.stderr
    # the option the message names is a real key: composed, it lets the target through (this
    # payload then fails as a model, harmlessly, after the check)
    cfg = compose_config("evaluate", [f"ckpt={path}", "allow_targets=[numpy.savetxt]"], tmp_path)
    assert list(cfg.allow_targets) == ["numpy.savetxt"]


@pytest.mark.parametrize("verb", ["predict", "export", "serve"])
def test_every_verb_that_loads_a_checkpoint_refuses_it(verb, clean_ckpt, tmp_path, capsys):
    from segbench.cli import main

    path, marker = planted(clean_ckpt, tmp_path, savetxt)
    image = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    args = {
        "predict": [f"ckpt={path}", f"input={image}", f"out={tmp_path / 'out'}"],
        "export": [f"ckpt={path}", f"out={tmp_path / 'model.onnx'}"],
        "serve": [f"ckpt={path}", "port=0"],
    }[verb]
    assert main([verb, *args]) == 1  # refused, with a message and a failing status
    err = capsys.readouterr().err
    assert "numpy.savetxt" in err and "allow_targets" in err and "Traceback" not in err
    assert not marker.exists()


def test_the_names_earlier_segbench_configs_used_are_known(clean_ckpt, tmp_path):
    """Every _target_ conf/ has held over segbench's history (read from git when this test was
    written) is known, so old checkpoints keep loading."""
    from segbench.checkpoints import load_model

    historical = [
        "pytorch_lightning.loggers.CSVLogger",
        "segbench.callbacks.EvaluationOutputs",
        "segbench.callbacks.RunPlots",
        "segbench.callbacks.WandbMedia",
        "segbench.crf.DenseCRF",
        "segbench.engine.callbacks.RunPlots",
        "segbench.loggers.wandb_logger",
        "segbench.models.vgg.VGGEncoder",
        "segbench.sweep.LeaderboardCallback",
    ]

    def plant(config, marker):
        config["callbacks"] = {f"c{i}": {"_target_": t} for i, t in enumerate(historical)}

    path, _ = planted(clean_ckpt, tmp_path, plant)
    assert load_model(path).num_classes == 7


def test_the_run_machinery_is_never_built_from_a_checkpoint(clean_ckpt, tmp_path):
    """Callbacks, loggers and the trainer of the stored config (a user's own callback, say) are
    dropped, not built: the checkpoint loads, and its run config no longer holds them."""
    from segbench.checkpoints import load_model

    def plant(config, marker):
        config["callbacks"] = {"mine": {"_target_": "mylab.callbacks.Recorder"}}
        config["logger"] = {"x": {"_target_": "numpy.savetxt", "fname": str(marker)}}

    path, marker = planted(clean_ckpt, tmp_path, plant)
    loaded = load_model(path)
    assert "callbacks" not in loaded.run_cfg and "logger" not in loaded.run_cfg
    assert not marker.exists()
