"""The shared recipe shape (`bort.train.recipe`) and the one way settings are validated (`bort.train.settings`)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from bort.train.recipe import Recipe
from bort.train.run_dir import RunDirError
from bort.train.settings import (Settings, SettingsError, as_list, boolean, number, one_of, optional, positive_int,
                                 setting)


@dataclass
class ToySettings(Settings):
    train: list = setting(coerce=as_list)
    batch_size: int = setting(8, check=positive_int())
    lr: float = setting(1e-4, check=number(0, low_open=True))
    warmup_ratio: float = setting(0.1, check=number(0, 1, high_open=True))
    precision: str = setting("fp32", check=one_of("fp32", "bf16", "fp16"))
    max_steps: int | None = setting(None, check=optional(positive_int()))
    resume: bool = setting(False, check=boolean())
    output_dir: str = "out"

    def check_settings(self):
        if self.max_steps is not None and self.max_steps < self.batch_size:
            yield f"max_steps {self.max_steps} is below batch_size {self.batch_size}"


def test_defaults_validate_and_coerce():
    s = ToySettings(train="a.rec")
    assert s.train == ["a.rec"] and s.batch_size == 8


def test_every_problem_is_reported_at_once_naming_field_value_and_range():
    with pytest.raises(SettingsError) as err:
        ToySettings(train=[], batch_size=True, lr=0.0, warmup_ratio=1.0, precision="fp8", max_steps=0, resume=1)
    message = str(err.value)
    assert message.startswith("ToySettings: ")
    for part in ("batch_size must be a positive integer, got True", "lr must be > 0, got 0.0",
                 "warmup_ratio must be in [0, 1), got 1.0", "precision 'fp8' is not one of fp32, bf16, fp16",
                 "max_steps must be a positive integer, got 0", "resume must be true or false, got 1"):
        assert part in message


def test_non_finite_numbers_are_refused():
    with pytest.raises(SettingsError, match="lr must be > 0, got nan"):
        ToySettings(train=[], lr=float("nan"))


def test_cross_field_checks_run_after_field_checks():
    with pytest.raises(SettingsError, match="max_steps 4 is below batch_size 8"):
        ToySettings(train=[], max_steps=4)


def test_settings_error_is_a_value_error_and_from_dict_refuses_unknown_names():
    assert issubclass(SettingsError, ValueError)
    with pytest.raises(SettingsError, match=r"run.json: unknown setting\(s\) batchsize; known: train, batch_size"):
        ToySettings.from_dict({"train": [], "batchsize": 3}, "run.json")
    assert ToySettings.from_dict({"train": "x"}).to_dict()["train"] == ["x"]


class ToyRecipe(Recipe):
    artefacts = ("metrics.jsonl",)

    def __init__(self, settings: ToySettings, fail_in: str | None = None) -> None:
        super().__init__(settings)
        self.fail_in = fail_in
        self.calls: list[str] = []

    def setup(self) -> None:
        self.calls.append("setup")
        self.out = self.claim(self.settings.output_dir, resume=self.settings.resume)
        if self.fail_in == "setup":
            raise RuntimeError("setup failed")

    def train(self) -> dict:
        self.calls.append("train")
        if self.fail_in == "train":
            raise RuntimeError("train failed")
        (self.out / "metrics.jsonl").write_text("{}\n")
        return {"saved": str(self.save())}

    def save(self):
        self.calls.append("save")
        return self.out / "metrics.jsonl"


@pytest.mark.parametrize("fail_in", [None, "setup", "train"])
def test_run_releases_the_output_directory_whatever_happens(tmp_path, fail_in):
    recipe = ToyRecipe(ToySettings(train=[], output_dir=str(tmp_path / "run")), fail_in)
    if fail_in:
        with pytest.raises(RuntimeError, match=f"{fail_in} failed"):
            recipe.run()
    else:
        assert recipe.run() == {"saved": str(tmp_path / "run" / "metrics.jsonl")}
    assert recipe.run_dir is None
    assert recipe.calls[0] == "setup" and ("train" in recipe.calls) == (fail_in != "setup")
    # released: another run may claim the directory (refused only for the earlier run's outputs)
    again = ToyRecipe(ToySettings(train=[], output_dir=str(tmp_path / "run"), resume=True))
    assert again.run()["saved"].endswith("metrics.jsonl")


def test_a_second_fresh_run_is_refused_by_the_shared_claim(tmp_path):
    ToyRecipe(ToySettings(train=[], output_dir=str(tmp_path))).run()
    with pytest.raises(RunDirError, match="already holds the outputs of an earlier run"):
        ToyRecipe(ToySettings(train=[], output_dir=str(tmp_path))).run()
