"""LoRA adapters in the SDK: strength, save/load, stacking, merging, unloading, mismatches, CLI, caches."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from vincie_sdk import Session, VincieModel
from vincie_sdk.cli import main
from vincie_sdk.config import SMALL, TINY
from vincie_sdk.lora import LoraAdapter, dit_fingerprint, parse_lora_arg, select_modules
from vincie_sdk.models.dit import VincieTransformer


def random_adapter(dit, targets=("qkv", "attn_out", "mlp"), r=4, alpha=8.0, seed=0, scale=0.5, name="a") -> LoraAdapter:
    """An adapter with non-zero A and B (a freshly initialised peft adapter has B = 0: a no-op)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(dit.named_modules())
    weights = {}
    for n in select_modules(dit, targets):
        m = modules[n]
        weights[n] = (torch.randn(r, m.in_features, generator=g) * scale / m.in_features**0.5,
                      torch.randn(m.out_features, r, generator=g) * scale / r**0.5)
    return LoraAdapter(weights, alpha, {"name": dit.config and "tiny", "dit": dit_fingerprint(dit.config)}, name)


def dit_inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    vid = torch.randn(2 * 4 * 4, cfg.vid_in_channels, generator=g)
    txt = torch.randn(5, cfg.txt_in_dim, generator=g)
    return vid, torch.tensor([[2, 4, 4]]), txt, torch.tensor([[5]]), torch.tensor([400.0])


@pytest.fixture()
def model():
    return VincieModel.from_random(TINY, seed=0)


def out(model):
    with torch.no_grad():
        return model.dit(*dit_inputs(model.config.dit))


def test_select_modules_by_group_stream_and_block():
    dit = VincieTransformer(SMALL.dit)  # 6 blocks, 2 dual-stream
    names = select_modules(dit, ["qkv"], streams=["txt"])
    assert names == ["blocks.0.attn.proj_qkv.txt", "blocks.1.attn.proj_qkv.txt"]
    last = select_modules(dit, ["mlp"], blocks=[-1])
    assert last == ["blocks.5.mlp.all.proj_in", "blocks.5.mlp.all.proj_in_gate", "blocks.5.mlp.all.proj_out"]
    assert select_modules(dit, ["blocks.*.attn.proj_out.vid"]) == ["blocks.0.attn.proj_out.vid", "blocks.1.attn.proj_out.vid"]
    with pytest.raises(ValueError, match="no Linear layer matches"):
        select_modules(dit, ["qkv"], streams=["vid"], blocks=[4])
    with pytest.raises(ValueError, match="block 9 does not exist"):
        select_modules(dit, blocks=[9])


def test_strength_zero_is_the_base_model_and_unload_is_exact(model):
    base = out(model)
    name = model.load_lora(random_adapter(model.dit), strength=0.0)
    assert torch.equal(out(model), base)
    model.set_lora_strength(name, 1.0)
    adapted = out(model)
    assert (adapted - base).abs().max() > 1e-3
    model.unload_lora()
    assert torch.equal(out(model), base) and model.loras == {}


def test_saved_adapter_reloads_and_reproduces(model, tmp_path):
    adapter = random_adapter(model.dit)
    model.load_lora(adapter, 0.7)
    expected = out(model)
    model.unload_lora()
    for path in (tmp_path / "adapter", tmp_path / "adapter.safetensors"):
        adapter.save(path)
        loaded = LoraAdapter.load(path)
        assert loaded.alpha == adapter.alpha and sorted(loaded.weights) == sorted(adapter.weights)
        assert loaded.base["dit"] == dit_fingerprint(TINY.dit)
        model.load_lora(path, 0.7)
        assert torch.equal(out(model), expected)
        model.unload_lora()


def test_stacking_adds_and_merge_matches_unmerged(model):
    a, b = random_adapter(model.dit, seed=1, name="a"), random_adapter(model.dit, ["mlp"], seed=2, name="b")
    base = out(model)
    model.load_lora(a, 0.5)
    only_a = out(model)
    model.unload_lora()
    model.load_lora(b, -1.0)
    only_b = out(model)
    model.load_lora(a, 0.5)
    assert model.loras == {"b": -1.0, "a": 0.5}
    both = out(model)
    assert not torch.allclose(both, only_a) and not torch.allclose(both, only_b) and not torch.allclose(only_a, base)
    # On one layer the stack is W + 0.5 * delta_a - delta_b.
    name = "blocks.0.mlp.vid.proj_in"
    layer = dict(model.dit.named_modules())[name]
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, layer.weight + 0.5 * a.delta(name) - b.delta(name))
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # Merged weights compute what the hooks compute, up to float rounding.
    model.merge_lora()
    assert model.loras == {}
    torch.testing.assert_close(out(model), both, rtol=1e-4, atol=1e-5)


def test_mismatched_adapter_is_refused_with_a_clear_message(model):
    other = random_adapter(VincieTransformer(SMALL.dit))
    with pytest.raises(ValueError) as e:
        model.load_lora(other)
    msg = str(e.value)
    assert "does not match this model" in msg and "vid_dim 256" in msg and "this model is 'tiny' (vid_dim 64" in msg
    assert "layers do not exist" in msg and "other shapes" in msg
    assert model.loras == {}


def test_not_an_adapter(tmp_path, model):
    from vincie_sdk.loading import save_safetensors

    save_safetensors({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="without a VINCIE LoRA config"):
        model.load_lora(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError, match="LoRA adapter not found"):
        model.load_lora(tmp_path / "missing")


def test_parse_lora_arg():
    assert parse_lora_arg("a/b:0.25") == ("a/b", 0.25)
    assert parse_lora_arg("C:\\x\\a.safetensors") == ("C:\\x\\a.safetensors", 1.0)
    assert parse_lora_arg("a:-1") == ("a", -1.0)


def test_block_causal_session_drops_its_cache_when_adapters_change(source_image):
    cfg = TINY.replace(dit=dataclasses.replace(TINY.dit, attention="block_causal"))
    model = VincieModel.from_random(cfg, seed=0)
    s = Session(model, source_image, seed=3, steps=2)
    s.edit("add a red circle")
    model.load_lora(random_adapter(model.dit, scale=2.0))
    cached = s.copy().edit("make it blue")
    fresh = s.copy()
    fresh._history = None
    assert np.array_equal(np.asarray(cached), np.asarray(fresh.edit("make it blue")))


def test_cli_edit_with_loras(tiny_model_dir, tmp_path, source_image):
    model = VincieModel.from_pretrained(tiny_model_dir)
    random_adapter(model.dit, seed=1).save(tmp_path / "a")
    random_adapter(model.dit, ["mlp"], seed=2).save(tmp_path / "b.safetensors")
    image = tmp_path / "src.png"
    source_image.save(image)
    args = ["edit", str(image), "-p", "add a circle", "-m", str(tiny_model_dir), "--steps", "2", "-q"]
    assert main(args + ["-o", str(tmp_path / "base")]) == 0
    assert main(args + ["-o", str(tmp_path / "lora"), "--lora", f"{tmp_path / 'a'}:0.8",
                        "--lora", str(tmp_path / "b.safetensors")]) == 0
    assert main(args + ["-o", str(tmp_path / "zero"), "--lora", f"{tmp_path / 'a'}:0"]) == 0
    from PIL import Image

    def px(d):
        return np.asarray(Image.open(tmp_path / d / "turn1.png"))

    assert np.array_equal(px("base"), px("zero")) and not np.array_equal(px("base"), px("lora"))
    ref = copy.copy(model)
    ref.load_lora(tmp_path / "a", 0.8)
    ref.load_lora(tmp_path / "b.safetensors")
    assert np.array_equal(np.asarray(Session(ref, image, seed=1, steps=2).edit("add a circle")), px("lora"))
