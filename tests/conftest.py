"""Shared test fixtures: where the real data lives and markers for heavy checks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The shared data directory sits beside the repository (../shared); BORT_SHARED overrides it.
SHARED = Path(os.environ.get("BORT_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under the shared data directory; skips the test with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set BORT_SHARED to the shared directory)")
    return path


@pytest.fixture
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data directory not found at {SHARED} (set BORT_SHARED)")
    return SHARED
