"""The new families (SegFormer, UPerNet, Mask2Former, the linear probe) through what is done
with a checkpoint: ``segbench predict`` on a folder and one ``POST /predict`` to the served app,
each giving the class map the network itself gives (export: tests/test_deploy_export.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from segbench.cli import main as segbench
from segbench.deploy.predictor import Predictor
from segbench.deploy.server import create_app
from tests.fixtures.checkpoints import untrained_checkpoint

SMALL = {"mask2former": ["model.hidden_dim=64", "model.num_queries=10"]}


@pytest.mark.parametrize("model", ["segformer", "upernet", "mask2former", "linear_probe"])
def test_a_checkpoint_predicts_and_serves(model, tmp_path):
    ckpt = untrained_checkpoint(model, tmp_path / f"{model}.ckpt", *SMALL.get(model, []), seed=1)
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert segbench(["predict", f"ckpt={ckpt}", f"input={folder}", f"out={out}"]) == 0
    predictor = Predictor(ckpt)
    expected = predictor.predict(images[0]).classes  # the class map of the network itself
    saved = np.asarray(Image.open(out / "masks" / "0.png"))
    assert saved.shape == (40, 56) and np.array_equal(saved, expected)
    client = TestClient(create_app(predictor))
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    reply = client.post("/predict", files={"file": ("0.png", buffer.getvalue(), "image/png")})
    assert reply.status_code == 200, reply.text
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["classes_png"]))))
    assert np.array_equal(served, expected)
    assert (
        client.get("/model").json()["model"]
        == torch.load(ckpt, map_location="cpu", weights_only=True)["segbench"]["config"]["model"][
            "name"
        ]
    )
