"""DenseCRF: behaviour on synthetic images with known answers, exact vs lattice agreement, and
the output contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbench.inference.crf import IMAGENET_MEAN, IMAGENET_STD, DenseCRF

EXACT = {"exact_max_pixels": 10**6}  # dense O(N^2) bilateral message
LATTICE = {"exact_max_pixels": 0}  # permutohedral-lattice approximation
PATHS = pytest.mark.parametrize("path", [EXACT, LATTICE], ids=["exact", "lattice"])


@pytest.fixture(autouse=True)
def _one_thread():
    """The images here are tiny: intra-op threads only add overhead (and stall on a busy host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LEFT_RGB = (40.0, 60.0, 170.0)
RIGHT_RGB = (210.0, 180.0, 50.0)


def normalise(rgb: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """0-255 RGB ``(B, 3, H, W)`` -> the network's normalised input."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (rgb / 255.0 - mean) / std


def two_regions(h: int, w: int, edge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image with colour LEFT_RGB in columns < edge and RIGHT_RGB after; true labels 0 / 1."""
    rgb = torch.empty(1, 3, h, w)
    rgb[:, :, :, :edge] = torch.tensor(LEFT_RGB).view(1, 3, 1, 1)
    rgb[:, :, :, edge:] = torch.tensor(RIGHT_RGB).view(1, 3, 1, 1)
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[:, :, edge:] = 1
    return rgb, labels


def logits_for(labels: torch.Tensor, num_classes: int, margin: float) -> torch.Tensor:
    """Logits favouring ``labels`` by ``margin`` over every other class."""
    return margin * F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


@PATHS
def test_confident_edge_aligned_prediction_is_unchanged(path):
    rgb, labels = two_regions(24, 32, edge=16)
    logits = logits_for(labels, num_classes=3, margin=6.0)
    out = DenseCRF(**path)(logits, normalise(rgb))
    assert torch.equal(out.argmax(1), labels)
    # Confident and consistent: the refined marginals stay confident.
    assert out.exp().max(dim=1).values.min().item() > 0.99


@PATHS
def test_isolated_noise_is_smoothed(path):
    rgb, labels = two_regions(24, 32, edge=16)
    noisy = labels.clone()
    for y, x in [(3, 4), (12, 9), (20, 2), (5, 22), (16, 27), (9, 19)]:  # single pixels
        noisy[0, y, x] = 1 - labels[0, y, x]
    noisy[0, 18:20, 10:12] = 1  # a 2x2 blob inside the left region
    logits = logits_for(noisy, num_classes=3, margin=1.0)  # mild everywhere
    before = accuracy(logits, labels)
    assert before == pytest.approx(1 - 10 / (24 * 32))
    out = DenseCRF(**path)(logits, normalise(rgb))
    assert accuracy(out, labels) == 1.0
    assert torch.equal(out.argmax(1), labels)


@PATHS
def test_boundary_moves_to_the_colour_edge_and_does_not_smear(path):
    rgb, labels = two_regions(24, 40, edge=20)
    image = normalise(rgb)
    crf = DenseCRF(**path)
    # Predicted boundary 3 px to the right of the colour edge, mild confidence.
    _, shifted = two_regions(24, 40, edge=23)
    logits = logits_for(shifted, num_classes=2, margin=1.0)
    before = accuracy(logits, labels)
    after = accuracy(crf(logits, image), labels)
    assert before == pytest.approx(1 - 3 / 40)
    assert after > before
    assert after == 1.0
    # A mild but edge-aligned prediction is not smeared across the edge.
    aligned = logits_for(labels, num_classes=2, margin=1.0)
    assert torch.equal(crf(aligned, image).argmax(1), labels)
    # Without the colour term the smoothness kernel alone leaves the shifted boundary alone:
    # the edge, not mere smoothing, is what moved it.
    spatial = DenseCRF(bilateral_weight=0.0, **path)
    assert accuracy(spatial(logits, image), labels) == pytest.approx(before)


@pytest.mark.parametrize("normalization", ["after", "symmetric"])
def test_exact_and_lattice_paths_agree(normalization):
    gen = torch.Generator().manual_seed(0)
    h, w, k = 40, 48, 4
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[:, :, 16:] = 1
    labels[:, 22:, 30:] = 2
    labels[:, 5:15, 34:44] = 3
    palette = torch.tensor([[30.0, 90, 40], [120, 120, 200], [220, 60, 60], [240, 230, 120]])
    rgb = palette[labels].permute(0, 3, 1, 2) + 8.0 * torch.randn(1, 3, h, w, generator=gen)
    image = normalise(rgb.clamp(0, 255))
    logits = logits_for(labels, k, margin=1.5) + torch.randn(1, k, h, w, generator=gen)
    before = accuracy(logits, labels)

    exact = DenseCRF(normalization=normalization, **EXACT)(logits, image)
    lattice = DenseCRF(normalization=normalization, **LATTICE)(logits, image)
    agree = (exact.argmax(1) == lattice.argmax(1)).float().mean().item()
    assert agree > 0.97
    # Both refine a noisy prediction substantially.
    assert before < 0.85
    assert accuracy(exact, labels) > 0.97
    assert accuracy(lattice, labels) > 0.97
    # And the marginals themselves are close.
    assert (exact.exp() - lattice.exp()).abs().mean().item() < 0.03


@PATHS
def test_output_contract(path):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 12, 16, generator=gen)
    image = torch.randn(2, 3, 12, 16, generator=gen)
    out = DenseCRF(iterations=3, **path)(logits, image)
    assert out.shape == logits.shape and out.dtype == logits.dtype
    assert torch.allclose(out.exp().sum(1), torch.ones(2, 12, 16), atol=1e-5)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, F.log_softmax(logits, 1))  # it did refine

    zero = DenseCRF(iterations=0, **path)(logits, image)
    assert torch.allclose(zero, F.log_softmax(logits, 1))
    half = DenseCRF(iterations=2, **path)(logits.double(), image)
    assert half.dtype == torch.float64


@PATHS
def test_batch_items_are_independent(path):
    rgb_a, labels_a = two_regions(16, 20, edge=8)
    rgb_b, labels_b = two_regions(16, 20, edge=13)
    rgb_b = rgb_b.flip(1)  # different colours too
    noise = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    logits = torch.cat([logits_for(labels_a, 3, 1.0), logits_for(labels_b, 3, 1.0)]) + noise
    image = normalise(torch.cat([rgb_a, rgb_b]))
    crf = DenseCRF(**path)
    batched = crf(logits, image)
    for i in range(2):
        alone = crf(logits[i : i + 1], image[i : i + 1])
        assert torch.allclose(batched[i : i + 1], alone, atol=1e-5)
    assert torch.equal(batched[0].argmax(0), labels_a[0])
    assert torch.equal(batched[1].argmax(0), labels_b[0])


def test_message_excludes_the_pixel_itself():
    # A lone pixel has no neighbours: with j != i the CRF cannot change its marginals.
    logits = torch.tensor([[[[0.3]], [[-1.2]], [[0.9]]]])
    out = DenseCRF(**EXACT)(logits, torch.zeros(1, 3, 1, 1))
    assert torch.allclose(out, F.log_softmax(logits, 1), atol=1e-6)


def test_image_normalisation_is_undone():
    rgb, labels = two_regions(12, 16, edge=6)
    logits = logits_for(labels, 3, 1.0) + torch.randn(1, 3, 12, 16)
    default = DenseCRF()(logits, normalise(rgb))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    custom = DenseCRF(mean=mean, std=std)(logits, normalise(rgb, mean, std))
    assert torch.allclose(default, custom, atol=1e-4)


def test_defaults_and_validation():
    from segbench.data import transforms

    assert (IMAGENET_MEAN, IMAGENET_STD) == (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    crf = DenseCRF()
    assert (crf.iterations, crf.bilateral_weight, crf.bilateral_xy_std) == (10, 4.0, 121.0)
    assert (crf.bilateral_rgb_std, crf.gaussian_weight, crf.gaussian_xy_std) == (5.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="does not match"):
        crf(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="iterations"):
        DenseCRF(iterations=-1)
    with pytest.raises(ValueError, match="bilateral_rgb_std"):
        DenseCRF(bilateral_rgb_std=0)


def test_fallback_code_paths_match(monkeypatch):
    """Chunked, uncached exact kernel and unpacked lattice keys give the same answers."""
    import segbench.inference.crf as crf_module
    import segbench.inference.permutohedral as lattice_module

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 10, 12, generator=gen)
    image = torch.randn(2, 3, 10, 12, generator=gen)
    exact = DenseCRF(**EXACT)(logits, image)
    lattice = DenseCRF(**LATTICE)(logits, image)
    monkeypatch.setattr(crf_module._ExactFilter, "_CACHE_ELEMS", 0)
    monkeypatch.setattr(lattice_module, "_MAX_CODE", 1)  # no int64 packing: row-wise unique
    chunked = DenseCRF(chunk_elems=7 * 120, **EXACT)(logits, image)
    unpacked = DenseCRF(**LATTICE)(logits, image)
    assert torch.allclose(exact, chunked, atol=1e-5)
    assert torch.allclose(lattice, unpacked, atol=1e-5)


def test_lattice_filters_channels_in_parts_as_one(monkeypatch):
    """Filtering many channels a few at a time (CHANNELS_PER_PASS) gives what one pass over all
    of them gives: columns never mix."""
    import segbench.inference.permutohedral as lattice_module

    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(300, 5, generator=gen) * 2
    values = torch.rand(300, 7, generator=gen)
    lattice = lattice_module.PermutohedralLattice(feats, torch.zeros(300, dtype=torch.long))
    whole = lattice.filter(values)
    monkeypatch.setattr(lattice_module, "CHANNELS_PER_PASS", 3)  # 7 channels as 3 + 2 + 2
    parts = lattice.filter(values)
    assert torch.allclose(whole, parts, rtol=1e-6, atol=1e-7)
    for c in range(7):  # and each channel alone
        assert torch.allclose(whole[:, c : c + 1], lattice.filter(values[:, c : c + 1]), atol=1e-7)
