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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (width 64): a second thread only adds
    synchronisation, and on a busy machine its spin-waits made steps up to 20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_mlm_teacher(directory: Path) -> Path:
    """A small BERT with an MLM head over the MiniLM vocabulary (random weights, seed 1), saved in
    `directory`: a fast teacher for distillation and search runs."""
    import torch

    from bort import BortConfig, BortForMaskedLM, save_pretrained

    torch.manual_seed(1)
    cfg = BortConfig.preset("bert-base", hidden_size=32, num_attention_heads=4, intermediate_size=64,
                            num_hidden_layers=3, max_position_embeddings=64)
    save_pretrained(BortForMaskedLM(cfg), directory)
    return directory


def make_minilm_shards(out: Path) -> Path:
    """Pretraining shards under `out/train` from the repository's real sample text with the real MiniLM
    WordPiece vocabulary (sequences of 48, 8 predictions, dupe factor 4): the data of the distillation and
    search runs. Returns `out`."""
    from bort.data.instances import InstanceSettings
    from bort.data.pretraining import create_pretraining_data
    from bort.tokenization import load_tokenizer
    from hf_helpers import REPO, minilm_dir

    tokenizer = load_tokenizer(minilm_dir() / "vocab.txt")
    create_pretraining_data(str(REPO / "test_data" / "sample_text.txt"), out / "train", tokenizer,
                            InstanceSettings(max_seq_length=48, max_predictions_per_seq=8, dupe_factor=4),
                            progress=False)
    return out
