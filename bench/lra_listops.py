"""Learning on real ListOps: the LRA encoder with dense, YOSO, BigBird and DAM_s attention, equal steps.

Data: the 8,000 real rows of the original ListOps release (`../shared/data/lra/listops/
nangia_bowman_d20s.first8000.tsv`), split by a seed-0 permutation into 6,400 train / 800 dev / 800 test. The
dev split picks the best checkpoint (evaluated every `eval_interval` steps); the test accuracy is that
checkpoint's, reloaded from disk. The majority class is the most frequent training label.

Every mechanism runs the same model (LRA config: 2 layers, width 64, FFN 128, 2 heads, pre-LN, mean pooling)
from the same seed, on the same batches in the same order (length-bucketed, batch 32), with the same
schedule. The runs are interleaved in one process: round r trains steps [r·chunk, (r+1)·chunk) of every
mechanism, in an order rotating per round, so all see the same machine load; the per-round time ratio
against dense (same steps, same batches) is reported with its quartiles.

Deliberate settings (all recorded in the JSON):
- attention-probability dropout 0 for every mechanism (hidden dropout stays 0.1): YOSO has no probabilities
  to drop, and on CPU SDPA with dropout leaves the fused kernel (5x slower on the longest batches);
- peak learning rate 1e-3 instead of the LRA preset's 1e-4, since the run is 1/5 of the preset's 5,000
  steps; warmup stays the preset's 20%, then linear decay;
- YOSO: the task preset (hash_code_len 11, 32 hashes, LSH backward); BigBird: element-level pattern (block 1)
  with window 1, 2 global and 2 random keys per row, since ListOps rows are short (median 16 symbols; a
  64-token block would make every row dense) — rows are padded to a multiple of 8, and a block > 1 would be
  padded to a multiple of its block; DAM_s: λ = 1e-4 (SparseBERT's smallest), masks over max length 2000.

    python bench/lra_listops.py [--steps 1000] [--chunk 50] [--threads 2] [--mechanisms dense yoso ...]

`--mechanisms` also takes the rows of `VARIANTS` (e.g. `yoso_bwd8`: yoso whose LSH backward reads 8 of its 32
hashes).

`--recipe paper` trains as the YOSO paper's LRA code (`bort.lra.tasks.RECIPES`: OneCycleLR from lr/25 with
Adam's β1 cycling 0.95 → 0.85 → 0.95, dropout between the FFN projections, mean pooling over the 2,048-row
padded length, a 2,048-row position table, YOSO as its `yoso-v1-32`: fast Hadamard hash, 32 hashes, LSH
backward); the same steps, peak lr, warmup fraction and batches as the default ("bort") recipe, so that only
the recipe differs. Its rows are labelled "<mechanism> [paper]"; `--merge` adds them to the existing result
files (rows of other labels are kept, each run's time ratios stay within that run).

    python bench/lra_listops.py --recipe paper --mechanisms dense yoso --merge

Not part of `run_all.py`: the full table takes ~25 minutes (YOSO's steps are ~80% of it), and a reduced
run would not show learning. The recorded table ran with `--threads 1`: the machine was shared with other
jobs, and there two intra-op threads made a step ~7x slower (thread spin-waits), one thread did not.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `bort` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bort.attention import available_attention, patterns  # noqa: E402
from bort.lra.data import load_splits  # noqa: E402
from bort.lra.runner import LRARecipe, LRASettings  # noqa: E402
from bort.lra.tasks import RECIPES, get_recipe, get_task  # noqa: E402

NAME = "lra_listops"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "lra" / "listops" / "nangia_bowman_d20s.first8000.tsv"
MECHANISMS = ("dense", "yoso", "bigbird", "dam_s")
PARAMS: dict[str, dict[str, Any] | None] = {
    "dense": None, "yoso": None,  # None: the task preset's (YOSO: hash_code_len 11, num_hash 32)
    "bigbird": {"window": 1, "num_global": 2, "num_random": 2, "block": 1},
    "dam_s": {"max_length": 2000},
}
DAM_LAMBDA = 1e-4
# Rows that run a registered mechanism with parameters added to the task preset's: label → (mechanism, extra).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"yoso_bwd8": ("yoso", {"backward_hashes": 8})}


def attention_of(label: str, params: dict[str, dict[str, Any] | None]) -> tuple[str, dict[str, Any] | None]:
    """(registered mechanism, attention_params) of a table row: a variant's extra parameters on top of the
    ListOps preset's for its mechanism; otherwise `params[label]` (None: the preset's)."""
    if label in VARIANTS:
        mechanism, extra = VARIANTS[label]
        return mechanism, {**get_task("listops").attention_defaults.get(mechanism, {}), **extra}
    return label, params.get(label)


def runnable(labels: list[str]) -> tuple[list[str], list[str]]:
    """The labels whose mechanism is registered in this tree, and the others."""
    known = available_attention()
    ok = [m for m in labels if attention_of(m, {})[0] in known]
    return ok, [m for m in labels if m not in ok]


def row_label(label: str, recipe: str) -> str:
    """A table row's name: the mechanism's label, with "[recipe]" unless it is ours (the default)."""
    return label if recipe == "bort" else f"{label} [{recipe}]"


def _settings(label: str, args: argparse.Namespace, out: Path) -> LRASettings:
    mechanism, params = attention_of(label, PARAMS)
    if args.recipe != "bort" and mechanism in ("yoso", "yoso_e") and label not in VARIANTS:
        params = None  # the recipe's settings for the mechanism (the paper's `yoso-v1-32` / `yoso-e`)
    return LRASettings(
        task="listops", data=str(args.data), output_dir=str(out / label), attention=mechanism,
        recipe=args.recipe, attention_params=params, model_overrides={"attention_probs_dropout_prob": 0.0},
        max_steps=args.steps, lr=args.lr, eval_interval=args.eval_interval, dev_size=args.dev_size,
        test_size=args.test_size, split_seed=0, seed=args.seed,
        dam_lambda=DAM_LAMBDA if mechanism.startswith("dam") else 0.0, progress=False)


def _extras(mechanism: str, trainer: LRARecipe) -> dict[str, Any]:
    """Mechanism-specific facts: BigBird's sparsity at typical lengths, DAM's learned mask density."""
    if mechanism == "bigbird":
        params = {k: v for k, v in trainer.values["attention_params"].items()}
        return {f"sparsity_pct_n{n}": patterns.sparsity(patterns.head_masks("bigbird", n, 2, **params))
                for n in (16, 64, 256)}
    if mechanism.startswith("dam"):
        return {f"dam_kept_pct_n{n}": pct for n, pct in dam_kept_pct(trainer, (64,)).items()}
    return {}


def dam_kept_pct(trainer: LRARecipe, lengths: tuple[int, ...]) -> dict[int, float]:
    """The share (%) of query-key pairs that a DAM run's best-dev checkpoint keeps (its deterministic mask, the
    one evaluation uses) at each of `lengths` that its logits cover."""
    from bort.attention.dam import dam_masks, export_mask

    model = trainer.best_model()
    covered = dam_masks(model)[0].max_length
    return {n: 100.0 * float(export_mask(model, n).float().mean()) for n in lengths if n <= covered}


def portable(value: Any, temp: str | None = None) -> Any:
    """`value` with this machine's paths made relative to the repository (and the run's temporary directory
    named "<temp>"), so the committed results name no local directory."""
    if isinstance(value, dict):
        return {k: portable(v, temp) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, temp) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        if temp and value.startswith(temp):
            return "<temp>" + value[len(temp):]
        return os.path.relpath(value, REPO)
    return value


def train_interleaved(trainers: dict[str, Any], chunk: int, start: float,
                      rounds: dict[str, dict[int, float]] | None = None,
                      on_round: Callable[[dict[str, dict[int, float]]], None] | None = None
                      ) -> dict[str, dict[int, float]]:
    """Advance every trainer `chunk` steps per round, the order rotating per round, until all are done.

    Returns each mechanism's training seconds per round keyed by the round's first step: the same steps on the
    same batches for every mechanism, so rounds compare like with like (`round_ratio`). A round starts at the
    lowest step any unfinished trainer is at; a trainer already past it (resumed from a later checkpoint than
    the others) sits the round out. `rounds` continues an earlier record; `on_round(rounds)` runs after each
    round (to persist it)."""
    mechanisms = list(trainers)
    rounds = {} if rounds is None else rounds
    for m in mechanisms:
        rounds.setdefault(m, {})
    r = 0
    while not all(t.done for t in trainers.values()):
        first = min(t.step for t in trainers.values() if not t.done)
        for m in mechanisms[r % len(mechanisms):] + mechanisms[:r % len(mechanisms)]:
            trainer = trainers[m]
            if trainer.done or trainer.step != first:
                continue
            before = len(trainer.step_seconds)
            trainer.train_steps(chunk)
            rounds[m][first] = sum(trainer.step_seconds[before:])
        r += 1
        line = "  ".join(f"{m} {trainers[m].history[-1]['dev_accuracy']:.3f}" if trainers[m].history else m
                         for m in mechanisms)
        print(f"round from step {first}: dev {line}  ({time.perf_counter() - start:.0f} s)", flush=True)
        if on_round is not None:
            on_round(rounds)
    return rounds


def round_ratio(rounds: dict[str, dict[int, float]], mechanism: str, reference: str = "dense"
                ) -> dict[str, float] | None:
    """Median and quartiles of mechanism / reference training time over the rounds both trained; None for the
    reference itself or when there is no common round."""
    if mechanism == reference or reference not in rounds:
        return None
    ours, ref = rounds.get(mechanism, {}), rounds[reference]
    ratios = [ours[s] / ref[s] for s in sorted(set(ours) & set(ref)) if ref[s] > 0]
    if not ratios:
        return None
    q1, med, q3 = common.quartiles(ratios)
    return {"median": med, "q1": q1, "q3": q3, "rounds": len(ratios)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    task = get_task("listops")
    splits = load_splits(task, args.data, dev_size=args.dev_size, test_size=args.test_size, split_seed=0)
    mechanisms, missing = runnable(args.mechanisms)
    out = Path(tempfile.mkdtemp(prefix="lra_listops_"))
    start = time.perf_counter()
    try:
        trainers = {row_label(m, args.recipe): LRARecipe(_settings(m, args, out), splits).build()
                    for m in mechanisms}
        for trainer in trainers.values():
            trainer.clear_outputs()
        rounds = train_interleaved(trainers, args.chunk, start)
        rows, curves, summaries = [], {}, {}
        reference = row_label("dense", args.recipe)
        for m in trainers:
            summary = summaries[m] = trainers[m].finish()
            ratio = round_ratio(rounds, m, reference)
            rows.append({
                "mechanism": m, "recipe": args.recipe, "attention_params": summary["attention_params"],
                "steps": summary["steps"],
                "best_step": summary["best_step"], "dev_accuracy": summary["dev_accuracy"],
                "test_accuracy": summary["test_accuracy"], "majority_accuracy": summary["majority_accuracy"],
                "ms_per_step_median": summary["ms_per_step"], "ms_per_step_q1": summary["ms_per_step_q1"],
                "ms_per_step_q3": summary["ms_per_step_q3"],
                "ms_per_step_mean": 1000 * summary["train_seconds"] / max(1, summary["steps"]),
                "train_seconds": summary["train_seconds"], "eval_seconds": summary["eval_seconds"],
                "total_seconds": summary["train_seconds"] + summary["eval_seconds"],
                "time_vs_dense": ratio, **_extras(trainers[m].mechanism, trainers[m])})
            curves[m] = [(h["step"], h["dev_accuracy"]) for h in trainers[m].history]
        wall = time.perf_counter() - start
        return portable({"rows": rows, "curves": curves, "missing_mechanisms": missing,
                        "majority_class": next(iter(summaries.values()))["majority_class"] if summaries else None,
                        "sizes": {s: len(getattr(splits, s)) for s in ("train", "dev", "test")},
                        "data": splits.source, "settings": {m: trainers[m].values for m in trainers},
                        "round_seconds": rounds, "chunk": args.chunk, "wall_seconds": wall,
                        "threads": args.threads, "machine": common.machine_info(),
                        "runs": [{"recipe": args.recipe, "rows": list(trainers), "chunk": args.chunk,
                                  "threads": args.threads, "wall_seconds": wall,
                                  "date": time.strftime("%Y-%m-%d")}]}, str(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def runs_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a result holds; files written before merging existed hold one run of our recipe."""
    return result.get("runs") or [{"recipe": "bort", "rows": [r["mechanism"] for r in result["rows"]],
                                   "chunk": result["chunk"], "threads": result["threads"],
                                   "wall_seconds": result["wall_seconds"]}]


def merge(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s rows added to `previous`'s: a row of the same label is replaced, every other row, curve, setting
    and round time kept. Both must be on the same data and splits (else ValueError)."""
    for key in ("data", "sizes"):
        if previous.get(key) != new.get(key):
            raise ValueError(f"cannot merge: the earlier results have {key} {previous.get(key)!r}, this run "
                             f"{new.get(key)!r}")
    labels = {row["mechanism"] for row in new["rows"]}
    merged = dict(previous)
    merged["rows"] = [{**row, "recipe": row.get("recipe", "bort")} for row in previous["rows"]
                      if row["mechanism"] not in labels] + new["rows"]
    for key in ("curves", "settings", "round_seconds"):
        merged[key] = {k: v for k, v in previous.get(key, {}).items() if k not in labels} | new[key]
    kept = [{**run, "rows": [r for r in run["rows"] if r not in labels]} for run in runs_of(previous)]
    merged["runs"] = [run for run in kept if run["rows"]] + new["runs"]
    merged["missing_mechanisms"] = sorted(set(previous.get("missing_mechanisms", [])) |
                                          set(new["missing_mechanisms"]))
    return merged


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    table = []
    for row in rows:
        ratio = row["time_vs_dense"]
        table.append({
            "mechanism": row["mechanism"],
            "recipe": row.get("recipe", "bort"),
            "test acc": f"{100 * row['test_accuracy']:.1f}%",
            "dev acc (best)": f"{100 * row['dev_accuracy']:.1f}% @ {row['best_step']}",
            "majority class": f"{100 * row['majority_accuracy']:.1f}%",
            "ms/step median [q1, q3]": f"{row['ms_per_step_median']:.0f} [{row['ms_per_step_q1']:.0f}, "
                                       f"{row['ms_per_step_q3']:.0f}]",
            "ms/step mean": f"{row['ms_per_step_mean']:.0f}",
            "time / dense, per round: median [q1, q3]": "1" if ratio is None and row["mechanism"] ==
            row_label("dense", row.get("recipe", "bort")) else
            ("—" if ratio is None else f"{ratio['median']:.2f} [{ratio['q1']:.2f}, {ratio['q3']:.2f}]"),
            "train + eval time": f"{row['train_seconds'] / 60:.1f} + {row['eval_seconds'] / 60:.1f} min",
        })
    sizes = result["sizes"]
    notes = []
    for row in rows:
        extra = {k: v for k, v in row.items() if k.startswith(("sparsity", "dam_kept"))}
        if extra:
            notes.append(f"- {row['mechanism']}: " + ", ".join(f"{k} {v:.1f}" for k, v in extra.items()))
    missing = result["missing_mechanisms"]
    settings = next(iter(result["settings"].values()))
    runs = runs_of(result)
    run_lines = [f"- {', '.join(run['rows'])} (recipe {run['recipe']}): interleaved in one process "
                 f"({run['chunk']}-step rounds, {run['threads']} thread(s)), wall time {run['wall_seconds'] / 60:.1f} "
                 f"min{', ' + run['date'] if run.get('date') else ''}" for run in runs]
    recipes = sorted({row.get("recipe", "bort") for row in rows})
    return "\n".join([
        "# Learning on real ListOps: attention mechanisms in the LRA encoder", "",
        f"Real ListOps rows (original release, 8,000 rows) split {sizes['train']} train / {sizes['dev']} dev / "
        f"{sizes['test']} test (seed-0 permutation). LRA encoder (2 layers, width 64, FFN 128, 2 heads, pre-LN, "
        f"mean pooling), {settings['max_steps']} steps of batch {settings['batch_size']} for every mechanism "
        f"(length-bucketed), AdamW lr {settings['lr']:g}, warmup {settings['warmup_ratio']:.0%} then linear decay, "
        f"dev every {settings['eval_interval']} steps; test accuracy of the best dev checkpoint reloaded from disk. "
        f"Settings and reasons: `bench/lra_listops.py`.", "",
        *([f"Recipes: {', '.join(recipes)}. bort: linear warmup from ~0 then linear decay, β1 0.9, mean pooling "
           "over real tokens, no FFN dropout, 2,000 positions. paper (the YOSO paper's LRA code, "
           "`bort.lra.tasks.RECIPES`): the same peak lr, warmup fraction, steps and batches under OneCycleLR "
           "(lr from peak/25, β1 0.95 → 0.85 at the end of warmup → 0.95), dropout between the FFN projections, "
           "mean pooling divided by the 2,048 padded positions, 2,048 positions, YOSO as `yoso-v1-32` (fast "
           "Hadamard hash, 32 hashes).", ""] if recipes != ["bort"] else []),
        "Runs (time ratios are measured within one run, against that run's dense):", *run_lines, "",
        common.markdown_table(table),
        *(["Mechanism facts:", *notes, ""] if notes else []),
        *([f"Not run (not registered in this tree): {', '.join(missing)}.", ""] if missing else []),
        "ms/step is a whole optimiser step (batching, forward, backward, AdamW); the mean exceeds the median "
        "because the few batches of the longest rows (up to ~940 symbols) cost far more than the typical "
        "16-symbol batch.", ""])


def plot(result: dict[str, Any]):
    def draw(fig) -> None:
        ax = fig.subplots()
        for m, points in result["curves"].items():
            if points:
                ax.plot(*zip(*points), marker=".", label=m)
        majority = result["rows"][0]["majority_accuracy"] if result["rows"] else None
        if majority is not None:
            ax.axhline(majority, color="grey", linestyle="--", label="majority class (test)")
        ax.set(xlabel="step", ylabel="dev accuracy", title="ListOps (real rows): dev accuracy by attention")
        ax.legend()
    return draw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=50, help="steps per mechanism per interleaved round")
    parser.add_argument("--eval-interval", dest="eval_interval", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dev-size", dest="dev_size", type=int, default=800)
    parser.add_argument("--test-size", dest="test_size", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mechanisms", nargs="+", default=list(MECHANISMS))
    parser.add_argument("--out-dir", dest="out_dir", type=Path, default=None,
                        help="where to write the result files (default bench/results)")
    parser.add_argument("--recipe", default="bort", choices=list(RECIPES),
                        help="training recipe (bort.lra.tasks.RECIPES); rows of a recipe other than bort are "
                             "labelled '<mechanism> [<recipe>]'")
    parser.add_argument("--merge", action="store_true",
                        help="add this run's rows to the existing result files instead of replacing them")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"ListOps data not found: {args.data} (the shared real data; pass --data FILE)")
    get_recipe(args.recipe)
    previous_path = (args.out_dir if args.out_dir is not None else common.RESULTS_DIR) / f"{NAME}.json"
    if args.merge and not previous_path.is_file():
        parser.error(f"--merge: no earlier results at {previous_path}")
    result = measure(args)
    if args.merge:
        result = merge(json.loads(previous_path.read_text(encoding="utf-8")), result)
    text = markdown(result)
    common.write_results(NAME, result, markdown=text, plot=plot(result), out_dir=args.out_dir)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
