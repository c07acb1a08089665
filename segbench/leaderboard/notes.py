"""What a leaderboard's table shows, said in words for its caption or footnote (every format
prints them): units, merging over seeds, intervals, the marks ``–`` and ``†``, and what each
figure present means."""

from __future__ import annotations

from segbench.leaderboard.table import Leaderboard

__all__ = ["ABSENT", "TIED", "notes", "significance_notes"]

ABSENT = "–"  # shown for a value no run has
TIED = "†"  # after the mIoU of a row not significantly below the best row's


def notes(board: Leaderboard) -> list[str]:
    """What the table shows, for its caption or footnote.

    Args:
        board: the table.
    """
    keys = {c.key for c in board.columns}
    unit = "%" if board.percent else "fractions of 1"
    out = [f"{board.title}: IoU per class and scores in {unit}, sorted by mIoU."]
    if len(board.shown_classes) < len(board.classes):
        out.append(
            f"{len(board.shown_classes)} of the {len(board.classes)} classes shown; mIoU is over "
            f"all {len(board.classes)}."
        )
    if board.merged:
        out.append(
            "Runs of one configuration that differ only by seed are merged: mean ± sample "
            "standard deviation (ddof=1) over the row's n runs (no ± for a single run)."
        )
    else:
        out.append("One row per run (not merged over seeds).")
    if board.interval is not None:
        info = board.interval
        out.append(
            f"[low, high]: {round(100 * info['level'])} % {info['method']} of the row's mean "
            f"({info['resamples']} resamples, seed {info['seed']}), in place of ± std where "
            "the runs kept per-image counts."
        )
    out += significance_notes(board)
    if any(r.stats[f"iou/{c}"].count < r.n for r in board.rows for c in board.shown_classes):
        out.append(
            f"{ABSENT}: class absent from a run's ground truth and prediction (IoU undefined), "
            "left out of that class's mean; (k/n): from the k of the row's n runs that have it."
        )
    if len(board.rows) > 1:
        out.append("Bold: best in column (ties all bold).")
    if keys & {"params", "gflops"}:
        out.append(
            "Params in millions; GFLOPs of one single-scale forward pass at the input size "
            "recorded in results.json (a multiply-add counts 2)."
        )
    if "throughput" in keys:
        out.append("images/s: inference throughput measured by the run.")
    if "published" in keys:
        out.append(
            "published mIoU: the figure the configuration's source reports on the same split "
            f"(config.reference; `segbench repro-check` compares); {ABSENT}: none on that split."
        )
    headers = {c.key: c.header for c in board.columns}
    if headers.get("pixel_acc") == "G" or headers.get("mean_acc") == "C":
        out.append(
            "G: global accuracy (correct pixels / valid pixels); C: class average accuracy "
            "(the mean of the per-class accuracies), as SegNet reports them."
        )
    if keys & {"iIoU", "category_mIoU", "category_iIoU"}:
        out.append(
            "Cityscapes' own figures, as cityscapesScripts computes them: category IoU over its "
            "7 categories; iIoU weights each ground-truth instance's pixels by the class's "
            "average instance size over its own (needs gtFine/*_instanceIds.png; - where a run "
            "had none, its results.json says why)."
        )
    if keys & {"bf", "boundary_iou"}:
        conventions = sorted(
            {
                str((record.get("boundary") or {}).get("bf_convention", "segbench"))
                for row in board.rows
                for record in row.records
                if (record.get("boundary") or {}).get("computed")
            }
        )
        said = (
            f"BF convention {(conventions or ['segbench'])[0]}"
            if len(conventions) <= 1
            else f"BF conventions differ between rows ({', '.join(conventions)}): their BF "
            "columns do not compare"
        )
        out.append(
            "BF: boundary F1 (Csurka et al. 2013) of each image, the mean over its classes, "
            "boundary pixels matched within a tolerance (default 0.75 % of the image "
            f"diagonal, recorded in each results.json), mean over images ({said}; "
            "boundary.bf_convention: segnet, the default, is SegNet's authors' script; runs "
            "that recorded none used segbench). Boundary IoU (Cheng et al. 2021): IoU of the "
            "masks' inner bands (default 2 % of the diagonal), summed over images per class, "
            "mean over classes."
        )
    if keys & {"ece", "nll", "brier"}:
        out.append(
            "Calibration of the predicted probabilities over valid pixels (lower is better): "
            f"ECE{' in %' if board.percent else ''} over 15 equal-width confidence bins, NLL "
            "in nats, Brier score summed over classes."
        )
    return out


def significance_notes(board: Leaderboard) -> list[str]:
    """What the ``†`` marks mean, and which rows were not tested and why.

    Args:
        board: the table.
    """
    info = board.significance
    if info is None:
        return []
    out = []
    if info["tested"]:
        out.append(
            f"{TIED}: mIoU not significantly below the best row's ({info['best']}) at "
            f"α = {info['alpha']}: a {info['test']}, {info['permutations']} permutations, "
            f"{info['correction']}."
        )
    for method, reason in info["untested"].items():
        out.append(f"Not tested against the best row: {method} ({reason}).")
    return out
