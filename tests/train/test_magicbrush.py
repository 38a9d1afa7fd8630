"""MagicBrush metrics: exact L1/L2 on known images, CLIP-I/CLIP-T/DINO with tiny randomly initialised
transformers models built from configs, the preprocessing, clear notes without weights, and the CLI."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image
from vincie_train.eval.magicbrush import (ClipScorer, _resize_crop, distances, evaluate, generated_path,
                                          load_ground_truth, load_scorers)


def _byte_chars() -> list[str]:
    # GPT-2 / CLIP byte-level alphabet: printable bytes map to themselves, the others to 256 + n.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP (hidden 32, 1 layer, 32 px) with a character-level CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    folder = tmp_path_factory.mktemp("clip")
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    else:
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    text = dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("dino")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                             image_size=32, patch_size=8)).save_pretrained(folder)
    return folder


def pattern(seed, size=(40, 30)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture()
def magicbrush(tmp_path):
    """Two sessions (2 and 1 turns) in MagicBrush's layout; generated = ground truth for '101', not for '7'."""
    gt, gen = tmp_path / "test" / "images", tmp_path / "gen"
    sessions = {"101": 2, "7": 1}
    edits, captions = {}, {}
    for img_id, turns in sessions.items():
        (gt / img_id).mkdir(parents=True)
        (gen / img_id).mkdir(parents=True)
        pattern(0).save(gt / img_id / f"{img_id}-input.png")
        Image.new("L", (40, 30)).save(gt / img_id / f"{img_id}-mask1.png")
        edits[img_id] = [{"input": "", "mask": "", "instruction": f"edit {k}", "output": f"{img_id}-output{k}.png"}
                         for k in range(1, turns + 1)]
        captions[img_id] = {f"{img_id}-output{k}.png": f"a picture {k}" for k in range(1, turns + 1)}
        for k in range(1, turns + 1):
            truth = pattern(10 * k + len(img_id))
            truth.save(gt / img_id / f"{img_id}-output{k}.png")
            name = f"{img_id}_1.png" if k == 1 else f"{img_id}_iter_{k}.png"
            (truth if img_id == "101" else pattern(99, (80, 60))).save(gen / img_id / name)
    (tmp_path / "test" / "edit_sessions.json").write_text(json.dumps(edits))
    (tmp_path / "test" / "local_captions.json").write_text(json.dumps(captions))
    return gt, gen


def test_l1_l2_are_exact_on_known_images():
    black, white = Image.new("RGB", (8, 6), (0, 0, 0)), Image.new("RGB", (8, 6), (255, 255, 255))
    assert distances(black, white) == (1.0, 1.0)
    l1, l2 = distances(Image.new("RGB", (16, 12), (51, 102, 153)), black)  # resized to 8x6 first: still uniform
    assert l1 == pytest.approx((0.2 + 0.4 + 0.6) / 3, abs=1e-12)
    assert l2 == pytest.approx((0.04 + 0.16 + 0.36) / 3, abs=1e-12)
    half = np.zeros((6, 8, 3), np.uint8)
    half[:3] = 255  # half the pixels differ by 1
    assert distances(Image.fromarray(half), black) == (0.5, 0.5)


def test_preprocessing_matches_torchvision_and_clip_processor(clip_dir):
    """DINO: MagicBrush's torchvision chain; CLIP: clip.load's chain (Resize(n, bicubic), CenterCrop(n)), which
    transformers' CLIPImageProcessor also matches when both centre-crop offsets agree."""
    tv = pytest.importorskip("torchvision.transforms")
    from transformers import CLIPImageProcessor
    from vincie_train.eval.magicbrush import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

    img = pattern(3, (50, 37))
    ref = tv.Compose([tv.Resize(256, interpolation=3), tv.CenterCrop(224), tv.ToTensor(),
                      tv.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert torch.allclose(_resize_crop(img, 256, 224, IMAGENET_MEAN, IMAGENET_STD), ref, atol=1e-6)
    size = ClipScorer.load(clip_dir).size
    ref = tv.Compose([tv.Resize(size, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(size), tv.ToTensor(),
                      tv.Normalize(CLIP_MEAN, CLIP_STD)])(img)
    assert torch.allclose(_resize_crop(img, size, size, CLIP_MEAN, CLIP_STD), ref, atol=1e-6)
    img = pattern(4, (48, 36))
    theirs = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})(
        images=img, return_tensors="pt")["pixel_values"][0]
    assert (_resize_crop(img, size, size, CLIP_MEAN, CLIP_STD) - theirs).abs().max() < 0.05


def test_metrics_with_tiny_clip_and_dino(magicbrush, clip_dir, dino_dir):
    gt, gen = magicbrush
    sessions = load_ground_truth(gt)
    assert [s.img_id for s in sessions] == ["101", "7"]
    assert sessions[0].instructions == ("edit 1", "edit 2") and sessions[0].captions == ("a picture 1", "a picture 2")
    clip, dino, notes = load_scorers(str(clip_dir), str(dino_dir))
    assert notes == []
    report = evaluate(sessions, gen, clip=clip, dino=dino)
    per = report["sessions"]
    # Generated == ground truth: zero distance, cosine 1.
    for row in per["101"]:
        assert row["l1"] == 0 and row["l2"] == 0
        assert row["clip_i"] == pytest.approx(1.0, abs=1e-6) and row["dino"] == pytest.approx(1.0, abs=1e-6)
    assert per["7"][0]["clip_i"] < 0.9999 and per["7"][0]["l1"] > 0.1
    # CLIP-T: cosine of the generated image's embedding with the caption's text embedding.
    image = Image.open(generated_path(gen, "7", 1))
    with torch.no_grad():
        e_img, e_txt = clip.images([image])[0].double(), clip.texts(["a picture 1"])[0].double()
    assert per["7"][0]["clip_t"] == pytest.approx(float(e_img @ e_txt / e_img.norm() / e_txt.norm()), abs=1e-9)
    assert report["clip_t_text"] == "captions"
    # Turn 1 averages both sessions, turn 2 only '101'; final = the last turn of each session.
    t1, t2 = report["turns"]
    assert t1["n"] == 2 and t2["n"] == 1 and t2["l1"] == 0
    assert t1["l1"] == pytest.approx(per["7"][0]["l1"] / 2)
    assert report["final_turn"]["clip_i"] == pytest.approx((per["101"][1]["clip_i"] + per["7"][0]["clip_i"]) / 2)
    assert report["all_turns"]["n"] == 3


def test_missing_weights_are_reported_and_l1_l2_still_computed(magicbrush, tmp_path):
    gt, gen = magicbrush
    clip, dino, notes = load_scorers(str(tmp_path / "no-clip"), None)
    assert clip is None and dino is None
    assert notes[0] == (f"CLIP-I/CLIP-T need CLIP weights at {tmp_path / 'no-clip'} (a local transformers folder): "
                        "no config.json; skipping")
    assert notes[1].startswith("DINO skipped: they need DINO weights")
    report = evaluate(load_ground_truth(gt), gen)
    assert set(report["all_turns"]) == {"n", "l1", "l2"}


def test_missing_generated_images_are_named(magicbrush):
    gt, gen = magicbrush
    (gen / "101" / "101_iter_2.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 generated images missing .*101 turn 2"):
        evaluate(load_ground_truth(gt), gen)


def test_cli_generates_and_scores(magicbrush, clip_dir, tmp_path, capsys):
    from vincie_sdk.cli import main

    gt, _ = magicbrush
    out = tmp_path / "generated"
    rc = main(["eval", "magicbrush", "--gt", str(gt), "--generated", str(out), "-m", "random:tiny", "--steps", "1",
               "--clip", str(clip_dir), "--json", str(tmp_path / "r.json"), "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(p.name for p in (out / "101").iterdir()) == ["101_1.png", "101_iter_2.png"]
    assert "note: DINO skipped" in captured.err
    assert "| turn | n | L1 | L2 | CLIP-I | CLIP-T |" in captured.out and "| final | 2 |" in captured.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["turns"][1]["n"] == 1 and "dino" not in report["all_turns"]
