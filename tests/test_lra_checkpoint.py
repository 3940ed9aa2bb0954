"""LRA models in the native checkpoint format: a run's best/ opens with `load_pretrained` and `bort convert`,
and directories in the layout written before (`lra_config.json`) still load, convert and resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bort.checkpoint import CheckpointError, load_pretrained, read_checkpoint, save_pretrained
from bort.checkpoint.kinds import KINDS, LEGACY_FILES, get_kind
from bort.cli import main
from bort.config import BortConfig
from bort.lra import bytes as byte_vocab
from bort.lra import listops
from bort.lra.config import LEGACY_CONFIG_NAME, LRA_KEY, LRAConfig
from bort.lra.listops_gen import ListOpsSpec, generate_listops_dir
from bort.lra.model import LRA_KIND, LRAClassifier, LRADualClassifier, load_lra_model, lra_config, save_lra_model
from bort.lra.runner import LRASettings, run_lra
from bort.lra.tasks import get_task
from bort.model import BortForMaskedLM

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)


@pytest.fixture(scope="module")
def tiny_listops(tmp_path_factory) -> Path:
    """A generated ListOps directory of short expressions (offline, a second to train on)."""
    out = tmp_path_factory.mktemp("listops")
    generate_listops_dir(out, 96, 24, 24, seed=3, spec=ListOpsSpec(min_length=5, max_length=40, max_depth=3,
                                                                   max_args=4))
    return out


def _settings(data: Path, out: Path, **kw) -> LRASettings:
    values = dict(data=str(data), output_dir=str(out), max_steps=12, batch_size=16, lr=3e-3, eval_interval=4,
                  progress=False, log_interval=1)
    values.update(kw)
    return LRASettings(**values)


def _logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(1, len(listops.VOCAB), (3, 17), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        return model.eval()(ids, attention_mask=mask).logits


def _to_old_layout(directory: Path) -> None:
    """Rewrite a native LRA directory as the code before this layout wrote it: lra_config.json (the encoder
    config nested, the settings at the top level) and weights tagged "lra-<task>"."""
    values = json.loads((directory / "config.json").read_text())
    settings = values.pop(LRA_KEY)
    values.pop("bort_format_version")
    values.pop("task")
    old = {"bort_lra_format_version": 1, "task": settings["task"], "pooling": settings["pooling"],
           "ffn_dropout": settings["ffn_dropout"], "encoder": values, "architecture": settings["architecture"],
           "vocab": settings["vocab"]}
    (directory / LEGACY_CONFIG_NAME).write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    (directory / "config.json").unlink()
    state = load_file(str(directory / "model.safetensors"))
    save_file(state, str(directory / "model.safetensors"),
              metadata={"format": "pt", "bort_task": f"lra-{settings['task']}"})


def test_the_kind_registry_names_the_lra_classifier() -> None:
    assert KINDS == {"lra": "bort.lra.model:LRA_KIND"} and get_kind("lra") is LRA_KIND
    assert LEGACY_FILES == {LEGACY_CONFIG_NAME: "lra"}
    assert get_kind("mlm") is None and get_kind(None) is None


def test_trained_best_opens_with_load_pretrained_and_converts(tiny_listops: Path, tmp_path: Path, capsys) -> None:
    run_lra(_settings(tiny_listops, tmp_path / "run", recipe="paper"))
    best = tmp_path / "run" / "best"
    values = json.loads((best / "config.json").read_text())
    assert values["task"] == "lra" and values["bort_format_version"] == 1
    assert values[LRA_KEY] == {"task": "listops", "architecture": "single", "pooling": "mean_padded",
                               "ffn_dropout": 0.1, "vocab": list(listops.VOCAB)}
    assert not (best / LEGACY_CONFIG_NAME).exists()

    reference, meta = load_lra_model(best)
    opened = load_pretrained(best)
    assert type(opened) is LRAClassifier and not opened.training
    assert (opened.pooling, opened.ffn_dropout) == ("mean_padded", 0.1)
    assert torch.equal(_logits(opened), _logits(reference))
    assert meta["task"] == "listops" and meta["encoder"]["layer_norm_position"] == "pre"
    assert torch.equal(_logits(load_pretrained(best, task="lra")), _logits(reference))
    cfg, state, saved = read_checkpoint(best)
    assert saved == "lra" and isinstance(cfg, LRAConfig) and set(state) == set(reference.state_dict())

    assert main(["convert", str(best), str(tmp_path / "converted")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "lra" and report["format"] == "native"
    converted, converted_meta = load_lra_model(tmp_path / "converted")
    assert torch.equal(_logits(converted), _logits(reference))
    assert converted_meta == meta  # task, vocabulary and settings survive the round trip

    with pytest.raises(CheckpointError, match="opens only as task 'lra'"):
        load_pretrained(best, task="mlm")


def test_dual_classifier_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LRADualClassifier(lra_config(get_task("retrieval"), 257)).eval()
    save_lra_model(model, tmp_path / "a", "retrieval", byte_vocab.VOCAB)
    opened = load_pretrained(tmp_path / "a")
    assert type(opened) is LRADualClassifier
    ids = torch.randint(1, 257, (2, 2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(opened(ids[0], input_ids2=ids[1]).logits, model(ids[0], input_ids2=ids[1]).logits)
    save_pretrained(opened, tmp_path / "b")  # the generic writer keeps what the loaded config records
    assert json.loads((tmp_path / "b" / "config.json").read_text())[LRA_KEY]["task"] == "retrieval"
    _, meta = load_lra_model(tmp_path / "b")
    assert meta["architecture"] == "dual" and meta["vocab"] == list(byte_vocab.VOCAB)


def test_a_plain_checkpoint_is_not_an_lra_model(tmp_path: Path) -> None:
    config = BortConfig.preset("bort_4_8_768_1024", vocab_size=50, hidden_size=16, num_attention_heads=2,
                               intermediate_size=16, num_hidden_layers=1, max_position_embeddings=20, pad_token_id=0)
    save_pretrained(BortForMaskedLM(config), tmp_path / "mlm")
    with pytest.raises(CheckpointError, match="task 'lra' needs a lra checkpoint"):
        load_pretrained(tmp_path / "mlm", task="lra")
    with pytest.raises(CheckpointError, match="task 'mlm', not an LRA model"):
        load_lra_model(tmp_path / "mlm")
    with pytest.raises(CheckpointError, match="config.json: not found; an LRA model directory holds config.json"):
        load_lra_model(tmp_path / "nothing")


def test_bad_settings_in_config_json_are_named(tmp_path: Path) -> None:
    save_lra_model(LRAClassifier(lra_config(get_task("listops"), 20)), tmp_path, "listops")
    path = tmp_path / "config.json"
    good = json.loads(path.read_text())
    for settings, message in (({"architecture": "triple"}, r"lra\.architecture 'triple' is not one of single, dual"),
                              ({"colour": 1}, r"unknown setting\(s\) colour"),
                              ({"pooling": "max"}, r"config\.json: unknown pooling 'max'; valid: mean, mean_padded")):
        path.write_text(json.dumps(dict(good, lra=dict(good["lra"], **settings))))
        with pytest.raises(CheckpointError, match=message):
            load_lra_model(tmp_path)
        with pytest.raises(CheckpointError, match=message.replace(r"config\.json: ", "")):
            load_pretrained(tmp_path)


def test_old_layout_loads_converts_and_resumes_bitwise(tiny_listops: Path, tmp_path: Path) -> None:
    straight = run_lra(_settings(tiny_listops, tmp_path / "a"))

    class Killed(Exception):
        pass

    def kill_at_8(record: dict) -> None:
        if record["event"] == "eval" and record["step"] == 8:
            raise Killed()

    with pytest.raises(Killed):
        run_lra(_settings(tiny_listops, tmp_path / "b"), on_event=kill_at_8)
    for directory in [tmp_path / "b" / "best", *(tmp_path / "b" / "checkpoints").iterdir()]:
        reference = _logits(load_lra_model(directory)[0])
        _to_old_layout(directory)
        assert (directory / LEGACY_CONFIG_NAME).is_file() and not (directory / "config.json").exists()
        old, meta = load_lra_model(directory)
        assert torch.equal(_logits(old), reference) and meta["task"] == "listops"
        assert torch.equal(_logits(load_pretrained(directory)), reference)
    assert main(["convert", str(tmp_path / "b" / "best"), str(tmp_path / "converted")]) == 0
    assert torch.equal(_logits(load_lra_model(tmp_path / "converted")[0]),
                       _logits(load_lra_model(tmp_path / "b" / "best")[0]))

    resumed = run_lra(_settings(tiny_listops, tmp_path / "b", resume=True))
    assert resumed["resumed"] and resumed["steps"] == 12
    losses = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                        if json.loads(x)["event"] == "train"]
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert resumed["test_accuracy"] == straight["test_accuracy"] and resumed["best_step"] == straight["best_step"]
    for x, y in zip(load_lra_model(tmp_path / "b" / "checkpoints" / "step-0000012")[0].parameters(),
                    load_lra_model(tmp_path / "a" / "checkpoints" / "step-0000012")[0].parameters()):
        assert torch.equal(x, y)


def test_oldest_layout_without_settings_takes_the_defaults(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LRAClassifier(lra_config(get_task("listops"), len(listops.VOCAB))).eval()
    save_lra_model(model, tmp_path, "listops", listops.VOCAB)
    _to_old_layout(tmp_path)
    values = json.loads((tmp_path / LEGACY_CONFIG_NAME).read_text())
    for key in ("pooling", "ffn_dropout", "architecture"):  # files written before these options existed
        del values[key]
    (tmp_path / LEGACY_CONFIG_NAME).write_text(json.dumps(values))
    loaded, meta = load_lra_model(tmp_path)
    assert (meta["architecture"], meta["pooling"], meta["ffn_dropout"]) == ("single", "mean", 0.0)
    assert torch.equal(_logits(loaded), _logits(model))
    values["ffn_dropout"] = "lots"
    (tmp_path / LEGACY_CONFIG_NAME).write_text(json.dumps(values))
    with pytest.raises(CheckpointError, match=r"lra_config\.json: ffn_dropout must be a probability .*'lots'"):
        load_lra_model(tmp_path)
