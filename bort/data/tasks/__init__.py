"""GLUE, SuperGLUE and RACE tasks: readers of the original file formats, official metrics, submissions.

```python
from bort.data.tasks import get_task

task = get_task("MRPC")                              # names as in `available_tasks()`, case-insensitive
dev = task.read("data/glue/MRPC", "dev")             # list of Example; missing files list the expected paths
scores = task.evaluate(predictions, dev)             # {"f1": …, "acc": …}
task.write_submission(test_predictions, test, "out") # out/MRPC.tsv for the leaderboard
```

Tasks: GLUE CoLA, SST-2, MRPC, STS-B, QQP, MNLI (matched; alias MNLI-m), MNLI-mm, QNLI, RTE, WNLI, AX;
SuperGLUE BoolQ, CB, COPA, MultiRC, ReCoRD, SuperGLUE-RTE (alias RTE-SuperGLUE), WiC, WSC, AX-b, AX-g;
RACE-high, RACE-middle, RACE. The original `finetune_bort.py`'s names (SST, SuperGLUERTE, AXb, AXg, RACE-H,
RACE-M) and Hugging Face `datasets` names (`sst2`, `mnli_mismatched`, `glue/stsb`, `super_glue/boolq`,
`race/high`, …) resolve too. File layouts and input construction are described in `glue`, `superglue` and
`race`; `encode.encode_examples` turns examples into token ids.
"""
from __future__ import annotations

from .base import SPLITS, BadRow, Example, ExampleList, Task, TaskDataError
from .glue import GLUE_TASKS
from .race import RACE_TASKS
from .superglue import SUPERGLUE_TASKS

__all__ = [
    "SPLITS",
    "BadRow",
    "Example",
    "ExampleList",
    "Task",
    "TaskDataError",
    "available_tasks",
    "get_task",
]

_TASKS: dict[str, Task] = {**GLUE_TASKS, **SUPERGLUE_TASKS, **RACE_TASKS}
_ALIASES = {"MNLI-m": "MNLI", "RTE-SuperGLUE": "SuperGLUE-RTE"}
# The task table of the original finetune_bort.py (its other names are ours already).
_ORIGINAL_NAMES = {"SST": "SST-2", "SuperGLUERTE": "SuperGLUE-RTE", "AXb": "AX-b", "AXg": "AX-g",
                   "RACE-H": "RACE-high", "RACE-M": "RACE-middle"}
# Hugging Face `datasets` configurations, per dataset (`glue/sst2`, `super_glue/boolq`, `race/high`); a bare
# configuration name means its GLUE one when GLUE has it (`rte` is GLUE's RTE, `super_glue/rte` SuperGLUE's).
_HF_CONFIGS = {
    "glue": {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
             "mnli_matched": "MNLI", "mnli_mismatched": "MNLI-mm", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
             "ax": "AX"},
    "super_glue": {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC", "record": "ReCoRD",
                   "rte": "SuperGLUE-RTE", "wic": "WiC", "wsc": "WSC", "wsc.fixed": "WSC", "axb": "AX-b",
                   "axg": "AX-g"},
    "race": {"high": "RACE-high", "middle": "RACE-middle", "all": "RACE"},
}
# Hub repositories that hold the same datasets under an owner's name.
_HF_DATASET_NAMES = {"glue": "glue", "nyu-mll/glue": "glue", "super_glue": "super_glue",
                     "aps/super_glue": "super_glue", "race": "race", "ehovy/race": "race"}
_BY_KEY = {name.lower(): task for name, task in _TASKS.items()}
for _alias, _target in {**_ALIASES, **_ORIGINAL_NAMES}.items():
    _BY_KEY[_alias.lower()] = _TASKS[_target]
for _dataset in ("super_glue", "glue"):  # GLUE last: its bare names win (RACE's "high", "all" need "race/")
    _BY_KEY.update({config: _TASKS[target] for config, target in _HF_CONFIGS[_dataset].items()
                    if config not in _BY_KEY or _dataset == "glue"})


def available_tasks() -> list[str]:
    """The canonical task names, GLUE first, then SuperGLUE, then RACE."""
    return list(_TASKS)


def get_task(name: str) -> Task:
    """The task called `name` (case-insensitive; aliases MNLI-m, RTE-SuperGLUE, the original script's names and
    Hugging Face `datasets` names such as `sst2` or `super_glue/boolq`). Unknown names raise ValueError listing
    every valid one."""
    key = str(name).strip().lower()
    dataset, slash, config = key.rpartition("/") if "/" in key else ("", "", key)
    if slash:
        task_name = _HF_CONFIGS.get(_HF_DATASET_NAMES.get(dataset, ""), {}).get(config)
        task = _TASKS[task_name] if task_name else None
    else:
        task = _BY_KEY.get(key)
    if task is None:
        aliases = ", ".join(f"{a} (= {t})" for a, t in {**_ALIASES, **_ORIGINAL_NAMES}.items())
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(_TASKS)}; aliases: {aliases}; Hugging "
                         "Face datasets names: glue/<config>, super_glue/<config>, race/<high|middle|all> (GLUE's "
                         "and SuperGLUE's configuration names also alone, e.g. sst2, mnli_mismatched, boolq)")
    return task
