"""Generate LRA-style ListOps data: random expression trees in a length window, written as LRA's TSV files.

The distribution is LRA's (`lra_benchmarks/data/listops.py`, described in the shared data's
GENERATOR_NOTES.md): a tree starts at depth 1; a node at depth < `max_depth` is an operator with probability
`VALUE_P` = 0.25, else (and always at `max_depth`) a uniform digit; an operator is uniform over MIN, MAX, MED,
SM with k ~ uniform{2..max_args} independent sub-trees one level deeper. Trees are kept when
`min_length < length < max_length` (length = symbols other than parentheses, `listops_tree.length`),
de-duplicated, and split into train / val / test. Labels are the exact values (`forest_labels`, tested
equal to `listops_tree.evaluate_tree` and to `bort.lra.listops.evaluate`).

Two samplers of that one distribution:

- `sample_tree`: the procedure as LRA writes it, one recursive Python call per node (the reference);
- `sample_forests`: the same Galton-Watson tree drawn level by level for thousands of candidate trees at once
  with numpy (each node is an operator independently with probability VALUE_P and its arity is independent of
  everything else, so the order in which nodes are drawn does not change the distribution). A candidate whose
  length can no longer stay below `max_length` is dropped as soon as that is known, and symbols (operators,
  digits) are drawn only for the accepted shapes, since they do not affect the length. Only accepted trees
  are kept, as a `Forest` (arrays per level) whose labels and token strings are computed per level
  with numpy too. `tests/test_listops_gen.py` checks that the two give the same distribution of lengths,
  depths, root arities and labels.

Deliberate difference: LRA de-duplicates with a Python `set` and splits the set's iteration order, which for
strings changes with PYTHONHASHSEED; here duplicates are dropped keeping the first occurrence and the split
follows generation order (itself i.i.d.), so a seed gives the same files on every run.

    bort lra generate-listops data/listops-long --train 96000 --val 2000 --test 2000 --seed 0
"""
from __future__ import annotations

import csv
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_write_text, atomic_write_with
from . import listops_tree as lt

__all__ = ["VALUE_P", "SPLIT_FILES", "ListOpsSpec", "sample_tree", "sample_reference", "Forest", "sample_forests",
           "forest_from_trees", "forest_lengths", "forest_labels", "forest_expressions", "generate_rows",
           "write_tsv", "write_listops_dir", "generate_listops_dir", "add_generate_args", "run_generate"]

VALUE_P = 0.25
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = ("Source", "Target")


@dataclass(frozen=True)
class ListOpsSpec:
    """The tree distribution and length window (LRA's defaults); `check()` validates it."""

    min_length: int = 500
    max_length: int = 2000
    max_depth: int = 10
    max_args: int = 10
    value_p: float = VALUE_P

    def check(self) -> "ListOpsSpec":
        """Return self, or raise `ValueError` naming the bad parameter and its valid values."""
        for name in ("min_length", "max_length", "max_depth", "max_args"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ListOps generator: {name} must be an integer, got {value!r}")
        if self.max_depth < 1:
            raise ValueError(f"ListOps generator: max_depth must be >= 1, got {self.max_depth}")
        if self.max_args < 2:
            raise ValueError(f"ListOps generator: max_args must be >= 2, got {self.max_args}")
        if not 0.0 <= self.value_p <= 1.0:
            raise ValueError(f"ListOps generator: value_p must be in [0, 1], got {self.value_p}")
        if self.min_length < 0 or self.max_length <= self.min_length + 1:
            raise ValueError(f"ListOps generator: the window min_length < length < max_length must hold some "
                             f"integer (min_length >= 0), got {self.min_length} < length < {self.max_length}")
        longest = self.longest()
        if self.min_length >= longest:
            raise ValueError(f"ListOps generator: no tree with max_depth {self.max_depth} and max_args "
                             f"{self.max_args} is longer than {longest}, so min_length {self.min_length} leaves "
                             f"nothing; valid min_length: 0..{longest - 1}")
        return self

    def longest(self) -> int:
        """The longest possible tree: every node above the last level an operator with max_args arguments."""
        total, nodes = 0, 1
        for _ in range(self.max_depth - 1):
            total += 2 * nodes
            nodes *= self.max_args
        return total + nodes


# --- the reference sampler ---------------------------------------------------------------------------------
def sample_tree(rng: random.Random, spec: ListOpsSpec, depth: int = 1) -> tuple[lt.Tree, int]:
    """One tree drawn node by node exactly as LRA's generator does, and its length (no length filter)."""
    r = rng.random() if depth < spec.max_depth else 1.0
    if r > spec.value_p:
        return rng.choice(lt.DIGITS), 1
    k = rng.randint(2, spec.max_args)
    args, total = [], 2
    for _ in range(k):
        sub, sub_length = sample_tree(rng, spec, depth + 1)
        args.append(sub)
        total += sub_length
    return lt.operator_node(rng.choice(lt.OPERATORS), args), total


def sample_reference(n: int, spec: ListOpsSpec, seed: int = 0) -> list[lt.Tree]:
    """`n` trees in the length window by plain rejection with `sample_tree` (no de-duplication): slow, the
    reference the fast sampler is tested against."""
    spec.check()
    rng, out = random.Random(seed), []
    while len(out) < n:
        tree, size = sample_tree(rng, spec)
        if spec.min_length < size < spec.max_length:
            out.append(tree)
    return out


# --- the fast sampler --------------------------------------------------------------------------------------
@dataclass
class Forest:
    """Trees stored level by level (breadth-first), the fast sampler's form. `arity[d]` holds every node at
    depth d+1 of every tree, grouped by tree in tree order, each group in breadth-first order (0 = a digit);
    `symbol[d]` the node's digit (0-9) or operator (index into `listops_tree.OPERATORS`). The children of the
    operators of one level are the next level's nodes, in order, `arity` nodes each."""

    arity: list[np.ndarray]
    symbol: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.arity[0]) if self.arity else 0


def forest_from_trees(trees: Sequence[lt.Tree]) -> Forest:
    """The `Forest` of tuple trees (`listops_tree` form): how real expressions enter the fast path."""
    arity, symbol = [], []
    level = list(trees)
    while level:
        a, s, nxt = [], [], []
        for node in level:
            if isinstance(node, str):
                if node not in lt.DIGITS:
                    raise ValueError(f"a ListOps argument must be a digit or an operator node, found {node!r}")
                a.append(0)
                s.append(int(node))
            else:
                op, args = lt.arguments(node)
                a.append(len(args))
                s.append(lt.OPERATORS.index(op))
                nxt.extend(args)
        arity.append(np.asarray(a, dtype=np.int64))
        symbol.append(np.asarray(s, dtype=np.int64))
        level = nxt
    return Forest(arity, symbol)


def _segment_starts(arity: np.ndarray) -> np.ndarray:
    """Start, in the next level, of each operator's children (operators only, in order)."""
    ops = arity[arity > 0]
    return np.cumsum(ops) - ops


def _bottom_up_sizes(forest: Forest, leaf: int, per_op: int, per_arg: int) -> list[np.ndarray]:
    """Per level and node: `leaf` for a digit, `per_op + per_arg·k + sum(children)` for an operator."""
    sizes: list[np.ndarray] = [np.empty(0)] * len(forest.arity)
    below = None
    for d in range(len(forest.arity) - 1, -1, -1):
        arity = forest.arity[d]
        size = np.full(arity.shape, leaf, dtype=np.int64)
        is_op = arity > 0
        if is_op.any():
            size[is_op] = per_op + per_arg * arity[is_op] + np.add.reduceat(below, _segment_starts(arity))
        sizes[d] = below = size
    return sizes


def forest_lengths(forest: Forest) -> np.ndarray:
    """The generator length of every tree (symbols other than parentheses)."""
    return _bottom_up_sizes(forest, 1, 2, 0)[0]


def forest_labels(forest: Forest) -> np.ndarray:
    """The value (0-9) of every tree, all operators of a level at once (segment reductions)."""
    below = None
    for d in range(len(forest.arity) - 1, -1, -1):
        arity, symbol = forest.arity[d], forest.symbol[d]
        value = symbol.copy()
        is_op = arity > 0
        if is_op.any():
            k = arity[is_op]
            starts = _segment_starts(arity)
            segment = np.repeat(np.arange(len(k)), k)
            ordered = below[np.lexsort((below, segment))]  # each operator's arguments, sorted
            # LRA's int(numpy.median): the two middle values (equal for odd k) averaged, truncated
            median = (ordered[starts + (k - 1) // 2] + ordered[starts + k // 2]) // 2
            results = np.stack([np.minimum.reduceat(below, starts), np.maximum.reduceat(below, starts),
                                median, np.add.reduceat(below, starts) % 10])
            value[is_op] = results[symbol[is_op], np.arange(len(k))]
        below = value
    return below


# Token codes of the serialisation: 0-9 digits, 10-13 operators, then "]", "(", ")".
_TOKENS = lt.DIGITS + lt.OPERATORS + (lt.CLOSE, "(", ")")
_CLOSE, _OPEN, _SHUT = 14, 15, 16
_TOKEN_STRINGS = np.array(_TOKENS, dtype=object)


def forest_expressions(forest: Forest) -> list[str]:
    """The bracketed token string of every tree, equal to `listops_tree.serialize` of its tuple form.

    An operator with children c1..ck serialises as `(`×(k+1), the operator, then each child followed by `)`,
    then `] )`: 2k + 4 tokens plus its children's. Sizes go bottom-up, start offsets top-down, and every
    token is scattered into one code buffer.
    """
    sizes = _bottom_up_sizes(forest, 1, 4, 2)
    total = int(sizes[0].sum())
    buf = np.full(total, -1, dtype=np.int64)
    starts = np.cumsum(sizes[0]) - sizes[0]
    for d, (arity, symbol) in enumerate(zip(forest.arity, forest.symbol)):
        size = sizes[d]
        is_op = arity > 0
        buf[starts[~is_op]] = symbol[~is_op]
        if not is_op.any():
            break
        s, k, end = starts[is_op], arity[is_op], starts[is_op] + size[is_op]
        opens = np.repeat(s, k + 1) + _ranks(k + 1)
        buf[opens] = _OPEN
        buf[s + k + 1] = 10 + symbol[is_op]
        buf[end - 2] = _CLOSE
        buf[end - 1] = _SHUT
        # Children: the first starts after the operator, each next one after its predecessor and a ")".
        child = sizes[d + 1]
        step = child + 1
        before = np.cumsum(step) - step  # exclusive running sum over the whole level
        within = before - np.repeat(before[_segment_starts(arity)], k)  # ... restarted at each operator
        child_starts = np.repeat(s + k + 2, k) + within
        buf[child_starts + child] = _SHUT
        starts = child_starts
    if (buf < 0).any():
        raise AssertionError("forest serialisation left a gap (inconsistent arities)")
    return _decode(buf, sizes[0])


def _decode(codes: np.ndarray, sizes: np.ndarray) -> list[str]:
    """Token codes -> one space-separated string per tree (`sizes` tokens each)."""
    # An object-array gather and str.join measured ~3x faster than assembling ASCII bytes in numpy.
    tokens = _TOKEN_STRINGS[codes].tolist()
    ends = np.cumsum(sizes).tolist()
    return [" ".join(tokens[a:b]) for a, b in zip([0] + ends[:-1], ends)]


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, …, c-1 for every c in `counts`, concatenated."""
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - counts, counts)


@dataclass
class _Level:
    """The nodes of one depth for a batch of candidates, grouped by candidate in breadth-first order."""

    owner: np.ndarray  # candidate index of each node (non-decreasing)
    arity: np.ndarray  # arguments of each node, 0 for a digit


def _draw_shapes(rng: np.random.Generator, count: int, spec: ListOpsSpec) -> tuple[list[_Level], np.ndarray]:
    """Shapes of `count` candidate trees, level by level; returns the levels and each candidate's length
    (-1 for candidates dropped because they could no longer be shorter than `max_length`)."""
    lengths = np.zeros(count, dtype=np.int64)
    alive = np.ones(count, dtype=bool)
    owner = np.arange(count)
    levels: list[_Level] = []
    for level in range(1, spec.max_depth + 1):
        if owner.size == 0:
            break
        if level < spec.max_depth:
            is_op = rng.random(owner.size) < spec.value_p
        else:
            is_op = np.zeros(owner.size, dtype=bool)
        arity = np.zeros(owner.size, dtype=np.int64)
        arity[is_op] = rng.integers(2, spec.max_args + 1, size=int(is_op.sum()))
        # A digit adds 1, an operator 2 (itself and its "]") plus its arguments, counted on later levels.
        lengths += np.bincount(owner, weights=np.where(is_op, 2, 1), minlength=count).astype(np.int64)
        levels.append(_Level(owner, arity))
        owner = np.repeat(owner, arity)
        # Each pending node adds at least 1: drop candidates that can no longer be short enough.
        bound = lengths + np.bincount(owner, minlength=count)
        dead = alive & (bound >= spec.max_length)
        if dead.any():
            alive &= ~dead
            owner = owner[alive[owner]]
    lengths[~alive] = -1
    return levels, lengths


def sample_forests(n: int, spec: ListOpsSpec, rng: np.random.Generator, batch: int | None = None,
                   max_candidates: int = 20_000_000) -> Iterator[Forest]:
    """`Forest`s holding `n` trees of the length window in all (no de-duplication), drawn level-wise in numpy
    batches (module doc). `batch` fixes the candidates per batch (default: sized from the acceptance rate so
    far). Raises `ValueError` when `max_candidates` draws gave no tree (a window the distribution almost
    never reaches)."""
    spec.check()
    made, drawn, hits = 0, 0, 0
    while made < n:
        want = n - made
        # ~8% of candidates land in LRA's window; aim for one batch, within memory-friendly bounds.
        size = batch or int(min(100_000, max(1_000, 1.3 * want * drawn / hits if hits else 20_000)))
        levels, lengths = _draw_shapes(rng, size, spec)
        drawn += size
        accepted = np.flatnonzero((lengths > spec.min_length) & (lengths < spec.max_length))
        hits += len(accepted)
        if hits == 0 and drawn >= max_candidates:
            raise ValueError(f"ListOps generator: {drawn} candidate trees gave none with {spec.min_length} < "
                             f"length < {spec.max_length} (max_depth {spec.max_depth}, max_args {spec.max_args}); "
                             "widen the window")
        accepted = accepted[:want]
        if len(accepted) == 0:
            continue
        keep = np.zeros(size, dtype=bool)
        keep[accepted] = True
        arity = [lvl.arity[keep[lvl.owner]] for lvl in levels]
        arity = [a for a in arity if a.size]
        # Symbols do not affect the length: drawn only now, for the accepted shapes.
        symbol = [np.where(a > 0, rng.integers(0, len(lt.OPERATORS), size=a.size),
                           rng.integers(0, len(lt.DIGITS), size=a.size)) for a in arity]
        made += len(accepted)
        yield Forest(arity, symbol)


# --- rows and files ----------------------------------------------------------------------------------------
def generate_rows(sizes: dict[str, int], spec: ListOpsSpec | None = None, seed: int = 0, progress: bool = False,
                  max_stalls: int = 20) -> dict[str, list[tuple[str, int]]]:
    """Distinct (expression, label) rows for each split of `sizes` (e.g. {"train": 96000, "val": 2000,
    "test": 2000}), split in generation order. Raises `ValueError` if `max_stalls` successive batches add no
    new expression (a window with fewer distinct trees than asked for)."""
    spec = (spec or ListOpsSpec()).check()
    for name, count in sizes.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"ListOps generator: the {name} size must be a non-negative integer, got {count!r}")
    needed = sum(sizes.values())
    rng = np.random.default_rng(seed)
    seen: dict[str, int] = {}  # insertion-ordered: the split follows generation order
    stalls = 0
    with tqdm(total=needed, unit="row", desc="listops", disable=not progress, leave=False) as bar:
        while len(seen) < needed:
            before = len(seen)
            for forest in sample_forests(needed - len(seen), spec, rng):
                for expression, label in zip(forest_expressions(forest), forest_labels(forest).tolist()):
                    seen.setdefault(expression, label)
            bar.update(len(seen) - before)
            stalls = 0 if len(seen) > before else stalls + 1
            if stalls >= max_stalls:
                raise ValueError(f"ListOps generator: only {len(seen)} distinct expressions found with "
                                 f"{spec.min_length} < length < {spec.max_length}, {needed} asked for; widen the "
                                 "window or ask for fewer rows")
    rows = list(seen.items())
    out, start = {}, 0
    for name, count in sizes.items():
        out[name], start = rows[start:start + count], start + count
    return out


def write_tsv(path: str | Path, rows: Sequence[tuple[str, int]]) -> Path:
    """Write rows in LRA's layout, atomically: a `Source<TAB>Target` header, then `expression<TAB>label`,
    written by Python's csv module with a tab delimiter (so lines end in `\\r\\n`, as LRA's files)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(HEADER)
            writer.writerows((expression, int(label)) for expression, label in rows)

    atomic_write_with(path, write)
    return Path(path)


def write_listops_dir(out_dir: str | Path, splits: dict[str, Sequence[tuple[str, int]]],
                      info: dict | None = None) -> dict[str, Path]:
    """Write `basic_train.tsv`, `basic_val.tsv`, `basic_test.tsv` (the directory `bort lra listops --data`
    reads) and, with `info`, `generation.json`; returns the paths by split name."""
    unknown = sorted(set(splits) - set(SPLIT_FILES))
    if unknown:
        raise ValueError(f"unknown ListOps split(s) {', '.join(unknown)}; valid: {', '.join(SPLIT_FILES)}")
    out = Path(out_dir)
    paths = {name: write_tsv(out / SPLIT_FILES[name], rows) for name, rows in splits.items()}
    if info is not None:
        atomic_write_text(out / "generation.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return paths


def generate_listops_dir(out_dir: str | Path, train: int, val: int, test: int, seed: int = 0,
                         spec: ListOpsSpec | None = None, progress: bool = False) -> dict:
    """Generate and write a ListOps directory; returns what `generation.json` records (settings, sizes,
    label counts, length range, seconds)."""
    spec = (spec or ListOpsSpec()).check()
    start = time.perf_counter()
    splits = generate_rows({"train": train, "val": val, "test": test}, spec, seed, progress)
    lengths = [lt.length(lt.parse(e)) for e, _ in splits["val"][:200]]  # a spot check of the window
    if lengths and not all(spec.min_length < n < spec.max_length for n in lengths):
        raise AssertionError("generated rows outside the length window")
    info = {"generator": "bort.lra.listops_gen", "seed": seed, **asdict(spec),
            "sizes": {name: len(rows) for name, rows in splits.items()},
            "label_counts": {name: dict(sorted(Counter(label for _, label in rows).items()))
                             for name, rows in splits.items()},
            "generate_seconds": round(time.perf_counter() - start, 3)}
    write_listops_dir(out_dir, splits, info)
    return info
