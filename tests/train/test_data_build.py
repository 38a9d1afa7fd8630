"""The video -> session pipeline on synthetic videos: exactness, shard format, resume, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from vincie_train.data import build as build_mod
from vincie_train.data.annotate import SyntheticAnnotator
from vincie_train.data.build import BuildConfig, build_shards, parse_shard_spec
from vincie_train.data.format import SessionRecord, ShardWriter, TurnRecord, iter_shard, read_sessions
from vincie_train.data.masks import SyntheticMasker
from vincie_train.data.sampling import SamplingConfig, sample_frames
from vincie_train.synth import diff_scenes, load_sidecar, render_layers, roe_from_masks

CONFIG = BuildConfig(videos_per_shard=3, sampling=SamplingConfig(interval=1.0))


def _build(videos, out, **kw):
    return build_shards(videos, out, SyntheticAnnotator(), SyntheticMasker(), kw.pop("config", CONFIG),
                        progress=False, **kw)


@pytest.fixture(scope="module")
def synth_shards(synth_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_shards")
    summary = _build(synth_videos, out)
    return out, summary


def test_synthetic_sessions_match_the_sidecar_exactly(synth_videos, synth_shards):
    out, summary = synth_shards
    assert summary["shards"] == 3 and summary["built"] == 3 and summary["sessions"] > 0
    sidecars = {}
    types = set()
    n_turns = 0
    for s in read_sessions(out):
        video = s.provenance["video"]
        side = sidecars.setdefault(video, load_sidecar(synth_videos / video.replace(".mp4", ".json")))
        scenes = [side["frames"][k]["scene"] for k in s.provenance["frame_indices"]]
        for frame, scene in zip(s.frames, scenes, strict=True):
            assert (frame == render_layers(scene, 64)[0]).all()
        for i, turn in enumerate(s.turns):
            n_turns += 1
            changes = diff_scenes(scenes[i], scenes[i + 1])
            assert turn.changes == [c.to_dict() for c in changes]
            types |= {c.type for c in changes}
            src, tgt = roe_from_masks(changes, render_layers(scenes[i], 64)[1], render_layers(scenes[i + 1], 64)[1],
                                      (64, 64))
            assert (turn.roe_src == src).all() and (turn.roe_tgt == tgt).all()
            assert turn.instruction and turn.camera
        assert s.provenance["annotator"] == "synthetic" and len(s.provenance["timestamps"]) == len(s.frames)
    assert n_turns == summary["turns"]
    assert {"add", "remove", "move", "recolor", "resize", "background"} <= types


def test_summary_reports_counts(synth_shards):
    out, summary = synth_shards
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["sessions"] == summary["sessions"]
    assert sum(summary["categories"].values()) == summary["turns"]
    assert summary["mask_coverage"]["masks"] == 2 * summary["turns"]
    assert sum(summary["mask_coverage"]["histogram"]) == 2 * summary["turns"]
    per_shard = json.loads((out / "shard-00000.summary.json").read_text())
    assert per_shard["annotator"] == "synthetic" and per_shard["config"]["videos_per_shard"] == 3


def test_shards_are_readable_with_webdataset(synth_shards):
    wds = pytest.importorskip("webdataset")
    out, _ = synth_shards
    path = out / "shard-00000.tar"
    plain = list(iter_shard(path))
    samples = list(wds.WebDataset(str(path), shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == [p.key for p in plain]
    first, ref = samples[0], plain[0]
    meta = first["json"]
    assert meta["key"] == ref.key and meta["num_frames"] == len(ref.frames)
    assert (np.rint(first["frame0.png"]).astype(np.uint8) == ref.frames[0]).all()
    assert "roe0.src.png" in first and "roe0.tgt.png" in first


def test_crash_and_resume_gives_identical_shards(synth_videos, synth_shards, tmp_path, monkeypatch):
    reference, _ = synth_shards
    out = tmp_path / "out"

    class Crash(BaseException):  # not an Exception: like a SIGTERM, it must not be swallowed per video
        pass

    real = build_mod.process_video
    calls = []

    def crashing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 5:  # second video of shard 1
            raise Crash()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(build_mod, "process_video", crashing)
    with pytest.raises(Crash):
        _build(synth_videos, out)
    assert (out / "shard-00000.tar").exists()
    assert not (out / "shard-00001.tar").exists() and not (out / "shard-00001.tar.tmp").exists()
    first_mtime = (out / "shard-00000.tar").stat().st_mtime_ns
    # A hard kill would leave a temporary file behind: the next run must ignore and replace it.
    (out / "shard-00001.tar.tmp").write_bytes(b"partial")

    monkeypatch.setattr(build_mod, "process_video", real)
    summary = _build(synth_videos, out)
    assert summary["built"] == 2 and summary["skipped"] == 1
    assert (out / "shard-00000.tar").stat().st_mtime_ns == first_mtime
    for name in ("shard-00000.tar", "shard-00001.tar", "shard-00002.tar"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not list(out.glob("*.tmp"))
    assert _build(synth_videos, out)["built"] == 0  # idempotent


def test_shard_fan_out_covers_every_group_once(synth_videos, synth_shards, tmp_path):
    reference, _ = synth_shards
    out = tmp_path / "fan"
    for i in range(2):
        _build(synth_videos, out, shard=(i, 2))
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in reference.glob("*.tar"))
    assert (out / "shard-00001.tar").read_bytes() == (reference / "shard-00001.tar").read_bytes()
    with pytest.raises(ValueError, match="I/N"):
        parse_shard_spec("2/2")


def test_corrupt_and_unreadable_videos_are_reported_and_skipped(synth_videos, tmp_path, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("video_00000", "video_00001"):
        shutil.copy(synth_videos / f"{name}.mp4", videos / f"{name}.mp4")
        shutil.copy(synth_videos / f"{name}.json", videos / f"{name}.json")
    (videos / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    data = (synth_videos / "video_00002.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (videos / "empty.mkv").write_bytes(b"")
    summary = _build(videos, tmp_path / "out", config=BuildConfig(videos_per_shard=10))
    assert summary["rejects"]["video_unreadable"] == 3
    assert summary["sessions"] > 0 and summary["videos"] == 5
    assert "garbage.mp4" in caplog.text and "truncated.mp4" in caplog.text


def test_writer_rejects_bad_sessions_and_leaves_nothing_on_error(tmp_path):
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="key"):
        SessionRecord("a.b", [frame, frame], [TurnRecord("x")])
    with pytest.raises(ValueError, match="turns"):
        SessionRecord("ab", [frame, frame], [])
    path = tmp_path / "s.tar"
    with pytest.raises(ValueError, match="duplicate"):
        with ShardWriter(path) as w:
            w.write(SessionRecord("ab", [frame, frame], [TurnRecord("x")]))
            w.write(SessionRecord("ab", [frame, frame], [TurnRecord("x")]))
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="no shard"):
        list(iter_shard(tmp_path / "missing.tar"))


def test_hybrid_sampling_follows_the_paper():
    times = np.arange(100) / 10.0  # 10 s at 10 fps
    rng = np.random.default_rng(0)
    sel = sample_frames(times, 0, 100, rng, SamplingConfig(interval=3.0))
    interval, fixed = sel
    assert interval.strategy == "interval" and np.abs(np.diff(times[interval.indices]) - 3.0).max() <= 0.1 + 1e-9
    assert fixed.strategy == "fixed" and 2 <= len(fixed.indices) <= 6
    gaps = np.diff(fixed.indices)
    assert gaps.max() - gaps.min() <= 1  # evenly spread
    cfg = SamplingConfig("interval", interval=3.0, max_session_frames=5)
    long = sample_frames(np.arange(700) / 10.0, 0, 700, rng, cfg)
    assert [len(s.indices) for s in long] == [5, 5, 5, 5, 4]
    assert sample_frames(times, 0, 20, rng, SamplingConfig("interval", interval=3.0)) == []


def test_still_frames_marks_frames_at_rest():
    from vincie_train.data.shots import still_frames

    frames = np.zeros((8, 16, 16, 3), np.uint8)
    for k in (3, 4, 5):  # a square sliding one pixel per frame: frames 3-5 differ from both neighbours
        frames[k, 4:8, k:k + 4] = 200
    frames[6:, 4:8, 6:10] = 200  # at rest from frame 6
    assert still_frames(frames).tolist() == [True, True, True, False, False, False, True, True]
    frames[2] = 3  # compression-like noise below the threshold does not make frames move
    assert still_frames(frames)[:3].all()


def _caught_mid_change(small, side, k):
    """Frame k shows a picture that no frame outside the video's events shows (an event's eased first or
    last frames can look exactly like its keyframe: those are at rest)."""
    from vincie_train.data.shots import changed_fraction

    settled = [j for j in range(len(small)) if not any(e["start_frame"] < j < e["end_frame"] for e in side["events"])]
    return min(changed_fraction(small[k], small[j], 6) for j in settled) >= 0.002


def test_still_frame_sampling_never_catches_a_change_half_way(synth_videos, synth_shards, tmp_path):
    from vincie_train.data.video_io import analyse_video

    still = BuildConfig(videos_per_shard=3, sampling=SamplingConfig(interval=1.0, still_frames=True))
    summary = _build(synth_videos, tmp_path / "still", config=still)
    assert summary["sessions"] > 0
    counts, cache = {}, {}
    for name, folder in (("default", synth_shards[0]), ("still", tmp_path / "still")):
        mid = total = 0
        for s in read_sessions(folder):
            video = s.provenance["video"]
            if video not in cache:
                cache[video] = (analyse_video(synth_videos / video)[1],
                                load_sidecar(synth_videos / video.replace(".mp4", ".json")))
            mid += sum(_caught_mid_change(*cache[video], k) for k in s.provenance["frame_indices"])
            total += len(s.frames)
        counts[name] = (mid, total)
    assert counts["default"][0] > 0.2 * counts["default"][1], counts  # time-based picks land mid-change often
    assert counts["still"][0] == 0, counts
    with pytest.raises(ValueError, match="still-frame mask"):
        sample_frames(np.arange(10) / 10, 0, 10, np.random.default_rng(0), SamplingConfig(still_frames=True))


def test_hf_annotator_needs_a_local_folder(tmp_path):
    from vincie_train.data.annotate import HFAnnotator, make_annotator

    with pytest.raises(FileNotFoundError, match="--hf-model"):
        HFAnnotator(str(tmp_path / "no-model"))
    with pytest.raises(ValueError, match="--hf-model"):
        make_annotator("hf", model_dir=None)
    with pytest.raises(ValueError, match="unknown annotator"):
        make_annotator("gpt")


def test_rests_sampling_takes_one_frame_per_pause_so_each_turn_is_one_event(synth_videos, tmp_path):
    from vincie_train.data.sampling import rest_frames
    from vincie_train.data.video_io import analyse_video

    assert rest_frames(np.array([0, 1, 1, 1, 0, 0, 1, 0, 1, 1]).astype(bool), 0, 10) == [2, 6, 8]
    assert rest_frames(np.array([0, 1, 1, 1, 0, 0, 1, 0, 1, 1]).astype(bool), 3, 7) == [3, 6]
    config = BuildConfig(videos_per_shard=3, sampling=SamplingConfig(strategy="rests", max_session_frames=3))
    summary = _build(synth_videos, tmp_path / "rests", config=config)
    assert summary["sampling"].keys() == {"rests"} and summary["sessions"] > 0
    sessions = list(read_sessions(tmp_path / "rests"))
    assert max(len(s.frames) for s in sessions) <= 3  # long shots are split
    one_event = total = 0
    for s in sessions:
        video = s.provenance["video"]
        small, side = analyse_video(synth_videos / video)[1], load_sidecar(synth_videos / video.replace(".mp4", ".json"))
        idx = s.provenance["frame_indices"]
        assert not any(_caught_mid_change(small, side, k) for k in idx)
        # events that ran between two consecutive picks: exactly one for almost every turn
        for a, b in zip(idx, idx[1:]):
            n = sum(a < ev["start_frame"] <= b for ev in side["events"])
            one_event += n == 1
            total += 1
    assert total > 0 and one_event >= 0.9 * total, (one_event, total)
    with pytest.raises(ValueError, match="rests"):
        sample_frames(np.arange(10) / 10, 0, 10, np.random.default_rng(0), SamplingConfig(strategy="rests"))
