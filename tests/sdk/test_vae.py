"""CausalVAE: parity with the official code (fixtures), official key layout, single-image API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vincie_sdk.config import VAEConfig
from vincie_sdk.models.vae import CausalVAE, convert_official_state_dict, vae_config_from_official

PARITY_TOL = 1e-4  # the official fixtures are float32; an exact re-implementation lands near 1e-6
SMALL = VAEConfig(block_out_channels=(8, 8, 16, 16), norm_num_groups=4)


def _small_vae(seed: int = 0, **overrides) -> CausalVAE:
    """A tiny random VAE; every parameter is perturbed so no symmetric init hides a layout error."""
    torch.manual_seed(seed)
    cfg = VAEConfig(**{**SMALL.__dict__, **overrides})
    vae = CausalVAE(cfg).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


@pytest.fixture(scope="module")
def tiny_official(official_fixtures: Path):
    folder = official_fixtures / "vae_tiny"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    from safetensors.torch import load_file

    meta = json.loads((folder / "meta.json").read_text())
    vae = CausalVAE(vae_config_from_official(meta["config"])).eval()
    vae.load_state_dict(load_file(folder / "vae.safetensors"), strict=True)
    return vae, load_file(folder / "vae_io.safetensors")


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("fast", [True, False], ids=["2d-fast-path", "3d-path"])
def test_parity_with_official_fixture(tiny_official, fast: bool) -> None:
    vae, io = tiny_official
    vae.set_single_frame_fast_path(fast)
    try:
        with torch.no_grad():
            mean, logvar = vae.encode_posterior(io["image"].unsqueeze(2))
            decoded = vae.decode(io["posterior_mean"]).squeeze(2)
            clip_mean, _ = vae.encode_posterior(io["clip5"])
    finally:
        vae.set_single_frame_fast_path(True)
    errors = {
        "posterior_mean": _max_err(mean, io["posterior_mean"]),
        "posterior_logvar": _max_err(logvar, io["posterior_logvar"]),
        "decoded_from_mean": _max_err(decoded, io["decoded_from_mean"]),
        "clip5_posterior_mean": _max_err(clip_mean, io["clip5_posterior_mean"]),
    }
    print(f"VAE parity ({'2-D fast path' if fast else '3-D path'}) max abs errors: {errors}")
    assert all(e < PARITY_TOL for e in errors.values()), errors


def test_official_config_mapping() -> None:
    official_3b = {
        "__object__": {"path": "models.vae.modules.video_vae", "name": "VideoAutoencoderKLWrapper"},
        "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock3D"] * 4, "up_block_types": ["UpDecoderBlock3D"] * 4,
        "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
        "norm_num_groups": 32, "slicing_sample_min_size": 4, "temporal_scale_num": 2, "inflation_mode": "pad",
        "spatial_downsample_factor": 8, "temporal_downsample_factor": 4,
        "use_quant_conv": False, "use_post_quant_conv": False,
    }
    assert vae_config_from_official(official_3b) == VAEConfig()
    assert vae_config_from_official(official_3b, use_sample=False).use_sample is False
    with pytest.raises(ValueError, match="quant_conv"):
        vae_config_from_official({**official_3b, "use_quant_conv": True})
    with pytest.raises(ValueError, match="unsupported keys"):
        vae_config_from_official({**official_3b, "extra_cond_dim": 4})


def test_3b_state_dict_matches_official_keys(official_fixtures: Path) -> None:
    manifest = official_fixtures / "vincie3b_vae_keys.json"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not found")
    expected = {k: tuple(v) for k, v in json.loads(manifest.read_text())["keys"].items()}
    with torch.device("meta"):
        vae = CausalVAE(VAEConfig())
    got = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert sorted(set(expected) - set(got)) == [], "missing keys"
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    assert got == expected
    assert len(got) == 250


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_single_frame_fast_path_equals_3d_path(dtype: torch.dtype, tol: float) -> None:
    # float64 shows the shortcut is exact (not merely close); float32 differs by summation order only.
    vae = _small_vae().to(dtype)
    image = (torch.rand(2, 3, 1, 24, 40) * 2 - 1).to(dtype)  # (B, C, T, H, W)
    with torch.no_grad():
        mean_fast, logvar_fast = vae.encode_posterior(image)
        dec_fast = vae.decode(mean_fast)
        vae.set_single_frame_fast_path(False)
        mean_3d, logvar_3d = vae.encode_posterior(image)
        dec_3d = vae.decode(mean_fast)
    errors = (_max_err(mean_fast, mean_3d), _max_err(logvar_fast, logvar_3d), _max_err(dec_fast, dec_3d))
    print(f"2-D vs 3-D single-frame path, {dtype}, max abs errors (mean, logvar, decode): {errors}")
    assert max(errors) < tol


def test_clip_shapes_are_causal() -> None:
    vae = _small_vae()
    with torch.no_grad():
        for frames, latent_frames in ((1, 1), (2, 1), (5, 2), (8, 2), (9, 3)):
            mean, logvar = vae.encode_posterior(torch.zeros(1, 3, frames, 16, 24))
            assert mean.shape == logvar.shape == (1, 16, latent_frames, 2, 3)
            assert vae.decode(mean).shape == (1, 3, 1 + 4 * (latent_frames - 1), 16, 24)


def test_encode_decode_images_scaling_and_shapes() -> None:
    vae = _small_vae(scaling_factor=0.5, shifting_factor=0.25)
    images = torch.rand(3, 3, 16, 32) * 2 - 1
    with torch.no_grad():
        mean, logvar = vae.encode_posterior(images.unsqueeze(2))
        latents = vae.encode_images(images, sample=False)
        assert latents.shape == (3, 2, 4, 16)
        expected = ((mean - 0.25) * 0.5).squeeze(2).permute(0, 2, 3, 1)
        torch.testing.assert_close(latents, expected)

        # Posterior sample: reproducible from the generator and equal to mean + std * noise.
        draw = vae.encode_images(images, generator=torch.Generator().manual_seed(7), sample=True)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
        sampled = mean + torch.exp(0.5 * logvar) * noise
        torch.testing.assert_close(draw, ((sampled - 0.25) * 0.5).squeeze(2).permute(0, 2, 3, 1))
        assert not torch.allclose(draw, latents)
        # config.use_sample (True by default) decides when `sample` is not given.
        default = vae.encode_images(images, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(default, draw)

        decoded = vae.decode_images(latents)
        assert decoded.shape == (3, 3, 16, 32)
        torch.testing.assert_close(decoded, vae.decode(mean).squeeze(2))


@pytest.mark.parametrize("shape", [(1, 3, 30, 32), (1, 3, 32, 20)])
def test_bad_image_size_raises(shape) -> None:
    vae = _small_vae()
    with pytest.raises(ValueError, match=r"multiples of 8.*" + str(shape[2])):
        vae.encode_images(torch.zeros(shape))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode_posterior(torch.zeros(shape[0], 3, 1, *shape[2:]))


def test_bad_layouts_raise() -> None:
    vae = _small_vae()
    with pytest.raises(ValueError, match="channels-last"):
        vae.decode_images(torch.zeros(1, 16, 2, 2))  # channels-first by mistake
    with pytest.raises(ValueError, match="4-D"):
        vae.encode_images(torch.zeros(1, 3, 1, 16, 16))
    with pytest.raises(ValueError, match="spatial_downsample_factor"):
        CausalVAE(VAEConfig(block_out_channels=(8, 8, 16), norm_num_groups=4))


def test_deprecated_attention_keys_are_renamed() -> None:
    vae = _small_vae()
    new_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    old = {}
    for key, value in vae.state_dict().items():
        for new, dep in new_names.items():
            key = key.replace(new, dep) if ".attentions." in key else key
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    converted = convert_official_state_dict(old)
    assert converted.keys() == vae.state_dict().keys()
    vae.load_state_dict(converted, strict=True)


@pytest.mark.parametrize("frames", [1, 5])
def test_gradients_reach_every_parameter(frames: int) -> None:
    vae = _small_vae().train()
    clip = torch.rand(1, 3, frames, 16, 16) * 2 - 1
    recon, mean, logvar = vae(clip, generator=torch.Generator().manual_seed(0))
    assert recon.shape == clip.shape
    loss = (recon - clip).pow(2).mean() + 1e-3 * (mean.pow(2) + logvar.exp() - logvar).mean()
    loss.backward()
    missing = [n for n, p in vae.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
