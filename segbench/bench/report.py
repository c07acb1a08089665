"""The console tables of a ``segbench bench`` result (:func:`segbench.bench.speed.run`): one
Markdown table per section, or the reason a section was not measured."""

from __future__ import annotations

__all__ = ["report"]


def _note(title: str, section: dict) -> str | None:
    """A section that was not measured: its heading and the reason (``section["note"]``)."""
    return f"### {title}\n\n{section['note']}" if "note" in section else None


def _markdown(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def report(result: dict) -> str:
    """The console tables of a :func:`run` result."""
    parts = []
    m = result["machine"]
    parts.append(
        f"{result['model']}/{result['backbone']}, batch {result['batch']} × "
        f"{result['size'][0]}×{result['size'][1]}, {result['num_classes']} classes, on "
        f"{m['device']} ({m['torch_threads']} threads), torch {m['torch']}"
    )
    if "step" in result:
        rows = [
            [
                r["variant"],
                f"{r['images_per_s']:.2f}",
                f"{r['ratio']:.2f}×",
                _mb(r["peak_memory_mb"]),
            ]
            for r in result["step"]
        ]
        parts.append(
            _markdown(
                "Training step (ratio: images/s against fp32, same run)",
                ["variant", "images/s", "ratio", "peak MB"],
                rows,
            )
        )
    if "loop" in result:
        lp = result["loop"]
        parts.append(
            _markdown(
                f"train.py's loop against a bare loop ({result['loop_config']})",
                ["loop", "images/s", "ratio"],
                [
                    ["bare PyTorch", f"{lp['bare_images_per_s']:.1f}", "1.00"],
                    ["train.py", f"{lp['train_py_images_per_s']:.1f}", f"{lp['ratio']:.3f}"],
                ],
            )
        )
    if "peers" in result:
        pr = result["peers"]
        if "note" not in pr:
            rows = [
                [
                    r["variant"],
                    f"{r['train_ratio']:.2f}",
                    f"{r['inference_ratio']:.2f}",
                    f"{r['segbench_params'] / 1e6:.1f}M / {r['peer_params'] / 1e6:.1f}M",
                ]
                for r in pr["rows"]
            ]
            parts.append(
                _markdown(
                    f"Against {pr['peer']} (speed ratio segbench ÷ peer; > 1: segbench faster)",
                    ["variant", "train step", "inference (batch 1)", "params segbench / peer"],
                    rows,
                )
            )
    if "peers" in result and _note("Peers", result["peers"]):
        parts.append(_note("Peers", result["peers"]))
    if "latency" in result:
        rows = [
            [r["variant"], f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['ratio']:.2f}×"]
            for r in result["latency"]
        ]
        parts.append(
            _markdown(
                "Inference latency, batch 1 (warm-up, then timed passes; ratio: p50 speed-up)",
                ["variant", "p50 ms", "p95 ms", "ratio"],
                rows,
            )
        )
    if "crf" in result:
        crf = result["crf"]
        if "note" not in crf:
            h, w = crf["size"]
            rows = [
                [
                    str(r["labels"]),
                    r["normalization"],
                    f"{r['segbench_s']:.2f}",
                    f"{r['pydensecrf2_s']:.2f}",
                    f"{r['ratio']:.2f}",
                    f"{100 * r['agreement']:.2f} %",
                ]
                for r in crf["rows"]
            ]
            parts.append(
                _markdown(
                    f"Dense CRF, {h}×{w}, 10 iterations, 1 thread: segbench against pydensecrf2",
                    ["labels", "normalization", "segbench s", "pydensecrf2 s", "ratio", "agree"],
                    rows,
                )
            )
    if "boundary" in result:
        rows = [
            [
                f"{r['size'][0]}×{r['size'][1]}",
                str(r["classes"]),
                r.get("bf_convention", "segbench"),
                f"{r['boundary_s']:.3f}",
                f"{r['counts_s']:.4f}",
                f"{r['ratio']:.0f}×",
            ]
            for r in result["boundary"]["rows"]
        ]
        parts.append(
            _markdown(
                f"Boundary figures (BF + boundary IoU) per image, {result['boundary']['threads']}"
                " threads, against the pixel counts of the other figures",
                ["size", "classes", "BF convention", "boundary s", "counts s", "ratio"],
                rows,
            )
        )
        labels = result["boundary"].get("labels")
        if labels:
            rows = [
                [
                    f"{r['size'][0]}×{r['size'][1]}",
                    str(r["classes"]),
                    r["bf_convention"],
                    str(r["images"]),
                    f"{r['boundary_s']:.3f}",
                    f"{r['counts_s']:.4f}",
                    f"{r['ratio']:.0f}×",
                ]
                for r in labels["rows"]
            ]
            parts.append(
                _markdown(
                    f"The same on the label maps of {labels['folder']}, each against the next "
                    f"one shifted {labels['shift']} px (mean per image)",
                    ["size", "classes", "BF convention", "images", "boundary s", "counts s",
                     "ratio"],
                    rows,
                )
            )  # fmt: skip
    if "crf" in result and _note("Dense CRF", result["crf"]):
        parts.append(_note("Dense CRF", result["crf"]))
    return "\n\n".join(parts)
