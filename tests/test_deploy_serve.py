"""``segbench serve``: the JSON API through FastAPI's test client and a real uvicorn server
(bad uploads, 8 concurrent requests), and ``segbench serve-load`` against it."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from segbench.cli import main as segbench
from segbench.deploy.predictor import Predictor
from segbench.deploy.server import create_app
from tests.fixtures.checkpoints import untrained_checkpoint


def encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def classes_of(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["classes_png"]))))


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor(trained_run / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="module")
def client(predictor):
    return TestClient(create_app(predictor, max_upload_mb=0.05))


def test_health_and_model(client, predictor, trained_run):
    assert client.get("/health").json()["status"] == "ok"
    model = client.get("/model").json()
    assert model["classes"] == predictor.class_names and model["model"] == "fcn8s"
    results = json.loads((trained_run / "results.json").read_text())
    assert model["figures"]["metrics"]["mIoU"] == pytest.approx(results["metrics"]["mIoU"])
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text


@pytest.mark.parametrize("fmt, kind", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_predict_returns_the_predictors_class_map(client, predictor, fmt, kind):
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    data = encoded(image, fmt)
    response = client.post("/predict", files={"file": (f"x.{fmt.lower()}", data, kind)})
    assert response.status_code == 200, response.text
    body = response.json()
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # JPEG: as decoded
    expected = predictor.predict(decoded).classes
    assert np.array_equal(classes_of(body), expected)
    counts = np.bincount(expected.ravel(), minlength=predictor.num_classes) / expected.size
    assert [body["shares"][c] for c in predictor.class_names] == pytest.approx(counts.tolist())
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.size[0] > 64 and (body["width"], body["height"]) == (64, 48)
    assert "uncertainty_png" not in body


def test_bad_uploads_get_clear_4xx(client):
    image = encoded(np.zeros((8, 8, 3), np.uint8))
    r = client.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    r = client.post("/predict", files={"file": ("a.png", b"hello, not a png", "image/png")})
    assert r.status_code == 400 and "not a readable image" in r.json()["detail"]
    big = encoded(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    r = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "0.05 MB" in r.json()["detail"]
    r = client.post("/predict", files={"other": ("a.png", image, "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = client.post("/predict", content=b"raw", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "multipart" in r.json()["detail"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(predictor) -> tuple[uvicorn.Server, threading.Thread, str]:
    """A real uvicorn server around ``predictor`` on a free port, in a thread; and its URL."""
    port = free_port()
    config = uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="error")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    return srv, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(predictor):
    srv, thread, url = start_server(predictor)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def test_eight_concurrent_requests_each_get_their_own_result(server, predictor):
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(8)]

    def post(i):
        data = encoded(images[i])
        r = httpx.post(
            f"{server}/predict", files={"file": (f"{i}.png", data, "image/png")}, timeout=60
        )
        return i, r

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(8)))
    for i, r in results:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["filename"] == f"{i}.png" and body["height"] == images[i].shape[0]
        assert np.array_equal(classes_of(body), predictor.predict(images[i]).classes)


def test_serve_load_measures_the_running_server(server, tmp_path, capsys):
    out = tmp_path / "load.json"
    args = [
        "serve-load",
        f"url={server}",
        "size=48x64",
        "requests=6",
        "concurrency=2",
        f"out={out}",
    ]
    assert segbench(args) == 0
    record = json.loads(out.read_text())
    assert record["ok"] == 6 and record["errors"] == 0
    assert 0 < record["latency_p50_s"] <= record["latency_p95_s"]
    assert "requests/s" in capsys.readouterr().out


def test_bayesian_segnet_returns_an_uncertainty_map(tmp_path):
    ckpt = untrained_checkpoint("bayesian_segnet", tmp_path / "b.ckpt", "model.mc_samples=2")
    client = TestClient(create_app(Predictor(ckpt)))
    data = encoded(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    body = client.post("/predict", files={"file": ("u.png", data, "image/png")}).json()
    heat = Image.open(io.BytesIO(base64.b64decode(body["uncertainty_png"])))
    assert heat.size == (32, 32)
    assert client.get("/model").json()["uncertainty"] is True


def test_serve_refuses_a_bad_checkpoint_before_starting(tmp_path, capsys):
    assert segbench(["serve", f"ckpt={tmp_path / 'missing.ckpt'}"]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
