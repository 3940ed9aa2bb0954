"""The `bort` command: convert between formats, presets, clear errors with exit status 2."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from bort import load_pretrained
from bort.cli import build_parser, main, shows_default

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


# ------------------------------------------------------------------------------------------------ conventions
def _in_fresh_interpreter(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_help_version_and_presets_do_not_import_torch():
    for argv in (["presets"], ["presets", "bert-large"], ["--help"], ["--version"]):
        code = ("import sys\nfrom bort.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
                "assert 'torch' not in sys.modules, 'torch imported'\n" % argv)
        run = _in_fresh_interpreter(code)
        assert run.returncode == 0, (argv, run.stderr)


def test_version(capsys):
    import bort

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"bort {bort.__version__}"


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every sub-parser below it (lra's tasks, mask's actions)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                yield from _parsers(sub)


def test_every_option_help_shows_its_default():
    checked = 0
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if not shows_default(action):
                continue
            formatter = parser._get_formatter()
            formatter.add_argument(action)
            assert "(default:" in formatter.format_help(), (parser.prog, action.option_strings)
            checked += 1
    assert checked > 150  # every command's parser was built and walked
    for command in (["distill"], ["finetune"], ["lra", "listops"], ["agora"], ["grid"], ["search"]):
        assert "(default:" in subprocess.run([sys.executable, "-m", "bort.cli", *command, "--help"],
                                             capture_output=True, text=True, check=True).stdout


def test_flags_take_dashes_and_the_original_underscores():
    from bort.cli import script_parser
    from bort.data import cli as data_cli
    from bort.distill import cli as distill_cli
    from bort.finetune import cli as finetune_cli

    data = script_parser(None, None, data_cli.add_args)
    for spelling in (["--input-file", "a.txt", "--output-dir", "o", "--dupe-factor", "3"],
                     ["--input_file", "a.txt", "--output_dir", "o", "--dupe_factor", "3"]):
        args = data.parse_args(spelling)
        assert (args.input_file, args.output_dir, args.dupe_factor) == ("a.txt", "o", 3)
    assert "--input-file" in data.format_help() and "--input_file" not in data.format_help()

    distill = script_parser(None, None, distill_cli.add_args)
    for spelling in (["--train", "t", "--batch-size", "4", "--max-steps", "9", "--adam-epsilon", "1e-8"],
                     ["--train", "t", "--batch_size", "4", "--max_steps", "9", "--eps", "1e-8"],
                     ["--data", "t", "--batch_size", "4", "--num_steps", "9", "--eps", "1e-8"]):
        args = distill.parse_args(spelling)
        assert (args.train, args.batch_size, args.max_steps, args.eps) == (["t"], 4, 9, 1e-8)

    finetune = script_parser(None, None, finetune_cli.add_args)
    for spelling in (["--task", "SST-2", "--adam-epsilon", "1e-7", "--max-length", "64", "--model-config", "{}"],
                     ["--task_name", "SST-2", "--epsilon", "1e-7", "--max_len", "64", "--config", "{}"],
                     ["--task", "SST-2", "--eps", "1e-7", "--max_length", "64", "--model_config", "{}"]):
        args = finetune.parse_args(spelling)
        assert (args.task, args.eps, args.max_length, args.config) == ("SST-2", 1e-7, 64, "{}")


def test_one_progress_switch_and_distinct_epsilons():
    from bort.cli import script_parser
    from bort.data import cli as data_cli
    from bort.search import cli as search_cli

    parser = build_parser(["train-tokenizer", "lra", "search", "create-pretraining-data"])
    for argv in (["train-tokenizer", "a.txt", "--output-dir", "o"], ["lra", "generate-listops", "out"],
                 ["search", "space.json", "--train", "t", "--test", "e"],
                 ["create-pretraining-data", "--input-file", "a", "--output-dir", "o"]):
        assert parser.parse_args(argv).progress is True
        assert parser.parse_args(argv + ["--no-progress"]).progress is False
        assert parser.parse_args(argv + ["--quiet"]).progress is False  # the old name still works
    assert "--quiet" not in script_parser(None, None, data_cli.add_args).format_help()
    search = script_parser(None, None, search_cli.add_args)
    base = ["space.json", "--train", "t", "--test", "e"]
    assert search.parse_args(base + ["--fptas-epsilon", "0.25"]).epsilon == 0.25
    assert search.parse_args(base + ["--epsilon", "0.25"]).epsilon == 0.25
    assert "--fptas-epsilon" in search.format_help() and "--epsilon " not in search.format_help()


def test_config_file_accepts_the_keys_inline_json_does(tmp_path):
    from bort.config import BortConfig, ConfigError

    spec = {"preset": "bort_4_8_768_1024", "num_hidden_layers": 2}
    path = tmp_path / "student.json"
    path.write_text(json.dumps(spec))
    assert BortConfig.resolve(path) == BortConfig.resolve(json.dumps(spec)) == BortConfig.resolve(spec)
    assert BortConfig.resolve(str(path)).num_hidden_layers == 2
    path.write_text(json.dumps({"preset": "bort_4_8_768_1024", "hidden_sise": 2}))
    with pytest.raises(ConfigError, match=r"student\.json: unknown config field\(s\) hidden_sise"):
        BortConfig.resolve(path)


def test_errors_are_prefixed_with_the_command(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("the cat sat\n")
    assert main(["create-pretraining-data", "--input-file", str(tmp_path / "a.txt"),
                 "--output-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("bort create-pretraining-data: error: give the vocabulary with --vocab")
    assert main(["finetune", "--task", "SST-2", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("bort finetune: error: no model: pass --model")
    assert main(["search", str(tmp_path / "missing.json"), "--train", "t", "--test", "e"]) == 2
    assert capsys.readouterr().err.startswith("bort search: error:")
