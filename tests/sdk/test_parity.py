"""Parity of the DiT, sampler and VAE with the official code, through `vincie parity`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vincie_sdk.cli import main
from vincie_sdk.config import DiTConfig
from vincie_sdk.models.dit import VincieTransformer
from vincie_sdk.parity import TOLERANCES, check_fixture, dit_config_from_meta


def test_dit_fixture_matches_official(official_fixtures):
    results = {r.name: r for r in check_fixture(official_fixtures / "dit_tiny")}
    assert {"s0.forward_t700.v_pos", "s1.forward_t30.v_pos", "s0.sampled_x0", "s1.sampled_x0"} <= set(results)
    for r in results.values():
        assert r.ok, f"{r.name}: {r.max_abs_error:.2e} > {r.tolerance:.0e}"
    # Far below the tolerance: this is float32 rounding, not an approximation.
    assert results["s0.forward_t700.v_pos"].max_abs_error < 1e-5
    assert results["s0.sampled_x0"].max_abs_error < 1e-4


def test_vae_fixture_matches_official(official_fixtures):
    results = check_fixture(official_fixtures / "vae_tiny")
    assert len(results) == 4
    assert all(r.ok and r.max_abs_error < 2e-5 for r in results), results


def test_parity_cli_passes_and_fails(official_fixtures, tmp_path, capsys):
    assert main(["parity", str(official_fixtures / "dit_tiny"), str(official_fixtures / "vae_tiny"),
                 "--manifest", str(official_fixtures / "vincie3b_dit_keys.json"),
                 "--manifest", str(official_fixtures / "vincie3b_vae_keys.json")]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "s0.sampled_x0" in out and "max abs err" in out

    # A perturbed weight must be caught and reported with a non-zero exit.
    broken = tmp_path / "dit_broken"
    shutil.copytree(official_fixtures / "dit_tiny", broken)
    sd = load_file(str(broken / "dit.safetensors"))
    sd["blocks.1.attn.proj_out.vid.bias"] = sd["blocks.1.attn.proj_out.vid.bias"] + 0.01
    save_file(sd, str(broken / "dit.safetensors"))
    assert main(["parity", str(broken)]) == 1
    assert "FAIL s0.forward_t700.v_pos" in capsys.readouterr().out


def test_manifest_mismatch_is_reported(official_fixtures, capsys):
    assert main(["parity", "--manifest", str(official_fixtures / "vincie3b_dit_keys.json"), "--preset", "tiny"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_3b_preset_has_exact_official_keys(official_fixtures):
    manifest = json.loads((official_fixtures / "vincie3b_dit_keys.json").read_text())["keys"]
    with torch.device("meta"):
        dit = VincieTransformer(DiTConfig())
    assert {k: list(v.shape) for k, v in dit.state_dict().items()} == manifest
    assert sum(p.numel() for p in dit.parameters()) == 3_391_803_456  # spec 4.8


@pytest.mark.parametrize("heads,head_dim,rope_dim,layers,mm", [(2, 32, 30, 4, 1), (4, 16, 12, 3, 3), (1, 64, 60, 2, 0)])
def test_meta_config_values_are_all_read(heads, head_dim, rope_dim, layers, mm):
    meta = {"dit_config": {"vid_in_channels": 33, "vid_out_channels": 16, "vid_dim": heads * head_dim,
                           "txt_in_dim": 24, "txt_dim": heads * head_dim, "emb_dim": 6 * heads * head_dim,
                           "heads": heads, "head_dim": head_dim, "expand_ratio": 4, "norm_eps": 1e-5,
                           "patch_size": [1, 2, 2], "num_layers": layers, "mm_layers": mm, "rope_dim": rope_dim,
                           "norm": "fusedrms", "ada": "single"},
            "prompt_id_embedding": {"max_num_prompts": 5, "embedding_dim": 24}}
    cfg = dit_config_from_meta(meta)
    dit = VincieTransformer(cfg)
    sd = dit.state_dict()
    assert sum(k.startswith("blocks.") and ".vid." in k and k.endswith("proj_qkv.vid.weight") for k in sd) == mm
    assert len({k.split(".")[1] for k in sd if k.startswith("blocks.")}) == layers
    assert sd["blocks.0.attn.rope.rope.freqs"].numel() == rope_dim // 3 // 2
    assert sd["prompt_id_embedding.embedding.weight"].shape == (5, 24)
    out = dit(torch.randn(2 * 4 * 4, 33), torch.tensor([[2, 4, 4]]), torch.randn(3, 24), torch.tensor([[3]]),
              torch.tensor([500.0]))
    assert out.shape == (32, 16) and torch.isfinite(out).all()


def test_unsupported_meta_value_is_refused():
    meta = {"dit_config": {"vid_in_channels": 33, "vid_out_channels": 16, "vid_dim": 64, "txt_in_dim": 8, "heads": 1,
                           "head_dim": 64, "num_layers": 1, "msa_type": "na_swin"}}
    with pytest.raises(ValueError, match="msa_type"):
        dit_config_from_meta(meta)


def test_tolerances_are_the_issue_s():
    assert TOLERANCES["forward"] == 1e-4 and TOLERANCES["sampled"] == 1e-3 and TOLERANCES["vae"] == 1e-4
