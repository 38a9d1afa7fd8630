"""Tests of vincie_sdk.models.text_encoder on tiny, locally built folders (nothing is downloaded)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from vincie_sdk.config import TextEncoderConfig
from vincie_sdk.models.text_encoder import (
    EOD_TOKEN,
    TextEncoder,
    build_text_encoder_folder,
    build_word_tokenizer,
    default_vocab,
)

HIDDEN = 32
MAX_LEN = 16
PROMPT = "Based on <IMG1>, Add a crown to the woman's head. Output <IMG2>: "


def _config(**overrides) -> TextEncoderConfig:
    values = dict(hidden_size=HIDDEN, max_length=MAX_LEN, trust_remote_code=False, dtype="float32")
    values.update(overrides)
    return TextEncoderConfig(**values)


@pytest.fixture(scope="module")
def qwen2_folder(tmp_path_factory) -> Path:
    return build_text_encoder_folder(tmp_path_factory.mktemp("te") / "qwen2", hidden_size=HIDDEN, max_length=MAX_LEN)


@pytest.fixture()
def encoder(qwen2_folder) -> TextEncoder:
    return TextEncoder.from_pretrained(qwen2_folder, _config())


def _causal_lm(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------- tokenizer
def test_word_tokenizer_lowercases_splits_and_maps_unknown_words():
    tok = build_word_tokenizer(["add", "red", "hat"])
    tokens = tok.convert_ids_to_tokens(tok("Add a RED hat, 12!")["input_ids"])
    assert tokens == ["add", "[UNK]", "red", "hat", "[UNK]", "[UNK]", "[UNK]", "[UNK]"]  # ',' '1' '2' '!' unknown
    assert tok.convert_tokens_to_ids(EOD_TOKEN) == tok.eos_token_id == tok.pad_token_id == 1
    assert tok.convert_tokens_to_ids("[UNK]") == tok.unk_token_id == 0


def test_default_vocab_covers_official_prompt_scaffolding(encoder):
    vocab = set(default_vocab())
    assert {"add", "remove", "move", "change", "make", "red", "circle", "left", "three", "<", ">", "#"} <= vocab
    ids = encoder.tokenizer(PROMPT)["input_ids"]
    tokens = encoder.tokenizer.convert_ids_to_tokens(ids)
    assert "[UNK]" not in tokens
    assert tokens[:6] == ["based", "on", "<", "img", "1", ">"]


# ------------------------------------------------------------------------------------------- encoding
def test_shapes_and_eod_row(encoder):
    text_ids = encoder.tokenizer("add a red hat")["input_ids"]
    assert encoder.token_ids("add a red hat") == text_ids + [encoder.eod_token_id]
    with torch.no_grad():
        emb, empty = encoder.encode(["add a red hat", ""])
    assert emb.shape == (len(text_ids) + 1, HIDDEN)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert empty.shape == (1, HIDDEN)  # only the EOD token
    # Causal attention: the EOD row of "" equals the first-position hidden state of an EOD token.
    alone = encoder.model(input_ids=torch.tensor([[encoder.eod_token_id]])).last_hidden_state[0, 0]
    assert torch.allclose(empty[0], alone)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_rows_are_final_norm_hidden_states(tmp_path, arch):
    """lm_head(embeddings) reproduces the full causal LM's logits ⇒ rows are after the final norm, in order."""
    folder = build_text_encoder_folder(tmp_path / arch, hidden_size=HIDDEN, max_length=MAX_LEN, arch=arch)
    encoder = TextEncoder.from_pretrained(folder, _config())
    # gpt2 keeps its base model in `.transformer` (like Qwen-14B), the others behind get_decoder().
    expected_backbone = {"qwen2": "Qwen2Model", "llama": "LlamaModel", "gpt2": "GPT2Model"}[arch]
    assert type(encoder.model).__name__ == expected_backbone
    lm = _causal_lm(folder)
    ids = encoder.token_ids("move the blue circle to the left")
    assert ids[-1] == encoder.eod_token_id
    with torch.no_grad():
        emb = encoder.encode(["move the blue circle to the left"])[0]
        logits = lm(input_ids=torch.tensor([ids])).logits[0]
        assert torch.allclose(lm.get_output_embeddings()(emb), logits, atol=1e-5)
    assert emb.shape == (len(ids), HIDDEN)


def test_truncation_replaces_last_text_token_with_eod(encoder):
    words = " ".join(["red"] * (MAX_LEN + 5))
    exact = " ".join(["red"] * MAX_LEN)  # n == max_length
    short = " ".join(["red"] * (MAX_LEN - 1))  # n == max_length - 1: EOD fits after the text
    for text in (words, exact, short):
        ids = encoder.token_ids(text)
        assert len(ids) == MAX_LEN and ids[-1] == encoder.eod_token_id
        assert ids[:-1] == [encoder.tokenizer.convert_tokens_to_ids("red")] * (MAX_LEN - 1)
    with torch.no_grad():
        long_emb, exact_emb, short_emb = encoder.encode([words, exact, short])
    assert long_emb.shape == (MAX_LEN, HIDDEN)
    assert torch.equal(long_emb, exact_emb)
    assert torch.allclose(exact_emb, short_emb, atol=1e-6)


def test_right_padding_does_not_change_results(encoder):
    prompts = ["add a red hat", PROMPT, "", "remove the dog on the left side of the picture"]
    with torch.no_grad():
        batched = encoder.encode(prompts)
        encoder.cache_clear()
        single = [encoder.encode([p])[0] for p in prompts]
    for a, b in zip(batched, single):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5)


def test_small_batch_size_gives_same_results(qwen2_folder):
    prompts = [f"make the {c} square bigger" for c in ("red", "green", "blue", "pink", "gold")]
    big = TextEncoder.from_pretrained(qwen2_folder, _config())
    small = TextEncoder.from_pretrained(qwen2_folder, _config(), batch_size=2)
    with torch.no_grad():
        for a, b in zip(big.encode(prompts), small.encode(prompts)):
            assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------- cache
def test_cache_hits_and_identical_outputs(encoder):
    with torch.no_grad():
        first = encoder.encode([PROMPT, "add a hat"])
        assert encoder.cache_info()[:2] == (0, 2)
        second = encoder.encode(["add a hat", PROMPT, PROMPT])  # a session re-encodes its earlier prompts
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.currsize, info.maxsize) == (2, 2, 2, 256)
    assert torch.equal(first[0], second[1]) and torch.equal(first[0], second[2]) and torch.equal(first[1], second[0])
    second[1].zero_()  # callers get copies: the cache is not corrupted
    with torch.inference_mode():
        assert torch.equal(encoder.encode([PROMPT])[0], first[0])
    encoder.cache_clear()
    assert encoder.cache_info() == (0, 0, 256, 0)


def test_cache_is_bounded_lru(qwen2_folder):
    encoder = TextEncoder.from_pretrained(qwen2_folder, _config(), cache_size=2)
    with torch.no_grad():
        encoder.encode(["red", "green"])
        encoder.encode(["red"])  # refresh "red": "green" is now the oldest
        encoder.encode(["blue"])
        assert list(encoder._cache) == ["red", "blue"]
        encoder.encode(["green"])
    assert encoder.cache_info().misses == 4 and encoder.cache_info().currsize == 2


def test_cache_skipped_when_training_with_grad(qwen2_folder):
    encoder = TextEncoder.from_pretrained(qwen2_folder, _config())
    encoder.requires_grad_(True).train()
    first = encoder.encode(["add a hat"])[0]
    first.sum().backward()  # gradients flow to the text encoder
    assert encoder.model.embed_tokens.weight.grad is not None
    encoder.encode(["add a hat"])[0].sum().backward()  # a fresh graph, not a cached (freed) one
    assert encoder.cache_info().currsize == 0
    # Frozen weights in eval mode: cached even with grad enabled (no graph is kept).
    encoder.requires_grad_(False).eval()
    encoder.encode(["add a hat"])
    encoder.encode(["add a hat"])
    assert encoder.cache_info().hits == 1


def test_moving_the_encoder_clears_the_cache(encoder):
    with torch.no_grad():
        encoder.encode(["add a hat"])
        encoder.to(torch.float64)
        emb = encoder.encode(["add a hat"])[0]
    assert emb.dtype == torch.float64 and encoder.dtype == torch.float64
    assert encoder.device == torch.device("cpu")
    assert encoder.cache_info().misses == 2


def test_rejects_a_single_string(encoder):
    with pytest.raises(TypeError, match="list of prompts"):
        encoder.encode("add a hat")
    assert encoder.encode([]) == []


# ------------------------------------------------------------------------------------------- loading
def test_default_dtype_is_bfloat16_and_override(qwen2_folder):
    encoder = TextEncoder.from_pretrained(qwen2_folder, _config(dtype="bfloat16"))
    assert encoder.dtype == torch.bfloat16
    assert all(not p.requires_grad for p in encoder.parameters()) and not encoder.training
    with torch.no_grad():
        assert encoder.encode(["add a hat"])[0].dtype == torch.bfloat16
    assert TextEncoder.from_pretrained(qwen2_folder, _config(dtype="bfloat16"), dtype="fp16").dtype == torch.float16
    assert TextEncoder.from_pretrained(qwen2_folder, _config(), dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="Unknown dtype"):
        TextEncoder.from_pretrained(qwen2_folder, _config(), dtype="float7")


def test_lm_head_is_dropped(encoder):
    assert not any(name.startswith("lm_head") for name, _ in encoder.named_parameters())


def test_missing_folder_and_files_give_clear_errors(tmp_path, qwen2_folder):
    with pytest.raises(FileNotFoundError, match="folder not found: .*nowhere"):
        TextEncoder.from_pretrained(tmp_path / "nowhere", _config())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextEncoder.from_pretrained(empty, _config())
    (empty / "config.json").write_text((qwen2_folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        TextEncoder.from_pretrained(empty, _config())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (empty / name).write_text((qwen2_folder / name).read_text())
    with pytest.raises(FileNotFoundError, match="no weight files"):
        TextEncoder.from_pretrained(empty, _config())


def test_hidden_size_and_position_mismatch_are_reported(tmp_path, qwen2_folder):
    with pytest.raises(ValueError, match="hidden size 32 .* expects 5120"):
        TextEncoder.from_pretrained(qwen2_folder, _config(hidden_size=5120))
    gpt2 = build_text_encoder_folder(tmp_path / "gpt2", vocab=["add"], hidden_size=HIDDEN, arch="gpt2")
    with pytest.raises(ValueError, match="256 positions, fewer than max_length=300"):
        TextEncoder.from_pretrained(gpt2, _config(max_length=300))


def test_build_is_deterministic_and_keeps_global_rng(tmp_path):
    state = torch.random.get_rng_state()
    a = build_text_encoder_folder(tmp_path / "a", vocab=["add", "hat"], hidden_size=16, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_text_encoder_folder(tmp_path / "b", vocab=["add", "hat"], hidden_size=16, seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "config.json").read_text())["vocab_size"] == 4  # [UNK], <|endoftext|>, add, hat


# ------------------------------------------------------------------------------------------- remote code
_REMOTE_CONFIG = '''
from transformers import PretrainedConfig


class TinyQWenConfig(PretrainedConfig):
    model_type = "tiny_qwen"

    def __init__(self, vocab_size=8, hidden_size=8, bf16=False, fp16=False, fp32=False, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.bf16, self.fp16, self.fp32 = bf16, fp16, fp32
        super().__init__(**kwargs)
'''

_REMOTE_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from .configuration_tiny import TinyQWenConfig


class TinyQWenModel(PreTrainedModel):
    """Mimics QWenModel: wte -> (causal running mean) -> ln_f; ignores padding thanks to causality."""

    config_class = TinyQWenConfig

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, return_dict=None, **kwargs):
        h = self.wte(input_ids)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :, None]
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(h.cumsum(1) / steps))


class TinyQWenLMHeadModel(PreTrainedModel):
    config_class = TinyQWenConfig
    base_model_prefix = "transformer"

    def __init__(self, config):
        super().__init__(config)
        self.transformer = TinyQWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Like QWen-14B: precision comes from the config flags (the official call passes bf16=True).
        if config.bf16:
            self.transformer.bfloat16()
        self.post_init()
'''


def test_remote_code_layout_runs_model_transformer(tmp_path, monkeypatch):
    import importlib.util
    import sys

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # keep ~/.cache clean
    folder = tmp_path / "llm_remote"
    folder.mkdir()
    (folder / "configuration_tiny.py").write_text(textwrap.dedent(_REMOTE_CONFIG))
    (folder / "modeling_tiny.py").write_text(textwrap.dedent(_REMOTE_MODEL))
    (folder / "__init__.py").write_text("")
    tokenizer = build_word_tokenizer(max_length=MAX_LEN)
    tokenizer.save_pretrained(folder)

    # Build the weights with the same source, imported as a throwaway package.
    spec = importlib.util.spec_from_file_location("tiny_remote_pkg", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["tiny_remote_pkg"] = package
    try:
        import tiny_remote_pkg.configuration_tiny as conf_mod  # noqa: F401  (registers the submodule)
        import tiny_remote_pkg.modeling_tiny as model_mod

        config = conf_mod.TinyQWenConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN)
        config.auto_map = {
            "AutoConfig": "configuration_tiny.TinyQWenConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyQWenLMHeadModel",
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model_mod.TinyQWenLMHeadModel(config).save_pretrained(folder)
    finally:
        for name in [n for n in sys.modules if n.startswith("tiny_remote_pkg")]:
            del sys.modules[name]

    with pytest.raises(ValueError):  # remote code needs trust_remote_code (TextEncoderConfig default: True)
        TextEncoder.from_pretrained(folder, _config())
    encoder = TextEncoder.from_pretrained(folder, _config(trust_remote_code=True, dtype="bfloat16"))
    assert type(encoder.model).__name__ == "TinyQWenModel"  # `model.transformer`, as in the official code
    assert encoder.dtype == torch.bfloat16  # the bf16 flag was set for the remote code
    with torch.no_grad():
        emb = encoder.encode(["add a hat", "remove the red circle on the left"])
    assert [e.shape[0] for e in emb] == [4, 8]
    assert emb[0].dtype == torch.bfloat16
