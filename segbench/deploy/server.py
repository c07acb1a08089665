"""``segbench serve ckpt=PATH [port=8000] [host=127.0.0.1] [max_upload_mb=10] ...``: a web page
and a JSON API around a checkpoint (FastAPI + uvicorn).

- ``GET /``: a page where a person uploads or drops an image and sees it and the overlay side by
  side at the page's width (the overlay's image part: its legend is the page's one table of the
  classes predicted, with their shares of the pixels), and (Bayesian SegNet) the uncertainty map;
  after a refused upload, only the error (no picture or caption of an earlier one); no external
  assets.
- ``POST /predict`` (multipart field ``file``): ``{classes_png, overlay_png, uncertainty_png?
  (base64 PNGs; classes_png a palette PNG of the class indices, overlay_png the image with the
  prediction blended over it and a legend beside it, as ``predict``'s overlays), shares, width,
  height, seconds (the network), total_seconds}``.
- ``GET /health``, ``GET /model`` (:meth:`Predictor.info`: model, dataset, classes, palette and
  the figures of the checkpoint's ``results.json``).

The model is loaded once. Predictions are serialised by a lock: on a 2-core CPU one forward pass
already uses both cores (PyTorch's intra-op threads), so two at once only share them, and each
request computes and returns its own image's result. Decoding, predicting and encoding run in a
worker thread, off the event loop, so ``/health`` answers while a prediction runs. An upload
larger than ``max_upload_mb`` is refused with 413 (from its declared length before the body is
read, else as soon as the bytes read pass the limit, declared or not), an image of more than
``max_pixels`` pixels with 413 (from its header, before it is decoded), a content type that is
not an image with 415, bytes that do not decode as an image with 400.
"""

from __future__ import annotations

import base64
import math
import sys
import threading
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from segbench.deploy.args import parse_key_values
from segbench.deploy.images import (
    MAX_PIXELS,
    ImageError,
    ImageTooLarge,
    class_shares,
    decode_image,
    palette_png_bytes,
    png_bytes,
)

__all__ = ["create_app", "main"]

STATIC = Path(__file__).with_name("static")
OWN = {
    "ckpt": (None, "a checkpoint train.py wrote"),
    "host": ("127.0.0.1", "address to listen on (0.0.0.0: every interface)"),
    "port": (8000, "port to listen on"),
    "max_upload_mb": (10.0, "largest accepted upload, in MB"),
    "max_pixels": (MAX_PIXELS, "largest accepted image, in pixels (checked before decoding)"),
    "device": ("", "cpu, cuda, ... (default: a GPU when there is one)"),
}
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file in a multipart body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _TooLarge(Exception):
    """The body read so far passed the upload limit."""


def check_limits(max_upload_mb, max_pixels) -> None:
    """Refuse upload limits that cannot work, by key.

    Raises:
        SystemExit: the message names the key, the value and what is expected.
    """
    if not (isinstance(max_upload_mb, (int, float)) and math.isfinite(max_upload_mb)):
        raise SystemExit(f"error: max_upload_mb={max_upload_mb}: expected a size in MB, e.g. 10")
    if max_upload_mb <= 0:
        raise SystemExit(f"error: max_upload_mb={max_upload_mb}: expected a size > 0, e.g. 10")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise SystemExit(f"error: max_pixels={max_pixels}: expected a whole number of pixels >= 1")


def check_options(max_upload_mb, max_pixels, port, host) -> None:
    """Refuse serve options that cannot work, by key, before the model is loaded.

    Raises:
        SystemExit: the message names the key, the value and what is expected.
    """
    check_limits(max_upload_mb, max_pixels)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SystemExit(f"error: port={port}: expected a port number from 0 to 65535, e.g. 8000")
    if not str(host).strip():
        raise SystemExit("error: host is empty: expected an address, e.g. host=127.0.0.1")


def create_app(predictor, max_upload_mb: float = 10.0, max_pixels: int = MAX_PIXELS):
    """The FastAPI application around ``predictor`` (a :class:`Predictor`, loaded once)."""
    check_limits(max_upload_mb, max_pixels)
    limit = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()
    info = predictor.info()
    app = FastAPI(title="segbench", version="1")

    def _answer(data: bytes, filename: str) -> dict:
        """Decode, predict and encode one upload (in a worker thread)."""
        image = decode_image(data, filename, max_pixels)
        with lock:  # one forward pass at a time: it uses every core already
            pred = predictor.predict(image)
        body = {
            "filename": filename,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "classes_png": _b64(palette_png_bytes(pred.classes, predictor.palette)),
            "overlay_png": _b64(png_bytes(predictor.overlay(image, pred))),
            "shares": class_shares(pred.classes, predictor.class_names),
            "palette": predictor.palette,
            "seconds": pred.seconds,
        }
        if pred.uncertainty is not None:
            from segbench.plots import heatmap

            body["uncertainty_png"] = _b64(png_bytes(heatmap(pred.uncertainty)))
        return body

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "page.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": info["model"], "dataset": info["dataset"]}

    @app.get("/model")
    def model() -> dict:
        return {**info, "max_upload_mb": max_upload_mb}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        start = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
            raise HTTPException(
                413, f"upload of {int(declared)} bytes: the limit is {max_upload_mb:g} MB"
            )
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(
                400, "expected a multipart/form-data body with the image in a field named 'file'"
            )
        read = 0

        async def receive():  # the body as it arrives, refused once it passes the limit
            nonlocal read
            message = await request.receive()
            read += len(message.get("body", b""))
            if read > limit + MULTIPART_SLACK:
                raise _TooLarge
            return message

        try:
            form = await Request(request.scope, receive).form(max_files=1, max_fields=4)
        except _TooLarge:
            raise HTTPException(
                413, f"upload of more than {read} bytes: the limit is {max_upload_mb:g} MB"
            ) from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "no file in the form: send the image in a field named 'file'")
        kind = (upload.content_type or "").split(";")[0].strip()
        if not kind.startswith("image/"):
            raise HTTPException(
                415, f"{upload.filename}: content type {kind or 'none'!r} is not an image"
            )
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(
                413, f"{upload.filename}: larger than the limit of {max_upload_mb:g} MB"
            )
        try:
            body = await run_in_threadpool(_answer, data, upload.filename or "upload")
        except ImageTooLarge as err:
            raise HTTPException(413, str(err)) from None
        except ImageError as err:
            raise HTTPException(400, str(err)) from None
        body["total_seconds"] = time.perf_counter() - start
        return body

    return app


def main(argv: list[str] | None = None) -> int:
    """``segbench serve``: runs until interrupted."""
    args = parse_key_values("serve", "Serve a checkpoint as a web page and a JSON API.", OWN, argv)
    check_options(args.max_upload_mb, args.max_pixels, args.port, args.host)
    import uvicorn

    from segbench.checkpoints import CheckpointError
    from segbench.deploy.predictor import Predictor

    try:
        predictor = Predictor(args.ckpt, args.overrides, device=args.device or None)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    app = create_app(predictor, args.max_upload_mb, args.max_pixels)
    print(
        f"segbench serve: {predictor.info()['model']} on http://{args.host}:{args.port}/",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
