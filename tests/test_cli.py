"""The `bort` command: convert between formats, presets, clear errors with exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from bort import load_pretrained
from bort.cli import main

from hf_helpers import minilm_dir


def test_convert_real_checkpoint_to_native_and_back_to_hf(tmp_path, capsys):
    src = minilm_dir()
    assert main(["convert", str(src), str(tmp_path / "native")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "encoder" and report["format"] == "native"
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    a, b = load_pretrained(src), load_pretrained(tmp_path / "hf")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_presets_command_prints_json(capsys):
    assert main(["presets"]) == 0
    assert "bort_4_8_768_1024" in capsys.readouterr().out
    assert main(["presets", "bert-large"]) == 0
    assert json.loads(capsys.readouterr().out)["num_hidden_layers"] == 24


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bort convert: error:") and "no such file" in err
    assert main(["presets", "bert-huge"]) == 2
    assert "known presets" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "bort.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "convert", "presets", "train-tokenizer", "tokenize"):
        assert command in out.stdout
