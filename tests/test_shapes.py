"""The built-in shapes dataset: deterministic, shape-defined classes, VOC-style ignore borders."""

from __future__ import annotations

import numpy as np
import pytest

from segbench.data.shapes import CLASS_NAMES, ShapesDataset, _inside, _outline

SIZES = {"train": 40, "val": 10, "test": 10}


def test_deterministic_by_seed_and_split():
    a = ShapesDataset("train", SIZES, image_size=64, seed=3)
    b = ShapesDataset("train", SIZES, image_size=64, seed=3)
    for i in (0, 7, 39):
        (ia, ma, _), (ib, mb, _) = a.load(i), b.load(i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    other_seed = ShapesDataset("train", SIZES, image_size=64, seed=4).load(0)[0]
    assert not np.array_equal(other_seed, a.load(0)[0])
    val = ShapesDataset("val", SIZES, image_size=64, seed=3)
    train_images = {a.load(i)[0].tobytes() for i in range(len(a))}
    assert all(val.load(i)[0].tobytes() not in train_images for i in range(len(val)))


def test_classes_labels_and_ignore_borders():
    ds = ShapesDataset("train", SIZES, image_size=96, seed=0)
    assert len(CLASS_NAMES) >= 6 and CLASS_NAMES[0] == "background"
    seen = set()
    for i in range(len(ds)):
        image, mask, name = ds.load(i)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert mask.shape == (96, 96)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(len(CLASS_NAMES))) | {255}, name
        seen |= values
        border = mask == 255
        assert 0 < border.mean() < 0.2  # thin bands, not regions
    assert seen == set(range(len(CLASS_NAMES))) | {255}  # every class occurs


def test_ignore_band_is_exactly_the_region_outline():
    """The ignore band is the outline of the unbordered label map, and nothing else changes."""
    with_border = ShapesDataset("train", SIZES, image_size=64, seed=2, border=1)
    raw = ShapesDataset("train", SIZES, image_size=64, seed=2, border=0)
    for i in range(10):
        image_b, mask, _ = with_border.load(i)
        image_r, label, _ = raw.load(i)
        assert np.array_equal(image_b, image_r)
        edge = _outline(label, 1)
        assert np.array_equal(mask == 255, edge)
        assert np.array_equal(mask[~edge], label[~edge])


def test_outline_marks_both_sides_of_a_boundary():
    label = np.zeros((6, 6), np.uint8)
    label[2:4, 2:4] = 1
    edge = _outline(label, 1)
    assert edge[2:4, 2:4].all()  # inner side
    assert edge[1, 2] and edge[2, 1] and not edge[0, 0] and not edge[1, 1]
    assert _outline(label, 2).sum() > edge.sum()


def test_class_is_shape_not_colour():
    """Mean colour per class is nearly the same for all classes: colour carries no label."""
    ds = ShapesDataset("train", {"train": 150}, image_size=64, seed=1, border=0)
    sums = np.zeros((len(CLASS_NAMES), 3))
    counts = np.zeros(len(CLASS_NAMES))
    for i in range(len(ds)):
        image, mask, _ = ds.load(i)
        for c in range(1, len(CLASS_NAMES)):
            sel = mask == c
            sums[c] += image[sel].sum(0)
            counts[c] += sel.sum()
    means = sums[1:] / counts[1:, None]
    assert np.ptp(means, axis=0).max() < 30  # out of 255: no class owns a colour


@pytest.mark.parametrize("kind", CLASS_NAMES[1:])
def test_each_shape_is_a_distinct_region(kind):
    y, x = np.mgrid[-1.2:1.2:121j, -1.2:1.2:121j]
    inside = _inside(kind, x, y)
    assert 0.1 < inside.mean() < 0.7
    others = [k for k in CLASS_NAMES[1:] if k != kind]
    for other in others:
        assert (inside != _inside(other, x, y)).mean() > 0.02, (kind, other)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        ShapesDataset("training", SIZES)
    with pytest.raises(ValueError, match="num_classes=5"):
        ShapesDataset("train", SIZES, num_classes=5)
