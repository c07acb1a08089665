"""``evaluate.py ckpt=... split=test format_only=true``: predict a split without its labels and
write the files an evaluation server takes (:mod:`segbench.data.submission`), packed, with a
``submission.json`` record beside them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from segbench.checkpoints.evaluation import evaluation_config
from segbench.checkpoints.loader import device_for
from segbench.data.files import read_image
from segbench.data.submission import pack, split_images, submission_format
from segbench.engine.build import evaluation_task
from segbench.engine.scoring import start_run
from segbench.inference import eval_mode
from segbench.inference.fast import prepare_batch
from segbench.metrics import class_map

__all__ = ["SUBMISSION_FILE", "submit"]

SUBMISSION_FILE = "submission.json"


class _Images(Dataset):
    """The split's images through the evaluation transform (no labels: a blank mask)."""

    def __init__(self, items: list[tuple[str, Path]], transform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_id, path = self.items[index]
        image = read_image(path)
        x, _ = self.transform(image, np.zeros(image.shape[:2], dtype=np.uint8))
        return image_id, x, torch.tensor(image.shape[:2])


def submit(cfg) -> dict:
    """Write the server files of ``cfg.split`` (default ``test``) for checkpoint ``cfg.ckpt``
    into ``<run dir>/submission/``, pack them, and return the ``submission.json`` record."""
    run = start_run(cfg, "evaluate")
    run_cfg, state_dict = evaluation_config(cfg)
    split = cfg.get("split") or "test"
    dm = instantiate(run_cfg.dataset)  # no split opened: the labels are never read
    fmt = submission_format(dm.name)
    root = OmegaConf.select(run_cfg, "dataset.source.root")
    items = split_images(dm.name, root, split)
    task, _ = evaluation_task(cfg, run_cfg, state_dict, dm)
    device = device_for(cfg)
    task.to(device).eval()

    out = Path(run.output_dir)
    folder = out / "submission"
    folder.mkdir(parents=True, exist_ok=False)  # a fresh run directory: never another's files
    loader = DataLoader(
        _Images(items, dm.eval_transform),
        batch_size=None,
        num_workers=int(dm.num_workers or 0),
    )
    with torch.no_grad():
        for image_id, x, size in tqdm(loader, total=len(items), desc=f"predicting {split}"):
            batch = prepare_batch(x[None].to(device), task.fast)
            logits = task.inference(task.model, batch)["out"]
            h, w = int(size[0]), int(size[1])
            if logits.shape[-2:] != (h, w):  # a resizing eval transform: back to the image
                logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear")
            fmt.write(folder, image_id, class_map(logits)[0].cpu().numpy())
    ids = [i for i, _ in items]
    archive = pack(folder, fmt, ids, out / fmt.archive)
    record = {
        "kind": "submission",
        "server": fmt.name,
        "dataset": dm.name,
        "split": split,
        "images": len(ids),
        "files": str(folder),
        "archive": str(archive),
        "checkpoint": str(cfg.ckpt),
        "eval_mode": eval_mode(run_cfg.model, task.inference),
    }
    path = out / SUBMISSION_FILE
    with open(path, "x", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"{len(ids)} {split} predictions for the {fmt.name} server: {archive}")
    return record
