"""``segbench export ckpt=PATH format=onnx|torchscript [out=FILE] ...``: the network a checkpoint
holds, as ``evaluate.py`` evaluates it single-scale, in a file that runs without segbench.

The exported graph takes the *normalised* image batch ``image (B, 3, H, W)`` float32 (the
checkpoint's evaluation transform: ``(pixel / 255 - mean) / std``, and its resize if it has
one; both are in the file's metadata) and returns ``logits (B, K, H, W)`` or, with
``output=classes``, the class map ``(B, H, W)`` int64. Batch, height and width are dynamic when
the model allows: the export is checked at a second size and re-exported at a fixed size, saying
so, when the first does not hold there.

A parity check runs after every export: the file against PyTorch (:class:`Predictor`) on the
same images (``images=DIR``, else synthetic ones), max |Δ logits| and class-map agreement
against stated tolerances, and the time of both on CPU; written to ``<out>.parity.json``. What
cannot be exported is refused before anything is written: the dense CRF, MC-dropout sampling,
and multi-scale or sliding-window inference (they run around the network, in Python).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segbench.deploy.args import parse_key_values
from segbench.deploy.predictor import (
    Predictor,
    checkpoint_name,
    checkpoint_stem,
    load_image,
    run_dir_of,
)

__all__ = ["ExportRefused", "export", "main", "metadata"]

OPSET = 17
ATOL = 1e-4  # max |Δ logits| allowed: float32 kernels of two runtimes differ by ~1e-6
AGREEMENT = 0.999  # class-map agreement allowed (a pixel whose top two logits tie may differ)
OWN = {
    "ckpt": (None, "a checkpoint train.py wrote"),
    "format": ("onnx", "onnx (onnxruntime, opset 17) or torchscript (torch.jit.trace)"),
    "out": ("", "the file to write (default <run>/export/<ckpt stem>.onnx|.pt)"),
    "output": ("logits", "logits (B, K, H, W) or classes (B, H, W): the argmax in the graph"),
    "size": ("", "HxW of the traced input and the synthetic parity images (default: the "
             "dataset's crop, else 256x256)"),
    "images": ("", "a folder of real images for the parity check (default: synthetic ones)"),
    "overwrite": (False, "replace an existing file"),
    "speed": (True, "also time PyTorch and the export on the parity images (CPU)"),
}  # fmt: skip


class ExportRefused(ValueError):
    """A checkpoint (or evaluation setting) that cannot be exported as asked."""


class _Network(nn.Module):
    """The evaluated network: normalised images in, logits (or the class map) out."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.classes = model, output == "classes"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        logits = out["out"] if isinstance(out, dict) else out
        return logits.max(dim=1).indices if self.classes else logits


def _check_exportable(predictor: Predictor) -> None:
    model = predictor.run_cfg.model
    if model.get("crf") is not None:
        raise ExportRefused(
            "the dense CRF runs after the network (mean-field iterations over a permutohedral "
            "lattice in Python), so it has no ONNX/TorchScript form; export the network "
            "without it: add model.crf=null (segbench predict with the checkpoint applies it)"
        )
    if int(model.get("mc_samples") or 0) > 0:
        raise ExportRefused(
            f"model.mc_samples={model.mc_samples}: Monte Carlo dropout samples the network "
            "several times with dropout on, which an exported graph does not do; add "
            "model.mc_samples=0 to export the deterministic network (dropout off, weight "
            "averaging), or predict with the checkpoint for the uncertainty"
        )
    inference = predictor.inference
    if not inference.plain:
        raise ExportRefused(
            f"{inference!r}: the export is the network at one scale; multi-scale, flip and "
            "sliding-window inference run around it in Python. Export with the default "
            "inference=whole and predict with the checkpoint for the others"
        )


def metadata(predictor: Predictor, fmt: str, output: str, dynamic: bool, size) -> dict:
    """What a deployment needs to use the file: classes, colours and the input pipeline."""
    t = predictor.transform
    info = predictor.info()
    return {
        "format": fmt,
        "input": "image (B, 3, H, W) float32: (RGB / 255 - mean) / std, after resize if set",
        "output": output,
        "mean": [float(v) / 255 for v in t.to_tensor.mean.view(-1)],
        "std": [float(v) / 255 for v in t.to_tensor.std.view(-1)],
        "resize": list(t.resize) if getattr(t, "resize", None) else None,
        "resize_short": getattr(t, "resize_short", None),
        "dynamic_hw": dynamic,
        "traced_size": list(size),
        "opset": OPSET if fmt == "onnx" else None,  # 18 when torch.export's exporter wrote it
        **{k: info[k] for k in ("model", "backbone", "dataset", "classes", "palette")},
        "ignore_index": info["ignore_index"],
        "eval_mode": info["eval_mode"],
        "checkpoint": checkpoint_name(predictor.ckpt),
    }


def _write(
    net: nn.Module, fmt: str, example: torch.Tensor, path: Path, dynamic: bool, meta, dynamo=False
):
    if fmt == "onnx" and dynamo:  # torch.export's exporter: static shapes here
        torch.onnx.export(
            net, (example,), str(path), input_names=["image"], output_names=["logits"],
            opset_version=max(OPSET, 18), dynamo=True, verbose=False,
        )  # fmt: skip
        import onnx

        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = "segbench", json.dumps(meta)
        onnx.save(model, str(path))
    elif fmt == "onnx":
        import onnx

        axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
        if dynamic:
            axes["logits"].update(
                {2: "height", 3: "width"}
                if meta["output"] == "logits"
                else {1: "height", 2: "width"}
            )
        torch.onnx.export(
            net, (example,), str(path), input_names=["image"], output_names=["logits"],
            dynamic_axes=axes if dynamic else {"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip
        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = "segbench", json.dumps(meta)
        onnx.save(model, str(path))
    else:
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"segbench.json": json.dumps(meta)})


def _runner(fmt: str, path: Path):
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        # fatal only: the size probes below fail on purpose for a fixed-size graph, and the
        # failure comes back as the exception they read; logged, it was a red error line
        options.log_severity_level = 4
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    module = torch.jit.load(str(path))
    return lambda x: module(x)


def _compare(reference: torch.Tensor, got: torch.Tensor, output: str) -> dict:
    if output == "classes":
        agree = float((reference.max(1).indices == got).float().mean())
        return {"max_abs_logit_diff": None, "agreement": agree}
    diff = float((reference.float() - got.float()).abs().max())
    agree = float((reference.max(1).indices == got.max(1).indices).float().mean())
    return {"max_abs_logit_diff": diff, "agreement": agree}


def _fails_elsewhere(net, run, others: list[torch.Tensor], output: str) -> str | None:
    """Why the exported graph does not hold at one of the ``others`` sizes, or None."""
    for x in others:
        size = tuple(x.shape[-2:])
        try:
            with torch.no_grad():
                ok = _compare(net(x), run(x), output)
        except Exception as err:  # the runtime refuses the size
            first = (str(err).splitlines() or [type(err).__name__])[0][:200]
            return f"at {size} the export fails: {first}"
        if ok["agreement"] < AGREEMENT or (ok["max_abs_logit_diff"] or 0) > ATOL:
            return f"at {size} the export differs from PyTorch ({ok})"
    return None


def _median_ms(fn, batches: list[torch.Tensor], repeats: int = 3) -> float:
    fn(batches[0])  # warm-up
    times = []
    for _ in range(repeats):
        for x in batches:
            start = time.perf_counter()
            fn(x)
            times.append(1000 * (time.perf_counter() - start) / x.shape[0])
    return statistics.median(times)


def _parity_images(predictor: Predictor, folder: str, size: tuple[int, int]) -> tuple[list, str]:
    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.is_file())[:4]
        if not paths:
            raise SystemExit(f"error: images={folder}: no file to check parity on")
        return [load_image(p) for p in paths], f"{len(paths)} images from {folder}"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(3)]
    return images, f"3 synthetic {size[0]}x{size[1]} images (seed 0)"


def _default_size(predictor: Predictor, size: str) -> tuple[int, int]:
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"error: size={size}: expected HxW, e.g. 256x320") from None
        return h, w
    crop = predictor.run_cfg.dataset.get("train_transform", {}).get("crop")
    return (int(crop[0]), int(crop[1])) if crop else (256, 256)


def export(args) -> dict:
    """Export ``args.ckpt`` as ``args.format``; returns the parity record (also written)."""
    fmt, output = args.format, args.output
    if fmt not in ("onnx", "torchscript"):
        raise SystemExit(f"error: format={fmt}: expected onnx or torchscript")
    if output not in ("logits", "classes"):
        raise SystemExit(f"error: output={output}: expected logits or classes")
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    out = (
        Path(args.out)
        if args.out
        else run_dir_of(args.ckpt) / "export" / (checkpoint_stem(args.ckpt) + suffix)
    )
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; choose another out= or add overwrite=true")
    from segbench.checkpoints import CheckpointError

    try:  # a refused checkpoint (unreadable, untrusted, not fitting): one line, no traceback
        predictor = Predictor(args.ckpt, args.overrides, device="cpu")
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        _check_exportable(predictor)
    except ExportRefused as err:
        raise SystemExit(f"error: {args.ckpt} cannot be exported: {err}") from None
    size = _default_size(predictor, args.size)
    images, what = _parity_images(predictor, args.images, size)
    net = _Network(predictor.network, output).eval()
    example = predictor.tensor(images[0])[None]
    # the other sizes of the dynamic check: odd ones (no multiple of any stride, so that a
    # graph traced through a branch taken only at multiples of 32, FCN's skip crops, is caught)
    # and a wider, lower one
    h, w = example.shape[-2:]
    others = [
        torch.nn.functional.interpolate(example, size=size, mode="bilinear")
        for size in ((h + 13, w + 7), (h + h // 4, w - w // 4), (h - 11, w + 19))
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    record = {"file": str(out), "format": fmt, "output": output, "images": what}
    try:
        dynamic, why = True, None
        # dynamic H/W; else fixed; else (ONNX) torch.export's exporter at the fixed size
        attempts = [(True, False), (False, False)] + ([(False, True)] if fmt == "onnx" else [])
        for n, (attempt, dynamo) in enumerate(attempts):
            meta = metadata(predictor, fmt, output, attempt, example.shape[-2:])
            meta["exporter"] = "torch.export (dynamo)" if dynamo else "TorchScript-based"
            if dynamo:
                meta["opset"] = max(OPSET, 18)
            try:
                with torch.no_grad():
                    _write(net, fmt, example, tmp, attempt, meta, dynamo)
            except Exception as err:  # e.g. an op whose ONNX form needs a fixed input size
                if n == len(attempts) - 1:
                    raise
                first = (str(err).splitlines() or [type(err).__name__])[0][:200]
                kind = "dynamic" if attempt else "fixed"
                why = f"the {meta['exporter']} exporter fails at a {kind} size: {first}"
                dynamic = False
                continue
            run = _runner(fmt, tmp)
            with torch.no_grad():  # does the graph hold at the traced size itself?
                here = _compare(net(example), run(example), output)
            if here["agreement"] < AGREEMENT or (here["max_abs_logit_diff"] or 0) > ATOL:
                why = (
                    f"the {meta['exporter']} exporter's graph differs from PyTorch at the traced "
                    f"size {tuple(example.shape[-2:])} ({here})"
                )
                dynamic = False
                if n < len(attempts) - 1:
                    continue
                break  # the last exporter: the parity check below reports the failure
            if not attempt:
                break
            why = _fails_elsewhere(net, run, others, output)  # None: it holds at every size
            if why is None:
                break
            dynamic = False
        record["dynamic_hw"], record["fixed_size_because"] = dynamic, why
        batches = [predictor.tensor(im)[None] for im in images]
        if not dynamic:  # a fixed-size graph: the images at its size, as OnnxPredictor feeds them
            size = tuple(example.shape[-2:])
            batches = [
                b if tuple(b.shape[-2:]) == size
                else torch.nn.functional.interpolate(b, size=size, mode="bilinear")
                for b in batches
            ]  # fmt: skip
        checks = []
        with torch.no_grad():
            for x in batches:
                checks.append(_compare(net(x), run(x), output))
            diffs = [c["max_abs_logit_diff"] for c in checks if c["max_abs_logit_diff"] is not None]
            record["parity"] = {
                "max_abs_logit_diff": max(diffs) if diffs else None,
                "min_agreement": min(c["agreement"] for c in checks),
                "tolerance": {"max_abs_logit_diff": ATOL, "agreement": AGREEMENT},
                "images_checked": len(checks),
            }
            record["passed"] = (
                record["parity"]["min_agreement"] >= AGREEMENT
                and (record["parity"]["max_abs_logit_diff"] or 0) <= ATOL
            )
            if args.speed:
                torch_ms = _median_ms(net, batches)
                export_ms = _median_ms(run, batches)
        record["speed"] = None
        if args.speed:
            record["speed"] = {
                "pytorch_ms_per_image": torch_ms,
                f"{fmt}_ms_per_image": export_ms,
                "ratio_pytorch_over_export": torch_ms / export_ms,
                "threads": torch.get_num_threads(),
                "device": "cpu, batch 1, median of 3 rounds after a warm-up",
            }
        record["metadata"] = meta
        if record["passed"]:
            tmp.replace(out)  # a file that fails its check is never left for use
        else:
            record["file"] = None
    finally:
        if tmp.exists():
            tmp.unlink()
    path = out.with_name(out.name + ".parity.json")  # also for a failed check: what failed
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {**record, "record": str(path)}


def main(argv: list[str] | None = None) -> int:
    """``segbench export``: 0 when exported and the parity check passed, 1 when it failed."""
    args = parse_key_values(
        "export", "Export a checkpoint's network (single scale) to ONNX or TorchScript, with "
        "a parity check against PyTorch.", OWN, argv,
    )  # fmt: skip
    r = export(args)
    p, s = r["parity"], r["speed"]
    fmt = r["format"]
    diff = "n/a" if p["max_abs_logit_diff"] is None else f"{p['max_abs_logit_diff']:.2e}"
    print(f"exported {r['file']} ({fmt}, {r['output']}, dynamic H/W: {r['dynamic_hw']})")
    if r["fixed_size_because"]:
        print(f"  fixed size {r['metadata']['traced_size']}: {r['fixed_size_because']}")
    print(
        f"  parity on {r['images']}: max |Δ logits| {diff} (tolerance {ATOL:g}), class agreement "
        f"{100 * p['min_agreement']:.3f} % (tolerance {100 * AGREEMENT:g} %): "
        f"{'passed' if r['passed'] else 'FAILED'}"
    )
    if s is not None:
        print(
            f"  CPU speed: PyTorch {s['pytorch_ms_per_image']:.1f} ms/image, {fmt} "
            f"{s[f'{fmt}_ms_per_image']:.1f} ms/image ({s['ratio_pytorch_over_export']:.2f}x)"
        )
    if not r["passed"]:
        print("  the check failed: no file written (the record says what differed)")
    print(f"  record: {r['record']}")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
