"""The ``hf`` annotator end to end with a real (tiny, randomly initialised) transformers VLM.

No weights exist offline, so a Qwen2.5-VL with hidden size 32 and one layer is built from a config, with a
byte-level tokenizer (the Qwen special/image tokens + a Qwen-style chat template) and a Qwen2-VL image
processor made in code, saved with ``save_pretrained`` and loaded back through :class:`HFAnnotator` exactly
as a user's model folder would be. The random model replies with garbage, which must go through the
malformed-reply path (retries, then :class:`AnnotationError`); a canned decoded reply must parse into a
:class:`Transition` through the same code path (chat template -> processor -> generate -> decode).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from vincie_data_helpers import VALID_REPLY

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

import vincie_train.data.annotate as annotate_mod
from vincie_train.data.annotate import ANNOTATION_PROMPT, AnnotationError, Clip, HFAnnotator, make_annotator

MAX_NEW_TOKENS = 8
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# A trimmed Qwen2-VL chat template: one <|image_pad|> per image, expanded by the processor.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_vlm(folder) -> None:
    """Save a random tiny Qwen2.5-VL model + processor (tokenizer, image and video processors) to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    # Byte-level BPE without merges: one token per byte, so any text round-trips.
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    # 14 px patches merged 2x2 -> frames are resized to 28..56 px a side (1..4 image tokens each).
    size = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=CHAT_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            # head_dim 8 -> 4 rotary frequencies split over (time, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_qwen2_5_vl")
    build_tiny_vlm(folder)
    return folder


@pytest.fixture(scope="module")
def annotator(vlm_dir):
    # As the CLI builds it (``--annotator hf --hf-model DIR``), with a tiny generation budget.
    return make_annotator("hf", model_dir=str(vlm_dir), max_new_tokens=MAX_NEW_TOKENS, max_retries=1)


def make_clip() -> Clip:
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    src = np.stack([xx * 4, yy * 5, np.full_like(xx, 60)], -1).astype(np.uint8)
    tgt = src.copy()
    tgt[10:30, 20:44] = (250, 30, 30)  # a red box appears
    return Clip(None, "clip-0", [src, tgt], [0, 1], [0.0, 1.0])


class Recorder:
    """Wraps ``model.generate`` and hooks the model and its vision tower to see what really ran."""

    def __init__(self, ann: HFAnnotator, monkeypatch):
        self.calls: list[dict] = []  # per generate call: its kwargs and output
        self.forwards: list[dict] = []  # per model forward: the multimodal inputs it received
        self.vision_inputs: list[torch.Tensor] = []
        real_generate = ann.model.generate

        def generate(**kwargs):
            out = real_generate(**kwargs)
            self.calls.append({"kwargs": kwargs, "out": out})
            return out

        def on_forward(module, args, kwargs):
            # transformers 5.x generate runs the vision encoder once before decoding and hands the prefill
            # step ``mm_encoder_outputs``; older versions pass ``pixel_values`` to the prefill forward.
            keys = ("input_ids", "pixel_values", "mm_encoder_outputs")
            self.forwards.append({k: kwargs.get(k) for k in keys})

        def on_vision(module, args, output):
            self.vision_inputs.append(args[0])

        monkeypatch.setattr(ann.model, "generate", generate)
        self.handles = [
            ann.model.register_forward_pre_hook(on_forward, with_kwargs=True),
            ann.model.model.visual.register_forward_hook(on_vision),
        ]

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def recorder(annotator, monkeypatch):
    rec = Recorder(annotator, monkeypatch)
    yield rec
    rec.close()


def check_inputs_reached_the_model(ann: HFAnnotator, rec: Recorder, clip: Clip, attempts: int) -> None:
    from PIL import Image

    tokenizer = ann.processor.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expected = ann.processor.image_processor(
        images=[Image.fromarray(clip.frames[0]), Image.fromarray(clip.frames[1])], return_tensors="pt"
    )
    assert len(rec.calls) == attempts
    for n, call in enumerate(rec.calls):
        kw = call["kwargs"]
        assert kw["max_new_tokens"] == MAX_NEW_TOKENS and kw["do_sample"] is (n > 0)  # greedy, then sampled
        # Both frames, in order, preprocessed by the folder's image processor; one grid row per frame.
        assert torch.equal(kw["pixel_values"], expected["pixel_values"])
        assert torch.equal(kw["image_grid_thw"], expected["image_grid_thw"])
        assert kw["image_grid_thw"].shape[0] == 2
        # The chat template put the prompt and one expanded image placeholder per frame in the input ids.
        ids = kw["input_ids"]
        n_tokens = int((expected["image_grid_thw"].prod(-1) // 4).sum())
        assert int((ids == image_pad).sum()) == n_tokens == 8  # 48x64 -> 56x56 px -> 2x2 merged tokens
        prompt = tokenizer.decode(ids[0], skip_special_tokens=False)
        assert ANNOTATION_PROMPT in prompt and prompt.index("SOURCE frame:") < prompt.index("TARGET frame:")
        assert prompt.endswith("<|im_start|>assistant\n")
        # generate produced between 1 and MAX_NEW_TOKENS new tokens after the prompt.
        assert ids.shape[1] < call["out"].shape[1] <= ids.shape[1] + MAX_NEW_TOKENS
        assert torch.equal(call["out"][:, : ids.shape[1]], ids)
    # Every attempt ran the vision tower once, on exactly these pixels, and its prefill forward (the one with
    # the whole prompt) received the image features or the pixels.
    assert len(rec.vision_inputs) == attempts
    assert all(torch.equal(v, expected["pixel_values"]) for v in rec.vision_inputs)
    prefills = [f for f in rec.forwards if f["input_ids"] is not None and f["input_ids"].shape[1] > 1]
    assert len(prefills) == attempts
    assert all(f["pixel_values"] is not None or f["mm_encoder_outputs"] is not None for f in prefills)


def test_random_vlm_garbage_is_retried_then_rejected(annotator, recorder, monkeypatch):
    assert isinstance(annotator, HFAnnotator)
    assert type(annotator.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    replies, failures = [], []
    real_parse = annotate_mod.parse_annotation

    def parse(text, *args, **kwargs):
        replies.append(text)
        try:
            return real_parse(text, *args, **kwargs)
        except AnnotationError as exc:
            failures.append(str(exc))
            raise

    monkeypatch.setattr(annotate_mod, "parse_annotation", parse)
    torch.manual_seed(0)  # the retry samples
    clip = make_clip()
    # 8 byte-level tokens can never spell a valid reply (the shortest one is longer), so both attempts fail.
    with pytest.raises(AnnotationError, match=r"^hf annotation failed after 2 attempts: ") as err:
        annotator.annotate(clip, 0)
    assert err.value.reason == "turn_annotation_failed"

    check_inputs_reached_the_model(annotator, recorder, clip, attempts=2)
    # Generation and decoding completed on both attempts (no crash turned into a retry): each garbage reply
    # is exactly the decoded new tokens, and it was rejected by the parser.
    tokenizer = annotator.processor.tokenizer
    assert len(replies) == len(failures) == 2
    for reply, call in zip(replies, recorder.calls):
        new = call["out"][0, call["kwargs"]["input_ids"].shape[1] :]
        assert reply == tokenizer.decode(new, skip_special_tokens=True)
    assert str(err.value).endswith(failures[-1])


def test_canned_reply_parses_into_a_transition(annotator, recorder, monkeypatch):
    decoded = []
    real_decode = annotator.processor.batch_decode
    script = ["I think the frames differ.", VALID_REPLY]  # a malformed reply, then a valid one

    def batch_decode(tokens, **kwargs):
        decoded.append((tokens, kwargs, real_decode(tokens, **kwargs)))
        return [script[len(decoded) - 1]]

    monkeypatch.setattr(annotator.processor, "batch_decode", batch_decode)
    clip = make_clip()
    transition = annotator.annotate(clip, 0)

    assert transition.instruction == "Add a flower next to the rabbit."
    assert transition.camera == "None" and transition.category == "add"
    assert transition.objects_src == [] and transition.objects_tgt == ["flower"]
    assert transition.extra["attempts"] == 2
    assert transition.extra["differences"] == ["a flower appears"]
    assert transition.extra["source_description"]["characters"] == "a rabbit"

    check_inputs_reached_the_model(annotator, recorder, clip, attempts=2)
    # Only the generated tokens were decoded, without special tokens.
    assert len(decoded) == 2
    for (tokens, kwargs, text), call in zip(decoded, recorder.calls):
        prompt_len = call["kwargs"]["input_ids"].shape[1]
        assert torch.equal(tokens, call["out"][:, prompt_len:])
        assert 1 <= tokens.shape[1] <= MAX_NEW_TOKENS
        assert kwargs.get("skip_special_tokens") is True
        assert isinstance(text, list) and len(text) == 1 and isinstance(text[0], str)


def test_folder_without_chat_template_is_rejected(vlm_dir, tmp_path):
    folder = tmp_path / "base_model"
    shutil.copytree(vlm_dir, folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        HFAnnotator(str(folder))
    with pytest.raises(ValueError, match="max_new_tokens"):
        HFAnnotator(str(vlm_dir), max_new_tokens=0)
