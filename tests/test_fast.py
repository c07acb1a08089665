"""Speed options: they change no figure beyond rounding (channels_last, class_map, the cache),
bf16 stays within a stated tolerance, and ``segbench bench`` runs and writes its JSON."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segbench.engine.build import build_model, validation_inference
from segbench.engine.resume import config_differences
from segbench.inference import Inference
from segbench.inference.fast import check_fast, fast_precision, prepare_batch, prepare_model
from segbench.metrics import class_map
from tests.conftest import compose_config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_class_map_is_argmax_ties_and_nan_included(dtype):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (3, 11, 17, 23), generator=g).to(dtype)  # many ties
    scores[0, 4, 2, 2] = float("nan")
    scores[1, :, 5, 5] = float("nan")
    expected = scores.argmax(1)
    assert torch.equal(class_map(scores), expected)
    assert torch.equal(class_map(scores.contiguous(memory_format=torch.channels_last)), expected)


def test_fast_options_are_checked_by_name():
    assert check_fast(None) == {"channels_last": False, "compile": False}
    with pytest.raises(ValueError, match=r"fast\.chanels_last: unknown .*fast\.channels_last"):
        check_fast({"chanels_last": True})
    with pytest.raises(ValueError, match=r"fast\.compile='yes': expected true or false"):
        check_fast({"compile": "yes"})
    assert fast_precision("cpu") in ("bf16-mixed", "32-true")


def test_trainer_fast_resolves_a_precision_for_this_machine(tmp_path):
    cfg = compose_config("train", ["trainer=fast", "trainer.max_epochs=3"], tmp_path)
    assert cfg.trainer.max_epochs == 3 and cfg.fast.channels_last is True
    assert cfg.trainer.precision == fast_precision(cfg.trainer.accelerator)
    forced = compose_config("train", ["trainer=fast", "trainer.precision=bf16-mixed"], tmp_path)
    assert forced.trainer.precision == "bf16-mixed"
    assert compose_config("evaluate", ["ckpt=x", "trainer=fast"], tmp_path).fast.channels_last


def _tiny(tmp_path, *overrides):
    cfg = compose_config("train", ["debug=fast", *overrides], tmp_path)
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


def test_channels_last_and_bf16_predict_as_fp32_within_tolerance(tmp_path):
    model = _tiny(tmp_path)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)["out"]
        fast = prepare_model(_tiny(tmp_path), {"channels_last": True})
        nhwc = fast(prepare_batch(x, {"channels_last": True}))["out"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)["out"].float()
    conv = next(
        m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    # NHWC: the same arithmetic in another order, float32 rounding only
    torch.testing.assert_close(nhwc, reference, rtol=1e-4, atol=1e-4)
    assert (class_map(nhwc) == class_map(reference)).float().mean() > 0.999
    # bf16 autocast: 8 mantissa bits; the stated tolerance is 5 % of the logits' spread, and
    # the class of >= 97 % of the pixels unchanged (pixels near a tie may flip)
    spread = (reference.max() - reference.min()).item()
    assert (half - reference).abs().max().item() < 0.05 * spread
    assert (class_map(half) == class_map(reference)).float().mean() > 0.97


def test_channels_last_changes_no_figure_of_an_evaluation(trained_run, tmp_path):
    from segbench.engine.run import evaluate

    ckpt = json.loads((trained_run / "results.json").read_text())["checkpoint"]
    figures = {}
    for flag in ("false", "true"):
        out = tmp_path / f"eval-{flag}"
        cfg = compose_config("evaluate", [f"ckpt={ckpt}", f"fast.channels_last={flag}"], out)
        res = evaluate(cfg)
        assert res["config"]["fast"]["channels_last"] is (flag == "true")
        figures[flag] = (res["metrics"], res["confusion_matrix"])
    assert figures["true"] == figures["false"]


def test_validation_predicts_as_the_single_scale_part_of_inference():
    assert validation_inference(Inference(), None).plain  # one plain pass
    assert validation_inference(Inference(scales=[0.5, 1.0, 1.5], flip=True), None).plain
    half = validation_inference(Inference(scales=[0.5]), None)
    assert half.scales == (0.5,) and not half.flip
    slide = Inference("slide", crop=[32, 32], stride=[16, 16], scales=[0.75, 1.25], flip=True)
    picked = validation_inference(slide, {"mode": None, "scales": None})
    assert (picked.mode, picked.crop, picked.scales, picked.flip) == (
        "slide",
        (32, 32),
        (0.75,),
        False,
    )
    # another mode drops the windows; the scale nearest 1.0 (the smaller one on a tie) stays
    whole = validation_inference(slide, {"mode": "whole"})
    assert (whole.mode, whole.crop, whole.scales) == ("whole", None, (0.75,))
    assert validation_inference(Inference(scales=[0.5]), {"scales": [1.0]}).plain


def test_single_scale_inference_predicts_at_that_scale():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return {"out": torch.zeros(x.shape[0], 3, *x.shape[-2:])}

    out = Inference(scales=[0.5])(Recorder(), torch.zeros(2, 3, 40, 60))
    assert seen == [(20, 30)] and out["out"].shape == (2, 3, 40, 60)


def test_val_inference_keys_are_checked():
    with pytest.raises(ValueError, match=r"val_inference\.scale: unknown key"):
        validation_inference(Inference(), {"scale": [0.5]})
    with pytest.raises(ValueError, match=r"val_inference\.mode must be one of"):
        validation_inference(Inference(), {"mode": "tiles"})


def test_runs_checkpointed_before_the_new_keys_still_resume(tmp_path):
    new = OmegaConf.to_container(compose_config("train", ["debug=fast"], tmp_path), resolve=True)
    old = json.loads(json.dumps(new))
    for key in ("fast", "val_inference"):
        old.pop(key)
    old["dataset"].pop("cache")
    assert config_differences(old, new) == []
    new["fast"]["channels_last"] = True
    assert [d[0] for d in config_differences(old, new)] == ["fast.channels_last"]


FOLDER = ["dataset=folder", "dataset.num_classes=3", "dataset.class_names=[a,b,c]"]


def _samples(dm, split):
    ds = dm.dataset(split)
    return [(s["image"], s["mask"], s["name"]) for s in (ds[i] for i in range(len(ds)))]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_cache_holds_what_the_files_decode_to(tmp_path, workers):
    from segbench.engine.build import build_datamodule
    from tests.conftest import make_folder_dataset

    root = make_folder_dataset(tmp_path / "data", n=6)
    base = [*FOLDER, f"dataset.source.root={root}", f"dataset.num_workers={workers}"]
    loaded, modules = {}, {}
    for mode in ("none", "ram"):
        cfg = compose_config("train", [*base, f"dataset.cache={mode}"], tmp_path)
        dm = build_datamodule(cfg.dataset, ["train", "val"])
        dm.dataset("train")
        loaded[mode] = _samples(dm, "val")  # no augmentation: the samples as decoded
        modules[mode] = dm
        assert ("train" in dm.cached_bytes and "val" in dm.cached_bytes) is (mode == "ram")
    assert len(loaded["ram"]) == len(loaded["none"]) > 0
    for (im_a, m_a, n_a), (im_b, m_b, n_b) in zip(loaded["ram"], loaded["none"]):
        assert n_a == n_b and torch.equal(im_a, im_b) and torch.equal(m_a, m_b)
    # the files are not read again: removed, the cached samples are still there, the others not
    for path in (root / "images").iterdir():
        path.unlink()
    again = _samples(modules["ram"], "val")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, loaded["ram"]))
    with pytest.raises(Exception, match="image file does not exist"):
        _samples(modules["none"], "val")


def test_shapes_scenes_cached_and_auto_respects_the_memory(tmp_path, monkeypatch):
    import segbench.data.datamodule as datamodule
    from segbench.engine.build import build_datamodule

    small = ["dataset.subset={train: 12, val: 4, test: 4}", "dataset.num_workers=0"]
    cfg = compose_config("train", [*small, "dataset.cache=auto"], tmp_path)
    dm = build_datamodule(cfg.dataset, ["train", "val"])
    dm.dataset("train")
    cached = _samples(dm, "val")  # no augmentation: the scenes as generated
    assert dm.cached_bytes == {"train": 12 * (64 * 64 * 3 + 64 * 64), "val": 4 * 64 * 64 * 4}
    plain = build_datamodule(
        compose_config("train", [*small, "dataset.cache=none"], tmp_path).dataset, ["val"]
    )
    for a, b in zip(cached, _samples(plain, "val")):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    monkeypatch.setattr(datamodule, "available_memory", lambda: 1000)  # nothing fits
    dm = build_datamodule(cfg.dataset, ["train"])
    dm.dataset("train")
    assert dm.cached_bytes == {}
    with pytest.raises(Exception, match=r"cache='disk'; expected one of auto, ram, none"):
        build_datamodule(compose_config("train", ["dataset.cache=disk"], tmp_path).dataset, [])
    auto = compose_config("train", ["dataset.num_workers=null"], tmp_path)
    assert build_datamodule(auto.dataset, []).num_workers == datamodule.auto_workers() >= 1


def _params(module):
    return sum(p.numel() for p in module.parameters())


def test_deeplabv3plus_uses_the_papers_separable_convolutions(tmp_path):
    from segbench.models.deeplab import DeepLabV3Plus

    cfg = compose_config("train", ["model=deeplabv3plus", "backbone=resnet18"], tmp_path)
    assert cfg.model.separable is True
    net = build_model(cfg.model)
    old = build_model(
        compose_config("train", ["model=deeplabv3plus", "model.separable=false"], tmp_path).model
    )
    aspp, fuse = net.decoder.aspp, net.decoder.fuse
    for branch in [*aspp.branches[1:4], *fuse]:
        depthwise = branch[0]
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels
        assert depthwise.kernel_size == (3, 3) and branch[3].kernel_size == (1, 1)
    assert [b[0].dilation for b in aspp.branches[1:4]] == [(6, 6), (12, 12), (18, 18)]
    # the difference, counted by hand: a full 3x3 conv c_in -> c has 9 c_in c weights; the
    # separable one 9 c_in (depthwise) + 2 c_in (its BN) + c_in c (pointwise)
    c, c_in, low = 256, net.encoder.channels[-1], 48

    def saved(n_in):
        return 9 * n_in * c - (9 * n_in + 2 * n_in + n_in * c)

    expected = 3 * saved(c_in) + saved(c + low) + saved(c)
    assert _params(old) - _params(net) == expected
    x = torch.randn(2, 3, 64, 64)
    assert net(x)["out"].shape == (2, cfg.dataset.num_classes, 64, 64)
    # a config without the key (a checkpoint written before it) rebuilds the old form
    assert inspect.signature(DeepLabV3Plus).parameters["separable"].default is False


def test_bench_command_writes_its_json(tmp_path, capsys):
    from segbench.bench.speed import main

    out = tmp_path / "bench.json"
    args = ["debug=fast", "--size", "32", "32", "--batch", "2", "--steps", "1", "--repeats", "1"]
    args += ["--iters", "2", "--warmup", "1", "--loop-steps", "2", "--out", str(out)]
    assert main([*args, "--variants", "fp32", "bf16+channels_last"]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["step"]] == ["fp32", "bf16+channels_last"]
    assert result["step"][0]["ratio"] == 1.0 and result["latency"][0]["ratio"] == 1.0
    for row in result["step"]:
        assert row["images_per_s"] > 0 and row["peak_memory_mb"] >= 0
    assert result["loop"]["ratio"] > 0 and "no peer measured" in result["peers"]["note"]
    assert "| fp32 |" in text and "train.py" in text and str(out) in text
    with pytest.raises(SystemExit):  # an earlier result is never overwritten
        main(args)
    assert "exists" in capsys.readouterr().err


def test_bench_peers_measures_smp_or_says_why_not(tmp_path):
    from segbench.bench.speed import bench_peers

    cfg = compose_config("train", ["model=unet", "backbone=resnet18"], tmp_path)
    result = bench_peers(cfg, ["fp32"], 2, (32, 32), 1, 1, 1, 1, torch.device("cpu"))
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        assert "segmentation_models_pytorch is not installed" in result["note"]
        return
    assert result["peer"] == "smp.Unet(resnet18)"
    (row,) = result["rows"]
    assert row["train_ratio"] > 0 and row["inference_ratio"] > 0
    assert row["segbench_params"] > 0 and row["peer_params"] > 0


def test_a_deferred_finite_check_still_names_the_first_bad_step(tmp_path):
    from types import SimpleNamespace

    from segbench.engine.build import build_datamodule, build_task

    cfg = compose_config("train", ["debug=fast"], tmp_path)
    dm = build_datamodule(cfg.dataset, [])
    task = build_task(cfg, dm, build_model(cfg.model))
    task.defer_finite_checks = True  # as on a GPU: read every log_every_n_steps steps
    trainer = SimpleNamespace(log_every_n_steps=5, global_step=0)
    task._trainer = trainer
    losses = [1.0, 0.9, float("nan"), 0.5]  # the NaN at step 2; the check reads at step 4
    for step, value in enumerate(losses):
        trainer.global_step = step
        task._check_finite("train/loss", torch.tensor(value))  # no sync, no raise yet
    trainer.global_step = 4
    with pytest.raises(FloatingPointError, match=r"train/loss is nan at step 2; lower the"):
        task._check_finite("train/loss", torch.tensor(0.4))
    task.defer_finite_checks = False  # the CPU's default: at once
    with pytest.raises(FloatingPointError, match=r"train/loss is inf at step 4"):
        task._check_finite("train/loss", torch.tensor(float("inf")))


def test_bench_boundary_section_times_both_and_reports():
    from segbench.bench.boundary import bench_boundary
    from segbench.bench.report import report
    from segbench.metrics.boundary import BF_CONVENTIONS

    result = bench_boundary(cases=(((36, 48), 5), ((40, 80), 7)), repeats=1)
    assert [(r["size"], r["classes"], r["bf_convention"]) for r in result["rows"]] == [
        (size, k, c) for size, k in (([36, 48], 5), ([40, 80], 7)) for c in BF_CONVENTIONS
    ]
    for row in result["rows"]:
        assert row["boundary_s"] > 0 and row["counts_s"] > 0 and row["ratio"] > 0
    assert result["options"] == {"bf_tolerance": 0.0075, "iou_dilation": 0.02}
    text = report({"model": "m", "backbone": "b", "num_classes": 5, "batch": 1, "size": [8, 8],
                   "machine": {"device": "cpu", "torch_threads": 1, "torch": "x"},
                   "boundary": result})  # fmt: skip
    assert "| 36×48 | 5 | segnet |" in text and "Boundary figures" in text


def test_bench_boundary_on_label_maps_times_each_convention(tmp_path):
    """``--boundary-labels``: real label maps, each against the next shifted, per convention."""
    from PIL import Image

    from segbench.bench.boundary import bench_boundary_labels
    from segbench.bench.speed import main

    gen = np.random.default_rng(0)
    for i in range(3):
        labels = np.zeros((30, 40), np.uint8)
        labels[:, 15 + i :] = 1
        labels[gen.random((30, 40)) < 0.02] = 11  # void
        Image.fromarray(labels).save(tmp_path / f"{i}.png")
    result = bench_boundary_labels(tmp_path, 11, size=(60, 80))
    assert [r["bf_convention"] for r in result["rows"]] == ["segnet", "segbench", "matlab"]
    assert all(r["images"] == 2 and r["size"] == [60, 80] and r["boundary_s"] > 0
               for r in result["rows"])  # fmt: skip
    with pytest.raises(SystemExit):
        main(["debug=fast", "--sections", "boundary", "--boundary-labels", str(tmp_path)])
    with pytest.raises(ValueError, match=r"expected 2 or more \.png label maps"):
        bench_boundary_labels(tmp_path / "none", 11)
