"""DINOv2's linear probes (``model=linear_probe``) and the ViT encoder they read: parity with
timm's own intermediate layers, the encoder contract, the heads, the frozen-by-default config,
and training runs on the tiny backbone and on the ViT."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hydra.errors import InstantiationException
from safetensors.torch import save_file

from segbench.engine.build import build_model
from segbench.engine.run import train
from segbench.models.encoders.vit import ViTEncoder, center_pad
from segbench.models.linear_probe import LinearProbe
from segbench.models.weights import read_state_dict
from tests.conftest import compose_config

VIT_S = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def vit_s() -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(VIT_S).eval()


def test_center_pad_splits_the_padding_as_dinov2():
    x = torch.ones(1, 1, 75, 101)
    padded = center_pad(x, 14)
    assert padded.shape[-2:] == (84, 112)  # 9 rows: 4 above, 5 below; 11 columns: 5 and 6
    rows, cols = padded[0, 0].sum(1), padded[0, 0].sum(0)
    assert rows[:4].sum() == 0 and rows[4] > 0 and rows[-6] > 0 and rows[-5:].sum() == 0
    assert cols[:5].sum() == 0 and cols[5] > 0 and cols[-7] > 0 and cols[-6:].sum() == 0
    assert center_pad(x[..., :70, :98], 14).shape[-2:] == (70, 98)


@pytest.mark.parametrize("size", [(70, 98), (75, 101), (64, 64)])
def test_tokens_match_timm_intermediate_layers(vit_s, size):
    """Random weights: the maps and class tokens equal timm's ``forward_intermediates`` on the
    image padded as DINOv2 pads it (the final norm applied), reshaped to the token grid."""
    reference = copy.deepcopy(vit_s.model)  # timm's model, every block kept: its own forward
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        maps, tokens = vit_s.forward_with_class_token(x)
        expected = reference.forward_intermediates(
            center_pad(x, 14),
            indices=4,
            norm=True,
            return_prefix_tokens=True,
            intermediates_only=True,
        )
    grid = (math.ceil(size[0] / 14), math.ceil(size[1] / 14))
    assert len(maps) == len(tokens) == 4
    for got, cls, (want, prefix) in zip(maps, tokens, expected, strict=True):
        assert got.shape == (2, 384, *grid) and cls.shape == (2, 384)
        assert (got - want).abs().max() <= 1e-4
        assert (cls - prefix[:, 0]).abs().max() <= 1e-4


def test_encoder_contract_and_refusals(vit_s):
    assert (vit_s.name, vit_s.channels, vit_s.strides) == (VIT_S, [384] * 4, [14] * 4)
    assert vit_s.blocks_taken == [8, 9, 10, 11] and vit_s.output_stride == 14
    with torch.device("meta"):  # structure only: no weights drawn
        one = ViTEncoder(VIT_S, out_indices=[2, 5], until_stride=4)  # ReSeg: the first level
        assert one.blocks_taken == [2] and len(one.model.blocks) == 3  # no later block built
        assert ViTEncoder(VIT_S, output_stride=14).strides == [14] * 4
        for stride in (8, 16, 32):
            with pytest.raises(ValueError, match=f"{VIT_S}.*cannot dilate.*output_stride={stride}"):
                ViTEncoder(VIT_S, output_stride=stride)
        with pytest.raises(ValueError, match=r"out_indices=\[12\]"):
            ViTEncoder(VIT_S, out_indices=[12])
        with pytest.raises(ValueError, match="ViTEncoder needs a timm Vision Transformer"):
            ViTEncoder("resnet18")


@pytest.mark.parametrize(
    ("name", "total", "paper"),
    [(VIT_S, 22_056_192, 21e6), ("vit_base_patch14_dinov2", 86_579_712, 86e6)],
)
def test_paper_sizes(name, total, paper):
    with torch.device("meta"):
        encoder = ViTEncoder(name)
    counted = sum(p.numel() for p in encoder.parameters())
    assert counted == total  # the paper's 21M/86M, plus the 37x37 position embeddings
    assert abs(counted - encoder.model.pos_embed.numel() - paper) / paper < 0.03


def test_local_weights_file_loads_and_a_foreign_one_is_refused(vit_s, tmp_path):
    path = tmp_path / "vits14.safetensors"
    save_file({k: v.contiguous() for k, v in vit_s.model.state_dict().items()}, str(path))
    loaded = ViTEncoder(VIT_S, weights=str(path))
    state = read_state_dict(path, "a ViT-S state dict")
    assert all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items())
    with pytest.raises(ValueError, match="does not fit timm model 'vit_base_patch14_dinov2'"):
        ViTEncoder("vit_base_patch14_dinov2", weights=str(path))


def test_heads_on_the_vit(vit_s):
    x = torch.randn(2, 3, 75, 101)
    for head, cls_token, width in (("lin", False, 384), ("ms", False, 1536), ("ms", True, 3072)):
        probe = LinearProbe(vit_s, num_classes=5, head=head, cls_token=cls_token).eval()
        assert probe.head[0].num_features == probe.head[1].in_channels == width
        with torch.no_grad():
            features, tokens = vit_s.forward_with_class_token(x)
            stacked = probe.decoder(features, tokens)
            out = probe(x)["out"]
        assert stacked.shape == (2, width, 6, 8) and out.shape == (2, 5, 75, 101)
        if head == "ms":  # the last four blocks in order, each followed by its class token
            step = width // 4
            assert torch.equal(stacked[:, :384], features[0])
            if cls_token:
                assert torch.equal(stacked[:, 384:768, 3, 5], tokens[0])
                assert torch.equal(stacked[:, step * 3 + 384 :, 0, 0], tokens[3])
        else:
            assert torch.equal(stacked, features[-1])


def test_head_refusals(vit_s, tmp_path):
    with torch.device("meta"):
        one = ViTEncoder(VIT_S, out_indices=[11])
    with pytest.raises(ValueError, match=rf"head='ms'.*{VIT_S}.*returns 1"):
        LinearProbe(one, num_classes=3, head="ms")
    with pytest.raises(ValueError, match="head must be one of"):
        LinearProbe(vit_s, num_classes=3, head="mlp")
    cfg = compose_config("train", ["model=linear_probe", "backbone=tiny"], tmp_path)
    with pytest.raises(InstantiationException, match="'tiny' has none"):
        build_model({**cfg.model, "cls_token": True})


def test_on_a_cnn_ms_reads_the_last_four_levels_at_the_finest(tmp_path):
    cfg = compose_config(
        "train", ["model=linear_probe", "backbone=tiny", "model.head=ms"], tmp_path
    )
    net = build_model(cfg.model).eval()
    assert net.encoder.strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        features = net.encoder(torch.randn(1, 3, 64, 96))
        stacked = net.decoder(features)
    assert stacked.shape == (1, 16 + 32 + 32 + 32, 16, 24)  # strides 4..32 at stride 4
    assert torch.equal(stacked[:, :16], features[1])


@pytest.mark.parametrize(
    ("overrides", "backbone", "frozen"),
    [
        (["model=linear_probe"], VIT_S, True),
        (["model=linear_probe", "backbone.freeze=false"], VIT_S, False),
        (
            ["model=linear_probe", "backbone=vit_base_patch14_dinov2"],
            "vit_base_patch14_dinov2",
            True,
        ),
        (["model=linear_probe", "debug=fast"], "tiny", True),
        (["model=linear_probe", "backbone=tiny", "backbone.freeze=false"], "tiny", False),
        (["model=fcn8s"], "resnet18", False),
        (["model=fcn8s", "backbone.freeze=true"], "resnet18", True),
        (["model=ganseg", "model@model.segmenter=linear_probe"], VIT_S, True),
    ],
)
def test_linear_probe_freezes_its_backbone_by_default(overrides, backbone, frozen, tmp_path):
    cfg = compose_config("train", overrides, tmp_path)
    encoder_cfg = cfg.model.get("segmenter", cfg.model).encoder
    assert (cfg.backbone.name, cfg.backbone.freeze, encoder_cfg.freeze) == (
        backbone,
        frozen,
        frozen,
    )


def test_models_that_run_on_the_vit_and_those_refused(tmp_path):
    def build(model: str, *extra: str):
        cfg = compose_config("train", [f"model={model}", f"backbone={VIT_S}", *extra], tmp_path)
        return build_model(cfg.model)

    # three levels at stride 14: its skips fuse without upsampling (a narrow fc6/fc7 here)
    net = build("fcn8s", "model.fc_channels=64").eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 65, 97))["out"].shape == (1, 7, 65, 97)
    with torch.device("meta"):  # refused once built: no weights drawn
        for model in ("pspnet", "deeplabv3plus"):
            with pytest.raises(InstantiationException, match=f"{VIT_S}.*cannot dilate"):
                build(model)
        with pytest.raises(InstantiationException, match=f"max-pooling indices.*{VIT_S}"):
            build("segnet")


def _train(overrides: list[str], tmp_path) -> tuple[dict, dict]:
    run_dir = tmp_path / "run"
    fast = ["debug=fast", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    lean = ["callbacks.run_plots=null", "callbacks.eval_outputs=null", "logger=none"]
    small = ["dataset.subset.train=4", "dataset.subset.val=2", "dataset.subset.test=2"]
    cfg = compose_config("train", [*fast, *lean, *small, *overrides], run_dir)
    res = train(cfg)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return res, ckpt["state_dict"]


@pytest.mark.parametrize("head", ["lin", "ms"])
def test_probe_trains_on_the_tiny_backbone(head, tmp_path):
    res, state = _train(["model=linear_probe", f"model.head={head}"], tmp_path)
    assert (res["model"], res["backbone"]) == ("linear_probe", "tiny")
    assert 0.0 <= res["metrics"]["mIoU"] <= 1.0
    # the frozen encoder's BatchNorm never updated its statistics; the head's did
    assert int(state["model.encoder.features.1.num_batches_tracked"]) == 0
    assert torch.equal(state["model.encoder.features.1.running_var"], torch.ones(8))
    assert int(state["model.head.0.num_batches_tracked"]) > 0


def test_probe_trains_on_the_vit_at_64px(tmp_path):
    """shapes' 64x64 images are padded to 70x70: a 5x5 token grid."""
    res, state = _train(["model=linear_probe", f"backbone={VIT_S}", "model.head=ms"], tmp_path)
    assert (res["model"], res["backbone"]) == ("linear_probe", VIT_S)
    assert 0.0 <= res["metrics"]["mIoU"] <= 1.0
    assert state["model.head.1.weight"].shape == (7, 1536, 1, 1)
    assert int(state["model.head.0.num_batches_tracked"]) > 0


# --- Hugging Face DINOv2 checkpoints (transformers is the oracle only) -------------------------


def _hf_dinov2(width: int, depth: int, heads: int, image_size: int):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    config = Dinov2Config(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=14,
        layerscale_value=0.5,  # not 1: a layer scale mapped to the wrong place shows
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # random, not the initial constants, so that every tensor counts
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.02)
    return model, config


def _compare(hf, encoder_forward, sizes) -> None:
    """HF's last_hidden_state on the padded image against the encoder's last map and class
    token (DINOv2's grid: HF and timm resample position embeddings differently, so every size
    here pads to the checkpoint's own grid)."""
    for size in sizes:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            maps, tokens = encoder_forward(x)
            hidden = hf(pixel_values=center_pad(x, 14)).last_hidden_state  # (B, 1 + N, C)
        b, c, h, w = maps[-1].shape
        want = hidden[:, 1:].reshape(b, h, w, c).permute(0, 3, 1, 2)
        assert (maps[-1] - want).abs().max() <= 1e-4, size
        assert (tokens[-1] - hidden[:, 0]).abs().max() <= 1e-4, size


def test_hf_dinov2_converter_on_a_small_model():
    from segbench.models.dinov2_hf import convert_dinov2

    hf, _ = _hf_dinov2(width=32, depth=2, heads=2, image_size=56)
    small = {"img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2}
    encoder = ViTEncoder(VIT_S, out_indices=[0, 1], model_args=small).eval()
    convert_dinov2(hf.state_dict(), "test").load_into(encoder.model)
    _compare(hf, encoder.forward_with_class_token, [(56, 56), (45, 50)])


def test_hf_dinov2_converter_refuses_a_missing_and_an_extra_tensor():
    from segbench.models.convert import ConversionError
    from segbench.models.dinov2_hf import convert_dinov2

    hf, _ = _hf_dinov2(width=32, depth=1, heads=2, image_size=28)
    state = hf.state_dict()
    missing = dict(state)
    del missing["encoder.layer.0.mlp.fc2.bias"]
    with torch.device("meta"):
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(
            img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=0
        )
    with pytest.raises(ConversionError, match=r"missing from the file: blocks\.0\.mlp\.fc2\.bias"):
        convert_dinov2(missing, "test").result(vit)
    extra = {**state, "encoder.layer.0.adapter.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"left over in the file: encoder\.layer\.0\.adapter"):
        convert_dinov2(extra, "test").result(vit)
    del missing["encoder.layer.0.attention.k_proj.weight"]  # one of the fused q, k, v
    with pytest.raises(ConversionError, match=r"encoder\.layer\.0\.attention\.k_proj\.weight"):
        convert_dinov2(missing, "test")


@pytest.mark.slow
def test_hf_dinov2_small_checkpoint_through_backbone_weights(monkeypatch):
    """``backbone.weights=hf:facebook/dinov2-small`` at the real size (random weights in the
    transformers 4 key layout of the hub's files, the hub reader stubbed), against
    Dinov2Model at two sizes that pad to its 37x37 grid, one not a multiple of 14."""
    import segbench.models.dinov2_hf as dinov2_hf

    hf, config = _hf_dinov2(width=384, depth=12, heads=6, image_size=518)
    old_names = {
        "q_proj": "attention.query",
        "k_proj": "attention.key",
        "v_proj": "attention.value",
    }
    on_hub = {}
    for key, value in hf.state_dict().items():
        for new, old in old_names.items():
            key = key.replace(f"attention.{new}", f"attention.{old}")
        on_hub[key.replace("attention.o_proj", "attention.output.dense")] = value
    assert "encoder.layer.0.attention.attention.query.weight" in on_hub
    monkeypatch.setattr(dinov2_hf, "read_hf_checkpoint", lambda repo: (on_hub, config.to_dict()))
    encoder = ViTEncoder(VIT_S, weights="hf:facebook/dinov2-small").eval()
    _compare(hf, encoder.forward_with_class_token, [(518, 518), (510, 507)])
    with pytest.raises(Exception, match="hidden_size=384 .*the backbone has 768"):
        with torch.device("meta"):
            ViTEncoder("vit_base_patch14_dinov2", weights="hf:facebook/dinov2-small")
