"""VINCIE LoRA Loader in-process: a patched copy (the cached base keeps computing the base model), the same
result as the SDK, stacking, strength 0, and a clear refusal of an adapter for another model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vincie_sdk.config import SMALL
from vincie_sdk.lora import LoraAdapter, dit_fingerprint, select_modules
from vincie_sdk.models.dit import VincieTransformer

TINY_NAME = "tiny-random"


def random_adapter(dit, targets=("qkv", "attn_out", "mlp"), r=4, seed=0, scale=2.0) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    modules = dict(dit.named_modules())
    weights = {n: (torch.randn(r, modules[n].in_features, generator=g) * scale / modules[n].in_features**0.5,
                   torch.randn(modules[n].out_features, r, generator=g) * scale / r**0.5)
               for n in select_modules(dit, targets)}
    return LoraAdapter(weights, 8.0, {"name": dit.config and "t", "dit": dit_fingerprint(dit.config)}, f"r{seed}")


@pytest.fixture(scope="module")
def loras(pack, model, tmp_path_factory):
    import folder_paths

    root = tmp_path_factory.mktemp("models") / "vincie_loras"
    random_adapter(model.dit, seed=1).save(root / "a.safetensors")
    random_adapter(model.dit, ["mlp"], seed=2).save(root / "style" / "b")
    random_adapter(VincieTransformer(SMALL.dit), seed=3).save(root / "other.safetensors")
    (root / "not-an-adapter.safetensors").write_bytes(b"junk")
    folder_paths.add_model_folder_path("vincie_loras", str(root))
    return root


def edit(pack, model, image) -> np.ndarray:
    session = pack.nodes.session.VincieSessionBuilder.execute(model, seed=1, resolution=0, negative_prompt="",
                                                              camera_prefix="", image=image).args[0]
    out = pack.nodes.sampling.VincieNIPSampler.execute(session, "make it blue", steps=2, cfg=0.0, seed=-1).args[0]
    return out[0].numpy()


@pytest.fixture()
def image():
    x = torch.zeros(1, 48, 64, 3)
    x[..., 2] = 0.3
    x[0, 8:24, 8:24, 0] = 0.9
    return x


def test_lora_loader_returns_a_patched_copy(pack, model, loras, image, tiny_checkpoint):
    from vincie_sdk import VincieModel

    runtime, node = pack.nodes.runtime, pack.nodes.lora.VincieLoraLoader
    assert runtime.list_loras() == ["a.safetensors", "other.safetensors", "style/b"]
    base = edit(pack, model, image)
    w0 = model.dit.blocks[0].attn.proj_qkv.vid.weight.detach().clone()

    patched = node.execute(model, "a.safetensors", 0.8).args[0]
    assert patched is not model and patched.dit is model.dit  # shared weights, no copy
    assert model in runtime.cached_models() and patched not in runtime.cached_models()
    adapted = edit(pack, patched, image)
    assert np.abs(adapted - base).max() > 0.05
    # Back to the cached base: ComfyUI restored its weights.
    assert np.array_equal(edit(pack, model, image), base)
    assert torch.equal(model.dit.blocks[0].attn.proj_qkv.vid.weight, w0)
    assert model in runtime.cached_models()

    # The same edit as the SDK with the adapter applied (hooks): equal up to float rounding in the merge.
    sdk = VincieModel.from_pretrained(tiny_checkpoint / TINY_NAME)
    sdk.load_lora(loras / "a.safetensors", 0.8)
    assert np.abs(edit(pack, sdk, image) - adapted).max() < 2e-2

    # Stacking: a second loader on the patched model; strength 0 returns its input.
    stacked = node.execute(patched, "style/b", -1.0).args[0]
    sdk.load_lora(loras / "style" / "b", -1.0)
    both = edit(pack, stacked, image)
    assert np.abs(both - adapted).max() > 0.05 and np.abs(edit(pack, sdk, image) - both).max() < 2e-2
    assert node.execute(model, "a.safetensors", 0.0).args[0] is model
    assert np.array_equal(edit(pack, model, image), base)


def test_lora_loader_refuses_a_mismatched_adapter(pack, model, loras):
    node = pack.nodes.lora.VincieLoraLoader
    with pytest.raises(ValueError, match="does not match this model.*vid_dim 256.*vid_dim 64"):
        node.execute(model, "other.safetensors", 1.0)
    with pytest.raises(FileNotFoundError, match="not found in the 'vincie_loras' model folders"):
        node.execute(model, "missing.safetensors", 1.0)
