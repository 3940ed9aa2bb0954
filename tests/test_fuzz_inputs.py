"""Seeded fuzzing of every file format the project reads: truncations and byte flips of a GluonNLP `.params`
file, a native checkpoint's `config.json` and `model.safetensors`, a RecordIO pretraining shard and fine-tuning
task files. Each mutated file is read through the entry point a user reaches it by. A mutation may still parse
(a flipped weight byte is just another weight); when it does not, the failure must be one of the project's own
error types and name the file, never a bare IndexError/TypeError/KeyError/RecursionError from deep inside.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable

import pytest

from bort.checkpoint import CheckpointError, load_pretrained
from bort.config import ConfigError
from bort.data.pretraining_dataset import PretrainingDataError, PretrainingShard
from bort.data.recordio import RecordIOError
from bort.data.tasks import get_task
from bort.data.tasks.base import TaskDataError
from conftest import shared_path

PROJECT_ERRORS = (CheckpointError, ConfigError, PretrainingDataError, RecordIOError, TaskDataError)
MUTATIONS_PER_FORMAT = 60
SEED = 20


ODD_VALUES = (None, 0, -1, 3.5, 1e308, True, "", "x", [], [None], {}, {"a": None})


def mutations(data: bytes, rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """`count` damaged copies of `data`: truncations at random offsets, 1-4 random bit flips (biased towards the
    first 512 bytes, where headers, lengths and offsets live) and, for JSON or JSON-lines text, one value of one
    object replaced by a value of another type (null, numbers, lists, ...), which byte flips rarely produce."""
    out: list[tuple[str, bytes]] = []
    json_lines = _json_lines(data)
    kinds = 3 if json_lines else 2
    for i in range(count):
        if i % kinds == 0:
            cut = rng.randrange(len(data))
            out.append((f"truncated at {cut}", data[:cut]))
        elif i % kinds == 1:
            damaged = bytearray(data)
            spots = []
            for _ in range(rng.randint(1, 4)):
                limit = min(len(data), 512) if rng.random() < 0.7 else len(data)
                at = rng.randrange(limit)
                damaged[at] ^= 1 << rng.randrange(8)
                spots.append(at)
            out.append((f"bits flipped at {sorted(spots)}", bytes(damaged)))
        else:
            objects = [dict(o) for o in json_lines]
            line = rng.randrange(len(objects))
            key = rng.choice(sorted(objects[line]))
            objects[line][key] = rng.choice(ODD_VALUES)
            text = "\n".join(json.dumps(o) for o in objects) + "\n"
            out.append((f"line {line + 1} {key!r} set to {objects[line][key]!r}", text.encode()))
    return out


def _json_lines(data: bytes) -> list[dict] | None:
    """The objects of a JSON or JSON-lines file, or None for anything else."""
    try:
        objects = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except ValueError:
        try:
            objects = [json.loads(data)]
        except ValueError:
            return None
    return objects if objects and all(isinstance(o, dict) and o for o in objects) else None


def fuzz(original: Path, target: Path, read: Callable[[], object], rng: random.Random) -> dict[str, int]:
    """Write each mutation of `original` to `target` and call `read`; returns how many parsed and were refused.
    Fails the test listing every mutation whose error is not a project error naming `target`."""
    data = original.read_bytes()
    counts = {"parsed": 0, "refused": 0}
    findings: list[str] = []
    for what, damaged in mutations(data, rng, MUTATIONS_PER_FORMAT):
        target.write_bytes(damaged)
        try:
            read()
        except PROJECT_ERRORS as err:
            counts["refused"] += 1
            if target.name not in str(err):
                findings.append(f"{what}: the error does not name the file: {err!r}")
        except Exception as err:  # noqa: BLE001 - that is the finding
            findings.append(f"{what}: {type(err).__name__}: {err}")
        else:
            counts["parsed"] += 1
    target.write_bytes(data)
    assert not findings, f"{target.name}: {len(findings)} bad failure(s):\n" + "\n".join(findings[:15])
    return counts


@pytest.fixture(scope="module")
def native_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from bort import BortConfig, BortForMaskedLM, save_pretrained

    torch.manual_seed(0)
    cfg = BortConfig.preset("bert-base", vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                            num_hidden_layers=2, max_position_embeddings=32)
    return save_pretrained(BortForMaskedLM(cfg), tmp_path_factory.mktemp("native") / "ckpt")


def test_fuzz_gluon_params(tmp_path: Path) -> None:
    original = shared_path("fixtures", "mxnet", "gluonnlp_tiny_bert.params")
    target = tmp_path / "bort.params"
    counts = fuzz(original, target, lambda: load_pretrained(target, task="mlm"), random.Random(SEED))
    assert counts["refused"] >= MUTATIONS_PER_FORMAT // 2  # every truncation at least


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_fuzz_native_checkpoint(tmp_path: Path, native_checkpoint: Path, name: str) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(native_checkpoint, ckpt)
    counts = fuzz(native_checkpoint / name, ckpt / name, lambda: load_pretrained(ckpt, task="mlm"),
                  random.Random(f"{SEED}-{name}"))
    assert counts["refused"] >= MUTATIONS_PER_FORMAT // 2


def _read_shard(path: Path) -> None:
    shard = PretrainingShard(path)
    try:
        for i in range(len(shard)):
            shard[i]
    finally:
        shard.close()


def test_fuzz_pretraining_shard(tmp_path: Path) -> None:
    from bort.data.instances import InstanceSettings
    from bort.data.pretraining import create_pretraining_data
    from bort.tokenization import load_tokenizer
    from hf_helpers import REPO, minilm_dir

    tokenizer = load_tokenizer(minilm_dir() / "vocab.txt")
    create_pretraining_data(str(REPO / "test_data" / "sample_text.txt"), tmp_path / "made", tokenizer,
                            InstanceSettings(max_seq_length=32, max_predictions_per_seq=4, dupe_factor=1),
                            progress=False)
    made = sorted((tmp_path / "made").glob("*.rec"))[0]
    work = tmp_path / "fuzz"
    work.mkdir()
    target = work / made.name
    shutil.copy(made.with_suffix(".idx"), target.with_suffix(".idx"))
    counts = fuzz(made, target, lambda: _read_shard(target), random.Random(f"{SEED}-rec"))
    assert counts["refused"] >= MUTATIONS_PER_FORMAT // 2


TASK_FILES = {
    # task: split, path in the task's directory, content (the originals' layouts, a few rows each)
    "SST-2": ("train", "train.tsv",
              "sentence\tlabel\nit 's a charming journey .\t1\na dull , lifeless film\t0\nsmart and funny\t1\n"),
    "STS-B": ("train", "train.tsv",
              "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
              "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
              "An air plane is taking off.\t5.000\n"
              "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a flute.\t"
              "A man is playing a bamboo flute.\t3.800\n"),
    "BoolQ": ("train", "train.jsonl",
              '{"question": "is the sky blue", "passage": "The sky is blue on clear days.", "label": true, "idx": 0}\n'
              '{"question": "do fish fly", "passage": "Most fish swim.", "label": false, "idx": 1}\n'),
    "COPA": ("train", "train.jsonl",
             '{"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.", '
             '"choice2": "He got a hole in his sock.", "question": "cause", "label": 0, "idx": 0}\n'),
    "RACE-high": ("train", "train/high/1.txt",
                  '{"article": "Tom walked to school. It rained.", "questions": ["What did Tom do?"], '
                  '"options": [["walked", "ran", "swam", "flew"]], "answers": ["A"], "id": "high1.txt"}\n'),
}


@pytest.mark.parametrize("task_name", sorted(TASK_FILES))
def test_fuzz_task_files(tmp_path: Path, task_name: str) -> None:
    split, relative, content = TASK_FILES[task_name]
    task = get_task(task_name)
    original = tmp_path / "original"
    original.write_text(content, encoding="utf-8")
    target = tmp_path / "data" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    assert len(task.read(tmp_path / "data", split)) >= 1  # the unmutated file reads
    fuzz(original, target, lambda: task.read(tmp_path / "data", split), random.Random(f"{SEED}-{task_name}"))
    fuzz(original, target, lambda: task.read(tmp_path / "data", split, skip_bad_rows=True),
         random.Random(f"{SEED}-{task_name}-skip"))
