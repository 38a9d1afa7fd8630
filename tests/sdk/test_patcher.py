"""The pixel patcher: exact round trip, model integration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vincie_sdk import Session, VincieModel
from vincie_sdk.config import TINY, VAEConfig
from vincie_sdk.models.autoencoder import build_autoencoder

PIXEL = VAEConfig(kind="pixel", spatial_downsample_factor=4, latent_channels=48, scaling_factor=2.0, shifting_factor=0.1)


def test_round_trip_is_exact():
    p = build_autoencoder(PIXEL)
    x = torch.rand(3, 3, 32, 48) * 2 - 1
    z = p.encode_images(x)
    assert z.shape == (3, 8, 12, 48)
    assert torch.allclose(p.decode_images(z), x, atol=1e-6)
    assert list(p.state_dict()) == []
    with pytest.raises(ValueError, match="multiples of 4"):
        p.encode_images(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="latent_channels"):
        build_autoencoder(dataclasses.replace(PIXEL, latent_channels=16))
    with pytest.raises(ValueError, match="kind"):
        build_autoencoder(dataclasses.replace(PIXEL, kind="gan"))


def test_a_pixel_model_saves_loads_and_edits(tmp_path, source_image):
    cfg = dataclasses.replace(TINY, vae=PIXEL, dit=dataclasses.replace(TINY.dit, vid_in_channels=97, vid_out_channels=48))
    model = VincieModel.from_random(cfg)
    model.save_pretrained(tmp_path / "m")
    loaded = VincieModel.from_pretrained(tmp_path / "m")
    img = Session(loaded, source_image, steps=2).edit("add a hat")
    assert img.size == (64, 48)
    s = Session(loaded, source_image)
    from vincie_sdk.image import preprocess

    assert torch.allclose(loaded.decode_latents(s.frames[0].latent[None]), preprocess([s.frames[0].image], 64), atol=1e-6)
