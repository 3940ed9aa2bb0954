"""The original Bort's command lines run here unchanged: every flag of its `create_pretraining_data.py`,
`run_pretraining_distillation_hvd.py` (`get_argparser`) and `finetune_bort.py` parses, with the original's meaning;
its task names resolve; its root launchers `run_finetune.sh` / `run_pretraining_distillation.sh` work, including
their TEST modes. The flag lists are read from the original files themselves (`ast`), so a flag missing here fails.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bort.cli import script_parser
from bort.data import cli as data_cli
from bort.data.tasks import get_task
from bort.distill import cli as distill_cli
from bort.finetune import cli as finetune_cli

from conftest import REPO, SHARED, shared_path  # noqa: E402

ORIGINAL = SHARED / "reference" / "alexa-bort"
ROBERTA_VOCAB = "data/vocab/roberta-base"


def _original_source(relative: str) -> Path:
    """A file of the original Bort sources; skips the test when they are not beside the checkout."""
    path = ORIGINAL / relative
    if not path.is_file():
        pytest.skip(f"the original Bort sources are not at {ORIGINAL}")
    return path


def _original_flags(relative: str) -> list[str]:
    """The option strings of every `add_argument` call in one of the original's files."""
    path = _original_source(relative)
    flags = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags.append(node.args[0].value)
    return flags


def _parser(add_args) -> argparse.ArgumentParser:
    return script_parser(None, None, add_args)  # with the conventions every command's parser gets


# One value a user of the original might give each flag that takes one (the original's own defaults or its
# shell scripts' values); store_true flags take none.
_VALUES = {
    "--input_file": "corpus.txt", "--output_dir": "out", "--dataset_name": "openwebtext_ccnews_stories_books_cased",
    "--max_seq_length": "128", "--max_predictions_per_seq": "20", "--random_seed": "1", "--dupe_factor": "2",
    "--masked_lm_prob": "0.15", "--short_seq_prob": "0.1", "--num_workers": "1", "--num_outputs": "2",
    "--num_steps": "4", "--num_eval_steps": "3", "--num_buckets": "20", "--dtype": "float32", "--batch_size": "2",
    "--accumulate": "1", "--batch_size_eval": "2", "--model": "bort_4_8_768_1024",
    "--teacher_model": "roberta_24_1024_16", "--teacher_ckpt_dir": "teacher", "--teacher_ce_weight": "0.5",
    "--distillation_temperature": "2.0", "--mlm_weight": "0.1", "--data": "train/*.rec", "--data_eval": "test/*.rec",
    "--ckpt_dir": "ckpt", "--start_step": "0", "--lr": "1e-4", "--warmup_ratio": "0.01", "--log_interval": "2",
    "--ckpt_interval": "2", "--profile": "prof",
    "--epochs": "1", "--ramp_up_epochs": "1", "--training_steps": "10", "--dev_batch_size": "8",
    "--init": "uniform", "--prob": "0.5", "--epsilon": "1e-6", "--weight_decay": "110.0", "--dropout": "0.1",
    "--momentum": "0.9", "--max_len": "512", "--seed": "2", "--gpu": "999", "--use_scheduler": "True",
    "--no_distributed": "True", "--task_name": "BoolQ", "--dataset": "openwebtext_ccnews_stories_books_cased",
    "--pretrained_parameters": "model/bort.params", "--model_parameters": "model/fine.params",
    "--early_stop": "200", "--multirc_test_location": "multirc/test.jsonl",
    "--record_test_location": "record/test.jsonl", "--record_dev_location": "record/val.jsonl",
    "--race_dataset_location": "race",
}
_STORE_TRUE = {"--whole_word_mask", "--verbose", "--use_avg_len", "--pretrained", "--cpu_only", "--only_inference"}


def _argv(flags: list[str]) -> list[str]:
    return [word for flag in flags for word in ([flag] if flag in _STORE_TRUE else [flag, _VALUES[flag]])]


def _parses_each_flag(parser: argparse.ArgumentParser, flags: list[str], base: list[str]) -> argparse.Namespace:
    """Parse `base` plus each flag alone (so that a missing one names itself), then all of them at once."""
    for flag in flags:
        parser.parse_args(base + _argv([flag]))
    return parser.parse_args(base + _argv(flags))


def test_create_pretraining_data_accepts_all_13_original_flags():
    flags = _original_flags("create_pretraining_data.py")
    assert len(flags) == 13
    args = _parses_each_flag(_parser(data_cli.add_args), flags, ["--input_file", "a", "--output_dir", "b"])
    assert (args.max_seq_length, args.dupe_factor, args.num_outputs, args.whole_word_mask) == (128, 2, 2, True)


def test_distillation_accepts_all_27_original_flags_with_their_meaning(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # restored afterwards; --cpu_only must empty it
    flags = _original_flags("utils/pretraining_distillation_utils.py")
    assert len(flags) == 27
    parser = _parser(distill_cli.add_args)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "roberta.params").write_bytes(b"")
    _parses_each_flag(parser, flags, ["--data", "x.rec"])
    args = parser.parse_args(_argv([f for f in flags if f not in ("--pretrained", "--profile")]))
    args.teacher_ckpt_dir = str(tmp_path / "teacher")
    notes = distill_cli.apply_original_args(args)
    settings = distill_cli.settings_from_args(args)
    assert settings.train == ["train/*.rec"] and settings.test == ["test/*.rec"]
    assert (settings.max_steps, settings.temperature, settings.kd_weight, settings.mlm_weight) == (4, 2.0, 0.5, 0.1)
    assert (settings.eval_batches, settings.batch_size, settings.output_dir) == (3, 2, "ckpt")
    assert settings.teacher == str(tmp_path / "teacher" / "roberta.params")
    assert settings.teacher_config == "roberta-large" and settings.precision == "fp32"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""  # --cpu_only
    assert any("--use_avg_len" in n for n in notes) and any("--num_buckets" in n for n in notes)


def test_distillation_original_flags_that_cannot_apply_say_what_to_pass():
    parser = _parser(distill_cli.add_args)

    def refusal(*extra: str) -> str:
        args = parser.parse_args(["--data", "x.rec", *extra])
        with pytest.raises(ValueError) as info:
            distill_cli.apply_original_args(args)
        return str(info.value)

    assert "bort fetch s3://alexa-saif-bort/bort.params" in refusal("--pretrained")
    assert "python -m cProfile -o prof" in refusal("--profile", "prof")
    message = refusal("--teacher_model", "roberta_24_1024_16")
    assert "model-zoo name" in message and "--teacher_ckpt_dir" in message and "roberta-large" in message
    assert "no .params file" in refusal("--teacher_model", "roberta_24_1024_16", "--teacher_ckpt_dir", "/nonexistent")
    args = parser.parse_args(["--data", "x.rec", "--start_step", "20", "--ckpt_dir", "run"])
    assert any("--start_step 20" in n for n in distill_cli.apply_original_args(args)) and args.resume


def test_finetune_accepts_all_32_original_flags_with_their_meaning(tmp_path):
    flags = _original_flags("finetune_bort.py")
    assert len(flags) == 32
    parser = _parser(finetune_cli.add_args)
    _parses_each_flag(parser, flags, ["--task_name", "BoolQ"])
    refused = {"--only_inference", "--model_parameters"}
    args = parser.parse_args(_argv([f for f in flags if f not in refused]))
    args.pretrained_parameters = None
    notes = finetune_cli.apply_original_args(args)
    settings = finetune_cli.settings_from_args(args)
    assert get_task(settings.task).name == "BoolQ" and settings.model == "model/bort.params"
    hp = settings.hparams
    assert (hp.lr, hp.eps, hp.weight_decay, hp.warmup_ratio, hp.seed, hp.epochs) == (1e-4, 1e-6, 110.0, 0.01, 2, 1)
    assert (settings.max_length, settings.max_steps, settings.eval_batch_size, settings.patience) == (512, 10, 8, 200)
    assert settings.log_interval == 2 and settings.config == {"classifier_dropout": 0.1}
    assert any("--momentum" in n for n in notes) and any("--init" in n for n in notes)
    # --model_parameters (a fine-tuned model) wins over --pretrained_parameters, as in the original.
    args = parser.parse_args(["--task_name", "SST", "--pretrained_parameters", "a", "--model_parameters", "b",
                              "--accumulate", "4", "--batch_size", "8"])
    finetune_cli.apply_original_args(args)
    assert args.model == "b" and args.batch_size == 32


@pytest.mark.parametrize("extra, expected", [
    ([], "bort fetch s3://alexa-saif-bort/bort.params model/"),
    (["--model", "m", "--gpu", "0"], "--gpu 999"),
    (["--model", "m", "--dtype", "float16"], "runs in float32"),
    (["--model", "m", "--use_scheduler", ""], "--warmup_ratio 0"),
    (["--model", "m", "--ramp_up_epochs", "3", "--epochs", "1"], "--training_steps"),
])
def test_finetune_original_flags_that_cannot_apply_say_what_to_pass(extra, expected):
    args = _parser(finetune_cli.add_args).parse_args(["--task_name", "WNLI", *extra])
    with pytest.raises(ValueError) as info:
        finetune_cli.apply_original_args(args)
    assert expected in str(info.value)


def test_params_model_takes_the_vocabulary_beside_it_else_the_released_borts(tmp_path):
    from bort.tokenization import BORT_VOCABULARY, load_tokenizer

    params = tmp_path / "bort.params"
    params.write_bytes(b"\x00")
    args = _parser(finetune_cli.add_args).parse_args(["--task_name", "BoolQ", "--pretrained_parameters", str(params)])
    finetune_cli.apply_original_args(args)
    assert args.tokenizer == str(BORT_VOCABULARY)
    bort_vocab = load_tokenizer(args.tokenizer)  # RoBERTa's ids, as the released Bort's embedding expects
    assert bort_vocab.vocab_size == 50265 and bort_vocab.encode("Hello world").ids == [0, 31414, 232, 2]
    (tmp_path / "vocab.json").write_text("{}")
    args = _parser(finetune_cli.add_args).parse_args(["--task_name", "BoolQ", "--pretrained_parameters", str(params)])
    finetune_cli.apply_original_args(args)
    assert args.tokenizer == str(tmp_path)


def test_original_and_hf_task_names_resolve():
    original = _original_task_names()
    assert len(original) == 21
    ours = {name: get_task(name).name for name in original}
    assert {k: v for k, v in ours.items() if k != v} == {
        "SST": "SST-2", "SuperGLUERTE": "SuperGLUE-RTE", "AXb": "AX-b", "AXg": "AX-g", "RACE-H": "RACE-high",
        "RACE-M": "RACE-middle"}
    hf = {"sst2": "SST-2", "mnli_mismatched": "MNLI-mm", "mnli_matched": "MNLI", "glue/stsb": "STS-B",
          "super_glue/boolq": "BoolQ", "super_glue/rte": "SuperGLUE-RTE", "rte": "RTE", "wsc.fixed": "WSC",
          "super_glue/axg": "AX-g", "race/high": "RACE-high", "race/all": "RACE", "nyu-mll/glue/qnli": "QNLI"}
    assert {name: get_task(name).name for name in hf} == hf
    for bad in ("glue/boolq", "high", "foo/sst2"):
        with pytest.raises(ValueError, match="super_glue/<config>"):
            get_task(bad)


def _original_task_names() -> list[str]:
    tree = ast.parse(_original_source("utils/finetune_utils.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "ALL_TASKS_DIC":
            return [k.value for k in node.value.keys]
    raise AssertionError("ALL_TASKS_DIC not found in the original's finetune_utils.py")


def test_original_data_locations_are_searched_after_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet"))
    multirc = tmp_path / "mxnet" / "datasets" / "superglue_multirc"
    multirc.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):  # the original's SuperGLUE layout, as GluonNLP extracts it
        shutil.copy(shared_path("data", "superglue", "MultiRC", "train.jsonl"), multirc / name)
    args = _parser(finetune_cli.add_args).parse_args(["--task_name", "MultiRC", "--model", "m",
                                                      "--data-dir", str(tmp_path / "empty")])
    finetune_cli._choose_data_dir(args)
    assert args.data_dir == str(multirc)
    ours = tmp_path / "data" / "superglue" / "MultiRC"  # --data-dir first when it holds the task
    shutil.copytree(multirc, ours)
    args.data_dir = str(tmp_path / "data")
    finetune_cli._choose_data_dir(args)
    assert args.data_dir == str(tmp_path / "data")
    race = finetune_cli.original_data_dirs("RACE-H", args)
    assert race[-1] == tmp_path / "mxnet" / "datasets" / "race"


# ---------------------------------------------------------------------------------------------- the launchers
def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def test_run_finetune_sh_without_weights_says_the_command_that_fetches_them(tmp_path):
    r = subprocess.run([str(REPO / "run_finetune.sh"), "BoolQ"], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in _env().items() if k != "BORT_MODEL"}, timeout=60)
    assert r.returncode == 2
    assert "no model at model/bort.params" in r.stderr
    assert "bort fetch s3://alexa-saif-bort/bort.params model/" in r.stderr
    r = subprocess.run([str(REPO / "run_finetune.sh")], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> Path:
    """A small random Bort-shaped model with Bort's RoBERTa vocabulary, as a native checkpoint."""
    import torch

    from bort.checkpoint import save_pretrained
    from bort.config import BortConfig
    from bort.model import BortForMaskedLM
    from bort.tokenization import load_tokenizer

    cfg = BortConfig(**{**BortConfig.preset("bort_4_8_768_1024").to_dict(), "hidden_size": 32,
                        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32})
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(BortForMaskedLM(cfg), out)
    load_tokenizer(shared_path(ROBERTA_VOCAB)).save(out)
    return out


@pytest.mark.parametrize("mode, task", [("TEST1", "WNLI"), pytest.param("TEST2", "WSC", marks=pytest.mark.slow)])
def test_run_finetune_sh_test_modes_run_like_the_originals(mode, task, tiny_roberta, tmp_path):
    data = shared_path("data")
    if task == "WSC":  # the shared copy has no val.jsonl: a tiny train/val pair from its training rows
        data = tmp_path / "data"
        rows = shared_path("data", "superglue", "WSC", "train.jsonl").read_text().splitlines()[:40]
        (data / "superglue" / "WSC").mkdir(parents=True)
        (data / "superglue" / "WSC" / "train.jsonl").write_text("\n".join(rows[:24]) + "\n")
        (data / "superglue" / "WSC" / "val.jsonl").write_text("\n".join(rows[24:]) + "\n")
    env = _env(BORT_MODEL=str(tiny_roberta), BORT_DATA_DIR=str(data), BORT_OUTPUT_DIR=str(tmp_path / "out"))
    r = subprocess.run([str(REPO / "run_finetune.sh"), mode, "--max-steps", "2", "--max_len", "64",
                        "--no-progress"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["task"] == task
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["settings"]["hparams"]["weight_decay"] == 110.0 and metrics["settings"]["hparams"]["seed"] == 2


def test_run_pretraining_distillation_sh_test_mode_trains_on_the_sample_text(tmp_path):
    student = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 32, "num_attention_heads": 2,
                          "intermediate_size": 32, "num_hidden_layers": 1})
    env = _env()  # the vocabulary shipped with the package
    r = subprocess.run([str(REPO / "run_pretraining_distillation.sh"), "1", "TEST", "TEST", "--model", student,
                        "--no-progress", "--no-plot"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "pretraining_distillation_test"
    assert (out / "part-000.rec").stat().st_size > 0
    records = [json.loads(line) for line in (out / "bort_4_8_768_1024_model" / "metrics.jsonl").open()]
    train = [rec for rec in records if rec["event"] == "train"]
    assert [rec["step"] for rec in train][-1] == 4 and all(rec["mlm"] == rec["mlm"] for rec in train)
    r = subprocess.run([str(REPO / "run_pretraining_distillation.sh"), "1", "TEST", "TEST"], cwd=tmp_path,
                       capture_output=True, text=True, env=_env(BORT_VOCAB=str(tmp_path / "none")), timeout=60)
    assert r.returncode == 2 and "BORT_VOCAB" in r.stderr


def test_shipped_bort_vocabulary_is_robertas():
    """The vocabulary shipped for `bort.params` is byte for byte RoBERTa's (the real files in the shared data)."""
    from bort.tokenization import BORT_VOCABULARY

    for name in ("vocab.json", "merges.txt"):
        assert (BORT_VOCABULARY / name).read_bytes() == shared_path(ROBERTA_VOCAB, name).read_bytes()


def test_run_finetune_sh_boolq_with_only_bort_params_in_model(tmp_path):
    """The original README's command, verbatim: `./run_finetune.sh BoolQ` with nothing but the Gluon weights at
    model/bort.params (here a tiny Bort of the released vocabulary, written by our exporter): the vocabulary is
    the shipped one, the data the original's BoolQ layout."""
    import torch

    from bort.checkpoint import save_pretrained
    from bort.config import BortConfig
    from bort.model import BortForMaskedLM

    cfg = BortConfig(**{**BortConfig.preset("bort_4_8_768_1024").to_dict(), "hidden_size": 32,
                        "num_hidden_layers": 1, "intermediate_size": 32})
    torch.manual_seed(0)
    save_pretrained(BortForMaskedLM(cfg), tmp_path / "model" / "bort.params", format="gluon")
    rows = shared_path("data", "superglue", "BoolQ", "train.jsonl").read_text().splitlines()
    (tmp_path / "data" / "superglue" / "BoolQ").mkdir(parents=True)
    (tmp_path / "data" / "superglue" / "BoolQ" / "train.jsonl").write_text("\n".join(rows[:24]) + "\n")
    (tmp_path / "data" / "superglue" / "BoolQ" / "val.jsonl").write_text("\n".join(rows[24:]) + "\n")
    env = {k: v for k, v in _env().items() if not k.startswith("BORT_")}
    r = subprocess.run([str(REPO / "run_finetune.sh"), "BoolQ", "--max-steps", "2", "--max_len", "64",
                        "--no-progress"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["task"] == "BoolQ"
    assert (tmp_path / "finetune_output" / "BoolQ" / "metrics.json").is_file()
