"""Bad inputs get clear errors naming the problem; files are written atomically."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from vincie_sdk import Session, VincieModel
from vincie_sdk.config import SMALL, TINY
from vincie_sdk.image import load_image
from vincie_sdk.loading import atomic_path, read_state_dict


def test_missing_and_corrupt_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(tmp_path / "truncated.png")


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK", "I;16", "I", "F", "1"])
def test_odd_modes_become_rgb(mode, tmp_path):
    base = Image.fromarray((np.linspace(0, 1, 32 * 32).reshape(32, 32) * 255).astype(np.uint8))
    if mode == "I;16":
        img = Image.fromarray((np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16))
    elif mode == "F":
        img = Image.fromarray(np.linspace(0, 1, 32 * 32).reshape(32, 32).astype(np.float32))
    else:
        img = base.convert(mode)
    out = load_image(img)
    a = np.asarray(out)
    assert out.mode == "RGB" and a.shape == (32, 32, 3)
    if mode in ("I;16", "F", "L", "I"):
        assert a[0, 0, 0] < 5 and a[-1, -1, 0] > 250  # full range kept, not clipped to white


def test_too_large_image_is_refused():
    with pytest.raises(ValueError, match="4097x10 exceeds the 4096-pixel side limit"):
        load_image(Image.new("RGB", (4097, 10)))


def test_missing_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        VincieModel.from_pretrained(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a VINCIE checkpoint"):
        VincieModel.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="allow_download"):
        VincieModel.from_pretrained("ByteDance-Seed/VINCIE-3B")


def test_corrupt_checkpoint(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    data = (broken / "dit.safetensors").read_bytes()
    (broken / "dit.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read DiT weights .*dit.safetensors"):
        VincieModel.from_pretrained(broken)
    (broken / "dit.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot read"):
        read_state_dict(broken / "dit.pth")


def test_wrong_preset_checkpoint(tiny_model, tmp_path):
    """An official-layout folder whose weights belong to another config: every mismatch is named."""
    folder = tmp_path / "official"
    folder.mkdir()
    torch.save(tiny_model.dit.state_dict(), folder / "dit.pth")
    torch.save(tiny_model.vae.state_dict(), folder / "vae.pth")
    tiny_model.text_encoder.save_pretrained(folder / "text_encoder")
    # Right config: loads, and the DiT config is recognised from the shapes alone.
    model = VincieModel.from_pretrained(folder, config=TINY)
    assert model.config.dit == TINY.dit
    # Wrong preset: refused with the keys that do not fit.
    with pytest.raises(ValueError, match=r"dit.pth does not match the model: missing keys: .*shape mismatches: "):
        VincieModel.from_pretrained(folder, config=dataclasses.replace(SMALL, text=TINY.text))
    # Official folder without a config: the VAE does not fit the official one.
    with pytest.raises(ValueError, match="vae.pth does not match"):
        VincieModel.from_pretrained(folder)


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_too_thin_image_is_refused(tiny_model):
    with pytest.raises(ValueError, match="400x4 at resolution 64 leaves no 16x16 block"):
        Session(tiny_model, Image.new("RGB", (400, 4)))
