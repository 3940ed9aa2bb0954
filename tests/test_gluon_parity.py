"""Parity with GluonNLP: a small Bort-shaped model made by GluonNLP (random weights, saved as `.params`)
loads into our model and gives the same sequence output and masked-position MLM logits, with padding.

The reference is produced by `tests/gluon_reference/make_bort_reference.py` in the MXNet side venv, which
`../shared/tools/mxnet-reference-env.sh` builds once (about 30 s) and which is reused across runs.
Without the tool or a network to build the venv the test skips (set BORT_GLUON_REQUIRED=1 to fail instead).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bort import BortConfig, load_pretrained
from conftest import SHARED

pytestmark = pytest.mark.gluon

TOOL = SHARED / "tools" / "mxnet-reference-env.sh"
SCRIPT = Path(__file__).parent / "gluon_reference" / "make_bort_reference.py"
ENV_DIR = Path(os.environ.get("BORT_MXNET_REF_DIR", Path(tempfile.gettempdir()) / "bort-mxnet-ref"))
SIZES = ["--layers", "2", "--units", "64", "--hidden", "48", "--heads", "4", "--vocab", "100",
         "--max-length", "32", "--batch", "3", "--seq-len", "12", "--num-masked", "4", "--seed", "0"]
TOLERANCE = 1e-5


def _unavailable(reason: str) -> None:
    if os.environ.get("BORT_GLUON_REQUIRED"):
        pytest.fail(reason)
    pytest.skip(reason)


def _run_tool() -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TOOL), str(ENV_DIR)], capture_output=True, text=True, timeout=1800)


def side_python() -> Path:
    """The side venv's python, building the venv on first use."""
    if not TOOL.exists():
        _unavailable(f"MXNet reference tool not found at {TOOL} (set BORT_SHARED)")
    result = _run_tool()
    pip = ENV_DIR / "bin" / "pip"
    if result.returncode != 0 and pip.exists():
        # The tool builds gluonnlp with --no-build-isolation, which needs `wheel` inside the venv; a fresh
        # venv does not have it. Add it and let the tool finish its own install.
        subprocess.run([str(pip), "install", "-q", "wheel"], capture_output=True, text=True, timeout=600)
        result = _run_tool()
    if result.returncode != 0:
        tail = "\n".join(line for line in result.stderr.splitlines() if "is ignored" not in line)[-1500:]
        _unavailable(f"could not build the MXNet side venv in {ENV_DIR} (no network?):\n{tail}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = side_python()
    out = tmp_path_factory.mktemp("gluon_reference")
    result = subprocess.run([str(python), str(SCRIPT), str(out), *SIZES], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"reference script failed:\n{result.stderr[-3000:]}"
    return out


def test_sequence_output_and_mlm_logits_match_gluonnlp(reference: Path):
    sizes = json.loads((reference / "config.json").read_text())
    ref = np.load(reference / "reference.npz")
    cfg = BortConfig.preset("bort_4_8_768_1024", num_hidden_layers=sizes["num_layers"],
                            hidden_size=sizes["units"], intermediate_size=sizes["hidden_size"],
                            num_attention_heads=sizes["num_heads"], vocab_size=sizes["vocab_size"],
                            max_position_embeddings=sizes["max_length"],
                            # GluonNLP 0.10.0's decoder LayerNorm takes the encoder's epsilon (0.8.3: 1e-12)
                            decoder_layer_norm_eps=sizes["layer_norm_eps"])
    model = load_pretrained(reference / "model.params", config=cfg, task="mlm").float().eval()

    input_ids = torch.from_numpy(ref["input_ids"])
    valid_length = torch.from_numpy(ref["valid_length"])
    mask = (torch.arange(input_ids.shape[1])[None, :] < valid_length[:, None]).long()
    assert not bool(mask.all()), "the reference batch must contain padding"
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask, masked_positions=torch.from_numpy(ref["masked_positions"]))

    real = mask.bool().numpy()
    hidden = out.last_hidden_state.numpy()
    assert hidden.dtype == np.float32 and hidden.shape == ref["sequence_output"].shape
    hidden_delta = float(np.abs(hidden - ref["sequence_output"])[real].max())
    logits = out.logits.numpy()
    assert logits.shape == ref["mlm_logits"].shape
    logits_delta = float(np.abs(logits - ref["mlm_logits"]).max())
    print(f"GluonNLP parity: max |Δ| hidden {hidden_delta:.3g}, logits {logits_delta:.3g}")
    assert hidden_delta <= TOLERANCE
    assert logits_delta <= TOLERANCE
