"""Shared SDK test fixtures: a tiny random model built once per test session."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_model():
    from vincie_sdk import VincieModel
    from vincie_sdk.config import TINY

    return VincieModel.from_random(TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("models") / "tiny-random")


@pytest.fixture
def source_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
