"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    """Folder of parity fixtures produced by the official VINCIE code.

    Set ``VINCIE_FIXTURES`` to override the default ``<repo>/../shared/fixtures/official``; tests that
    need it are skipped when the folder does not exist.
    """
    root = Path(os.environ.get("VINCIE_FIXTURES", _REPO.parent / "shared" / "fixtures" / "official"))
    if not root.is_dir():
        pytest.skip(f"official parity fixtures not found at {root} (set VINCIE_FIXTURES)")
    return root
