"""The converter account (segbench/models/convert.py) and the ``hf:`` hub reader
(segbench/models/hub.py): every foreign tensor placed or skipped for a stated reason, anything
else refused by name; a hub repository read from a cache laid out as huggingface_hub writes it,
with no network."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from segbench.models.convert import ConversionError, StateDictConverter, stacked
from segbench.models.hub import hf_repo, read_hf_checkpoint
from segbench.models.pretrained import PretrainedUnavailable

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _foreign(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s tensors under another library's names, plus a classifier to skip."""
    names = {"0": "stem.conv", "1": "stem.norm", "2": "head.proj"}
    state = {}
    for key, value in net.state_dict().items():
        layer, rest = key.split(".", 1)
        if rest != "num_batches_tracked":
            state[f"{names[layer]}.{rest}"] = torch.randn_like(value.float())
    state["classifier.weight"] = torch.randn(1000, 4)
    return state


RULES = [
    (r"stem\.conv\.(.*)", r"0.\1"),
    (r"stem\.norm\.(.*)", r"1.\1"),
    (r"head\.proj\.(.*)", r"2.\1"),
]


def test_every_tensor_is_placed_and_the_result_loads_exactly():
    net, source = _net(), _foreign(_net())
    conv = StateDictConverter(source, "test checkpoint")
    conv.rename(RULES)
    conv.skip(r"classifier\..*", "an ImageNet classifier")
    conv.load_into(net)
    assert torch.equal(net[0].weight, source["stem.conv.weight"])
    assert torch.equal(net[1].running_var, source["stem.norm.running_var"])
    assert conv.skipped == {"classifier.weight": "an ImageNet classifier"}


def test_a_tensor_left_over_missing_twice_or_of_another_shape_is_named():
    source = _foreign(_net())
    conv = StateDictConverter(source, "test checkpoint")
    conv.rename(RULES)  # the classifier is neither placed nor skipped
    with pytest.raises(ConversionError, match=r"left over in the file: classifier\.weight"):
        conv.result(_net())
    del source["head.proj.bias"]
    source["head.proj.weight"] = torch.randn(3, 4, 1, 1)
    conv = StateDictConverter(source, "test checkpoint")
    conv.rename(RULES)
    conv.skip(r"classifier\..*", "an ImageNet classifier")
    conv.put("0.bias", torch.zeros(4), "a constant")
    with pytest.raises(ConversionError) as err:
        conv.result(_net())
    text = str(err.value)
    assert "missing from the file: 2.bias" in text
    assert "of another shape: 2.weight: [3, 4, 1, 1] from head.proj.weight" in text
    assert "given twice: 0.bias" in text and "Nothing was loaded" in text


def test_stacked_takes_and_concatenates():
    conv = StateDictConverter({"q": torch.ones(2, 3), "k": torch.zeros(2, 3)}, "x")
    assert stacked(conv, ["q", "k"]).shape == (4, 3) and conv.remaining() == []


def _hub(home, repo: str, state: dict, config: dict) -> None:
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    save_file(state, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps(config))


def test_an_hf_repository_is_read_from_the_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = {"a.weight": torch.randn(2, 2)}
    _hub(tmp_path / "hf", "someone/model", state, {"model_type": "segformer"})
    read, config = read_hf_checkpoint("someone/model")
    assert torch.equal(read["a.weight"], state["a.weight"]) and config["model_type"] == "segformer"
    with pytest.raises(PretrainedUnavailable) as err:
        read_hf_checkpoint("someone/other")
    text = str(err.value)
    assert "hf:someone/other" in text and str(tmp_path / "hf" / "hub") in text
    assert "segbench weights fetch hf:someone/other" in text


def test_hf_specs_are_parsed_or_refused():
    assert hf_repo("hf:nvidia/mit-b0") == "nvidia/mit-b0"
    assert hf_repo("/data/weights.pth") is None
    with pytest.raises(ValueError, match="hf:<owner>/<repository>"):
        hf_repo("hf:mit-b0")
