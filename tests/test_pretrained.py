"""``backbone.pretrained=true`` through timm's own loading and the Hugging Face hub cache, with no
network: a weights file written into a temporary cache laid out as the hub's is loaded exactly;
without it, offline, the run is refused with the repository, the cache and the fetch command;
``segbench weights`` lists the cache and fails fast without network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import ROOT

REPO = "timm/test_resnet.r160_in1k"  # timm's default weights of test_resnet (tiny_resnet)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(home: Path, seed: int = 0) -> tuple[Path, dict]:
    """A hub cache under ``home`` (``$HF_HOME/hub``) holding ``REPO``'s ``model.safetensors``
    (test_resnet's tensors, randomised with ``seed``), laid out as huggingface_hub writes it."""
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
             for k, v in timm.create_model("test_resnet").state_dict().items()}  # fmt: skip
    repo = home / "hub" / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    save_file(state, snapshot / "model.safetensors")
    return snapshot / "model.safetensors", state


# "online" in these tests is a hub endpoint that refuses connections at once: no test reaches
# the network, whatever the machine
NO_HUB = "http://127.0.0.1:9"


def run_python(code: str, home: Path, offline: bool = True, *args: str):
    env = {"HF_HOME": str(home), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    env["HF_HUB_OFFLINE" if offline else "HF_ENDPOINT"] = "1" if offline else NO_HUB
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )


LOAD = """
import json, sys, torch
from safetensors.torch import load_file
from segbench.models.encoders import TimmEncoder
enc = TimmEncoder("test_resnet", pretrained=True)
want = load_file(sys.argv[1])
got = enc.model.state_dict()
print(json.dumps({"same": [k for k in got if k in want and torch.equal(got[k], want[k])],
                  "keys": list(got)}))
"""


def test_pretrained_true_loads_the_cached_hub_file_offline(tmp_path):
    path, _ = write_hub_cache(tmp_path / "hf")
    proc = run_python(LOAD, tmp_path / "hf", True, str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"] == out["keys"] and len(out["keys"]) > 10  # every tensor, exactly


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "hub-unreachable"])
def test_without_the_file_names_repo_cache_and_fetch_command(tmp_path, offline):
    path, _ = write_hub_cache(tmp_path / "hf")
    path.unlink()
    proc = run_python(LOAD, tmp_path / "hf", offline, str(path))
    assert proc.returncode != 0
    err = proc.stderr
    assert "PretrainedUnavailable" in err and REPO in err and str(tmp_path / "hf" / "hub") in err
    assert "segbench weights fetch test_resnet" in err
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot be reached") in err


def test_a_train_run_with_pretrained_true_uses_the_cache(tmp_path):
    """Through train.py's config: backbone=tiny_resnet backbone.pretrained=true, offline."""
    write_hub_cache(tmp_path / "hf")
    code = (
        "from segbench.config import compose_train_config\n"
        "from segbench.engine.build import build_model\n"
        "cfg = compose_train_config(['debug=fast', 'backbone=tiny_resnet', "
        "'backbone.pretrained=true'])\n"
        "print(type(build_model(cfg.model).encoder).__name__)\n"
    )
    proc = run_python(code, tmp_path / "hf")
    assert proc.returncode == 0 and "TimmEncoder" in proc.stdout, proc.stderr[-3000:]


def test_weights_verb_lists_and_fails_fast_without_network(tmp_path):
    write_hub_cache(tmp_path / "hf")
    verb = "from segbench.cli import main; import sys; raise SystemExit(main(sys.argv[1:]))"
    listed = run_python(verb, tmp_path / "hf", True, "weights", "list")
    assert listed.returncode == 0 and REPO in listed.stdout and "model.safetensors" in listed.stdout
    cached = run_python(verb, tmp_path / "hf", True, "weights", "fetch", "backbone=tiny_resnet")
    assert cached.returncode == 0 and "model.safetensors" in cached.stdout  # already there
    # online but the hub unreachable: at once, an error naming what to fetch
    missing = run_python(
        verb, tmp_path / "hf", False, "weights", "fetch", "resnet18", "--timeout", "3"
    )
    assert missing.returncode == 1 and "timm/resnet18" in missing.stdout
    assert f"the hub {NO_HUB} cannot be reached" in missing.stdout
    scratch = run_python(verb, tmp_path / "hf", True, "weights", "fetch", "backbone=unet")
    assert scratch.returncode == 1 and "trained from scratch" in scratch.stdout


@pytest.mark.parametrize("backbone", ["tiny", "segnet_basic"])
def test_encoders_without_imagenet_weights_say_so(backbone, tmp_path):
    from hydra.errors import InstantiationException

    from segbench.engine.build import build_model
    from tests.conftest import compose_config

    cfg = compose_config(
        "train", ["debug=fast", f"backbone={backbone}", "backbone.pretrained=true"], tmp_path
    )
    with pytest.raises((InstantiationException, ValueError), match="no ImageNet weights exist"):
        build_model(cfg.model)


def write_torch_hub_vgg(home: Path, seed: int = 0) -> dict:
    """torchvision's vgg16_bn file in ``$TORCH_HOME/hub/checkpoints`` under its release name,
    holding the (randomised) ``features.*`` tensors, the only ones the encoder reads."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.vgg16_bn()
    state = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "vgg16_bn-6c64b313.pth")
    return state


def test_vgg16_bn_loads_torchvisions_weights_and_matches_its_features(tmp_path, monkeypatch):
    """Mapped onto segbench's VGGEncoder exactly: the same weights give torchvision's
    vgg16_bn.features output as the encoder's last feature map."""
    import torchvision

    from segbench.engine.build import build_model
    from tests.conftest import compose_config

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = write_torch_hub_vgg(tmp_path / "torch")
    cfg = compose_config(
        "train", ["model=segnet", "backbone=vgg16_bn", "backbone.pretrained=true"], tmp_path
    )
    encoder = build_model(cfg.model).encoder.eval()
    reference = torchvision.models.vgg16_bn().eval()
    reference.load_state_dict(state, strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x)[-1], reference.features(x))
    for key, value in encoder.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"])


def test_vgg_offline_without_the_file_names_url_cache_and_fetch_command(tmp_path, monkeypatch):
    from segbench.models.encoders import VGGEncoder
    from segbench.models.pretrained import PretrainedUnavailable

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailable) as err:
        VGGEncoder("vgg16", pretrained=True)
    text = str(err.value)
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in text
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in text
    assert "segbench weights fetch vgg16" in text


def test_a_cached_file_loads_without_asking_the_hub(tmp_path):
    """Online but with the hub unreachable, a cached file still loads (the cache is read as
    is, no update check)."""
    path, _ = write_hub_cache(tmp_path / "hf", seed=3)
    proc = run_python(LOAD, tmp_path / "hf", False, str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"] == out["keys"]
