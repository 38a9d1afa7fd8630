"""The embedded model ``vincie-shapes``: a fresh model for pretraining on the synthetic world.

Its autoencoder is trained first (:mod:`vincie_train.autoencoder`); its text encoder is a small
causal LM with a word-level tokenizer whose vocabulary is the training corpus' own words, trained
from scratch together with the DiT. Words that never occur in training (e.g. the benchmark's held-out
verbs) map to ``[UNK]``; word dropout during training teaches the model to read an instruction from
its structure when a word is unknown.
"""

from __future__ import annotations

import dataclasses

import json
import re
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from vincie_sdk.config import VAEConfig, VincieConfig
from vincie_sdk.loading import load_into, read_state_dict
from vincie_sdk.model import VincieModel
from vincie_sdk.models.dit import VincieTransformer
from vincie_sdk.models.text_encoder import (EOD_TOKEN, UNK_TOKEN, TextEncoder, build_text_encoder_folder,
                                             build_word_tokenizer)
from vincie_sdk.models.autoencoder import build_autoencoder
from vincie_sdk.prompts import TASK_PHRASES, FrameKind, frame_prompt

_WORD = re.compile(r"[a-z]+|\d|[^\sa-z\d]")


def corpus_words(texts: Iterable[str]) -> list[str]:
    """Words as the word-level tokenizer splits them (lowercase letters runs, single digits, punctuation)."""
    seen: dict[str, None] = {}
    for text in texts:
        for w in _WORD.findall(text.lower()):
            seen.setdefault(w, None)
    return list(seen)


def prompt_vocabulary(instructions: Iterable[str], cameras: Iterable[str]) -> list[str]:
    """The vocabulary of every prompt the model can be trained on, from the corpus' instructions."""
    from .tasks import camera_prefix

    texts = list(instructions)
    texts += [camera_prefix(c) for c in set(cameras) | {"None"}]
    texts += [frame_prompt("x", src=12, index=34, kind=k) for k in FrameKind] + list(TASK_PHRASES.values())
    texts += [str(d) for d in range(10)]
    return [w for w in corpus_words(texts) if w != "x"]


def fresh_model(config: VincieConfig, *, vae_dir: str | Path | None, vocab: list[str] | None = None,
                seed: int = 0) -> VincieModel:
    """A randomly initialised DiT and text encoder around a trained autoencoder."""
    torch.manual_seed(seed)
    if vae_dir is not None:
        vae_dir = Path(vae_dir)
        cfg_file = vae_dir / "vae_config.json"
        if cfg_file.exists():
            fields = json.loads(cfg_file.read_text())
            config = config.replace(vae=VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}))
        vae = load_into(build_autoencoder(config.vae), read_state_dict(vae_dir / "vae.safetensors", "autoencoder"),
                        str(vae_dir / "vae.safetensors"))
    else:
        vae = build_autoencoder(config.vae)
    dit = VincieTransformer(config.dit)
    # Start by predicting zero (velocity, or residual = copy the source): the output projection is
    # zero-initialised, as adaLN-Zero DiTs do.
    torch.nn.init.zeros_(dit.vid_out.proj.weight)
    torch.nn.init.zeros_(dit.vid_out.proj.bias)
    with tempfile.TemporaryDirectory() as tmp:
        build_text_encoder_folder(tmp, vocab=vocab, hidden_size=config.text.hidden_size, num_layers=2,
                                  num_heads=max(1, config.text.hidden_size // 32), max_length=config.text.max_length,
                                  seed=seed)
        text = TextEncoder.from_pretrained(tmp, config.text, dtype=torch.float32)
    # Word embeddings at the scale of the normalised hidden states (std 1, not the LM default 0.02):
    # otherwise the context average from attention dominates every token's state and "red" and "blue"
    # differ by a few percent after the final norm; the DiT then sees no word and learns to ignore text
    # (our first run: identical outputs for different instructions after 1,500 steps).
    torch.nn.init.normal_(text.model.get_input_embeddings().weight, std=1.0)
    return VincieModel(config, dit, vae, text)


def extend_vocabulary(text: TextEncoder, words: Iterable[str], seed: int = 0) -> list[str]:
    """Append the ``words`` a word-level text encoder does not know to its vocabulary, each with a new
    embedding row (drawn like :func:`fresh_model`'s); known words keep their ids, so the trained rows
    keep their meaning. For continuing a trained embedded model on data with new words (e.g. the back
    phrasings of ``vincie data build --back-phrasing``): otherwise they would all read as ``[UNK]``.
    Other tokenizers (sub-word, as the official Qwen's) already spell every word and are left alone.

    Returns:
        The words added, in their new id order (empty if none or not a word-level tokenizer).
    """
    from tokenizers import models

    backend = getattr(text.tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.WordLevel):
        return []
    vocab = text.tokenizer.get_vocab()
    new = [w for w in dict.fromkeys(w.lower() for w in words) if w and w not in vocab]
    if not new:
        return []
    ordered = sorted(vocab, key=vocab.get)
    if [vocab[w] for w in ordered] != list(range(len(ordered))) or ordered[:2] != [UNK_TOKEN, EOD_TOKEN]:
        raise ValueError("extend_vocabulary: the tokenizer is not one build_word_tokenizer made "
                         "([UNK], <|endoftext|>, then words at consecutive ids)")
    tokenizer = build_word_tokenizer(ordered[2:] + new, max_length=text.tokenizer.model_max_length)
    embeddings = text.model.get_input_embeddings()
    old_rows = embeddings.weight.detach().clone()
    # The new rows are drawn below; transformers' mean-matching draw would only be overwritten.
    text.model.resize_token_embeddings(len(ordered) + len(new), mean_resizing=False)
    weight = text.model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight[: len(ordered)] = old_rows
        weight[len(ordered):] = torch.randn(len(new), weight.shape[1], generator=generator).to(weight.dtype)
    text.tokenizer = tokenizer
    text.cache_clear()
    return new


def install(model_dir: str | Path, dest: str | Path, dtype: str = "float16", **sampler) -> Path:
    """Write a trained model folder as the shipped embedded model: the DiT stored in ``dtype`` (half the
    size of float32; loading casts back to the compute dtype), the rest as is. Atomic (temp + rename).
    Keyword arguments replace fields of the model's default sampler settings (``SamplerConfig``), e.g.
    a guidance scale chosen after training.

    Example:
        >>> install("runs/shapes-pretrain/model", "vincie_sdk/weights/vincie-shapes", cfg_scale=1.5)  # doctest: +SKIP
    """
    model = VincieModel.from_pretrained(model_dir, dtype="float32")
    if sampler:
        model.config = dataclasses.replace(model.config, sampler=dataclasses.replace(model.config.sampler, **sampler))
    model.dit.to(getattr(torch, dtype))
    return model.save_pretrained(dest)
