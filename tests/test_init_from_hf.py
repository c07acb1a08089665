"""``init_from=hf:<owner>/<repo>``: a published SegFormer checkpoint, laid out in a temporary
Hugging Face cache as the hub client writes it (random weights, no network), converted and
loaded: the logits equal transformers' on the same file, and a training run with another class
count starts from it with only the classifier re-initialised and says so."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from segbench.engine.build import build_model, init_from_checkpoint
from segbench.engine.run import train
from segbench.models.pretrained import PretrainedUnavailable
from tests.conftest import compose_config

REPO = "nvidia/segformer-b0-finetuned-ade-512-512"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``$HF_HOME`` holding ``REPO``: a SegFormer-B0 for 150 classes with random weights (its
    BatchNorm statistics randomised too), saved by transformers itself."""
    home = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = SegformerConfig(num_labels=150)  # SegFormer-B0's widths and depths
    hf = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for name, buf in hf.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    folder = home / "hub" / f"models--{REPO.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    hf.save_pretrained(snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return home, hf


def test_the_converted_checkpoint_gives_transformers_logits(hub, tmp_path, monkeypatch):
    home, hf = hub
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config(
        "train", ["model=segformer", "backbone=mit_b0", "dataset.num_classes=150"], tmp_path
    )
    model = build_model(cfg.model).eval()
    record = init_from_checkpoint(model, f"hf:{REPO}", 150)
    assert record["reinitialised"] == [] and record["num_classes"] == 150
    assert record["path"] == f"hf:{REPO}" and len(record["sha256"]) == 64
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        ours = model(x)["out"]
        theirs = F.interpolate(hf(pixel_values=x).logits, size=(72, 100), mode="bilinear")
    assert (ours - theirs).abs().max() <= 1e-4


def test_a_run_for_other_classes_reinitialises_the_classifier_only(hub, tmp_path, monkeypatch):
    home, _ = hub
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    overrides = [
        "debug=fast", "model=segformer", "backbone=mit_b0", f"init_from=hf:{REPO}",
        "trainer.max_epochs=1", "dataset.subset.train=4", "dataset.subset.val=2",
        "dataset.subset.test=2", "callbacks.run_plots=null", "callbacks.eval_outputs=null",
    ]  # fmt: skip
    train(compose_config("train", overrides, run))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    init = ckpt["segbench"]["init_from"]
    assert init["path"] == f"hf:{REPO}" and init["num_classes"] == 150
    assert init["reinitialised"] == ["head.weight", "head.bias"]
    assert json.loads((run / "results.json").read_text())["config"]["init_from"] == f"hf:{REPO}"


def test_a_checkpoint_not_in_the_cache_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config("train", ["model=segformer", "backbone=mit_b0"], tmp_path)
    with pytest.raises(PretrainedUnavailable, match="segbench weights fetch hf:nvidia/none-such"):
        init_from_checkpoint(build_model(cfg.model), "hf:nvidia/none-such", 7)
