"""The synthetic shapes world: rendering, parsing, instructions, sessions and videos."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from vincie_train.synth import (
    BACKGROUNDS,
    CHANGE_TYPES,
    COLORS,
    EDIT_TYPES,
    TEMPLATES,
    Scene,
    SceneObject,
    WorldConfig,
    diff_scenes,
    load_sidecar,
    parse_scene,
    render,
    render_layers,
    rle_decode,
    rle_encode,
    sample_transition_session,
    sample_video,
    scene_signature,
    write_synth_video,
)
from vincie_train.synth.parse import COLOR_THRESHOLD
from vincie_train.synth.world import GRADIENT_AMPLITUDE


def test_palettes_are_separable_by_the_parser_threshold():
    obj = np.array(list(COLORS.values()), dtype=float)
    bg = np.array(list(BACKGROUNDS.values()), dtype=float)
    min_obj = min(np.linalg.norm(a - b) for a, b in itertools.combinations(obj, 2))
    min_bg = min(np.linalg.norm(a - b) for a in obj for b in bg)
    assert min_obj > 2 * COLOR_THRESHOLD
    # A gradient shifts each channel by up to GRADIENT_AMPLITUDE, i.e. sqrt(3) x that in RGB distance.
    assert min_bg - np.sqrt(3) * GRADIENT_AMPLITUDE > COLOR_THRESHOLD


@pytest.mark.parametrize("size,jitter,seeds", [(64, 0.0, 40), (64, 1.0, 40), (128, 0.5, 12)])
def test_parse_recovers_rendered_scenes_exactly(size, jitter, seeds):
    config = WorldConfig(size=size, jitter=jitter)
    for seed in range(seeds):
        session = sample_transition_session(np.random.default_rng(seed), 3, config)
        for scene, frame in zip(session.scenes, session.frames):
            parsed = parse_scene(frame)
            assert scene_signature(parsed) == scene_signature(scene), seed
            truth = {(o.color, o.shape): o for o in scene.objects}
            for o in parsed.objects:
                t = truth[(o.color, o.shape)]
                assert abs(o.x - t.x) <= 1 / size and abs(o.y - t.y) <= 1 / size


def test_render_is_flat_and_objects_do_not_touch():
    session = sample_transition_session(np.random.default_rng(3), 4)
    for scene in session.scenes:
        img, masks = render_layers(scene, 64)
        for obj in scene.objects:
            assert (img[masks[obj.id]] == COLORS[obj.color]).all()  # flat colour, no anti-aliasing
        for a, b in itertools.combinations(scene.objects, 2):
            grown = np.zeros_like(masks[a.id])
            ys, xs = np.nonzero(masks[a.id])
            for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                grown[np.clip(ys + dy, 0, 63), np.clip(xs + dx, 0, 63)] = True
            assert not (grown & masks[b.id]).any()


def test_sessions_are_deterministic_and_consistent():
    a = sample_transition_session(np.random.default_rng(7), 5, split="eval")
    b = sample_transition_session(np.random.default_rng(7), 5, split="eval")
    assert a.instructions == b.instructions and a.cameras == b.cameras
    assert all((x == y).all() for x, y in zip(a.frames, b.frames))
    assert len(a.frames) == 6 and len(a.roe_src) == len(a.roe_tgt) == 5
    for i, changes in enumerate(a.changes):
        assert changes == diff_scenes(a.scenes[i], a.scenes[i + 1])
        assert a.roe_src[i].any() and a.roe_tgt[i].any()
        # Pixels outside both RoEs do not change.
        outside = ~(a.roe_src[i] | a.roe_tgt[i])
        assert (a.frames[i][outside] == a.frames[i + 1][outside]).all()


def _template_regex(template: str) -> re.Pattern:
    from vincie_train.synth import SHAPES, SIZES

    words = {
        "color": "|".join(COLORS), "new_color": "|".join(COLORS), "shape": "|".join(SHAPES),
        "size": "|".join(SIZES), "new_size": "|".join(SIZES), "bg": "|".join(BACKGROUNDS),
        "obj": f"(?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)})", "where": "(?:at|in|on) the [a-z ]+",
        "to": "to the [a-z ]+", "dir": "to the left|to the right|up|down",
    }
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(p) if k % 2 == 0 else f"(?:{words[p]})" for k, p in enumerate(parts))
    return re.compile(pattern)


def test_every_edit_type_is_sampled_and_phrasings_split():
    train = [_template_regex(t) for k in TEMPLATES for t in TEMPLATES[k]["train"]]
    evals = [_template_regex(t) for k in TEMPLATES for t in TEMPLATES[k]["eval"]]
    seen = set()
    for seed in range(30):
        s = sample_transition_session(np.random.default_rng(seed), 4, types=CHANGE_TYPES, split="eval")
        seen |= {c.type for ch in s.changes for c in ch}
        for text in s.instructions:
            for phrase in text.split(" and "):
                assert any(r.fullmatch(phrase) for r in evals), phrase
                assert not any(r.fullmatch(phrase) for r in train), phrase
    assert seen == set(CHANGE_TYPES)
    for key, splits in TEMPLATES.items():
        assert splits["train"] and splits["eval"] and not set(splits["train"]) & set(splits["eval"]), key


def test_instruction_examples():
    red = SceneObject("circle", "red", "small", 1 / 6, 1 / 6, id=1)
    a = Scene(objects=(red,))
    rng = np.random.default_rng(0)
    from vincie_train.synth import describe_changes

    add = Scene(objects=(red, SceneObject("square", "blue", "large", 5 / 6, 5 / 6, id=2)))
    text, camera = describe_changes(diff_scenes(a, add), rng, "train")
    assert "blue square" in text and "bottom right" in text and camera == "None"
    moved = a.replace_object(SceneObject("circle", "red", "small", 0.5, 0.5, id=1))
    text, _ = describe_changes(diff_scenes(a, moved), rng, "train")
    assert text.endswith("red circle to the center")


def test_video_determinism_and_sidecar_matches_render(tmp_path):
    p1 = write_synth_video(tmp_path / "a", 3, seed=5, seconds=(2.0, 3.0))
    p2 = write_synth_video(tmp_path / "b", 3, seed=5, seconds=(2.0, 3.0))
    s1 = json.loads(p1.with_suffix(".json").read_text())
    s2 = json.loads(p2.with_suffix(".json").read_text())
    assert s1 == s2
    import av

    with av.open(str(p1)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    side = load_sidecar(p1.with_suffix(".json"))
    assert len(decoded) == side["num_frames"]
    for frame in side["frames"]:
        img, masks = render_layers(frame["scene"], side["size"])
        assert (img == decoded[frame["index"]]).all()  # lossless mp4 holds the exact render
        for o in frame["objects"]:
            assert (rle_decode(o["mask"]) == masks[o["id"]]).all()


def test_every_change_type_appears_in_nine_videos():
    seen = set()
    for i in range(len(CHANGE_TYPES)):
        rng = np.random.default_rng([0, i])
        video = sample_video(rng, 10, 2.0, first_type=CHANGE_TYPES[i])
        seen |= {e.edit.type for e in video.events}
        assert video.events and video.events[0].edit.type == CHANGE_TYPES[i]
    assert seen == set(CHANGE_TYPES)
    assert set(EDIT_TYPES) < set(CHANGE_TYPES)


def test_rle_roundtrip():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (64, 64)]:
        m = rng.random(shape) > 0.5
        assert (rle_decode(rle_encode(m)) == m).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="background"):
        Scene(background="pink")
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(max_objects=12)
    with pytest.raises(ValueError, match="n_turns"):
        sample_transition_session(np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="size"):
        render(Scene(), 4)
