"""SegFormer and its MiT encoder against Hugging Face transformers (the test-only oracle): logits
and features on the same random weights, the converters' account, the ImageNet weights read
offline from the hub cache, and training runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    SegformerModel,
)

from segbench.engine.build import build_model
from segbench.models.base import count_parameters
from segbench.models.convert import ConversionError
from segbench.models.encoders import MiTEncoder
from segbench.models.pretrained import PretrainedUnavailable
from segbench.models.segformer import SegFormer
from segbench.models.segformer_hf import convert_mit, convert_segformer
from tests.conftest import compose_config

SIZES = [(64, 64), (72, 100)]  # the second is no multiple of 32
SMALL = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}
SMALL_HEADS = [1, 2, 2, 4]
B0 = {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2]}
B2 = {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3]}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# transformers 5's key names -> those of the files on the hub (written by transformers 4)
TO_HUB_LAYOUT = [
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.block.\1.\2."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"layernorm_before", "layer_norm_1"),
    (r"layernorm_after", "layer_norm_2"),
    (r"mlp\.fc1", "mlp.dense1"),
    (r"mlp\.fc2", "mlp.dense2"),
    (r"decode_head\.linear_projections", "decode_head.linear_c"),
]


def hub_layout(state: dict) -> dict:
    """``state`` under the key names of the checkpoints published on the hub."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in TO_HUB_LAYOUT:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def hf_config(arch: dict, heads=(1, 2, 5, 8), **kw) -> SegformerConfig:
    return SegformerConfig(**arch, num_attention_heads=list(heads), **kw)


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor random at the scale of a trained network (weights ~ N(0, 1/fan_in), norm
    scales ~ 1, biases and norm shifts ~ 0.2, positive variances), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if t.dim() >= 2:  # linear and conv weights
                t.copy_(noise / t[0].numel() ** 0.5)
            elif key.endswith("running_var"):
                t.copy_(noise.abs() + 0.5)
            elif key.endswith("weight"):  # LayerNorm and BatchNorm scales
                t.copy_(1.0 + 0.2 * noise)
            else:
                t.copy_(0.2 * noise)
    return model.eval()


def mit(arch: dict, heads=(1, 2, 5, 8), **kw) -> MiTEncoder:
    return MiTEncoder("test_mit", widths=arch["hidden_sizes"], depths=arch["depths"],
                      num_heads=list(heads), **kw)  # fmt: skip


def check_logits(arch: dict, heads, decoder: int, classes: int, layouts=("transformers5",)):
    torch.manual_seed(0)
    config = hf_config(arch, heads, decoder_hidden_size=decoder, num_labels=classes)
    hf = randomised(SegformerForSemanticSegmentation(config))
    for layout in layouts:
        state = hf.state_dict() if layout == "transformers5" else hub_layout(hf.state_dict())
        model = SegFormer(mit(arch, heads), classes, decoder_dim=decoder).eval()
        model.load_state_dict(convert_segformer(state, config.to_dict(), layout, model))
        for h, w in SIZES:
            x = torch.randn(2, 3, h, w)
            with torch.no_grad():
                ref = hf(pixel_values=x).logits  # (B, K, H/4, W/4)
                ref = F.interpolate(ref, size=(h, w), mode="bilinear", align_corners=False)
                out = model(x)["out"]
            assert out.shape == (2, classes, h, w)
            assert ref.abs().max() > 0.1  # logits that say something
            assert (out - ref).abs().max() <= 1e-4, (layout, h, w)


def test_logits_match_transformers_small():
    check_logits(SMALL, SMALL_HEADS, 16, 5, layouts=("transformers5", "hub"))


def test_logits_match_transformers_b0_real_size():
    check_logits(B0, (1, 2, 5, 8), 256, 150)


@pytest.mark.slow
def test_logits_match_transformers_b2():
    check_logits(B2, (1, 2, 5, 8), 768, 19)


def test_features_match_transformers_hidden_states():
    torch.manual_seed(0)
    config = hf_config(SMALL, SMALL_HEADS)
    hf = randomised(SegformerModel(config))
    for state in (hf.state_dict(), hub_layout(hf.state_dict())):  # bare SegformerModel keys
        encoder = mit(SMALL, SMALL_HEADS).eval()
        encoder.load_state_dict(convert_mit(state, config.to_dict(), "test", encoder))
        for h, w in SIZES:
            x = torch.randn(1, 3, h, w)
            with torch.no_grad():
                ref = hf(pixel_values=x, output_hidden_states=True).hidden_states
                ours = encoder(x)
            assert [f.shape for f in ours] == [r.shape for r in ref]
            assert max((a - b).abs().max().item() for a, b in zip(ours, ref)) <= 1e-4


def test_hub_layout_is_the_one_transformers_reads(tmp_path):
    """The test's hub-layout renaming is right: transformers loads such a file completely."""
    config = hf_config(SMALL, SMALL_HEADS, num_labels=4)
    hf = randomised(SegformerForSemanticSegmentation(config))
    save_file(hub_layout(hf.state_dict()), tmp_path / "model.safetensors")
    config.save_pretrained(tmp_path)
    loaded, info = SegformerForSemanticSegmentation.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in hf.state_dict().items())


def test_converter_refuses_a_missing_and_an_extra_tensor():
    config = hf_config(SMALL, SMALL_HEADS, num_labels=5, decoder_hidden_size=16)
    state = SegformerForSemanticSegmentation(config).state_dict()
    model = SegFormer(mit(SMALL, SMALL_HEADS), 5, decoder_dim=16)
    gone = "segformer.stages.2.blocks.0.attention.k_proj.weight"
    holed = {k: v for k, v in state.items() if k != gone}
    with pytest.raises(ConversionError, match=r"missing from the file: encoder\.stages\.2\.blocks"):
        convert_segformer(holed, config.to_dict(), "test", model)
    extra = {**state, "segformer.stages.1.extra_scale": torch.ones(3)}
    with pytest.raises(
        ConversionError, match=r"left over in the file: segformer\.stages\.1\.extra"
    ):
        convert_segformer(extra, config.to_dict(), "test", model)
    with pytest.raises(ConversionError, match="left over in the file: segformer.stages.1.extra"):
        convert_segformer(extra, config.to_dict(), "test")  # without a model too
    encoder_state = SegformerModel(config).state_dict()
    with pytest.raises(ConversionError, match=r"missing from the file: stages\.0\.embed\.proj"):
        convert_mit(
            {k: v for k, v in encoder_state.items() if "stages.0.patch_embeddings.proj" not in k},
            config.to_dict(),
            "test",
            mit(SMALL, SMALL_HEADS),
        )


def test_converter_checks_the_config():
    config = hf_config(SMALL, SMALL_HEADS, num_labels=5, decoder_hidden_size=16)
    state = SegformerForSemanticSegmentation(config).state_dict()
    model = SegFormer(mit(SMALL, SMALL_HEADS), 5, decoder_dim=16)
    wrong = {**config.to_dict(), "depths": [2, 2, 2, 2]}
    with pytest.raises(ConversionError, match=r"config.json says depths=\[2, 2, 2, 2\].*depths=\["):
        convert_segformer(state, wrong, "test", model)
    with pytest.raises(ConversionError, match=r"num_labels=5.*num_classes=7"):
        seven = SegFormer(mit(SMALL, SMALL_HEADS), 7, decoder_dim=16)
        convert_segformer(state, config.to_dict(), "test", seven)
    heads = {**config.to_dict(), "num_attention_heads": [1, 1, 1, 1]}  # no tensor shows heads
    with pytest.raises(ConversionError, match="num_attention_heads"):
        convert_segformer(state, heads, "test", model)
    with pytest.raises(ConversionError, match="has no SegFormer decode head"):
        convert_segformer(SegformerModel(config).state_dict(), config.to_dict(), "test")
    # an ImageNet MiT-B1 for a MiT-B0 backbone: the message names the backbone that fits
    b1 = hf_config({"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2]}, num_labels=3)
    with torch.device("meta"):
        b1_state = SegformerForImageClassification(b1).state_dict()
        b0 = MiTEncoder("mit_b0")
    with pytest.raises(ConversionError, match="use backbone=mit_b1"):
        convert_mit(b1_state, b1.to_dict(), "hf:nvidia/mit-b1", b0)


def write_mit_cache(home: Path, seed: int = 0) -> tuple[SegformerModel, Path]:
    """A hub cache under ``home`` holding ``nvidia/mit-b0`` as published (ImageNet classifier,
    hub key names), with random weights; returns HF's encoder on them and the weights file."""
    config = hf_config(B0, num_labels=10)
    hf = randomised(SegformerForImageClassification(config), seed)
    repo = home / "hub" / "models--nvidia--mit-b0"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    save_file(hub_layout(hf.state_dict()), snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps(config.to_dict()))
    return hf.segformer, snapshot / "model.safetensors"


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_pretrained_reads_the_hub_cache_offline(offline_home):
    hf, path = write_mit_cache(offline_home)
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states
    torch_file = offline_home.parent / "mit-b0.pth"  # a torch.save file, HF key names
    torch.save({"state_dict": load_file(path)}, torch_file)
    sources = [
        {"weights": "hf:nvidia/mit-b0"},
        {"weights": str(path)},
        {"weights": str(torch_file)},
    ]
    for kw in ({"pretrained": True}, *sources):
        encoder = MiTEncoder("mit_b0", **kw).eval()
        with torch.no_grad():
            ours = encoder(x)
        assert max((a - b).abs().max().item() for a, b in zip(ours, ref)) <= 1e-4, kw
    # through the config, stopping at stride 8: the stages kept are the pretrained ones
    cfg = compose_config(
        "train",
        ["model=segformer", "backbone.pretrained=true", "backbone.until_stride=8"],
        offline_home.parent / "run",
    )
    encoder = build_model(cfg.model).encoder.eval()
    assert encoder.strides == [4, 8] and len(encoder.stages) == 2
    with torch.no_grad():
        assert torch.allclose(encoder(x)[1], ref[1], atol=1e-4)


def test_pretrained_without_the_cache_says_how_to_fetch(offline_home):
    with pytest.raises(PretrainedUnavailable) as err:
        MiTEncoder("mit_b0", pretrained=True)
    message = str(err.value)
    assert "nvidia/mit-b0" in message and str(offline_home / "hub") in message
    assert "segbench weights fetch hf:nvidia/mit-b0" in message
    assert "HF_HUB_OFFLINE is set" in message
    with pytest.raises(ValueError, match="no ImageNet weights are published"):
        mit(SMALL, SMALL_HEADS, pretrained=True)


def test_encoder_contract():
    encoder = mit(SMALL, SMALL_HEADS)
    assert encoder.channels == [8, 16, 24, 32] and encoder.strides == [4, 8, 16, 32]
    assert encoder.name == "test_mit" and encoder.output_stride == 32
    shapes = [tuple(f.shape[-2:]) for f in encoder(torch.zeros(1, 3, 65, 97))]
    assert shapes == [(17, 25), (9, 13), (5, 7), (3, 4)]
    picked = mit(SMALL, SMALL_HEADS, out_indices=[1, 3])
    assert picked.channels == [16, 32] and len(picked(torch.zeros(1, 3, 64, 64))) == 2
    cut = mit(SMALL, SMALL_HEADS, until_stride=16)
    assert cut.strides == [4, 8, 16] and len(cut.stages) == 3  # no later layer kept
    for stride in (8, 16):
        with pytest.raises(ValueError, match="MiT cannot be dilated.*use a ResNet backbone"):
            MiTEncoder("mit_b0", output_stride=stride)
    with pytest.raises(ValueError, match="not a MiT variant"):
        MiTEncoder("mit_b9")
    assert MiTEncoder("mit_b0", output_stride=32).strides[-1] == 32


def test_decoder_width_follows_the_backbone(tmp_path):
    for backbone, dim in [("mit_b0", 256), ("mit_b1", 256), ("mit_b2", 768), ("mit_b5", 768),
                          ("tiny", 256)]:  # fmt: skip
        cfg = compose_config("train", ["model=segformer", f"backbone={backbone}"], tmp_path)
        assert cfg.model.decoder_dim == dim and cfg.model.dropout == 0.1
    assert compose_config("train", ["model=segformer"], tmp_path).backbone.name == "mit_b0"


def test_paper_parameter_counts(tmp_path):
    """Table 1 of the paper: 3.8M (MiT-B0) and 84.7M (MiT-B5) parameters on ADE20K."""
    counts = {}
    for backbone in ("mit_b0", "mit_b5"):
        overrides = ["model=segformer", f"backbone={backbone}", "dataset.num_classes=150"]
        cfg = compose_config("train", overrides, tmp_path)
        with torch.device("meta"):
            counts[backbone] = count_parameters(build_model(cfg.model))
    assert counts == {"mit_b0": 3_752_694, "mit_b5": 84_708_694}


@pytest.mark.parametrize("backbone", ["tiny", "unet", "tiny_resnet"])
def test_decoder_runs_on_other_encoders(backbone, tmp_path):
    extra = ["backbone.widths=[8,16,32,64,128]"] if backbone == "unet" else []
    cfg = compose_config("train", ["model=segformer", f"backbone={backbone}", *extra], tmp_path)
    net = build_model(cfg.model).train()
    assert net.decoder.levels == 4
    out = net(torch.randn(2, 3, 65, 97))["out"]
    assert out.shape == (2, 7, 65, 97)
    out.mean().backward()


@pytest.mark.parametrize("backbone", [[], ["backbone=mit_b0"]], ids=["tiny", "mit_b0"])
def test_trains_at_debug_fast(backbone, tmp_path):
    from segbench.engine.run import train

    overrides = [
        "debug=fast",
        "model=segformer",
        *backbone,
        "trainer.max_epochs=1",
        "dataset.subset.train=4",
        "dataset.subset.val=2",
        "dataset.subset.test=2",
        "callbacks.run_plots=null",
        "callbacks.eval_outputs=null",
    ]
    result = train(compose_config("train", overrides, tmp_path / "run"))
    assert result  # a results record
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["model"] == "segformer"
    assert record["backbone"] == ("mit_b0" if backbone else "tiny")
    assert 0.0 <= record["metrics"]["mIoU"] <= 1.0
