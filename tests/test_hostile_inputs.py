"""Hostile uploads and folders (issue: untrusted inputs): a huge image is refused from its header
before it is decoded, by the server (413, fast, /health still answering) and by predict (skipped
by name, the others predicted, inputs read as they are predicted); an upload without a
Content-Length is cut off at the limit; bad serve options are named; a glob through a symlink
loop predicts each file once and returns."""

from __future__ import annotations

import io
import socket
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from segbench.cli import main as segbench
from segbench.deploy import predict as predict_module
from segbench.deploy.images import ImageTooLarge, decode_image, load_image
from segbench.deploy.predictor import Predictor
from segbench.deploy.server import check_options, create_app


def huge_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width x height`` black pixels, a few hundred KB on disk (the
    rows compress to nothing): what an attacker sends to make a server decode gigabytes."""
    row = b"\x00" + b"\x00" * width
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def small_png(seed: int = 0, size=(32, 48)) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_pixel_limit_is_read_from_the_header_before_decoding(tmp_path):
    data = huge_png(20000, 20000)  # 400 megapixels: Pillow's own ceiling refuses it too
    start = time.perf_counter()
    with pytest.raises(
        ImageTooLarge, match=r"upload: Image size \(400000000 pixels\).*max_pixels=40000000"
    ):
        decode_image(data, "upload")
    with pytest.raises(ImageTooLarge, match=r"max_pixels=1000"):
        decode_image(huge_png(100, 100), "upload", max_pixels=1000)
    path = tmp_path / "big.png"
    path.write_bytes(huge_png(12000, 9000))  # 108 MP: under Pillow's ceiling, over ours
    with pytest.raises(ImageTooLarge, match=r"big.png: 12000x9000 is 108.0 megapixels"):
        load_image(path)
    assert time.perf_counter() - start < 5  # nothing was decoded
    assert load_image(path, max_pixels=200_000_000).shape == (9000, 12000, 3)


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor(trained_run / "checkpoints" / "best.ckpt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(predictor):
    import uvicorn

    port = free_port()
    app = create_app(predictor, max_upload_mb=2, max_pixels=4_000_000)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_the_server_refuses_a_huge_image_fast_with_413(server):
    data = huge_png(6000, 6000)  # 36 MP: over this server's 4 MP
    start = time.perf_counter()
    r = httpx.post(f"{server}/predict", files={"file": ("big.png", data, "image/png")}, timeout=30)
    assert r.status_code == 413 and "max_pixels=4000000" in r.json()["detail"]
    assert time.perf_counter() - start < 3
    ok = httpx.post(
        f"{server}/predict", files={"file": ("ok.png", small_png(), "image/png")}, timeout=30
    )
    assert ok.status_code == 200  # still serving


def test_health_answers_while_a_prediction_runs(server, predictor, monkeypatch):
    """Decoding and predicting run off the event loop: /health answers during a slow one."""
    original = predictor.predict

    def slow(image):
        time.sleep(2.0)
        return original(image)

    monkeypatch.setattr(predictor, "predict", slow)
    done = {}

    def post():
        done["r"] = httpx.post(
            f"{server}/predict", files={"file": ("a.png", small_png(), "image/png")}, timeout=30
        )

    worker = threading.Thread(target=post)
    worker.start()
    time.sleep(0.5)  # the prediction is running
    start = time.perf_counter()
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
    assert time.perf_counter() - start < 1.0
    worker.join()
    assert done["r"].status_code == 200


def test_an_upload_without_content_length_is_cut_off_at_the_limit(predictor):
    """A streamed body (no Content-Length) of 50 MB against a 2 MB limit, fed to the ASGI app
    chunk by chunk: 413 once ~2 MB are read, the rest never asked for."""
    import asyncio

    app = create_app(predictor, max_upload_mb=2)
    boundary = "segbenchboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    chunks = [head] + [b"\x00" * (1 << 20)] * 50 + [f"\r\n--{boundary}--\r\n".encode()]
    asked, sent = {"n": 0}, []

    async def receive():
        i = asked["n"]
        asked["n"] += 1
        if i >= len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413 and b"limit is 2 MB" in body
    assert asked["n"] <= 4  # the head and about 2 MB: 48 MB never read


@pytest.mark.parametrize(
    "options, message",
    [
        ((float("nan"), 10, 8000, "127.0.0.1"), "max_upload_mb=nan: expected a size in MB"),
        ((-1.0, 10, 8000, "127.0.0.1"), "max_upload_mb=-1.0: expected a size > 0"),
        ((10.0, 0, 8000, "127.0.0.1"), "max_pixels=0: expected a whole number"),
        ((10.0, 10, 70000, "127.0.0.1"), "port=70000: expected a port number"),
        ((10.0, 10, 8000, " "), "host is empty"),
    ],
)
def test_bad_serve_options_are_named(options, message):
    with pytest.raises(SystemExit, match=message):
        check_options(*options)


def test_serve_cli_names_a_nan_limit_without_a_traceback(trained_run, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert segbench(["serve", f"ckpt={ckpt}", "max_upload_mb=nan"]) == 1
    err = capsys.readouterr().err
    assert "max_upload_mb=nan" in err and "Traceback" not in err


def test_predict_skips_a_huge_image_by_name_and_predicts_the_others(trained_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        (folder / f"ok{i}.png").write_bytes(small_png(i))
    (folder / "huge.png").write_bytes(huge_png(20000, 20000))
    out = tmp_path / "out"
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    code = segbench(["predict", f"ckpt={ckpt}", f"input={folder}", f"out={out}"])
    assert code == 1  # one input failed, named
    import json

    record = json.loads((out / "predictions.json").read_text())
    assert record["predicted"] == 4 and len(record["failed"]) == 1
    assert "huge.png" in record["failed"][0]["error"]
    assert "max_pixels=" in record["failed"][0]["error"]


def test_predict_reads_the_inputs_as_it_predicts_them(predictor, tmp_path, monkeypatch):
    """At most one batch of decoded images is held: each batch is predicted before the images
    of the next are read."""
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(small_png(i))
    events = []
    real_load, real_batch = predict_module.load_image, predictor.predict_batch
    monkeypatch.setattr(
        predict_module, "load_image", lambda p, m=None: events.append("read") or real_load(p)
    )
    monkeypatch.setattr(
        predictor,
        "predict_batch",
        lambda images: events.append(f"predict {len(images)}") or real_batch(images),
    )

    class Bar:
        def update(self, n):
            pass

    items = [(p, p.stem) for p in paths]
    done, failed = predict_module._predict_images(predictor, items, tmp_path / "o", 4, Bar())
    assert len(done) == 10 and not failed
    assert events == [
        *["read"] * 4, "predict 4", *["read"] * 4, "predict 4", *["read"] * 2, "predict 2"
    ]  # fmt: skip


def test_a_glob_through_symlink_loops_finds_each_image_once_and_returns(tmp_path):
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a" / "x.png")
    Image.new("RGB", (8, 8)).save(root / "a" / "b" / "y.png")
    (root / "a" / "b" / "up").symlink_to(root / "a")  # two loops
    (root / "a" / "top").symlink_to(root)
    (root / "a" / "x_again.png").symlink_to(root / "a" / "x.png")  # one file, two names
    start = time.perf_counter()
    found = predict_module.find_inputs(f"{root}/**/*.png")
    assert time.perf_counter() - start < 5
    assert [p.relative_to(root).as_posix() for p in found] == ["a/b/y.png", "a/x.png"]
