"""Autoencoder training: the loss falls, resume is exact, the exported folder loads strictly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vincie_sdk.config import VAEConfig
from vincie_sdk.models.vae import CausalVAE
from vincie_train import autoencoder
from vincie_train.autoencoder import (
    SHAPES_VAE,
    AutoencoderTrainConfig,
    load_autoencoder,
    train_autoencoder,
    training_batch,
)

TINY = AutoencoderTrainConfig(
    vae=dataclasses.replace(SHAPES_VAE, block_out_channels=(8, 8, 16), norm_num_groups=4),
    image_size=32, batch_size=4, max_steps=6, warmup_steps=2, lr=3e-3, log_every=1, num_threads=1,
    stats_images=8, eval_frames=4, eval_masks=4, eval_scenes=4,
)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["l1"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_shapes_vae_geometry() -> None:
    vae = CausalVAE(SHAPES_VAE).eval()
    with torch.no_grad():
        latents = vae.encode_images(torch.zeros(2, 3, 64, 64))
        assert latents.shape == (2, 16, 16, 8)
        assert vae.decode_images(latents).shape == (2, 3, 64, 64)
        # No temporal downsampling: a 3-frame clip keeps its 3 latent frames.
        mean, _ = vae.encode_posterior(torch.zeros(1, 3, 3, 32, 32))
        assert mean.shape == (1, 8, 3, 8, 8)


def test_batches_depend_only_on_seed_and_step() -> None:
    a, b = training_batch(TINY, 3), training_batch(TINY, 3)
    assert a.shape == (4, 3, 1, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, training_batch(TINY, 4))
    assert a.min() >= -1 and a.max() <= 1


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, max_steps=30, warmup_steps=3, batch_size=2)
    train_autoencoder(cfg, tmp_path, export=False)
    losses = _losses(tmp_path)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_resume_continues_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train_autoencoder(TINY, tmp_path / "straight", export=False)
    # Checkpoint after every step, and crash while building the batch of step 3.
    cfg = dataclasses.replace(TINY, checkpoint_minutes=0.0)

    def crash_at_3(config: AutoencoderTrainConfig, step: int) -> torch.Tensor:
        if step == 3:
            raise RuntimeError("simulated crash")
        return training_batch(config, step)

    monkeypatch.setattr(autoencoder, "training_batch", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_autoencoder(cfg, tmp_path / "resumed", export=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["state"]["step"] == 3
    resumed = train_autoencoder(cfg, tmp_path / "resumed", export=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))


def test_export_loads_strictly(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, max_steps=2)
    model = train_autoencoder(cfg, tmp_path)
    final = tmp_path / "final"
    assert {p.name for p in final.iterdir()} == {"vae.safetensors", "vae_config.json", "metrics.json", "recon.png"}
    values = json.loads((final / "vae_config.json").read_text())
    vae_cfg = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    assert vae_cfg.scaling_factor == model.config.scaling_factor != 1.0
    strict = CausalVAE(vae_cfg)
    strict.load_state_dict(load_file(final / "vae.safetensors"), strict=True)
    loaded = load_autoencoder(final)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode_images(x), model.encode_images(x))
    metrics = json.loads((final / "metrics.json").read_text())
    assert {"frames_mae", "masks_iou_mean", "scenes_object_color_accuracy", "parameters"} <= set(metrics)
    with pytest.raises(FileNotFoundError, match="vae_config.json"):
        load_autoencoder(tmp_path)
