"""Shared fixtures: the ../shared data folder (skip with a reason when it is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from independent import SHARED, VIDEOS  # noqa: E402

SHARED_VIDEOS = sorted(p.name for p in VIDEOS.glob("*")) if VIDEOS.is_dir() else []

requires_shared = pytest.mark.skipif(
    not VIDEOS.is_dir(), reason=f"shared data not found at {SHARED} (set DPSTREAM_SHARED)"
)


@pytest.fixture(scope="session")
def shared_video():
    def path(name: str) -> Path:
        return VIDEOS / name

    return path
