"""``ckpt=<source>:<name>``: published checkpoints of other libraries evaluated through the
same commands as segbench's own, with the publisher's protocol and figures.

The end-to-end test is the issue's: a torchvision VOC-labelled checkpoint (random weights,
saved where torchvision's own download would put it) evaluated by ``evaluate.py`` on the VOC
fixture scores what a direct computation with torchvision's model, transforms and PIL scores;
``results.json`` carries the published figure and ``repro-check`` gives its verdict.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from segbench.zoo.files import ZooFileError, cache_path, hash_prefix, sha256
from segbench.zoo.registry import ZooEntryError, entries, find_entry
from segbench.zoo.spec import ZooSpec, parse_spec
from tests.conftest import run_cli
from tests.fixtures.voc import write_voc

tvseg = pytest.importorskip("torchvision.models.segmentation")

VOC_TRAIN, VOC_VAL = ["2007_000032"], ["2007_000033", "2007_000042"]


def test_spec_parsing():
    assert parse_spec("torchvision:fcn_resnet50") == ZooSpec("torchvision", "fcn_resnet50")
    assert parse_spec("mmseg:/a/b-1234abcd.pth") == ZooSpec("mmseg", "/a/b-1234abcd.pth")
    assert parse_spec("outputs/run/checkpoints/best.ckpt") is None
    assert parse_spec("C:/runs/best.ckpt") is None  # a drive letter is a path
    with pytest.raises(ValueError, match="no name after 'smp:'"):
        parse_spec("smp:")


def test_every_entry_is_well_formed_and_its_classes_are_its_datasets():
    """Every conf/zoo entry: its reference block checks, its classes map onto its dataset's,
    its network composes, and (where the publisher states it) has the publisher's parameter
    count, counted on the segbench network."""
    from segbench.config import compose_train_config
    from segbench.zoo.cli import _measured_params
    from segbench.zoo.load import _check_classes

    table = entries()
    assert {s.source for s in table} == {"torchvision", "mmseg", "smp"}
    datasets = {
        name: compose_train_config([f"dataset={name}"]).dataset
        for name in {e.dataset for e in table.values()}
    }
    for spec, entry in table.items():
        _check_classes(entry, datasets[entry.dataset], spec)
        if entry.reference is not None:
            assert entry.reference["experiment"] == str(spec)
        # the networks of the mmseg entries are built in tests/test_mmseg_zoo.py
        if "params" in entry.published or spec.source == "smp":
            params = _measured_params(entry)
            assert params == entry.published.get("params", params), spec


def test_zoo_list_names_every_entry(capsys):
    from segbench.zoo.cli import main

    assert main(["list", "--source", "torchvision"]) == 0
    out = capsys.readouterr().out
    for spec in entries():
        if spec.source == "torchvision":
            assert str(spec) in out
    assert "mIoU 60.5 (coco_voc_labels val)" in out  # fcn_resnet50's published figure


def _torchvision_model(arch: str, seed: int = 0):
    """torchvision's ``arch`` (21 VOC classes, aux head as published), random weights and
    random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    aux = {} if arch.startswith("lraspp") else {"aux_loss": True}  # LR-ASPP has none
    model = getattr(tvseg, arch)(weights=None, weights_backbone=None, num_classes=21, **aux)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _publish(arch: str, torch_home: Path) -> torch.nn.Module:
    """torchvision's ``arch`` saved into the torch hub cache under its published file name,
    where ``load_state_dict_from_url`` would have put it."""
    model = _torchvision_model(arch)
    path = torch_home / "hub" / "checkpoints" / find_entry(ZooSpec("torchvision", arch)).file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def _direct_miou(model, voc_root: Path, ids: list[str]) -> tuple[float, np.ndarray]:
    """mIoU of ``model`` on the fixture's ``ids`` computed as torchvision's reference scripts
    do: PIL images resized to a 520-pixel short side (PIL bilinear; labels PIL nearest),
    ``weights.transforms()``' normalisation, argmax, a confusion matrix without void (255)."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    confusion = np.zeros((21, 21), dtype=np.int64)
    for image_id in ids:
        image = Image.open(voc_root / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
        target = Image.open(voc_root / "SegmentationClass" / f"{image_id}.png")
        image, target = (
            TF.resize(image, [520]),
            TF.resize(target, [520], TF.InterpolationMode.NEAREST),
        )
        x = TF.normalize(TF.to_tensor(image), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        with torch.no_grad():
            pred = model(x[None])["out"].argmax(1)[0].numpy()
        label = np.asarray(target, dtype=np.int64)
        keep = label != 255
        confusion += np.bincount(label[keep] * 21 + pred[keep], minlength=21 * 21).reshape(21, 21)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = confusion.sum(1) > 0  # classes in the labels (segbench's mIoU convention)
    return float((inter[present] / union[present]).mean()), confusion


def test_evaluate_torchvision_checkpoint_matches_torchvision_protocol(tmp_path, torch_home, capsys):
    """evaluate.py ckpt=torchvision:<arch> dataset=voc on the VOC fixture scores what
    torchvision's own model and transforms score; results.json carries the published figure;
    repro-check compares nothing (the figure is on COCO-with-VOC-labels) and says so."""
    arch = "lraspp_mobilenet_v3_large"  # the cheapest at 520 px; fcn_resnet50: the slow test
    voc = write_voc(tmp_path / "VOCdevkit" / "VOC2012", VOC_TRAIN, VOC_VAL)
    model = _publish(arch, torch_home)
    run_dir = tmp_path / "eval"
    env = {"TORCH_HOME": str(torch_home)}
    run_cli(
        "evaluate.py",
        f"ckpt=torchvision:{arch}",
        "dataset=voc",
        f"data_root={tmp_path}",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=env,
    )
    record = json.loads((run_dir / "results.json").read_text())
    expected, _ = _direct_miou(model, voc, VOC_VAL)
    assert record["metrics"]["mIoU"] == pytest.approx(expected, abs=1e-9)
    assert record["config"]["ckpt"] == f"torchvision:{arch}"
    assert record["config"]["dataset"]["eval_transform"]["resize_short"] == 520
    published = record["config"]["reference"]["results"][0]
    assert published["metrics"]["mIoU"] == 57.9 and published["dataset"] == "coco_voc_labels"
    from segbench.leaderboard.repro import main as repro_check

    assert repro_check([str(run_dir)]) == 1  # nothing compared: its figure is on COCO
    out = capsys.readouterr().out
    assert "other dataset (coco_voc_labels)" in out and "| 57.90 |" in out
    assert "nothing compared" in out


@pytest.mark.slow
def test_evaluate_fcn_resnet50_end_to_end(tmp_path, torch_home):
    """The issue's command as written: evaluate.py ckpt=torchvision:fcn_resnet50 dataset=voc."""
    voc = write_voc(tmp_path / "VOCdevkit" / "VOC2012", VOC_TRAIN, VOC_VAL[:1])
    model = _publish("fcn_resnet50", torch_home)
    run_dir = tmp_path / "eval"
    run_cli(
        "evaluate.py",
        "ckpt=torchvision:fcn_resnet50",
        "dataset=voc",
        f"data_root={tmp_path}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"TORCH_HOME": str(torch_home)},
    )
    record = json.loads((run_dir / "results.json").read_text())
    assert record["metrics"]["mIoU"] == pytest.approx(_direct_miou(model, voc, VOC_VAL[:1])[0])


def test_predictor_takes_a_published_checkpoint(torch_home):
    """segbench predict / export / serve load through the same path: the Predictor of
    ckpt=torchvision:... predicts at the image's size with torchvision's logits."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    from segbench.deploy.predictor import Predictor, checkpoint_stem, run_dir_of

    arch = "lraspp_mobilenet_v3_large"
    model = _publish(arch, torch_home)
    predictor = Predictor(f"torchvision:{arch}", ["trainer.accelerator=cpu"], device="cpu")
    image = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    scores = predictor.logits(predictor.tensor(image)[None])["out"]
    x = TF.normalize(
        TF.to_tensor(TF.resize(Image.fromarray(image), [520])),
        [0.485, 0.456, 0.406],
        [0.229, 0.224, 0.225],
    )
    with torch.no_grad():
        expected = model(x[None])["out"]
    assert scores.shape == expected.shape == (1, 21, 520, 693)
    assert (scores - expected).abs().max() <= 1e-4
    assert predictor.predict(image).classes.shape == (30, 40)
    assert predictor.info()["figures"] is None
    assert run_dir_of(f"torchvision:{arch}") == Path("outputs/zoo/torchvision_" + arch)
    assert checkpoint_stem(f"torchvision:{arch}") == f"torchvision_{arch}"


def test_missing_file_offline_names_the_fetch_command(torch_home, monkeypatch):
    from segbench.checkpoints import evaluation_config
    from segbench.config import compose
    from segbench.models.pretrained import PretrainedUnavailable

    monkeypatch.setenv("SEGBENCH_ZOO_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    cfg = compose("evaluate", ["ckpt=torchvision:fcn_resnet50", "dataset=voc"])
    with pytest.raises(PretrainedUnavailable, match="segbench zoo fetch") as err:
        evaluation_config(cfg)
    assert "fcn_resnet50_coco-1167a1af.pth" in str(err.value)


def test_unknown_names_are_refused_with_the_known_ones():
    from segbench.checkpoints import evaluation_config
    from segbench.config import compose

    cfg = compose("evaluate", ["ckpt=torchvision:fcn_resnet18"])
    with pytest.raises(ZooEntryError, match="fcn_resnet50.*lraspp_mobilenet_v3_large"):
        evaluation_config(cfg)


def test_a_local_file_with_the_wrong_hash_is_refused(tmp_path):
    """A file given by path must be the publisher's: its SHA-256 starts with the prefix its
    published name carries."""
    from segbench.checkpoints import evaluation_config
    from segbench.config import compose

    name = find_entry(ZooSpec("torchvision", "fcn_resnet50")).file_name
    path = tmp_path / name
    torch.save({"x": torch.zeros(1)}, path)
    cfg = compose("evaluate", [f"ckpt=torchvision:{path}"])
    with pytest.raises(ZooFileError, match="1167a1af"):
        evaluation_config(cfg)
    renamed = tmp_path / "my_fcn.pth"
    path.rename(renamed)
    with pytest.raises(ZooEntryError, match="not a file name"):
        evaluation_config(compose("evaluate", [f"ckpt=torchvision:{renamed}"]))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines on stderr
        pass


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _lab_entry(zoo: Path, file_name: str) -> None:
    """A lab's own zoo file (SEGBENCH_ZOO_PATH) listing one torchvision-layout checkpoint."""
    zoo.mkdir(parents=True, exist_ok=True)
    (zoo / "torchvision.yaml").write_text(
        "lab_lraspp:\n"
        f"  url: https://models.example.org/lab/{file_name}\n"
        "  arch: lraspp_mobilenet_v3_large\n"
        "  overrides: [model=lraspp, backbone=mobilenetv3_large]\n"
        "  dataset: voc\n"
    )


def test_fetch_downloads_checks_the_hash_and_refuses_a_bad_file(
    tmp_path, torch_home, local_server, monkeypatch
):
    """segbench zoo fetch through a mirror (a local server): the file is downloaded into the
    torch hub cache and its SHA-256 prefix checked; a file whose content is not the published
    one is refused and not left in the cache."""
    from segbench.zoo.cli import main

    www, url = local_server
    payload = tmp_path / "payload.pth"
    torch.save(_torchvision_model("lraspp_mobilenet_v3_large").state_dict(), payload)
    digest = sha256(payload)
    good = f"lab_lraspp-{digest[:8]}.pth"
    (www / "lab").mkdir()
    (www / "lab" / good).write_bytes(payload.read_bytes())
    _lab_entry(tmp_path / "zoo", good)
    monkeypatch.setenv("SEGBENCH_ZOO_PATH", str(tmp_path / "zoo"))
    monkeypatch.setenv("SEGBENCH_ZOO_MIRROR", url)
    assert hash_prefix(good) == digest[:8]
    assert main(["fetch", "torchvision:lab_lraspp"]) == 0
    assert cache_path(good).read_bytes() == payload.read_bytes()

    bad = f"lab_lraspp-{'0' * 8}.pth"  # the published name says another digest
    (www / "lab" / bad).write_bytes(payload.read_bytes())
    _lab_entry(tmp_path / "zoo", bad)
    assert main(["fetch", "torchvision:lab_lraspp"]) == 1
    assert not cache_path(bad).exists()


def test_lab_entries_evaluate_like_the_published_ones(tmp_path, torch_home, monkeypatch):
    """An entry of SEGBENCH_ZOO_PATH is a ckpt= name too (no reference: no published figure)."""
    from segbench.checkpoints import evaluation_config
    from segbench.config import compose

    model = _torchvision_model("lraspp_mobilenet_v3_large")
    name = "lab_lraspp-00000000.pth"
    path = cache_path(name)
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    _lab_entry(tmp_path / "zoo", name)
    monkeypatch.setenv("SEGBENCH_ZOO_PATH", str(tmp_path / "zoo"))
    run_cfg, state = evaluation_config(compose("evaluate", ["ckpt=torchvision:lab_lraspp"]))
    assert run_cfg.reference is None and run_cfg.zoo.name == "lab_lraspp"
    assert all(k.startswith("model.") for k in state)


def test_resize_short_is_torchvisions_resize_of_pil_images():
    """dataset.eval_transform.resize_short: the same pixels as torchvision's functional resize
    of PIL images (the image bilinear, the label nearest), sizes as torchvision computes them."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    from segbench.data.transforms import SegTransform, short_side_size

    rng = np.random.default_rng(0)
    for h, w in [(24, 32), (45, 30), (37, 37)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, 21, (h, w), dtype=np.uint8)
        out_image, out_mask = SegTransform(resize_short=52).augment(image, mask)
        want_image = np.asarray(TF.resize(Image.fromarray(image), [52]))
        want_mask = np.asarray(TF.resize(Image.fromarray(mask), [52], TF.InterpolationMode.NEAREST))
        assert out_image.shape == want_image.shape and (out_image == want_image).all()
        assert (out_mask == want_mask).all()
        assert short_side_size(h, w, 52) == want_image.shape[:2]
    with pytest.raises(ValueError, match="resize_short must be a positive number"):
        SegTransform(resize_short=0)


def test_inference_rescale_is_mmsegs_keep_ratio_resize():
    """inference.rescale=[2048, 512]: predicted at the keep-ratio size fitting 2048 x 512
    (mmcv's rescale_size: the factor min(2048 / long, 512 / short), rounded half up), the
    scores returned at the input size."""
    from segbench.inference import Inference

    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return {"out": torch.zeros(x.shape[0], 3, *x.shape[-2:])}

    inference = Inference(rescale=[2048, 512])
    out = inference(model, torch.zeros(1, 3, 256, 341))
    assert seen == [(512, 682)] and out["out"].shape[-2:] == (256, 341)
    assert inference.rescaled(1024, 2048) == (512, 1024)
    assert Inference(rescale=[2048, 1024]).rescaled(1024, 2048) == (1024, 2048)  # Cityscapes
    assert inference.label == "resize2048x512" and not inference.plain
    assert inference.single_scale().rescale == (2048, 512)
    aligned = Inference(rescale=[2048, 512], rescale_divisor=32)  # SegFormer's AlignedResize
    assert aligned.rescaled(256, 341) == (512, 704) and aligned.single_scale().rescale_divisor == 32
    with pytest.raises(ValueError, match="rescale_divisor must be a positive integer"):
        Inference(rescale_divisor=32)
    ms = Inference(scales=[0.5, 1.0], flip=True, rescale=[2048, 512])
    seen.clear()
    ms(model, torch.zeros(1, 3, 256, 341))
    assert seen == [(256, 341), (256, 341), (512, 682), (512, 682)]


def test_an_unlisted_hf_repository_with_its_network_named(tmp_path, monkeypatch):
    """ckpt=hf:<repo> model=segformer backbone=mit_b0 dataset=ade20k: a transformers
    SegFormer (random weights, in a hub cache as the client writes it) predicts through
    segbench's loading path with transformers' logits."""
    import torch.nn.functional as F

    transformers = pytest.importorskip("transformers")
    from segbench.checkpoints.loader import load_model

    repo, commit = "lab/segformer-b0-ade", "0123456789abcdef0123456789abcdef01234567"
    torch.manual_seed(0)
    hf = transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(num_labels=150)
    ).eval()
    folder = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    hf.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(
        f"hf:{repo}", ["model=segformer", "backbone=mit_b0", "dataset=ade20k"], device="cpu"
    )
    assert loaded.run_cfg.reference is None and loaded.num_classes == 150
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        theirs = F.interpolate(hf(pixel_values=x).logits, size=(72, 100), mode="bilinear")
        assert (loaded.network(x)["out"] - theirs).abs().max() <= 1e-4
    with pytest.raises(ZooEntryError, match="name the network it holds"):
        load_model(f"hf:{repo}", ["dataset=ade20k"], device="cpu")


def test_the_published_checkpoints_page_is_the_registrys_table():
    """docs/results/published-checkpoints.md holds `segbench zoo list --markdown` as it is."""
    from segbench.zoo.cli import markdown_table

    page = (
        Path(__file__).resolve().parents[1] / "docs/results/published-checkpoints.md"
    ).read_text()
    assert markdown_table() in page, "regenerate: uv run segbench zoo list --markdown"
    assert page.count("| |\n") + page.rstrip().endswith("| |") >= len(entries())  # none measured
