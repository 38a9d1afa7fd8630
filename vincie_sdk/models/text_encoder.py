"""Text encoder: a Hugging Face causal LM whose last hidden state conditions the DiT.

The official VINCIE text encoder is Qwen-14B (``llm14b/``, remote code). Each prompt is encoded on its own:
its tokens (truncated to ``max_length``) are followed by one ``<|endoftext|>`` token (the "EOD trick": if the
prompt fills ``max_length`` the last text token is overwritten), the base transformer runs with causal
attention, and the final-norm hidden states of those ``n + 1`` positions are returned — no pooling, no
projection (the DiT's ``txt_in`` does that). See the spec, sections 3.6 and 7.

Any standard causal LM folder works as well (Qwen2, Llama, GPT-2, ...); :func:`build_text_encoder_folder`
writes a tiny randomly initialised one with a word-level tokenizer for tests and small from-scratch models.

Example:
    >>> from vincie_sdk.config import TextEncoderConfig
    >>> folder = build_text_encoder_folder("/tmp/tiny_te", hidden_size=32)  # doctest: +SKIP
    >>> te = TextEncoder.from_pretrained(folder, TextEncoderConfig(hidden_size=32))  # doctest: +SKIP
    >>> [e.shape for e in te.encode(["add a red hat", ""])]  # doctest: +SKIP
    [torch.Size([5, 32]), torch.Size([1, 32])]
"""

from __future__ import annotations

import contextlib

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn

from vincie_sdk.config import TextEncoderConfig

logger = logging.getLogger(__name__)

EOD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "[UNK]"

# Files of which at least one must exist for AutoTokenizer to find a tokenizer in a local folder.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "qwen.tiktoken",  # the official Qwen-14B tokenizer
)
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_GENERIC_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


class CacheInfo(NamedTuple):
    """Counters of the prompt-embedding cache (same fields as :func:`functools.lru_cache`)."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    resolved = getattr(torch, aliases.get(name, name), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16' or 'float32'")
    return resolved


def _dtype_kwarg() -> str:
    # transformers >= 4.56 renamed `torch_dtype` to `dtype` (the old name is deprecated in v5).
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _check_folder(path: Path, config: TextEncoderConfig) -> None:
    """Raise a short FileNotFoundError (not a deep transformers traceback) if the folder is unusable."""
    hint = f"expected a Hugging Face causal-LM folder (the checkpoint's '{config.subfolder}/' directory)"
    if not path.is_dir():
        raise FileNotFoundError(f"Text encoder folder not found: {path} ({hint})")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"Text encoder folder {path} has no config.json ({hint})")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"Text encoder folder {path} has no tokenizer files (looked for one of: {', '.join(_TOKENIZER_FILES)})"
        )
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"Text encoder folder {path} has no weight files (looked for {', '.join(_WEIGHT_PATTERNS)})"
        )


def _load_tokenizer(path: Path, config: TextEncoderConfig) -> Any:
    """Load the tokenizer with the official options (right padding/truncation, ``model_max_length``)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    kwargs = dict(
        local_files_only=True, model_max_length=config.max_length, padding_side="right", truncation_side="right"
    )
    tok_config_file = path / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text(encoding="utf-8")) if tok_config_file.is_file() else {}
    # A folder declaring the generic fast class (e.g. from build_text_encoder_folder) means "use tokenizer.json
    # as is". AutoTokenizer would instead, for some model types (qwen2 in transformers 5), substitute the
    # model family's own tokenizer class and rebuild a different pipeline from the vocabulary.
    if (
        tok_config.get("tokenizer_class") in _GENERIC_TOKENIZER_CLASSES
        and "auto_map" not in tok_config
        and (path / "tokenizer.json").is_file()
    ):
        return PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
    # The official call also passes use_fast=False: Qwen-14B has only a slow (remote-code) tokenizer, which
    # AutoTokenizer picks anyway; other folders keep their equivalent fast tokenizer.
    return AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code, **kwargs)


def _resolve_backbone(model: nn.Module) -> nn.Module:
    """Return the base transformer of a causal LM (the part whose output is normed hidden states).

    * Qwen-14B remote code and GPT-2 keep it in ``model.transformer`` (the official code runs exactly that);
    * other HF causal LMs expose it through ``get_decoder()`` / ``base_model`` (e.g. ``Qwen2ForCausalLM.model``,
      whose output already went through the final RMSNorm);
    * a base model passed directly is used as is.
    """
    transformer = getattr(model, "transformer", None)
    if isinstance(transformer, nn.Module):
        return transformer
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError, ValueError):
            decoder = None
        if isinstance(decoder, nn.Module) and decoder is not model:
            return decoder
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def _eod_token_id(tokenizer: Any) -> int:
    """``<|endoftext|>`` if the vocabulary has it, else the EOS id, else the pad id."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if EOD_TOKEN in vocab:
        return int(vocab[EOD_TOKEN])
    for attr in ("eod_id", "eos_token_id", "pad_token_id"):  # eod_id: the Qwen-14B tokenizer
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"Tokenizer {type(tokenizer).__name__} has no {EOD_TOKEN}, EOS or pad token")


class TextEncoder(nn.Module):
    """Encodes prompts into per-prompt hidden-state sequences ``(n_tokens + 1, hidden)``.

    The module holds only the base transformer (the LM head is dropped: it is never used and is 1.5 GB for
    Qwen-14B). Outputs are in the module's dtype and on its device.

    Args:
        model: a causal LM (or its base model); see :func:`_resolve_backbone` for which part is run.
        tokenizer: the matching Hugging Face tokenizer.
        config: max length (tokens per prompt, EOD included) and expected hidden size.
        cache_size: number of prompts whose embeddings are kept (LRU); 0 disables the cache.
        batch_size: prompts per forward pass when encoding many new prompts.

    Example:
        >>> te = TextEncoder.from_pretrained("ckpt/llm14b", TextEncoderConfig())  # doctest: +SKIP
        >>> with torch.no_grad():  # doctest: +SKIP
        ...     emb = te.encode(["Based on <IMG0>, add a hat. Output <IMG1>: "])[0]  # (m, 5120) bf16
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        config: TextEncoderConfig,
        cache_size: int = 256,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if config.max_length < 1:
            raise ValueError(f"TextEncoderConfig.max_length must be >= 1, got {config.max_length}")
        self.model = _resolve_backbone(model)
        self.tokenizer = tokenizer
        self.config = config
        self.eod_token_id = _eod_token_id(tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        # Padding never reaches the output (right padding + causal attention); any valid id will do.
        self.pad_token_id = pad if isinstance(pad, int) else self.eod_token_id
        self.cache_size = cache_size
        self.batch_size = max(1, batch_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._hits = 0
        self._misses = 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: TextEncoderConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ) -> TextEncoder:
        """Load tokenizer and model from a local folder (never downloads).

        Args:
            path: the text-encoder folder (``config.json``, tokenizer files, weights), e.g. ``ckpt/llm14b``.
            config: ``trust_remote_code`` (needed for the official Qwen-14B), ``max_length``, ``hidden_size``.
            device: where the encoder runs; keep ``"cpu"`` while the DiT is on the GPU to save GPU memory.
            dtype: overrides ``config.dtype`` (default bfloat16, like the official run).
            **kwargs: passed to the constructor (``cache_size``, ``batch_size``).

        Returns:
            A frozen (``requires_grad=False``) encoder in eval mode.

        Raises:
            FileNotFoundError: the folder, its ``config.json``, tokenizer files or weights are missing.
            ValueError: the model's hidden size differs from ``config.hidden_size``.
        """
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(path).expanduser()
        _check_folder(path, config)
        torch_dtype = _resolve_dtype(dtype if dtype is not None else config.dtype)
        remote = config.trust_remote_code

        hf_config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=remote)
        # Qwen-14B remote code picks its precision from these flags (the official call passes bf16=True);
        # without them it auto-selects and may cast the weights to something else than requested.
        if all(hasattr(hf_config, flag) for flag in ("bf16", "fp16", "fp32")):
            hf_config.bf16 = torch_dtype == torch.bfloat16
            hf_config.fp16 = torch_dtype == torch.float16
            hf_config.fp32 = torch_dtype == torch.float32
        # Learned absolute positions (GPT-2 style) cannot go past their table; RoPE models have no hard limit.
        n_positions = getattr(hf_config, "n_positions", None)
        if isinstance(n_positions, int) and n_positions < config.max_length:
            raise ValueError(
                f"Text encoder in {path} has {n_positions} positions, fewer than max_length={config.max_length}"
            )
        hidden = getattr(hf_config, "hidden_size", None)
        if hidden is not None and hidden != config.hidden_size:
            raise ValueError(
                f"Text encoder in {path} has hidden size {hidden} but the model config expects "
                f"{config.hidden_size} (TextEncoderConfig.hidden_size / DiTConfig.txt_in_dim)"
            )

        tokenizer = _load_tokenizer(path, config)
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                path,
                config=hf_config,
                local_files_only=True,
                trust_remote_code=remote,
                **{_dtype_kwarg(): torch_dtype},
            )
        encoder = cls(model, tokenizer, config, **kwargs)
        encoder.requires_grad_(False).eval()
        # Only the device: the weights already have `torch_dtype`, and a blanket cast would also round fp32
        # buffers such as RoPE inverse frequencies.
        encoder.to(device)
        logger.info(
            "Loaded text encoder %s (%s, hidden %s, eod id %d) on %s as %s",
            path, type(encoder.model).__name__, hidden, encoder.eod_token_id, device, torch_dtype,
        )
        return encoder

    # ------------------------------------------------------------------ device / dtype
    @property
    def device(self) -> torch.device:
        """Device of the weights (where :meth:`encode` runs and returns its tensors)."""
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights (the dtype of the returned embeddings)."""
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> TextEncoder:
        # .to()/.cuda()/.half() go through here: cached embeddings would have the old device/dtype.
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ cache
    def cache_info(self) -> CacheInfo:
        """Hits, misses, maximum and current number of cached prompts."""
        return CacheInfo(self._hits, self._misses, self.cache_size, len(self._cache))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the encoder (base transformer + tokenizer) as a folder :meth:`from_pretrained` reads.

        Only the base transformer is saved (the LM head is never used); loading it back as a causal LM
        re-creates a tied or fresh head, which the encoder drops again.
        """
        folder = Path(folder)
        with _quiet_transformers():
            self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        if type(self.tokenizer).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend"):
            _mark_generic_tokenizer(folder)
        return folder

    def cache_clear(self) -> None:
        """Drop all cached embeddings and reset the counters."""
        self._cache.clear()
        self._hits = self._misses = 0

    def _cache_usable(self) -> bool:
        # A cached tensor must not carry an autograd graph (a second backward through it would fail) nor
        # hide dropout noise: cache only in eval mode and when no gradient can flow to the weights.
        if self.cache_size <= 0 or self.training:
            return False
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())

    # ------------------------------------------------------------------ encoding
    def token_ids(self, prompt: str) -> list[int]:
        """Token ids actually fed to the model: text tokens (truncated) followed by the EOD token.

        Args:
            prompt: the text.

        Returns:
            ``n + 1`` ids if the text has ``n < max_length`` tokens, else ``max_length`` ids whose last text
            token is replaced by EOD (official behaviour).
        """
        max_length = self.config.max_length
        ids = list(self.tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"])
        return ids[: max_length - 1] + [self.eod_token_id]

    def _forward_batch(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        sequences = [self.token_ids(p) for p in prompts]
        longest = max(len(s) for s in sequences)
        device = self.device
        input_ids = torch.full((len(sequences), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):  # right padding: real tokens keep positions 0..m-1
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        out = self.model(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False, return_dict=True
        )
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            raise TypeError(f"{type(self.model).__name__} returned no last_hidden_state; pass a base transformer")
        return [hidden[row, : len(seq)] for row, seq in enumerate(sequences)]

    def encode(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Encode each prompt independently.

        Args:
            prompts: texts; empty strings are allowed (they give only the EOD row).

        Returns:
            One tensor per prompt, shape ``(m_j, hidden)`` with ``m_j = min(n_j + 1, max_length)``, in the
            encoder's dtype and on its device. Repeated prompts are served from the cache under
            ``torch.no_grad()`` / inference mode (eval mode).
        """
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        use_cache = self._cache_usable()
        results: dict[str, torch.Tensor] = {}
        todo: list[str] = []
        for prompt in dict.fromkeys(prompts):  # each distinct prompt is encoded once per call
            if use_cache and prompt in self._cache:
                self._cache.move_to_end(prompt)
                results[prompt] = self._cache[prompt]
                self._hits += 1
            else:
                todo.append(prompt)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for prompt, emb in zip(chunk, self._forward_batch(chunk)):
                results[prompt] = emb
                if use_cache:
                    self._misses += 1
                    self._cache[prompt] = emb.detach()
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        # Clones: callers may modify their tensors, and a clone taken outside inference mode is a normal
        # tensor even if the cached one was created inside it.
        return [results[p].clone() if use_cache else results[p] for p in prompts]

    def forward(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Same as :meth:`encode`."""
        return self.encode(prompts)


# ---------------------------------------------------------------------------------------- tiny folders
_DEFAULT_WORDS = """
a an the this that these those it its it's is are was be been being to of in on at by for with without from
into onto over under above below behind beside besides between near next inside outside around through
across along against toward towards up down left right top bottom middle center centre front back side
sides corner edge far close foreground background here there and or but not no so as than then while when
where which who whom whose what how all each every both some any more most less least much many few
other another same different only just also very too again still now
based output img camera none image picture photo photograph scene view frame shot
add adds adding added remove removes removing removed delete erase replace replaced replacing change
changes changing changed make makes making made turn turning move moves moving moved put place placed
set keep keeping let give show shows showing hide swap rotate flip shift shrink enlarge resize crop zoom
extend expand fill paint draw color colour recolor transform convert become becomes use apply render
insert create generate restore enhance brighten darken blur sharpen lighten clean fix wear wears wearing
hold holds holding sit sits sitting stand stands standing walk walking run running look looking looks
smile smiling laugh laughing cry crying jump jumping fly flying hover hovering float floating face facing
lower raise lift open close closed eat eating drink drinking read reading write play playing
red green blue yellow orange purple pink brown black white gray grey gold golden silver beige cyan
magenta violet lavender turquoise navy teal maroon olive crimson dark light bright pale pastel vivid
colorful colourful transparent shiny matte metallic wooden glass plastic paper stone stained striped
dotted checkered plain gradient
circle circles square squares triangle triangles rectangle star stars heart hearts line lines shape shapes
round flat tall short long wide narrow thick thin big bigger biggest small smaller smallest large larger
tiny huge little high low higher lower full empty half whole new old young older younger
man men woman women person people boy girl child children baby kid kids friend family player
head hair face eye eyes nose mouth lips ear ears hand hands arm arms leg legs foot feet finger fingers
neck shoulder body skin beard mustache expression
hat cap crown glasses sunglasses mask scarf shirt t dress coat jacket suit tie skirt pants jeans shoe
shoes boot boots bag backpack umbrella necklace earrings ring watch gloves uniform costume
cat cats dog dogs bird birds horse fish cow sheep lion tiger bear elephant monkey rabbit duck butterfly
animal animals
car cars bus truck bike bicycle boat ship train plane airplane
tree trees flower flowers grass leaf leaves plant plants garden forest park field mountain mountains hill
river lake sea ocean beach sand water sky cloud clouds sun moon rain snow fire smoke light lights shadow
shadows road street city building buildings house home room wall walls floor window windows door doors
roof bridge tower table chair sofa bed desk lamp clock mirror book books cup bottle plate bowl box ball
phone computer screen sign flag fence bench kitchen food fruit fruits apple apples banana bananas orange
oranges pineapple cake bread pizza
day night morning evening sunset sunrise summer winter autumn fall spring weather sunny cloudy rainy
snowy foggy style styles painting cartoon anime sketch watercolor oil realistic photorealistic vintage
retro modern cinematic
one two three four five six seven eight nine ten first second third fourth fifth last single double
half quarter dozen number numbers
so that she he her his him they them their we us our you your i me my
s t d ll re ve m
text word words letter letters logo watermark
worst quality normal res blurry jpeg artifacts grainy banner extra digits signature subtitling bad anatomy
proportions deformed disconnected limbs disfigured fused gross malformed mutated missing poorly drawn nsfw
uncensored cleavage nude nipples overexposed underexposed structures
""".split()
_DEFAULT_SYMBOLS = list(".,;:!?'\"’‘“”()[]{}<>#-_/\\*&%$@+=|~") + [str(d) for d in range(10)]


def default_vocab() -> list[str]:
    """A few hundred lowercase English editing words, punctuation and the digits 0-9 (no special tokens)."""
    return list(dict.fromkeys(_DEFAULT_WORDS + _DEFAULT_SYMBOLS))


def build_word_tokenizer(vocab: Sequence[str] | None = None, max_length: int = 64) -> Any:
    """A word-level ``PreTrainedTokenizerFast``: lowercase, split on whitespace, punctuation and digits.

    Args:
        vocab: words (duplicates and case are folded); default :func:`default_vocab`.
        max_length: stored as ``model_max_length``.

    Returns:
        The tokenizer; id 0 is ``[UNK]`` (unknown words), id 1 is ``<|endoftext|>`` (EOS and pad).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [w.lower() for w in (default_vocab() if vocab is None else vocab)]
    words = [w for w in dict.fromkeys(words) if w and w not in (UNK_TOKEN.lower(), EOD_TOKEN)]
    token_to_id = {UNK_TOKEN: 0, EOD_TOKEN: 1}
    for word in words:
        token_to_id[word] = len(token_to_id)
    backend = Tokenizer(models.WordLevel(vocab=token_to_id, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),  # any number is spelled with in-vocab digits
        ]
    )
    backend.add_special_tokens([UNK_TOKEN, EOD_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        eos_token=EOD_TOKEN,
        pad_token=EOD_TOKEN,  # as in the official setup
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


def _tiny_config(arch: str, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, n_pos: int) -> Any:
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=1, pad_token_id=1, tie_word_embeddings=True)
    if arch in ("qwen2", "llama"):
        from transformers import LlamaConfig, Qwen2Config

        cls = Qwen2Config if arch == "qwen2" else LlamaConfig
        return cls(
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=n_pos,
            rms_norm_eps=1e-6,
            **common,
        )
    if arch == "gpt2":  # base model lives in `.transformer`, like the official Qwen-14B remote code
        from transformers import GPT2Config

        return GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=n_pos, **common)
    raise ValueError(f"Unknown arch {arch!r}; use 'qwen2', 'llama' or 'gpt2'")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-file progress bars for our small, frequent loads and saves."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _mark_generic_tokenizer(folder: Path) -> None:
    # transformers 5 writes its new generic class name "TokenizersBackend"; the older alias loads everywhere.
    tok_config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text(encoding="utf-8"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config_file.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")


def build_text_encoder_folder(
    folder: str | Path,
    vocab: list[str] | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_length: int = 64,
    seed: int = 0,
    arch: str = "qwen2",
) -> Path:
    """Write a small randomly initialised causal LM + word-level tokenizer loadable by :class:`TextEncoder`.

    Args:
        folder: output directory (created; existing files are overwritten).
        vocab: words of the tokenizer (default :func:`default_vocab`); unknown words map to ``[UNK]``.
        hidden_size, num_layers, num_heads: model size (``hidden_size`` must be divisible by ``num_heads``).
        max_length: tokens per prompt (EOD included); also the position budget of the model.
        seed: weight initialisation seed (the global RNG state is left untouched).
        arch: ``"qwen2"`` (default), ``"llama"`` or ``"gpt2"``.

    Returns:
        The folder path. Load it with ``TextEncoder.from_pretrained(folder, TextEncoderConfig(
        hidden_size=hidden_size, max_length=max_length, trust_remote_code=False))``.
    """
    from transformers import AutoModelForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_word_tokenizer(vocab, max_length=max_length)
    hf_config = _tiny_config(arch, len(tokenizer), hidden_size, num_layers, num_heads, max(max_length, 256))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config)
    with _quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _mark_generic_tokenizer(folder)
    logger.info("Wrote %s text encoder (vocab %d, hidden %d) to %s", arch, len(tokenizer), hidden_size, folder)
    return folder
