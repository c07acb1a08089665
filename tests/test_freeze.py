"""``backbone.freeze``: a frozen encoder keeps every tensor and stays in eval mode, on timm's,
the VGG and the ViT encoders, through one optimizer step and through Lightning's ``fit``."""

from __future__ import annotations

import copy
import io

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn

from segbench.engine.build import build_datamodule, build_model, build_optimizer, build_task
from segbench.models.base import segmenter_of
from segbench.models.freeze import freeze, is_frozen
from tests.conftest import CONF, compose_config, options

# model and backbone of each encoder kind: timm's ResNet and the VGG encoder carry BatchNorm
ENCODERS = {
    "timm": ["model=unet", "backbone=tiny_resnet"],
    "vgg": ["model=unet", "backbone=tiny"],
    "vit": ["model=linear_probe", "backbone=vit_small_patch14_dinov2"],
}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _identical(before: dict, module: nn.Module) -> list[str]:
    """The tensors of ``module`` that differ from ``before`` (bit for bit)."""
    after = module.state_dict()
    return [k for k, v in before.items() if not torch.equal(v, after[k])]


def test_freeze_pins_eval_mode_and_survives_copies():
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    outer = nn.Sequential(inner, nn.Conv2d(4, 2, 1))
    assert freeze(inner) is inner and is_frozen(inner) and not is_frozen(outer)
    assert not any(p.requires_grad for p in inner.parameters())
    assert all(p.requires_grad for p in outer[1].parameters())
    for call in (lambda: outer.train(), lambda: outer.train(True), lambda: inner.train(True)):
        call()
        assert outer.training and outer[1].training
        assert not any(m.training for m in inner.modules())
    outer.eval()
    assert not inner.training
    buffer = io.BytesIO()
    torch.save(outer, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(outer), torch.load(buffer, weights_only=False)):
        copied.train()
        assert copied.training and not copied[0].training and is_frozen(copied[0])
        assert copied[0].train.module is copied[0]  # pinned to the copy, not the original
    with pytest.raises(ValueError, match="boolean"):
        inner.train("yes")


def test_every_backbone_config_has_freeze_false():
    for option in options("backbone"):
        assert OmegaConf.load(CONF / "backbone" / f"{option}.yaml").freeze is False, option


def test_freeze_key_is_popped_and_absent_means_not_frozen(tmp_path):
    cfg = compose_config("train", ["model=unet", "backbone=tiny"], tmp_path)
    assert not any(is_frozen(m) for m in build_model(cfg.model).modules())
    legacy = OmegaConf.to_container(cfg.model, resolve=True)  # a config saved before the key
    del legacy["encoder"]["freeze"]
    net = build_model(legacy)
    assert all(p.requires_grad for p in net.parameters())
    cfg = compose_config("train", ["model=unet", "backbone=tiny", "backbone.freeze=true"], tmp_path)
    net = build_model(cfg.model)
    assert is_frozen(net.encoder) and not is_frozen(net.decoder)
    assert all(p.requires_grad for p in net.decoder.parameters())


def test_gan_seg_freezes_its_segmenter_encoder(tmp_path):
    overrides = ["model=ganseg", "backbone=tiny", "backbone.freeze=true"]
    net = build_model(compose_config("train", overrides, tmp_path).model)
    assert is_frozen(segmenter_of(net).encoder)
    assert all(p.requires_grad for p in net.discriminator.parameters())


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_adamw_step_leaves_the_frozen_encoder_bit_identical(kind, tmp_path):
    overrides = [*ENCODERS[kind], "backbone.freeze=true", "optimizer=adamw"]
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.optimizer.weight_decay > 0  # decoupled decay would shrink a weight it is given
    torch.manual_seed(0)
    net = build_model(cfg.model)
    encoder = segmenter_of(net).encoder
    before, head_before = _snapshot(encoder), _snapshot(net.head)
    # the optimizer is handed every parameter, frozen ones included, as the task does
    optimizer = build_optimizer(cfg.optimizer)(net.parameters())
    net.train()
    assert not encoder.training and net.training
    for _ in range(2):
        out = net(torch.randn(2, 3, 56, 70))["out"]
        loss = nn.functional.cross_entropy(out, torch.randint(0, 7, (2, 56, 70)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in encoder.parameters())
    assert _identical(before, encoder) == []  # parameters and BatchNorm statistics
    assert _identical(head_before, net.head)  # while the head learnt


class _Modes(pl.Callback):
    """Records the network's and its encoder's training flags at every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        network = segmenter_of(pl_module.model)
        self.seen.append((network.training, network.encoder.training))


# GAN-seg: the adversarial task toggles requires_grad between its two optimizers
@pytest.mark.parametrize("kind", ["timm", "vgg", pytest.param("ganseg", marks=pytest.mark.slow)])
def test_fit_keeps_the_frozen_encoder_in_eval_mode(kind, tmp_path):
    picked = ["model=ganseg", "backbone=tiny"] if kind == "ganseg" else ENCODERS[kind]
    overrides = [*picked, "debug=fast", "backbone.freeze=true", "dataset.subset.train=8"]
    cfg = compose_config("train", overrides, tmp_path)
    torch.manual_seed(0)
    dm = build_datamodule(cfg.dataset, ["train", "val"], seed=0)
    task = build_task(cfg, dm, build_model(cfg.model), run_config={})
    network = segmenter_of(task.model)
    encoder = network.encoder
    before, decoder_before = _snapshot(encoder), _snapshot(network.decoder)
    modes = _Modes()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,  # Lightning calls model.train() at each epoch's start
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[modes],
    )
    trainer.fit(task, datamodule=dm)
    assert len(modes.seen) == 4 and all(seen == (True, False) for seen in modes.seen)
    assert _identical(before, encoder) == []
    assert not any(p.requires_grad for p in encoder.parameters())
    assert _identical(decoder_before, network.decoder)  # the decoder learnt
