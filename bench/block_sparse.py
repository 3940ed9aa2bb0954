"""Block-sparse BigBird attention, forward + backward on CPU: ours vs dense SDPA and vs HF BigBird.

Shape: batch 1, 12 heads (BigBird-base), head_dim 64, fp32, block 64; BigBird's layout of 3 window blocks,
2 global blocks and 3 random blocks per row, at n = 4096 and 8192. Every candidate is timed as one call of
the attention core plus `torch.autograd.grad` of the output (a fixed random cotangent) for q, k and v; the
projections are excluded. Candidates, interleaved per round (`bench.common.time_interleaved`):
- dense SDPA: `F.scaled_dot_product_attention(q, k, v)`, no mask (PyTorch's flash kernel on CPU);
- ours: `block_sparse_attention(q, k, v, plan)` with our `bigbird` pattern (global = the first and the last
  block, as HF's; random blocks drawn per head from the blocks a row does not already see; the README's
  timings were measured when they were the first 2 blocks); the plan is built once, as the
  mechanism caches it per length;
- ours on HF's layout: the same function on the exact layout HF draws (captured from HF's call);
- HF: `transformers`' `BigBirdBlockSparseAttention.bigbird_block_sparse_attention` (an instance method in
  transformers 5) in train mode with a fixed seed, called on the same q, k, v (B, H, n, d) with all-ones
  padding masks from `BigBirdModel.create_masks_for_block_sparse_attn`. HF's global blocks are the first and
  the last; its random blocks come from the first 1024 tokens at n ∈ {1024, 3072, 4096} (the paper's old plan)
  and from the first 11 blocks at 8192 (its `_get_rand_attn_plan`). Both layouts compute ≈15% of the score
  matrix (the exact tile fractions are in the table). In transformers 5 this call also assembles the dense
  (B, H, n, n) probability matrix on every call; that is part of the timed HF call, and the zero-fill of such
  a matrix alone is timed as an extra candidate to show its share.
Correctness is checked in the same run: ours on HF's layout against HF's output and gradients.

The allocator section runs two fresh processes (glibc defaults, and `MALLOC_MMAP_THRESHOLD_` /
`MALLOC_TRIM_THRESHOLD_` raised as `bort.perf.tune_allocator` does) timing SDPA and our kernel with chunks of
1, 4 (its default), 16 MB of one batch×head's scores and unchunked, at n = 4096. The main table
runs with the allocator tuned by `bort.perf.tune_allocator()`, as the `bort` command does at start-up.

    python bench/block_sparse.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

NAME = "block_sparse"
HEADS, HEAD_DIM, BLOCK = 12, 64, 64
LAYOUT = {"window": 1, "num_global": 2, "num_random": 3}  # |i-j| <= 1 block: 3 window blocks
TARGETS = {4096: 4.0, 8192: 6.0}  # the issue's bar vs dense SDPA; vs HF: 1.5 at every n
TUNED_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


# --- the layouts ------------------------------------------------------------------------------------------------
def bort_plan(n: int, heads: int = HEADS):
    """Our `bigbird` pattern at block 64 as a block-sparse plan (per-head random blocks)."""
    from bort.attention import patterns
    from bort.attention.block_sparse import BlockSparsePlan

    layout = patterns.block_layout("bigbird", n // BLOCK, 1, num_heads=heads, **LAYOUT)
    return BlockSparsePlan.from_layout(layout, BLOCK)


class HFBigBird:
    """HF's block-sparse attention core in train mode with a fixed seed (the same random blocks every call)."""

    def __init__(self, n: int, heads: int = HEADS, seed: int = 0) -> None:
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel

        self.n, self.heads = n, heads
        config = BigBirdConfig(hidden_size=heads * HEAD_DIM, num_attention_heads=heads, block_size=BLOCK,
                               num_random_blocks=LAYOUT["num_random"], max_position_embeddings=n,
                               attention_type="block_sparse")
        self.module = BigBirdBlockSparseAttention(config, seed=seed).train()
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(
            torch.ones(1, n), BLOCK)
        self.masks = (band, from_mask, to_mask, blocked, blocked)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Context (B, H, n, d) from q, k, v (B, H, n, d)."""
        context, _probs = self.module.bigbird_block_sparse_attention(
            q, k, v, *self.masks, self.heads, LAYOUT["num_random"], HEAD_DIM, BLOCK, BLOCK, q.shape[0],
            self.n, self.n, seed=self.module.seed, plan_from_length=None, plan_num_rand_blocks=None)
        return context.transpose(1, 2)  # HF returns (B, n, H, d)

    def layout(self, q: torch.Tensor) -> tuple[torch.Tensor, int]:
        """HF's block layout (H, nb, nb) for this seed, and how many random blocks repeat a window or global
        block (HF would then count such a key twice; 0 means its output is plain attention on the layout)."""
        seen: list[torch.Tensor] = []
        gather = self.module.torch_gather_b2

        def record(params, indices):
            seen.append(indices)
            return gather(params, indices)

        self.module.torch_gather_b2 = record  # instance attribute shadows the static method for one call
        try:
            with torch.no_grad():
                self(q, q, q)
        finally:
            del self.module.torch_gather_b2
        rand = seen[0][0]  # (H, nb - 2, r) random key blocks of query blocks 1 .. nb-2
        nb = self.n // BLOCK
        layout = torch.zeros(self.heads, nb, nb, dtype=torch.bool)
        layout[:, [0, -1], :] = True  # global query blocks: the first and the last
        layout[:, :, [0, -1]] = True  # global key blocks
        rows = torch.arange(1, nb - 1)
        for offset in (-1, 0, 1):
            layout[:, rows, rows + offset] = True
        repeats = int(layout[:, 1:-1].gather(-1, rand.long()).sum())
        layout[torch.arange(self.heads)[:, None, None], rows[None, :, None], rand.long()] = True
        return layout, repeats


# --- candidates -------------------------------------------------------------------------------------------------
def _fwd_bwd(fn: Callable[..., torch.Tensor], q, k, v, grad) -> Callable[[], object]:
    def call():
        out = fn(q, k, v)
        return torch.autograd.grad(out, (q, k, v), grad)
    return call


def build(n: int, heads: int = HEADS) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """The timed candidates at length n and facts about them (tile fractions, parity with HF)."""
    from bort.attention.block_sparse import BlockSparsePlan, block_sparse_attention

    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, heads, n, HEAD_DIM, generator=gen).requires_grad_() for _ in range(3))
    grad = torch.randn(1, heads, n, HEAD_DIM, generator=gen)
    ours_plan = bort_plan(n, heads)
    hf = HFBigBird(n, heads)
    hf_layout, repeats = hf.layout(q.detach())
    hf_plan = BlockSparsePlan.from_layout(hf_layout, BLOCK)

    def ours(q_, k_, v_):
        return block_sparse_attention(q_, k_, v_, ours_plan)

    def ours_hf(q_, k_, v_):
        return block_sparse_attention(q_, k_, v_, hf_plan)

    # Parity on HF's layout: outputs and gradients (valid when no random block repeats a window/global one).
    a, b = ours_hf(q, k, v), hf(q, k, v)
    ga, gb = torch.autograd.grad(a, (q, k, v), grad), torch.autograd.grad(b, (q, k, v), grad)
    parity = max([(a - b).abs().max().item()] + [(x - y).abs().max().item() for x, y in zip(ga, gb)])
    del a, b, ga, gb
    zeros_shape = (1, heads, n, n)
    candidates = {
        "dense SDPA": _fwd_bwd(F.scaled_dot_product_attention, q, k, v, grad),
        "ours (bort bigbird)": _fwd_bwd(ours, q, k, v, grad),
        "ours (HF's layout)": _fwd_bwd(ours_hf, q, k, v, grad),
        "HF BigBird": _fwd_bwd(hf, q, k, v, grad),
        "n×n zero-fill (inside HF)": lambda: torch.zeros(zeros_shape),
    }
    facts = {"n": n, "heads": heads, "tile_fraction_ours": ours_plan.tile_fraction,
             "tile_fraction_hf": hf_plan.tile_fraction, "hf_random_repeats": repeats,
             "max_abs_diff_vs_hf": parity}
    return candidates, facts


def _row(n: int, timings: dict[str, common.Timing], facts: dict[str, Any]) -> dict[str, Any]:
    ms = {name: t.median * 1e3 for name, t in timings.items()}
    vs_sdpa = common.paired_ratio(timings["dense SDPA"], timings["ours (bort bigbird)"])
    vs_sdpa_hf_layout = common.paired_ratio(timings["dense SDPA"], timings["ours (HF's layout)"])
    vs_hf = common.paired_ratio(timings["HF BigBird"], timings["ours (HF's layout)"])
    zero_share = common.paired_ratio(timings["n×n zero-fill (inside HF)"], timings["HF BigBird"])
    return {"n": n, "ms": ms, "vs_sdpa": vs_sdpa, "vs_sdpa_hf_layout": vs_sdpa_hf_layout, "vs_hf": vs_hf,
            "zero_fill_share_of_hf": zero_share, **facts}


# --- the allocator experiment ------------------------------------------------------------------------------------
BUDGETS = {"1 MB chunks": 1 << 18, "4 MB chunks": 1 << 20, "16 MB chunks": 1 << 22, "unchunked": 1 << 40}


def allocator_child(n: int, repeats: int) -> None:
    """Run in a fresh process (env chosen by the parent): SDPA vs our kernel at three chunk sizes; prints JSON."""
    from bort.attention import block_sparse as bsm

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, generator=gen).requires_grad_() for _ in range(3))
    grad = torch.randn(1, HEADS, n, HEAD_DIM, generator=gen)
    plan = bort_plan(n)
    saved = bsm._SCORE_BUDGET

    def with_budget(budget: int) -> Callable[[], object]:
        def call():
            bsm._SCORE_BUDGET = budget
            try:
                out = bsm.block_sparse_attention(q, k, v, plan)
                return torch.autograd.grad(out, (q, k, v), grad)
            finally:
                bsm._SCORE_BUDGET = saved
        return call

    candidates = {"dense SDPA": _fwd_bwd(F.scaled_dot_product_attention, q, k, v, grad)}
    candidates.update({name: with_budget(b) for name, b in BUDGETS.items()})
    timings = common.time_interleaved(candidates, repeats=repeats, warmup=1)
    out = {name: t.to_dict() for name, t in timings.items()}
    out["ratios"] = {name: common.paired_ratio(timings["dense SDPA"], timings[name]) for name in BUDGETS}
    print("RESULT " + json.dumps(out), flush=True)


def allocator_experiment(n: int, repeats: int) -> dict[str, Any]:
    """glibc defaults vs raised thresholds, each in a fresh process (the thresholds are read at start-up)."""
    results = {}
    root = Path(__file__).resolve().parents[1]
    for setting, extra in (("glibc defaults", {}), ("raised thresholds", TUNED_ENV)):
        env = {k: v for k, v in os.environ.items() if k not in TUNED_ENV}
        env.update(extra)
        code = f"from bench import {NAME} as m; m.allocator_child({n}, {repeats})"
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"allocator child ({setting}) failed:\n{proc.stderr[-2000:]}")
        results[setting] = json.loads(line[-1][len("RESULT "):])
    return results


# --- report -----------------------------------------------------------------------------------------------------
def _ratio(r: dict[str, float]) -> str:
    return f"**{r['median']:.2f}** [{r['q1']:.2f}–{r['q3']:.2f}]"


def _markdown(rows: list[dict[str, Any]], alloc: dict[str, Any] | None, repeats: int, heads: int,
              quick: bool, tuned: bool, load: Any = None) -> str:
    table = [{"n": r["n"],
              "SDPA ms": f"{r['ms']['dense SDPA']:.0f}",
              "ours ms": f"{r['ms']['ours (bort bigbird)']:.0f}",
              "ours (HF layout) ms": f"{r['ms']['ours (HF' + chr(39) + 's layout)']:.0f}",
              "HF ms": f"{r['ms']['HF BigBird']:.0f}",
              "SDPA / ours": _ratio(r["vs_sdpa"]) + (f" (target ≥ {TARGETS[r['n']]:g})" if r["n"] in TARGETS else ""),
              "HF / ours (HF layout)": _ratio(r["vs_hf"]) + " (target ≥ 1.5)",
              "tiles computed (ours / HF)": f"{r['tile_fraction_ours']:.3f} / {r['tile_fraction_hf']:.3f}",
              "max abs diff vs HF": f"{r['max_abs_diff_vs_hf']:.1e}"}
             for r in rows]
    lines = [f"## Block-sparse attention, forward + backward (CPU{', quick' if quick else ''})", "",
             f"BigBird layout, block {BLOCK}: 3 window, 2 global, 3 random blocks per row; batch 1, {heads} heads, "
             f"head_dim {HEAD_DIM}, fp32, gradients for q, k, v; projections excluded; medians over {repeats} "
             "interleaved rounds, ratios per round as median [quartiles]. Ours uses our `bigbird` pattern; "
             "\"ours (HF layout)\" runs the same kernel on the exact layout HF drew (max abs difference over the "
             "output and the q, k, v gradients in the last column). glibc allocator: "
             + ("thresholds raised by `bort.perf.tune_allocator()`, as the `bort` command does"
                if tuned else "defaults")
             + "; the kernel runs a batch×head per worker thread in chunks of 4 MB of scores"
             + f"; load average (1, 5, 15 min) at the start: {load}.", "",
             common.markdown_table(table), ""]
    for r in rows:
        lines.append(f"- n = {r['n']}: ours on HF's layout vs SDPA {_ratio(r['vs_sdpa_hf_layout'])}; HF's call "
                     f"includes a dense (1, {heads}, n, n) probability matrix whose zero-fill alone is "
                     f"{r['zero_fill_share_of_hf']['median']:.0%} of its time.")
    if alloc:
        lines += ["", f"Allocator (n = {alloc['n']}, a fresh process per setting; SDPA / ours per round; the "
                  "kernel's chunks hold 4 MB of one batch×head's scores by default):", "",
                  "| glibc setting | " + " | ".join(BUDGETS) + " |", "|---|" + "---|" * len(BUDGETS)]
        for setting, res in alloc["settings"].items():
            lines.append(f"| {setting} | " + " | ".join(_ratio(res["ratios"][b]) for b in BUDGETS) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], alloc: dict[str, Any] | None) -> Callable[[Any], None]:
    def draw(fig) -> None:
        axes = fig.subplots(1, 2 if alloc else 1, squeeze=False)[0]
        ax = axes[0]
        series = [("vs dense SDPA", "vs_sdpa"), ("vs HF BigBird (same layout)", "vs_hf")]
        width = 0.38
        for i, (label, key) in enumerate(series):
            xs = [j + (i - 0.5) * width for j in range(len(rows))]
            med = [r[key]["median"] for r in rows]
            err = [[m - r[key]["q1"] for m, r in zip(med, rows)], [r[key]["q3"] - m for m, r in zip(med, rows)]]
            ax.bar(xs, med, width, yerr=err, capsize=4, label=label)
        for j, r in enumerate(rows):
            if r["n"] in TARGETS:
                ax.hlines(TARGETS[r["n"]], j - 0.45, j - 0.05, colors="k", linestyles="dashed")
            ax.hlines(1.5, j + 0.05, j + 0.45, colors="k", linestyles="dotted")
        ax.set_xticks(range(len(rows)), [f"n = {r['n']}" for r in rows])
        ax.set_ylabel("speed-up of ours (median, IQR)")
        ax.set_title("fwd+bwd, BigBird block 64 (targets dashed/dotted)")
        ax.legend()
        if alloc:
            ax = axes[1]
            settings = list(alloc["settings"])
            width = 0.8 / len(BUDGETS)
            for i, variant in enumerate(BUDGETS):
                xs = [j + (i - (len(BUDGETS) - 1) / 2) * width for j in range(len(settings))]
                med = [alloc["settings"][s]["ratios"][variant]["median"] for s in settings]
                ax.bar(xs, med, width, label=variant)
            ax.set_xticks(range(len(settings)), settings)
            ax.set_ylabel("SDPA / ours")
            ax.set_title(f"glibc allocator, n = {alloc['n']}")
            ax.legend()
    return draw


def run(quick: bool = False, write: bool = True, sizes: tuple[int, ...] | None = None, heads: int = HEADS,
        repeats: int | None = None, allocator: bool = True, out_dir: str | os.PathLike | None = None
        ) -> dict[str, Any]:
    """Interleaved timing at every n; writes bench/results/block_sparse.{md,json,png}."""
    from bort.perf import tune_allocator

    torch.set_num_threads(2)
    tuned = tune_allocator()  # as the `bort` command does at start-up (the allocator table shows both)
    machine = common.machine_info()
    sizes = sizes or ((4096,) if quick else (4096, 8192))
    repeats = repeats or (3 if quick else 7)
    rows, raw = [], {}
    for n in sizes:
        print(f"[{NAME}] n={n}: building candidates", flush=True)
        candidates, facts = build(n, heads)
        timings = common.time_interleaved(candidates, repeats=repeats, warmup=1)
        rows.append(_row(n, timings, facts))
        raw[str(n)] = timings
        del candidates
        print(f"[{NAME}] n={n}: SDPA/ours {rows[-1]['vs_sdpa']['median']:.2f}, "
              f"HF/ours {rows[-1]['vs_hf']['median']:.2f}", flush=True)
    alloc = None
    if allocator:
        n_alloc = 4096 if 4096 in sizes else sizes[0]
        print(f"[{NAME}] allocator experiment at n={n_alloc}", flush=True)
        alloc = {"n": n_alloc, "settings": allocator_experiment(n_alloc, max(3, repeats - 2))}
    markdown = _markdown(rows, alloc, repeats, heads, quick, tuned, machine.get("load_average_1_5_15"))
    result = {"name": NAME, "quick": quick, "machine": machine, "allocator_tuned": tuned, "rows": rows,
              "timings": raw, "allocator": alloc, "markdown": markdown}
    if write:
        common.write_results(NAME, {k: v for k, v in result.items() if k != "markdown"}, markdown=markdown,
                             plot=_plot(rows, alloc), out_dir=out_dir)
    print(markdown, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 4096 only, 3 rounds")
    parser.add_argument("--sizes", type=int, nargs="*", help="sequence lengths (multiples of 64)")
    parser.add_argument("--no-allocator", action="store_true", help="skip the allocator experiment")
    args = parser.parse_args(argv)
    run(quick=args.quick, sizes=tuple(args.sizes) if args.sizes else None, allocator=not args.no_allocator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
