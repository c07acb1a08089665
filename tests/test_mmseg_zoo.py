"""mmsegmentation zoo checkpoints (segbench.models.mmseg_convert*) against mmseg's computation.

mmsegmentation cannot be installed here (its mmcv does not build on current PyTorch), so its
networks are re-computed from the checkpoint tensors with plain ``torch.nn.functional`` calls,
as mmseg's code computes them (``tests/fixtures/mmseg_reference.py``: ResNetV1c with
contract_dilation, FCNHead, PSPHead, ASPPHead, DepthwiseSeparableASPPHead, UPerHead, Swin,
ConvNeXt, MixVisionTransformer, SegformerHead), and the converted segbench networks must give
the same logits (max |difference| <= 1e-4, relative to the logits' scale where it exceeds 1).
The checkpoints are written by ``tests/fixtures/mmseg_keys.py`` from a reading of mmseg's code:
every key and shape of the published files, random values.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn

from segbench.checkpoints.network import build_model
from segbench.config import compose_train_config
from segbench.models.base import count_parameters
from segbench.models.convert import ConversionError, StateDictConverter
from segbench.models.deeplab import DeepLabV3Decoder, DeepLabV3PlusDecoder
from segbench.models.dilated_fcn import FCNHeadDecoder
from segbench.models.encoders import MiTEncoder
from segbench.models.mmseg_convert import (
    MMSEG_CONVERTERS,
    convert_mmseg,
    mmseg_classes,
    read_mmseg_checkpoint,
)
from segbench.models.mmseg_convert_mit import mit_backbone
from segbench.models.pspnet import PSPDecoder
from segbench.models.upernet import UPerHead
from segbench.zoo.registry import entries  # noqa: E402
from tests.conftest import compose_config
from tests.fixtures import mmseg_keys as fx
from tests.fixtures.mmseg_reference import (
    ref_aspp,
    ref_fcn,
    ref_mit,
    ref_network,
    ref_psp,
    ref_segformer_head,
    ref_sep_aspp,
    ref_uper,
    up,
)

# the mmseg entries of conf/zoo/mmseg.yaml: converter family, the network's overrides, the file
MMSEG_MODELS = {
    spec.name: {
        "family": entry.arch,
        "overrides": [*entry.overrides, f"dataset={entry.dataset}"],
        "url": entry.url,
        "dataset": entry.dataset,
        "num_classes": {"cityscapes": 19, "ade20k": 150}[entry.dataset],
        "mIoU": entry.reference["results"][0]["metrics"]["mIoU"],
        "inference": entry.inference,
    }
    for spec, entry in entries().items()
    if spec.source == "mmseg"
}
SEGFORMER = sorted(n for n, e in MMSEG_MODELS.items() if e["family"] == "segformer")
SIZES = [(64, 64), (66, 98)]  # the second no multiple of 32 (nor of 4: Swin pads)
EPS = 1e-4


# ---------------------------------------------------------------------------- the zoo table
def _build(name: str, meta_device: bool = False, extra: tuple[str, ...] = ()) -> nn.Module:
    entry = MMSEG_MODELS[name]
    cfg = compose_train_config([*entry["overrides"], *extra])
    if meta_device:
        with torch.device("meta"):
            return build_model(cfg.model).eval()
    return build_model(cfg.model).eval()


def _meta_state(name: str) -> dict[str, Tensor]:
    """The fixture's keys and shapes as meta tensors: no memory, no values."""
    return {
        k: torch.empty(s, device="meta", dtype=torch.int64 if k.endswith("_tracked") else None)
        for k, s in fx.mmseg_keys(name)
    }


def test_the_zoo_table_is_complete_and_consistent():
    assert set(fx.MMSEG_ARCH) == set(MMSEG_MODELS)
    families = {e["family"] for e in MMSEG_MODELS.values()}
    assert families == {"fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet", "segformer"}
    backbones = {o for e in MMSEG_MODELS.values() for o in e["overrides"] if "backbone=" in o}
    names = ("resnet50_v1c", "resnet101_v1c", "swin_tiny", "convnext_tiny", "mit_b0", "mit_b5")
    assert backbones == {f"backbone={b}" for b in names}
    for name, e in MMSEG_MODELS.items():
        assert e["family"] in MMSEG_CONVERTERS
        assert re.fullmatch(r"https://download\.openmmlab\.com/mmsegmentation/v0\.5/\S+/"
                            r"[\w.-]+-[0-9a-f]{8}\.pth", e["url"]), name  # fmt: skip
        assert e["dataset"] in name
        assert 30 < e["mIoU"] < 90
        # ADE20K: mmseg's keep-ratio test resize to fit 2048x512; Cityscapes at its own size
        assert (e["inference"].get("rescale") == [2048, 512]) == (e["dataset"] == "ade20k")


@pytest.mark.parametrize("name", sorted(MMSEG_MODELS))
def test_every_key_is_converted_and_fits_the_network_strictly(name):
    """On the meta device (shapes only): every fixture key consumed, the result the network's
    state dict key for key and shape for shape, and the same parameter count."""
    net = _build(name, meta_device=True)
    state = _meta_state(name)
    out = convert_mmseg(MMSEG_MODELS[name]["family"], state, name, net)
    index = [k for k in state if k.endswith("relative_position_index")]  # Swin: checked, skipped
    if MMSEG_MODELS[name]["family"] != "segformer":  # MiT's attention in_proj splits in three
        assert len(out) == len(state) - len(index)  # one to one: nothing else skipped or split
    assert set(out) == set(net.state_dict())
    net.load_state_dict(out, strict=True, assign=True)
    buffers = r"running_|_tracked|relative_position_index"
    params = sum(v.numel() for k, v in state.items() if not re.search(buffers, k))
    assert count_parameters(net) == params


def test_the_auxiliary_head_is_skipped_with_its_reason_when_the_network_has_none():
    name = "deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024"
    net = _build(name, meta_device=True, extra=("model.aux=false",))
    out = convert_mmseg("deeplabv3", _meta_state(name), name, net)
    assert not any(k.startswith("aux_head.") for k in out)
    net.load_state_dict(out, strict=True, assign=True)


def test_a_tensor_missing_or_extra_is_refused_by_name():
    name = "pspnet_r50-d8_4xb2-80k_cityscapes-512x1024"
    net = _build(name, meta_device=True)
    state = _meta_state(name)
    less = {k: v for k, v in state.items() if k != "backbone.layer3.5.bn2.running_var"}
    with pytest.raises(
        ConversionError, match=r"missing from the file: .*layer3\.5\.bn2\.running_v"
    ):
        convert_mmseg("pspnet", less, name, net)
    more = {**state, "decode_head.extra_conv.weight": torch.empty(2, device="meta")}
    with pytest.raises(ConversionError, match=r"left over in the file: decode_head\.extra_conv"):
        convert_mmseg("pspnet", more, name, net)
    name = "deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024"  # a tensor the converter takes itself
    less = {k: v for k, v in _meta_state(name).items() if k != "decode_head.bottleneck.conv.weight"}
    with pytest.raises(ConversionError, match=r"decode_head\.bottleneck\.conv\.weight"):
        convert_mmseg("deeplabv3", less, name, _build(name, meta_device=True))
    with pytest.raises(ConversionError, match="meta names 19 classes"):  # meta vs classifier
        convert_mmseg("deeplabv3", _meta_state(name.replace("4xb2-80k_cityscapes-512x1024",
                      "4xb4-80k_ade20k-512x512")), name, meta={"CLASSES": ["c"] * 19})  # fmt: skip
    with pytest.raises(ConversionError, match="no mmseg converter for family 'ocrnet'"):
        convert_mmseg("ocrnet", state, name)
    with pytest.raises(ConversionError, match="its backbone is none of ResNetV1c"):
        convert_mmseg("upernet", {"backbone.blocks.0.weight": torch.zeros(1)}, "a ViT")
    name = "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512"
    sd = fx.random_state(fx.mmseg_keys(name)[:40], 0)  # the patch embedding and first block
    convert_mmseg("upernet", sd, name)  # mmseg's relative position index is timm's
    sd["backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"] = torch.zeros(49, 49)
    with pytest.raises(ConversionError, match="not the relative position index of a 7x7 window"):
        convert_mmseg("upernet", sd, name)


# ----------------------------------------------------------------- heads against mmseg's, fp32
def _head_state(keys, seed: int = 0) -> dict[str, Tensor]:
    return fx.random_state(keys, seed)


def _load_head(family: str, sd: dict, decoder: nn.Module, k: int) -> nn.Module:
    """The converted ``decoder.*``/``head.*`` tensors loaded strictly into a decoder + head."""
    out = convert_mmseg(family, sd, f"random {family} head")
    head = nn.Conv2d(sd["decode_head.conv_seg.weight"].shape[1], k, 1)
    decoder.load_state_dict({n[8:]: v for n, v in out.items() if n.startswith("decoder.")})
    head.load_state_dict({n[5:]: v for n, v in out.items() if n.startswith("head.")})
    return nn.Sequential(decoder, head).eval()


HEAD_SIZES = [(40, 44), (9, 13)]


@pytest.mark.parametrize("size", HEAD_SIZES)
def test_aspp_head_matches_mmseg_with_the_pooling_branch_permuted(size):
    """mmseg's ASPPHead concatenates [image pool, 1x1, rates 12, 24, 36] and fuses by a 3x3
    bottleneck; segbench's ASPP has the pool last: the converter rotates the input channels."""
    cin, ch, k = 32, 8, 5
    sd = _head_state(fx.aspp_head("decode_head", cin, ch, (1, 12, 24, 36), k))
    net = _load_head("deeplabv3", sd, DeepLabV3Decoder(cin, [12, 24, 36], ch, 0.1, 3, False), k)
    x = torch.randn(2, cin, *size)
    with torch.no_grad():
        assert (net([x]) - ref_aspp([x], sd)).abs().max() <= EPS
        # unrotated, the channels would not line up: the check above has teeth
        sd_wrong = dict(sd)
        w = sd["decode_head.bottleneck.conv.weight"]
        sd_wrong["decode_head.bottleneck.conv.weight"] = torch.roll(w, ch, dims=1)
        assert (net([x]) - ref_aspp([x], sd_wrong)).abs().max() > 1e-2


@pytest.mark.parametrize("size", HEAD_SIZES)
def test_separable_aspp_head_matches_mmseg(size):
    cin, ch, c1_in, c1, k = 32, 8, 12, 4, 5
    keys = fx.sep_aspp_head("decode_head", cin, ch, (1, 12, 24, 36), c1_in, c1, k)
    sd = _head_state(keys, 1)
    decoder = DeepLabV3PlusDecoder(cin, c1_in, 0, [12, 24, 36], ch, c1, 0.1, True, 3)
    net = _load_head("deeplabv3plus", sd, decoder, k)
    low, high = torch.randn(2, c1_in, 2 * size[0], 2 * size[1]), torch.randn(2, cin, *size)
    with torch.no_grad():
        assert (net([low, high]) - ref_sep_aspp([low, high], sd)).abs().max() <= EPS


@pytest.mark.parametrize("size", HEAD_SIZES)
def test_fcn_head_with_concat_input_matches_mmseg(size):
    cin, ch, k = 24, 8, 5
    sd = _head_state(fx.fcn_head("decode_head", cin, ch, 2, True, k), 2)
    net = _load_head("fcn", sd, FCNHeadDecoder(cin, ch, 2, True, 3, 0.1), k)
    x = torch.randn(2, cin, *size)
    with torch.no_grad():
        assert (net([x]) - ref_fcn([x], sd)).abs().max() <= EPS


@pytest.mark.parametrize("size", HEAD_SIZES)
def test_psp_and_uper_heads_match_mmseg(size):
    """PSPHead's branches are ``channels`` wide, segbench's ``in_channels / len(bins)``: equal
    for mmseg's zoo (2048 / 4 = 512) and here (32 / 4 = 8)."""
    k = 5
    sd = _head_state(fx.psp_head("decode_head", 32, 8, (1, 2, 3, 6), k), 3)
    net = _load_head("pspnet", sd, PSPDecoder(32, [1, 2, 3, 6], 8, 0.1), k)
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        assert (net([x]) - ref_psp([x], sd)).abs().max() <= EPS
    cins = (8, 12, 16, 20)
    sd = _head_state(fx.uper_head("decode_head", cins, 8, (1, 2, 3, 6), k), 4)
    net = _load_head("upernet", sd, UPerHead(list(cins), 8, [1, 2, 3, 6], 0.1), k)
    ins = [torch.randn(2, c, size[0] * 4 // 2**i, size[1] * 4 // 2**i) for i, c in enumerate(cins)]
    with torch.no_grad():
        assert (net(ins) - ref_uper(ins, sd)).abs().max() <= EPS


# ------------------------------------------------- whole networks: a file, as mmseg writes it
def _check_network(name: str, tmp_path) -> None:
    path = fx.make_mmseg_checkpoint(name, tmp_path / "model.pth", seed=0)
    state, meta = read_mmseg_checkpoint(path)
    assert len(mmseg_classes(meta)) == MMSEG_MODELS[name]["num_classes"]
    net = _build(name)
    net.load_state_dict(convert_mmseg(MMSEG_MODELS[name]["family"], state, name, net, meta))
    torch.manual_seed(0)
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ours, ref = net(x)["out"], ref_network(name, state, x)
        assert ours.shape == ref.shape == (1, MMSEG_MODELS[name]["num_classes"], *size)
        scale = ref.abs().max()
        assert 0.1 < scale < 1e3  # the random weights keep the logits O(1)
        assert (ours - ref).abs().max() <= EPS * max(1.0, float(scale)), (name, size)


def test_deeplabv3plus_r50_file_converts_and_computes_mmsegs_logits(tmp_path):
    """The whole network: ResNetV1c (deep stem, contract_dilation), the separable ASPP head
    with its stride-4 skip, read from a .pth file as mmseg saves one."""
    _check_network("deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024", tmp_path)


@pytest.mark.slow  # a ResNet-50 or -101 network each, ~5-10 s
@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n, e in MMSEG_MODELS.items()
        # SegFormer: test_segformer_network_computes_mmsegs_logits
        if n != "deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024" and e["family"] != "segformer"
    ),
)
def test_every_zoo_network_computes_mmsegs_logits(name, tmp_path):
    _check_network(name, tmp_path)


# ------------------------------------------------------------------------------------ SegFormer
@pytest.mark.parametrize("variant", ["b0", pytest.param("b5", marks=pytest.mark.slow)])
def test_mit_backbone_converts_and_matches_mmsegs_mix_vision_transformer(variant):
    """mmseg's MiT onto segbench's MiTEncoder: q/k/v split out of MultiheadAttention's
    in_proj, the Mix-FFN 1x1 convs as linears. mmseg's LayerNorms have eps 1e-6, segbench's
    MiT 1e-5 (a segbench option to come): the reference runs at 1e-5 to check the mapping."""
    name = f"segformer_mit-{variant}_8xb2-160k_ade20k-512x512"
    sd = fx.random_state([ks for ks in fx.mmseg_keys(name) if ks[0].startswith("backbone.")], 5)
    converter = StateDictConverter(sd, name)
    mit_backbone(converter, "backbone.", "")
    encoder = MiTEncoder(f"mit_{variant}").eval()
    encoder.load_state_dict(converter.result(encoder), strict=True)
    layers = fx._MIT[variant][1]
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ours, ref = encoder(x), ref_mit(x, sd, layers, eps=1e-5)
        for a, b in zip(ours, ref, strict=True):
            assert (a - b).abs().max() <= EPS * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("name", SEGFORMER)
def test_segformer_checkpoints_convert(name):
    """mmseg's SegformerHead (1x1 conv-BN-ReLU per level: model.proj=conv) and MiT (LayerNorm
    eps 1e-6) onto the network of the entry's overrides, every key consumed."""
    net = _build(name, meta_device=True)
    out = convert_mmseg("segformer", _meta_state(name), name, net)
    assert any(k.startswith("decoder.proj.0.0.") for k in out)
    net.load_state_dict(out, assign=True)
    assert net.encoder.stages[0].embed.norm.eps == net.encoder.stages[0].norm.eps == 1e-6


@pytest.mark.parametrize("name", ["segformer_mit-b0_8xb2-160k_ade20k-512x512"])
def test_segformer_network_computes_mmsegs_logits(name):
    """The whole SegFormer against mmseg's computation (MiT at mmseg's LayerNorm eps 1e-6,
    which the entry's backbone.block_norm_eps and embed_norm_eps set)."""
    sd = fx.random_state(fx.mmseg_keys(name), 7)
    net = _build(name)
    net.load_state_dict(convert_mmseg("segformer", sd, name, net))
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = up(ref_segformer_head(ref_mit(x, sd, (2, 2, 2, 2), 1e-6), sd), size)
            assert (net(x)["out"] - ref).abs().max() <= EPS * max(1.0, float(ref.abs().max()))


def test_segformer_head_converter_reverses_the_fusion_order():
    """mmseg concatenates the levels finest first, segbench coarsest first: the fusing conv's
    input blocks come out reversed."""
    k, ch, cins = 3, 4, (8, 16, 24, 32)
    sd = _head_state(fx.segformer_head("decode_head", cins, ch, k), 6)
    out = convert_mmseg("segformer", sd, "random SegformerHead")
    w = sd["decode_head.fusion_conv.conv.weight"]
    assert torch.equal(out["decoder.fuse.0.weight"], torch.cat(w.split(ch, 1)[::-1], 1))
    assert torch.equal(out["decoder.proj.2.0.weight"], sd["decode_head.convs.2.conv.weight"])
    ins = [torch.randn(1, c, 16 // 2**i, 20 // 2**i) for i, c in enumerate(cins)]
    assert ref_segformer_head(ins, sd).shape == (1, k, 16, 20)


# ------------------------------------------------------------------------------ reading a file
class NotPlain:  # a class a checkpoint may pickle (mmengine's HistoryBuffer, say)
    def __init__(self) -> None:
        self.value = 1


def test_reading_checkpoints_plain_numpy_and_refused(tmp_path):
    import numpy as np

    name = "fcn_r50-d8_4xb4-80k_ade20k-512x512"
    sd = {"decode_head.conv_seg.bias": torch.zeros(150)}
    meta = {"CLASSES": ("wall",) * 150, "seed": np.int64(7), "best": np.float64(0.5)}
    torch.save({"meta": meta, "state_dict": sd}, tmp_path / "np.pth")
    state, got = read_mmseg_checkpoint(tmp_path / "np.pth")
    assert got["seed"] == 7 and type(got["seed"]) is int and type(got["best"]) is float
    assert list(state) == list(sd) and len(mmseg_classes(got)) == 150
    assert mmseg_classes({"dataset_meta": {"classes": ["a", "b"]}}) == ["a", "b"]  # mmseg 1.x
    torch.save({"meta": {}, "state_dict": sd, "message_hub": NotPlain()}, tmp_path / "obj.pth")
    with pytest.raises(ConversionError, match=r"weights_only=True.*NotPlain"):
        read_mmseg_checkpoint(tmp_path / "obj.pth")
    torch.save({"model": sd}, tmp_path / "other.pth")
    with pytest.raises(ConversionError, match="no 'state_dict' of tensors"):
        read_mmseg_checkpoint(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match=name[:0] + "could not be read|not a PyTorch"):
        read_mmseg_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        read_mmseg_checkpoint(tmp_path / "absent.pth")


# ------------------------------------------------------------- the DeepLab options mmseg needs
@pytest.mark.parametrize(
    "overrides",
    [
        ["model=deeplabv3", "model.project_kernel=3", "model.head_conv=false", "model.aux=true"],
        ["model=deeplabv3plus", "model.project_kernel=3", "model.aux=true"],
    ],
)
def test_mmseg_deeplab_options_train_under_debug_fast(overrides, tmp_path):
    cfg = compose_config("train", ["debug=fast", *overrides], tmp_path)
    net = build_model(cfg.model).train()
    project = net.decoder.aspp.project[0]
    assert project[0].kernel_size == (3, 3)  # mmseg's 3x3 bottleneck (v3+: its depthwise part)
    if cfg.model.name == "deeplabv3":
        assert isinstance(net.decoder.conv, nn.Identity)
    out = net(torch.randn(2, 3, 32, 48))
    sum(v.logsumexp(1).mean() for v in out.values()).backward()
    assert set(out) == {"out", "aux"}
    assert all(p.grad is not None for p in net.decoder.parameters())


def test_deeplab_defaults_are_unchanged(tmp_path):
    cfg = compose_config("train", ["debug=fast", "model=deeplabv3"], tmp_path)
    net = build_model(cfg.model)
    keys = net.state_dict()
    assert keys["decoder.aspp.project.0.0.weight"].shape[-2:] == (1, 1)
    assert "decoder.conv.0.weight" in keys  # the 3x3 conv between the ASPP and the classifier


# ---------------------------------------------------- evaluate.py ckpt=mmseg:<name>, end to end
@pytest.mark.slow  # 20 s; the fast suite loads an entry's inference in test_smp_zoo.py
def test_evaluate_an_mmseg_checkpoint_end_to_end(tmp_path, capsys):
    """``evaluate.py ckpt=mmseg:segformer_mit-b0_8xb2-160k_ade20k-512x512 dataset=ade20k``: the
    file (as mmseg saves one, random weights) read from the torch hub cache under its published
    name, each image predicted at mmseg's test size (rescaled to fit 2048x512), the scores
    resized back to the label's size; the mIoU is the one of mmseg's computation of the same
    network (tests/fixtures/mmseg_reference.py) at that size, and repro-check compares it with
    the published 37.41."""
    import json

    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from segbench.leaderboard.repro import main as repro_check
    from segbench.zoo.registry import find_entry
    from segbench.zoo.spec import ZooSpec
    from tests.conftest import run_cli
    from tests.fixtures.ade20k import write_ade20k

    name = "segformer_mit-b0_8xb2-160k_ade20k-512x512"
    home = tmp_path / "torch-home"
    file_name = find_entry(ZooSpec("mmseg", name)).file_name
    (home / "hub" / "checkpoints").mkdir(parents=True)
    path = fx.make_mmseg_checkpoint(name, home / "hub" / "checkpoints" / file_name, seed=3)
    ade = write_ade20k(tmp_path / "ADEChallengeData2016", n_train=1, n_val=1, size=(32, 40)).root
    run_dir = tmp_path / "eval"
    run_cli(
        "evaluate.py",
        f"ckpt=mmseg:{name}",
        "dataset=ade20k",
        f"data_root={tmp_path}",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"TORCH_HOME": str(home)},
    )
    record = json.loads((run_dir / "results.json").read_text())
    assert record["eval_mode"] == "resize2048x512"
    state, _ = read_mmseg_checkpoint(path)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    confusion = np.zeros((150, 150), dtype=np.int64)
    for image_path in sorted((ade / "images" / "validation").glob("*.jpg")):
        rgb = np.asarray(Image.open(image_path).convert("RGB"))
        raw = np.asarray(Image.open(ade / "annotations" / "validation" / f"{image_path.stem}.png"))
        label = raw.astype(np.int64) - 1  # reduce_zero_label: 0 ("other") -> ignored
        x = ((torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std)[None]
        h, w = x.shape[-2:]
        factor = min(2048 / max(h, w), 512 / min(h, w))
        size = (int(h * factor + 0.5), int(w * factor + 0.5))
        scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            logits = up(ref_segformer_head(ref_mit(scaled, state, (2, 2, 2, 2), 1e-6), state), size)
        pred = up(logits, (h, w)).argmax(1)[0].numpy()
        keep = label >= 0
        confusion += np.bincount(label[keep] * 150 + pred[keep], minlength=150**2).reshape(150, 150)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = confusion.sum(1) > 0
    assert record["metrics"]["mIoU"] == pytest.approx((inter[present] / union[present]).mean())
    capsys.readouterr()
    assert repro_check([str(run_dir)]) == 1  # random weights: far below the published figure
    out = capsys.readouterr().out
    assert "| 37.41 |" in out and "below" in out
