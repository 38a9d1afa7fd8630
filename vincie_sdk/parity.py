"""Parity against outputs of the official code: fixture folders and key/shape manifests.

A DiT fixture folder holds ``meta.json`` (the official constructor config + sampling settings),
``dit.safetensors`` (official key names) and ``session_io.safetensors`` (inputs and outputs of the
official code); a VAE folder holds ``meta.json``, ``vae.safetensors`` and ``vae_io.safetensors``.
Every config value is read from ``meta.json``: nothing is assumed about widths, heads or depths.

Example:
    >>> results = check_fixture("../shared/fixtures/official/dit_tiny")   # doctest: +SKIP
    >>> all(r.ok for r in results)                                        # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DiTConfig, SamplerConfig, VincieConfig
from .denoise import PackedInputs, denoise
from .loading import check_state_dict, read_state_dict
from .models.dit import VincieTransformer
from .models.vae import CausalVAE, convert_official_state_dict, vae_config_from_official
from .sampler import FlowMatchSampler

TOLERANCES = {"forward": 1e-4, "sampled": 1e-3, "vae": 1e-4, "exact": 1e-5}

# Official config values this implementation supports (anything else is reported, not ignored).
_SUPPORTED = {"norm": "fusedrms", "qk_norm": "fusedrms", "vid_out_norm": "fusedrms", "ada": "single",
              "mlp_type": "swiglu", "block_type": "mmdit", "msa_type": "mm_full", "rope_type": "mmrope3d",
              "qk_bias": False}


@dataclass
class ParityResult:
    name: str
    max_abs_error: float
    tolerance: float
    scale: float  # mean |reference|, to read the error against

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance


def dit_config_from_meta(meta: dict) -> DiTConfig:
    """Map an official ``dit_config`` (+ ``prompt_id_embedding``) of a fixture's meta.json to DiTConfig."""
    dc = dict(meta["dit_config"])
    for key, value in _SUPPORTED.items():
        if key in dc and dc[key] != value:
            raise ValueError(f"meta.json dit_config.{key}={dc[key]!r} is not supported (only {value!r})")
    dim = dc["vid_dim"]
    if dc.get("txt_dim", dim) != dim:
        raise ValueError(f"meta.json: txt_dim {dc['txt_dim']} != vid_dim {dim} is not supported")
    if dc.get("emb_dim", 6 * dim) != 6 * dim:
        raise ValueError(f"meta.json: emb_dim {dc['emb_dim']} must be 6 * vid_dim ({6 * dim}) for ada 'single'")
    pie = meta.get("prompt_id_embedding", {})
    if pie.get("embedding_dim", dc["txt_in_dim"]) != dc["txt_in_dim"]:
        raise ValueError("meta.json: prompt_id_embedding.embedding_dim must equal dit_config.txt_in_dim")
    return DiTConfig(vid_in_channels=dc["vid_in_channels"], vid_out_channels=dc["vid_out_channels"], vid_dim=dim,
                     txt_in_dim=dc["txt_in_dim"], heads=dc["heads"], head_dim=dc["head_dim"],
                     expand_ratio=dc.get("expand_ratio", 4), norm_eps=dc.get("norm_eps", 1e-5),
                     patch_size=tuple(dc.get("patch_size", (1, 2, 2))), num_layers=dc["num_layers"],
                     mm_layers=dc.get("mm_layers", 0), rope_dim=dc.get("rope_dim", 128),
                     max_num_prompts=pie.get("max_num_prompts", 64))


def sampler_config_from_meta(meta: dict) -> SamplerConfig:
    s = meta.get("sampling", {})
    total = re.search(r"T\s*=\s*([\d.]+)", s.get("schedule", "")) if isinstance(s.get("schedule"), str) else None
    return SamplerConfig(steps=s.get("steps", 50), shift=s.get("shift", 12.0), cfg_scale=s.get("cfg_scale", 7.5),
                         cfg_rescale=s.get("cfg_rescale", 0.0),
                         num_train_timesteps=float(total.group(1)) if total else 1000.0)


def _result(name: str, got: torch.Tensor, ref: torch.Tensor, tol: float) -> ParityResult:
    if got.shape != ref.shape:
        raise ValueError(f"{name}: shape {tuple(got.shape)} differs from the reference {tuple(ref.shape)}")
    return ParityResult(name, float((got.float() - ref.float()).abs().max()), tol, float(ref.float().abs().mean()))


@torch.no_grad()
def check_dit_fixture(folder: Path) -> list[ParityResult]:
    from safetensors.torch import load_file

    meta = json.loads((folder / "meta.json").read_text())
    dit = VincieTransformer(dit_config_from_meta(meta))
    sd = read_state_dict(folder / "dit.safetensors", "fixture DiT")
    check_state_dict(dit, sd, str(folder / "dit.safetensors"))
    dit.load_state_dict(sd, strict=True)
    dit.eval()
    io = load_file(str(folder / "session_io.safetensors"))
    sampler = FlowMatchSampler(sampler_config_from_meta(meta))
    results = []
    n = len(meta["sessions"])
    ids = lambda k: torch.arange(k)  # noqa: E731 - prompt j gets turn id j
    # Text fusion: [id_j ; E_j] per prompt.
    txts = []
    for b, sess in enumerate(meta["sessions"]):
        embeds = [io[f"s{b}.prompt{j}.text_embeds"] for j in range(len(sess["prompt_token_lengths"]))]
        id_emb = dit.embed_prompt_ids(ids(len(embeds)))
        txt = torch.cat([t for j, e in enumerate(embeds) for t in (id_emb[j: j + 1], e)])
        results.append(_result(f"s{b}.txt_pos (prompt-id fusion)", txt, io[f"s{b}.txt_pos"], TOLERANCES["exact"]))
        txts.append(txt)
    neg = torch.cat((dit.embed_prompt_ids(ids(1)), io["negative.text_embeds"]))
    results.append(_result("negative.txt_neg_single", neg, io["negative.txt_neg_single"], TOLERANCES["exact"]))
    results.append(_result("sampling.timesteps", sampler.timesteps(), io["sampling.timesteps"], TOLERANCES["exact"]))

    # One packed forward at the recorded per-sample timesteps.
    shapes = torch.tensor([list(io[f"s{b}.noise"].shape[:3]) for b in range(n)])
    cond = torch.cat([io[f"s{b}.condition"].reshape(-1, io[f"s{b}.condition"].shape[-1]) for b in range(n)])
    noise = torch.cat([io[f"s{b}.noise"].reshape(-1, io[f"s{b}.noise"].shape[-1]) for b in range(n)])
    txt_shape = torch.tensor([[t.shape[0]] for t in txts])
    timesteps = torch.tensor(meta["forward_timesteps"], dtype=torch.float32)
    v = dit(torch.cat((noise, cond), -1), shapes, torch.cat(txts), txt_shape, timesteps)
    for b, part in enumerate(v.split([int(s.prod()) for s in shapes])):
        key = f"s{b}.forward_t{int(timesteps[b]) if float(timesteps[b]).is_integer() else float(timesteps[b])}.v_pos"
        results.append(_result(key, part.reshape(io[key].shape), io[key], TOLERANCES["forward"]))

    # The full sampler with CFG on the packed batch.
    inputs = PackedInputs(noise=noise, condition=cond, vid_shape=shapes, txt_pos=torch.cat(txts), txt_pos_shape=txt_shape,
                          txt_neg=neg.repeat(n, 1), txt_neg_shape=torch.tensor([[neg.shape[0]]] * n))
    x0 = denoise(dit, sampler, inputs)
    for b, part in enumerate(x0.split([int(s.prod()) for s in shapes])):
        key = f"s{b}.sampled_x0"
        results.append(_result(key, part.reshape(io[key].shape), io[key], TOLERANCES["sampled"]))
    return results


@torch.no_grad()
def check_vae_fixture(folder: Path) -> list[ParityResult]:
    from safetensors.torch import load_file

    meta = json.loads((folder / "meta.json").read_text())
    vae = CausalVAE(vae_config_from_official(meta["config"]))
    sd = convert_official_state_dict(read_state_dict(folder / "vae.safetensors", "fixture VAE"))
    check_state_dict(vae, sd, str(folder / "vae.safetensors"))
    vae.load_state_dict(sd, strict=True)
    vae.eval()
    io = load_file(str(folder / "vae_io.safetensors"))
    tol = TOLERANCES["vae"]
    image = io["image"][:, :, None]  # (B, 3, 1, H, W)
    mean, logvar = vae.encode_posterior(image)
    results = [_result("posterior_mean", mean, io["posterior_mean"], tol),
               _result("posterior_logvar", logvar, io["posterior_logvar"], tol)]
    decoded = vae.decode(io["posterior_mean"])[:, :, 0]
    results.append(_result("decoded_from_mean", decoded, io["decoded_from_mean"], tol))
    if "clip5" in io:
        clip_mean, _ = vae.encode_posterior(io["clip5"])
        results.append(_result("clip5_posterior_mean", clip_mean, io["clip5_posterior_mean"], tol))
    return results


def check_fixture(folder: str | Path) -> list[ParityResult]:
    """Run the parity check that fits the folder (DiT or VAE fixture)."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"{folder} has no meta.json: not a parity fixture folder")
    if (folder / "session_io.safetensors").is_file():
        return check_dit_fixture(folder)
    if (folder / "vae_io.safetensors").is_file():
        return check_vae_fixture(folder)
    raise FileNotFoundError(f"{folder}: expected session_io.safetensors (DiT) or vae_io.safetensors (VAE)")


def check_manifest(manifest: str | Path, config: VincieConfig) -> tuple[list[str], list[str], list[str]]:
    """Compare a preset's state-dict keys/shapes (built on the meta device) with a manifest JSON.

    Returns (missing, unexpected, mismatched shapes); all empty means an exact match.
    """
    data = json.loads(Path(manifest).read_text())
    keys = {k: tuple(v) for k, v in data["keys"].items()}
    is_vae = any(k.startswith(("encoder.", "decoder.")) for k in keys)
    with torch.device("meta"):
        module = CausalVAE(config.vae) if is_vae else VincieTransformer(config.dit)
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(keys) - set(ours))
    unexpected = sorted(set(ours) - set(keys))
    shapes = sorted(f"{k}: {ours[k]} vs {keys[k]}" for k in set(ours) & set(keys) if ours[k] != keys[k])
    return missing, unexpected, shapes
