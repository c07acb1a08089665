"""``segbench predict ckpt=PATH input=<image | folder | glob | video> [out=DIR] ...``: a trained
checkpoint (or an exported ONNX file) on new images and video, no labels needed.

For each image ``out/`` gets ``masks/<stem>.png`` (a palette PNG holding the class indices, as
VOC stores masks), ``overlays/<stem>.png`` (the image with the prediction blended over it and a
legend of class shares) and, for a model that gives one (Bayesian SegNet), the uncertainty
heatmap ``uncertainty/<stem>.png``; for a video, ``videos/<stem>.mp4`` (the overlay at the
source frame rate) and with ``frames=true`` one mask and overlay PNG per frame. ``shares.csv``
holds each input's class pixel shares and ``predictions.json`` everything else (sizes, seconds,
failures). The images pass through the checkpoint's evaluation transform
(:class:`~segbench.deploy.predictor.Predictor`, the one code path with ``evaluate.py``).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segbench.deploy.args import parse_key_values
from segbench.deploy.images import MAX_PIXELS
from segbench.deploy.inputs import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    find_inputs,
    input_roots,
    inside,
    stems,
)
from segbench.deploy.predictor import ImageError, class_shares, load_image
from segbench.plots import colorize, heatmap, save_palette_png

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "find_inputs", "main", "predict"]

OUTPUTS = ("masks", "overlays", "uncertainty", "videos", "frames", "shares.csv", "predictions.json")
OWN = {
    "ckpt": (None, "a checkpoint train.py wrote, or an ONNX file segbench export wrote"),
    "input": (None, "an image, a folder of images, a glob ('imgs/*.jpg') or a video file"),
    "out": ("", "output directory (default outputs/predict/<date>/<time>)"),
    "batch_size": (8, "images (or frames) of one size per forward pass"),
    "frames": (False, "videos: also one mask and overlay PNG per frame"),
    "overwrite": (False, "write into an out= that already holds predictions"),
    "device": ("", "cpu, cuda, ... (default: a GPU when there is one)"),
    "max_pixels": (MAX_PIXELS, "larger images are skipped, named, before they are decoded"),
}


MANIFEST = "predictions.json"  # lists every file a predict run wrote (its "written" key)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _owned(folder: Path) -> set[str] | None:
    """The files (relative to ``folder``) that an earlier predict run recorded writing there;
    ``None`` when ``folder`` holds no such record."""
    try:
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    written = record.get("written") if isinstance(record, dict) else None
    if record.get("kind") != "predict" or not isinstance(written, list):
        return None
    return {str(w) for w in written} | {MANIFEST}


def _output_dir(out: str, overwrite: bool, spec: str = "", paths: list[Path] = ()) -> Path:
    """The folder predictions go to, checked: never inside the folder the inputs are read from
    (nor one holding an input: a dataset root), and a non-empty one only with overwrite=true
    and only if every file where predictions go (``OUTPUTS``) was written by an earlier predict
    run (its manifest); other files there are left alone."""
    if not out:
        return Path("outputs/predict") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    folder = Path(out)
    for root in input_roots(spec):
        if inside(folder, root):
            raise SystemExit(
                f"error: out={out} lies inside the folder the inputs are read from ({root}); "
                "predictions written there could replace the data: choose an out= elsewhere"
            )
    held = next((p for p in paths if inside(p, folder)), None)
    if held is not None:
        raise SystemExit(
            f"error: out={out} holds the input {held} (a dataset root?); predictions written "
            "there could replace the data: choose an out= elsewhere"
        )
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise SystemExit(
                f"error: out={out} already holds files; choose a fresh out= or add "
                "overwrite=true to replace its predictions"
            )
        owned = _owned(folder) or set()
        # files of others where predictions go (masks/, overlays/ ... of a dataset root, or
        # of a predict run that kept no list): they could be replaced, so nothing is written
        clash = [
            p
            for p in _files(folder)
            if p.relative_to(folder).parts[0] in OUTPUTS and str(p.relative_to(folder)) not in owned
        ]
        if clash:
            raise SystemExit(
                f"error: out={out} holds {len(clash)} file(s) where predictions go that segbench "
                f"predict did not record writing (e.g. {clash[0]}); overwrite=true replaces only "
                "a predict run's own files, listed in its predictions.json: choose a fresh out="
            )
    return folder


def _clear(folder: Path) -> None:
    """Remove the files an earlier predict run recorded writing in ``folder`` (nothing else),
    then the folders that leaves empty."""
    owned = _owned(folder) or set()
    for name in sorted(owned):
        target = folder / name
        if inside(target, folder) and (target.is_file() or target.is_symlink()):
            target.unlink()
    for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()


def _write_image(predictor, folder: Path, stem: str, image: np.ndarray, pred) -> dict:
    files = {
        "mask": save_palette_png(pred.classes, predictor.palette, folder / "masks" / f"{stem}.png")
    }
    overlay = predictor.overlay(image, pred)
    files["overlay"] = folder / "overlays" / f"{stem}.png"
    files["overlay"].parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay).save(files["overlay"])
    if pred.uncertainty is not None:
        files["uncertainty"] = folder / "uncertainty" / f"{stem}.png"
        files["uncertainty"].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(heatmap(pred.uncertainty)).save(files["uncertainty"])
    return {k: str(v) for k, v in files.items()}


def _predict_images(
    predictor, items, folder, batch_size, bar, max_pixels=MAX_PIXELS
) -> tuple[list[dict], list[dict]]:
    """Predict ``items`` as they are read: images of one size wait for a full batch (one
    forward pass per size), so at most a batch of each size is held in memory."""
    done, failed = [], []
    pending: dict[tuple[int, int], list] = defaultdict(list)

    def run(chunk: list) -> None:
        try:
            preds = predictor.predict_batch([e[2] for e in chunk])
        except (RuntimeError, ValueError) as err:  # e.g. smaller than the model's stride
            h, w = chunk[0][2].shape[:2]
            first = (str(err).splitlines() or [type(err).__name__])[0][:200]
            for source, _, _ in chunk:
                failed.append(
                    {
                        "input": str(source),
                        "error": f"{source}: the model cannot predict a {h}x{w} image ({first})",
                    }
                )
                bar.update(1)
            return
        for (source, stem, image), pred in zip(chunk, preds):
            done.append(
                {
                    "input": str(source),
                    "stem": stem,
                    "kind": "image",
                    "height": int(image.shape[0]),
                    "width": int(image.shape[1]),
                    "seconds": pred.seconds,
                    "shares": class_shares(pred.classes, predictor.class_names),
                    "files": _write_image(predictor, folder, stem, image, pred),
                }
            )
            bar.update(1)

    for source, stem in items:
        try:
            image = load_image(source, max_pixels)
        except ImageError as err:  # named, and the others go on
            failed.append({"input": str(source), "error": str(err)})
            bar.update(1)
            continue
        group = pending[image.shape[:2]]
        group.append((source, stem, image))
        if len(group) == batch_size:
            run(pending.pop(image.shape[:2]))
    for group in pending.values():
        run(group)
    order = {str(s): i for i, (s, _) in enumerate(items)}
    done.sort(key=lambda d: order[d["input"]])
    return done, failed


def _predict_video(predictor, source: Path, stem: str, folder: Path, batch_size: int, frames: bool):
    """Predict every frame of ``source``; write the overlay video (mp4v, the source's fps)."""
    import cv2

    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise ImageError(f"{source}: not a readable video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    path = folder / "videos" / f"{stem}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, counts, seconds, n = None, np.zeros(predictor.num_classes, np.int64), 0.0, 0
    bar = tqdm(total=total or None, desc=f"frames of {source.name}", unit="frame", leave=False)
    try:
        while True:
            batch = []
            while len(batch) < batch_size:
                ok, frame = capture.read()
                if not ok:
                    break
                batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if not batch:
                break
            for image, pred in zip(batch, predictor.predict_batch(batch)):
                alpha = 0.5
                colours = colorize(pred.classes, predictor.palette).astype(np.float32)
                blended = ((1 - alpha) * image + alpha * colours).round().astype(np.uint8)
                if writer is None:
                    h, w = blended.shape[:2]
                    writer = cv2.VideoWriter(
                        str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
                    )
                writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
                counts += np.bincount(pred.classes.ravel(), minlength=predictor.num_classes)
                if frames:
                    _write_image(predictor, folder / "frames" / stem, f"{n:06d}", image, pred)
                seconds += pred.seconds
                n += 1
                bar.update(1)
    finally:
        capture.release()
        bar.close()
        if writer is not None:
            writer.release()
    if n == 0:
        raise ImageError(f"{source}: a video with no readable frame")
    shares = counts / max(int(counts.sum()), 1)
    return {
        "input": str(source),
        "stem": stem,
        "kind": "video",
        "frames": n,
        "fps": float(fps),
        "height": int(h),
        "width": int(w),
        "seconds": seconds,
        "shares": {name: float(shares[i]) for i, name in enumerate(predictor.class_names)},
        "files": {
            "video": str(path),
            **({"frames": str(folder / "frames" / stem)} if frames else {}),
        },
    }


def load_predictor(ckpt: str, overrides: list[str], device: str):
    """A :class:`Predictor` for a checkpoint, or an ``OnnxPredictor`` for an ``.onnx`` file."""
    if ckpt.endswith(".onnx"):
        if overrides:
            raise SystemExit(
                f"error: {' '.join(overrides)}: an ONNX file predicts as it was exported; "
                "evaluate.yaml overrides apply to checkpoints only (export again with them)"
            )
        from segbench.deploy.onnx_runtime import OnnxPredictor

        return OnnxPredictor(ckpt)
    from segbench.deploy.predictor import Predictor

    return Predictor(ckpt, overrides, device=device or None)


def predict(args) -> dict:
    """Run ``segbench predict`` for parsed ``args``; returns the ``predictions.json`` record."""
    if args.batch_size < 1:
        raise SystemExit(f"error: batch_size={args.batch_size}: expected an integer >= 1")
    if args.max_pixels < 1:
        raise SystemExit(f"error: max_pixels={args.max_pixels}: expected an integer >= 1")
    paths = find_inputs(args.input)
    folder = _output_dir(args.out, args.overwrite, args.input, paths)
    from segbench.checkpoints import CheckpointError

    try:  # a refused checkpoint (unreadable, untrusted, not fitting): one line, no traceback
        predictor = load_predictor(args.ckpt, args.overrides, args.device)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    _clear(folder)  # overwrite=true (else it is empty): only once the model has loaded
    folder.mkdir(parents=True, exist_ok=True)
    items = list(zip(paths, stems(paths)))
    images = [(p, s) for p, s in items if p.suffix.lower() not in VIDEO_SUFFIXES]
    videos = [(p, s) for p, s in items if p.suffix.lower() in VIDEO_SUFFIXES]
    start = time.perf_counter()
    with tqdm(total=len(images), desc="predicting", unit="image", disable=not images) as bar:
        done, failed = _predict_images(
            predictor, images, folder, args.batch_size, bar, args.max_pixels
        )
    for source, stem in videos:
        try:
            done.append(
                _predict_video(predictor, source, stem, folder, args.batch_size, args.frames)
            )
        except ImageError as err:
            failed.append({"input": str(source), "error": str(err)})
    info = predictor.info()
    record = {
        "kind": "predict",
        "checkpoint": args.ckpt,
        "model": info.get("model"),
        "backbone": info.get("backbone"),
        "dataset": info.get("dataset"),
        "classes": info.get("classes"),
        "eval_mode": info.get("eval_mode"),
        "overrides": args.overrides,
        "inputs": len(items),
        "predicted": len(done),
        "seconds": time.perf_counter() - start,
        "predictions": done,
        "failed": failed,
    }
    with open(folder / "shares.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "stem", "kind", "height", "width", *predictor.class_names])
        for d in done:
            shares = [f"{d['shares'][c]:.6f}" for c in predictor.class_names]
            writer.writerow([d["input"], d["stem"], d["kind"], d["height"], d["width"], *shares])
    record["written"] = sorted(
        str(p.relative_to(folder)) for p in _files(folder) if p.name != MANIFEST
    )
    (folder / MANIFEST).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {**record, "out": str(folder)}


def main(argv: list[str] | None = None) -> int:
    """``segbench predict``: 0 when every input was predicted, 1 when one failed."""
    args = parse_key_values(
        "predict",
        "Predict images, folders, globs or videos with a checkpoint (or an exported ONNX file); "
        "no labels needed.",
        OWN,
        argv,
        required=("ckpt", "input"),
    )
    record = predict(args)
    print(f"{record['predicted']} of {record['inputs']} inputs predicted into {record['out']}")
    if record["failed"]:
        names = "; ".join(f["error"] for f in record["failed"])
        print(
            f"{len(record['failed'])} of {record['inputs']} inputs failed: {names}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
