"""GAN-seg (Luc et al., 2016): the model is its segmentor at inference, the discriminator's input
encodings, ground-truth label maps, and adversarial training steps with two optimizers."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from segbench.engine.adversarial import AdversarialTask
from segbench.engine.build import build_model
from segbench.losses import CrossEntropyLoss
from segbench.metrics import Evaluator
from segbench.models.encoders import VGGEncoder
from segbench.models.fcn import FCN
from segbench.models.ganseg import Discriminator, GANSeg
from segbench.optim import poly
from tests.conftest import compose_config

K = 4
IGNORE = 255
SIZES = [(65, 97), (64, 64)]


def tiny_segmenter(num_classes: int = K, dropout: float = 0.1) -> FCN:
    encoder = VGGEncoder("tiny", stages=[[8], [16], [32], [32], [32]], batch_norm=True)
    return FCN(encoder, num_classes, "8s", fc_channels=16, fc_kernel=3, dropout=dropout)


def tiny_discriminator(mode: str = "product", num_classes: int = K) -> Discriminator:
    return Discriminator(num_classes, input_mode=mode, stages=[[8], [16]])


def tiny_ganseg(mode: str = "product", dropout: float = 0.1) -> GANSeg:
    return GANSeg(tiny_segmenter(dropout=dropout), tiny_discriminator(mode), K)


@pytest.mark.parametrize("training", [True, False])
def test_forward_is_the_segmenters(training):
    torch.manual_seed(0)
    model = tiny_ganseg(dropout=0.0).train(training)
    x = torch.randn(2, 3, 65, 97)
    out, ref = model(x), model.segmenter(x)
    assert out.keys() == ref.keys() == {"out"}
    assert out["out"].shape == (2, K, 65, 97)
    torch.testing.assert_close(out["out"], ref["out"])


@pytest.mark.parametrize("mode", ["basic", "product", "scaling"])
@pytest.mark.parametrize("size", SIZES)
def test_discriminator_scores_images_and_its_gradient_reaches_the_segmenter(mode, size):
    torch.manual_seed(0)
    model = tiny_ganseg(mode)
    x = torch.randn(2, 3, *size)
    probs = model(x)["out"].softmax(1)
    logits = model.discriminate(x, probs)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    first = model.discriminator.features[0]
    assert first.in_channels == (3 * K if mode == "product" else 3 + K)
    logits.sum().backward()
    grads = [p.grad for p in model.segmenter.encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # a detached map gives the segmenter nothing
    model.zero_grad(set_to_none=True)
    model.discriminate(x, probs.detach()).sum().backward()
    assert all(p.grad is None for p in model.segmenter.parameters())


def test_product_encoding_multiplies_every_class_map_with_the_image():
    disc = tiny_discriminator("product")
    image, maps = torch.randn(2, 3, 5, 6), torch.rand(2, K, 5, 6)
    enc = disc.encode(image, maps)
    assert enc.shape == (2, 3 * K, 5, 6)
    for c in range(K):
        torch.testing.assert_close(enc[:, 3 * c : 3 * c + 3], maps[:, c : c + 1] * image)
    basic = tiny_discriminator("basic").encode(image, maps)
    torch.testing.assert_close(basic, torch.cat([image, maps], 1))
    pooled = Discriminator(K, "basic", stages=[[4]], downsample=2).encode(image, maps)
    assert pooled.shape == (2, 3 + K, 3, 3)  # ceil mode: odd sizes keep their border


def test_real_maps_are_one_hot_and_ignored_pixels_take_the_prediction():
    torch.manual_seed(0)
    probs = torch.randn(2, K, 5, 6).softmax(1)
    mask = torch.randint(0, K, (2, 5, 6))
    mask[0, :2] = IGNORE
    mask[1, :, 0] = IGNORE
    real = tiny_discriminator("product").real_maps(mask, probs, IGNORE)
    ignored = mask == IGNORE
    expected = torch.nn.functional.one_hot(mask.clamp(max=K - 1), K).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(
        real.permute(0, 2, 3, 1)[~ignored], expected.permute(0, 2, 3, 1)[~ignored]
    )
    torch.testing.assert_close(
        real.permute(0, 2, 3, 1)[ignored], probs.permute(0, 2, 3, 1)[ignored]
    )
    assert not real.requires_grad


def test_scaling_keeps_the_true_class_above_tau_and_the_rest_proportional():
    torch.manual_seed(0)
    probs = torch.randn(1, K, 4, 4).mul(3).softmax(1)
    mask = torch.randint(0, K, (1, 4, 4))
    mask[0, 0, 0] = IGNORE
    real = tiny_discriminator("scaling").real_maps(mask, probs, IGNORE)
    torch.testing.assert_close(real.sum(1), torch.ones(1, 4, 4))
    valid = mask != IGNORE
    p_true = probs.gather(1, mask.clamp(max=K - 1)[:, None])[:, 0]
    y_true = real.gather(1, mask.clamp(max=K - 1)[:, None])[:, 0]
    torch.testing.assert_close(y_true[valid], p_true[valid].clamp(min=0.9))
    # the other classes keep their ratios
    others = torch.ones_like(real, dtype=torch.bool).scatter(
        1, mask.clamp(max=K - 1)[:, None], False
    )
    ratio = real / probs
    for i, j in valid.nonzero()[:, 1:].tolist():
        r = ratio[0, :, i, j][others[0, :, i, j]]
        torch.testing.assert_close(r, r[:1].expand_as(r))
    torch.testing.assert_close(real[0, :, 0, 0], probs[0, :, 0, 0])


def test_mismatches_are_refused():
    with pytest.raises(ValueError, match="input_mode must be one of"):
        Discriminator(K, input_mode="concat")
    with pytest.raises(ValueError, match="discriminator Discriminator has 3"):
        GANSeg(tiny_segmenter(), tiny_discriminator(num_classes=3), K)
    with pytest.raises(ValueError, match="output_stride=8 but the segmenter's encoder ends at"):
        GANSeg(tiny_segmenter(), tiny_discriminator(), K, output_stride=8)
    with pytest.raises(TypeError, match="AdversarialTask trains a GANSeg model"):
        make_task(tiny_segmenter())


def make_task(model, **kw) -> AdversarialTask:
    return AdversarialTask(
        model=model,
        loss=CrossEntropyLoss(K, ignore_index=IGNORE),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        scheduler=functools.partial(poly, power=0.9),
        evaluator=Evaluator(K, IGNORE, [f"c{i}" for i in range(K)]),
        **kw,
    )


def loader(all_ignored: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(4):
        mask = torch.randint(0, K, (65, 97), generator=g)
        mask[:3] = IGNORE
        if all_ignored:
            mask[:] = IGNORE
        items.append({"image": torch.randn(3, 65, 97, generator=g), "mask": mask})
    return DataLoader(items, batch_size=2)


def fit(task: AdversarialTask, data: DataLoader, steps: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=data)
    return trainer


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before))


def test_a_training_step_updates_both_networks_with_their_own_optimizers():
    torch.manual_seed(0)
    model = tiny_ganseg("product")
    task = make_task(model, adversarial_weight=0.5, d_steps=2)
    seg0, disc0 = snapshot(model.segmenter), snapshot(model.discriminator)
    trainer = fit(task, loader())
    assert changed(model.segmenter, seg0) and changed(model.discriminator, disc0)
    # one step per batch: the discriminator's updates are not counted, the schedule ran out
    assert trainer.global_step == 2
    opt_g, opt_d = trainer.optimizers
    seg_ids = {id(p) for p in model.segmenter.parameters()}
    disc_ids = {id(p) for p in model.discriminator.parameters()}
    g_ids = {id(p) for group in opt_g.param_groups for p in group["params"]}
    d_ids = {id(p) for group in opt_d.param_groups for p in group["params"]}
    assert g_ids == seg_ids and d_ids == disc_ids and not g_ids & d_ids
    assert isinstance(opt_d, torch.optim.Adam) and opt_d.param_groups[0]["lr"] == 1e-4
    assert task.lr_schedulers().last_epoch == 2
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.0)  # poly over 2 steps
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/loss_seg", "train/loss_adv", "train/loss_d"):
        assert torch.isfinite(logged[f"{key}_step"]), key
    total = logged["train/loss_seg_step"] + 0.5 * logged["train/loss_adv_step"]
    torch.testing.assert_close(logged["train/loss_step"], total)
    assert task.results["train"].summary["pixel_acc"] >= 0  # fit metrics were updated and logged
    assert all(p.requires_grad for p in model.parameters())  # toggling was undone


def test_the_adversarial_term_alone_moves_the_segmenter():
    """Every pixel ignored: the segmentation loss is 0, so any change comes through D."""
    torch.manual_seed(0)
    model = tiny_ganseg("basic", dropout=0.0)
    task = make_task(model, adversarial_weight=1.0)
    seg0 = snapshot(model.segmenter)
    trainer = fit(task, loader(all_ignored=True), steps=1)
    assert trainer.callback_metrics["train/loss_seg_step"] == 0
    assert changed(model.segmenter, seg0)


def test_ddp_without_unused_parameter_detection_is_refused():
    from types import SimpleNamespace

    from pytorch_lightning.strategies import DDPStrategy

    task = make_task(tiny_ganseg())
    task.trainer = SimpleNamespace(strategy=DDPStrategy())
    with pytest.raises(ValueError, match="trainer.strategy=ddp_find_unused_parameters_true"):
        task.setup("fit")
    task.setup("test")  # evaluation runs no backward pass
    task.trainer = SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=True))
    task.setup("fit")


def test_the_config_composes_and_builds(tmp_path):
    cfg = compose_config("train", ["model=ganseg", "backbone=tiny"], tmp_path)
    assert cfg.model.name == "ganseg_fcn8s" and cfg.run_name.startswith("ganseg_fcn8s_tiny")
    net = build_model(cfg.model)
    assert isinstance(net, GANSeg) and isinstance(net.segmenter, FCN)
    assert net.num_classes == net.discriminator.num_classes == cfg.dataset.num_classes
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 65, 97))["out"].shape == (1, cfg.dataset.num_classes, 65, 97)
    # the model's config picks the adversarial task, which holds the training settings
    task = instantiate(cfg.task)
    assert task.func is AdversarialTask
    assert task.keywords["adversarial_weight"] == 0.1 and task.keywords["d_steps"] == 1
    opt = task.keywords["discriminator_optimizer"]([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-4
    # another segmentor, chosen on the command line, with its output stride and aux loss
    cfg = compose_config(
        "train", ["model=ganseg", "backbone=tiny", "model@model.segmenter=pspnet"], tmp_path
    )
    assert cfg.model.name == "ganseg_pspnet" and cfg.model.segmenter.aux_weight == 0.4
    assert cfg.backbone.output_stride == 8
    net = build_model(cfg.model)
    assert net.segmenter.encoder.strides[-1] == 8 and net.output_stride == 8
    assert net.segmenter.aux_weight == 0.4  # the segmentor's head carries its aux loss weight
