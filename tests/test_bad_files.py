"""Files that are not what they are given as: ``ckpt=`` (evaluate.py) and ``backbone.weights=``.

Each kind of bad checkpoint file gets one message naming the path, saying what it is and what
was expected, before anything is built; a timm or VGG weights file that does not fit the
backbone is refused with its missing, unexpected and mis-shaped keys, never loaded in part.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from hydra.errors import InstantiationException

from segbench.checkpoints import evaluation_config
from segbench.checkpoints.store import (
    EXPECTED_CHECKPOINT,
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
)
from segbench.engine.run import train
from segbench.models.encoders import TimmEncoder, VGGEncoder
from tests.conftest import compose_config, run_cli


def _best(trained_run: Path) -> Path:
    return Path(json.loads((trained_run / "results.json").read_text())["checkpoint"])


def _eval_cfg(tmp_path: Path, ckpt):
    return compose_config(
        "evaluate", [f"ckpt={ckpt}", "logger=csv", "trainer=cpu"], tmp_path / "eval"
    )


# ---------------------------------------------------------------- ckpt=: one message per kind


def _zip_without_pickle(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "not a torch save")


BAD_FILES = {  # name: (how to write it, what the message says it is)
    "notes.txt": (lambda p: p.write_text("hello world\n"), r"is a text file \(it starts 'hello"),
    "config.yaml": (
        lambda p: p.write_text("model:\n  name: fcn8s\ndataset:\n  name: shapes\nseed: 0\n"),
        r"is a YAML file \(keys: model, dataset, seed\): a run's config or results",
    ),
    "random.bin": (
        lambda p: p.write_bytes(bytes(range(7, 256)) * 16),
        r"is not a PyTorch save: neither the zip archive torch\.save writes nor a pickle",
    ),
    "empty.ckpt": (lambda p: p.write_bytes(b""), r"is empty \(0 bytes"),
    "weights.pt": (
        lambda p: torch.save({"conv.weight": torch.zeros(2, 3)}, p),
        r"holds a bare state dict \(1 tensor, e\.g\. 'conv\.weight'\) without the run config",
    ),
    "other.pt": (
        lambda p: torch.save({"epoch": 3, "weights": [torch.zeros(1)]}, p),
        r"is a PyTorch save but not a Lightning checkpoint: no 'state_dict' "
        r"\(keys: 'epoch', 'weights'\)",
    ),
    "tensor.pt": (lambda p: torch.save(torch.zeros(4, 2), p), r"holds a single tensor"),
    "archive.zip": (_zip_without_pickle, r"is a zip archive but not a PyTorch save"),
    "pickled.pkl": (
        lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=2)),
        r"is a Python pickle, not a PyTorch save",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_file_that_is_not_a_checkpoint_is_named_with_what_it_is(tmp_path, name):
    write, what = BAD_FILES[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {str(path)!r} ")
    assert EXPECTED_CHECKPOINT in message
    assert re.search(what, message)
    with pytest.raises(CheckpointError, match=what):  # the same from an evaluation
        evaluation_config(_eval_cfg(tmp_path, path))


def test_a_missing_path_or_a_directory_is_not_found(tmp_path):
    for path, what in (
        (tmp_path / "nowhere.ckpt", "does not exist"),
        (tmp_path, "is a directory, not a file"),
    ):
        with pytest.raises(CheckpointNotFoundError) as err:
            load_checkpoint(path)
        assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, CheckpointError)
        assert str(err.value) == f"checkpoint {str(path)!r} {what}; {EXPECTED_CHECKPOINT}"


def test_a_run_directory_suggests_its_best_checkpoint(trained_run, tmp_path):
    with pytest.raises(CheckpointNotFoundError) as err:
        load_checkpoint(trained_run)
    best = trained_run / "checkpoints" / "best.ckpt"
    assert f"is a directory, not a file; {EXPECTED_CHECKPOINT}" in str(err.value)
    assert str(err.value).endswith(f"is a run directory: pass ckpt={best}")
    with pytest.raises(CheckpointNotFoundError, match=f"holds checkpoints: pass ckpt={best}"):
        load_checkpoint(trained_run / "checkpoints")
    # a typo inside it, and the run's config given for its checkpoint
    with pytest.raises(CheckpointNotFoundError, match=f"does not exist; .*ckpt={best}$"):
        load_checkpoint(trained_run / "checkpoints" / "bets.ckpt")
    with pytest.raises(CheckpointError, match=f"is a YAML file .*ckpt={best}$"):
        load_checkpoint(trained_run / ".hydra" / "config.yaml")


def test_a_truncated_checkpoint_is_called_cut_short(trained_run, tmp_path):
    """best.ckpt cut off (a run killed while saving it): the message points at last.ckpt."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data = _best(trained_run).read_bytes()
    cut = run / "checkpoints" / "best.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(cut)
    assert str(err.value) == (
        f"checkpoint {str(cut)!r} is cut short ({len(data) // 2} bytes): it begins as the zip "
        "archive torch.save writes but its end is missing (a save or copy that did not "
        f"finish?); {EXPECTED_CHECKPOINT}. A checkpoint nearby: "
        f"ckpt={run / 'checkpoints' / 'last.ckpt'}"
    )


def test_a_lightning_checkpoint_of_another_program_has_no_run_config(trained_run, tmp_path):
    ckpt = torch.load(_best(trained_run), map_location="cpu", weights_only=True)
    del ckpt["segbench"]
    path = tmp_path / "foreign.ckpt"
    torch.save(ckpt, path)
    assert load_checkpoint(path)["state_dict"]  # a checkpoint, only not segbench's
    with pytest.raises(CheckpointError) as err:
        evaluation_config(_eval_cfg(tmp_path, path))
    assert f"checkpoint {str(path)!r} has no segbench metadata (a Lightning " in str(err.value)
    assert "checkpoint of another program" in str(err.value)
    assert str(err.value).endswith(EXPECTED_CHECKPOINT)


def test_a_checkpoint_holding_other_objects_is_still_refused_unread(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/x")}, path)
    with pytest.raises(CheckpointError, match=r"not tensors or plain containers.*needs pathlib"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "case",
    [  # the same refusals are checked in-process above; the command line costs 20 s a case
        pytest.param("text", marks=pytest.mark.slow),
        pytest.param("run_dir", marks=pytest.mark.slow),
        pytest.param("truncated", marks=pytest.mark.slow),
    ],
)
def test_evaluate_cli_reports_a_bad_ckpt_before_building_anything(trained_run, tmp_path, case):
    if case == "text":
        ckpt = tmp_path / "notes.txt"
        ckpt.write_text("hello world\n")
        expected = f"checkpoint {str(ckpt)!r} is a text file (it starts 'hello world')"
    elif case == "run_dir":
        ckpt = trained_run
        expected = f"is a run directory: pass ckpt={trained_run / 'checkpoints' / 'best.ckpt'}"
    else:
        data = _best(trained_run).read_bytes()
        ckpt = tmp_path / "best.ckpt"
        ckpt.write_bytes(data[: len(data) - 100])
        expected = f"checkpoint {str(ckpt)!r} is cut short"
    out = tmp_path / "eval"
    proc = run_cli(
        "evaluate.py",
        f"ckpt={ckpt}",
        "logger=csv",
        "trainer=cpu",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert EXPECTED_CHECKPOINT in proc.stderr
    assert "Traceback" not in proc.stderr  # a message: the traceback is in the log file
    log = (out / "evaluate.log").read_text()
    assert "segbench.checkpoints.errors.Checkpoint" in log  # ours, not torch's KeyError
    assert "GPU available" not in proc.stderr + proc.stdout  # no trainer was built
    assert not (out / "results.json").exists()


# ------------------------------------------------------- backbone.weights: fit, or be refused


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Nothing here may reach the network: timm's downloaders fail the test if called."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(builder, name, refuse)


@pytest.fixture(scope="module")
def test_resnet_state():
    """A state dict of timm's test_resnet whose first weight is recognisable (0.125)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model("test_resnet")
    torch.nn.init.constant_(next(model.parameters()), 0.125)
    return model.state_dict()


def _first_weight(enc: TimmEncoder) -> torch.Tensor:
    return next(enc.model.parameters())


def test_a_matching_timm_file_loads_plain_wrapped_or_as_safetensors(tmp_path, test_resnet_state):
    from safetensors.torch import save_file

    plain, wrapped, st = (
        tmp_path / "plain.pth",
        tmp_path / "wrapped.pth",
        tmp_path / "w.safetensors",
    )
    torch.save(test_resnet_state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in test_resnet_state.items()}}, wrapped)
    save_file({k: v.contiguous() for k, v in test_resnet_state.items()}, st)
    for path in (plain, wrapped, st):
        enc = TimmEncoder("test_resnet", weights=str(path))
        assert torch.all(_first_weight(enc) == 0.125), path
        state = enc.model.state_dict()
        assert all(torch.equal(v, test_resnet_state[k]) for k, v in state.items()), path
    # without the classifier (which a feature extractor drops), cut short, on one channel
    no_fc = tmp_path / "no_fc.pth"
    torch.save({k: v for k, v in test_resnet_state.items() if not k.startswith("fc.")}, no_fc)
    assert torch.all(_first_weight(TimmEncoder("test_resnet", weights=str(no_fc))) == 0.125)
    assert TimmEncoder("test_resnet", weights=str(plain), until_stride=4).strides == [2, 4]
    grey = TimmEncoder("test_resnet", weights=str(plain), in_chans=1)  # timm adapts the stem
    assert _first_weight(grey).shape[1] == 1
    assert not torch.all(_first_weight(TimmEncoder("test_resnet")) == 0.125)


def _fit_message(path: Path, name: str = "test_resnet") -> str:
    with pytest.raises(ValueError) as err:
        TimmEncoder(name, weights=str(path))
    message = str(err.value)
    assert message.startswith(f"backbone weights file {str(path)!r} does not fit timm model ")
    assert "Nothing was loaded; expected a state dict of timm model" in message
    return message


def test_a_timm_file_of_another_architecture_is_refused(tmp_path, test_resnet_state):
    other = timm.create_model("test_efficientnet").state_dict()
    path = tmp_path / "efficientnet.pth"
    torch.save(other, path)
    message = _fit_message(path)
    ours = [k for k in test_resnet_state if not k.startswith("fc.")]
    missing = [k for k in ours if k not in other and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in other if k not in test_resnet_state]
    assert f"{len(missing)} missing keys ({', '.join(missing[:5])}, ...)" in message
    assert f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:5])}, ...)" in message
    assert "conv1.0.weight" in message and "conv_stem.weight" in message


def test_a_timm_file_with_renamed_keys_or_shapes_is_refused(tmp_path, test_resnet_state):
    renamed = tmp_path / "renamed.pth"
    torch.save({f"backbone.{k}": v for k, v in test_resnet_state.items()}, renamed)
    message = _fit_message(renamed)
    n = len(test_resnet_state)
    assert f"; {n} unexpected keys (backbone.conv1.0.weight, " in message
    assert "its keys under 'backbone.' would fit" in message

    reshaped = dict(test_resnet_state)
    reshaped["layer1.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)
    path = tmp_path / "reshaped.pth"
    torch.save(reshaped, path)
    expected = tuple(test_resnet_state["layer1.0.conv1.weight"].shape)
    assert _fit_message(path).endswith(
        "does not fit timm model 'test_resnet': 1 shape mismatch (layer1.0.conv1.weight: file "
        f"(8, 8, 3, 3), model {expected}). Nothing was loaded; expected a state dict of timm "
        "model 'test_resnet' (timm.create_model('test_resnet').state_dict())"
    )


def test_a_weights_file_that_is_no_state_dict_is_named(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes\.txt' is a text file \(it starts 'hello'\)"):
        TimmEncoder("test_resnet", weights=str(path))
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match=r"notes\.txt' holds a single tensor of shape \(3,\)"):
        TimmEncoder("test_resnet", weights=str(path))


def test_training_with_a_mismatching_weights_file_stops_before_it_starts(tmp_path):
    path = tmp_path / "efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    cfg = compose_config(
        "train",
        ["debug=fast", "backbone=tiny_resnet", f"backbone.weights={path}"],
        tmp_path / "run",
    )
    with pytest.raises(InstantiationException, match=r"efficientnet\.pth.*does not fit timm model"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_vgg_file_must_fit_the_features_too(tmp_path):
    stages = [[8], [16]]
    source = VGGEncoder("vgg_toy", stages=stages)
    path = tmp_path / "vgg.pth"
    torch.save(
        {"state_dict": {f"features.{k}": v for k, v in source.features.state_dict().items()}}, path
    )
    enc = VGGEncoder("vgg_toy", stages=stages, weights=str(path))
    assert torch.equal(enc.features[0].weight, source.features[0].weight)
    with pytest.raises(ValueError) as err:
        VGGEncoder("vgg_toy", stages=stages, batch_norm=True, weights=str(path))
    message = str(err.value)
    assert message.startswith(
        f"backbone weights {str(path)!r} do not fit vgg_toy (batch_norm=True)"
    )
    assert "10 missing keys (features.1.weight, features.1.bias, " in message
    assert "2 unexpected keys (features.3.weight, features.3.bias)" in message
    with pytest.raises(
        ValueError,
        match=r"2 shape mismatches \(features\.3\.weight: file "
        r"\(16, 8, 3, 3\), model \(32, 8, 3, 3\); features\.3\.bias",
    ):
        VGGEncoder("vgg_toy", stages=[[8], [32]], weights=str(path))
