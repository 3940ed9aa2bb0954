"""Generate Pathfinder images (Linsley et al. 2018; LRA's pathfinder32) in the LRA release's layout.

    bort lra generate-pathfinder data/pathfinder32 --count 2000 --seed 0
    python -m bort.lra.pathfinder_gen data/pathfinder32 --count 2000 --difficulty curv_baseline
    bort lra pathfinder32 --data data/pathfinder32 --attention yoso

Written from the papers' description (Linsley et al. 2018, "Learning long-range spatial dependencies with
horizontal gated recurrent units"; LRA, Tay et al. 2021), not from their code. Each 32x32 image holds two
long curvy paths of `contour_length` dashes and a few short distractor paths, all made of short dashes
(`dash_length` pixels on, `dash_gap` off: LRA's 32-pixel settings use paddles of length 2 with margin 1).
Two marker dots (3x3 squares) sit on path ends. Positive (label 1): both dots on the two ends of one long
path. Negative (0): one dot on an end of each long path. The geometry is drawn first and the label then only
decides where the dots go, so nothing but connectivity separates the classes (not the number, length or
density of the paths). The two long paths' four ends are at least `min_marker_distance` pixels apart.

How a path is drawn: a turtle takes unit steps, turning by a uniform angle in ±`max_turn` each step; the
rounded positions form a chain of 8-neighbouring pixels, and the chain is lit in the dash pattern. A path
never comes closer than `separation` = `dash_gap` + 2 pixels (Chebyshev distance) to another path or to a
marker square, and the canvas keeps a 1-pixel border. No anti-aliasing (LRA's images are anti-aliased):
hard pixels are what make the label checkable on the image alone.

Why the label can be checked on the rendered image (`check_label`): within a path, consecutive lit pixels
are at most `dash_gap` + 1 apart (Chebyshev), while pixels of different paths are at least `dash_gap` + 2
apart. So linking lit pixels that are within `dash_gap` + 1 of each other gives exactly one component per
path (its marker squares included), and the dots (the only pixels at `marker_value`) share a component
exactly when one path joins them. Plain 8-connectivity would not: the gaps between dashes cut it.

Output (`write_pathfinder`): `<out>/<difficulty>/imgs/<k>/sample_<i>.png` and `<out>/<difficulty>/metadata/<k>.npy`
(text, one line per image: `imgs/<k> sample_<i>.png <i> <label>` and the generator settings), `images_per_file`
images per folder, built in a temporary directory beside it and renamed into place at the end, so a reader
never sees a half-written data set. Every image comes from `numpy.random.default_rng([seed, index])`, so the
data set is the same whatever the folder size; the labels are a seeded balanced permutation.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write_text
from .pathfinder import DIFFICULTIES, METADATA_DIR

__all__ = ["PathParams", "DIFFICULTY_PARAMS", "params_for", "PathfinderSample", "generate_sample",
           "generate_pathfinder", "write_pathfinder", "link_components", "check_label", "add_generate_args",
           "run_generate", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PathParams:
    """The generator's settings (see the module doc). Distractors default to LRA's 32-pixel recipe:
    `contour_length // 3` dashes each, `20 // distractor_length` of them."""

    side: int = 32
    contour_length: int = 14
    distractor_length: int | None = None
    num_distractors: int | None = None
    dash_length: int = 2
    dash_gap: int = 1
    max_turn: float = 0.5
    marker_radius: int = 1
    min_marker_distance: float = 7.0
    path_value: int = 191   # LRA's 0.75 paddle contrast
    marker_value: int = 255
    padding: int = 1
    max_tries: int = 200

    @property
    def link(self) -> int:
        """Largest Chebyshev distance between consecutive lit pixels of one path."""
        return self.dash_gap + 1

    @property
    def separation(self) -> int:
        """Smallest Chebyshev distance between pixels of different paths."""
        return self.dash_gap + 2

    def resolved(self) -> "PathParams":
        """These settings with the distractor defaults filled in, checked."""
        d_len = self.distractor_length if self.distractor_length is not None else max(1, self.contour_length // 3)
        n_dis = self.num_distractors if self.num_distractors is not None else 20 // d_len
        out = replace(self, distractor_length=d_len, num_distractors=n_dis)
        for name in ("side", "contour_length", "distractor_length", "dash_length", "max_tries"):
            if getattr(out, name) < 1:
                raise ValueError(f"pathfinder generator: {name} must be >= 1, got {getattr(out, name)}")
        if out.dash_gap < 1 or out.num_distractors < 0 or out.marker_radius < 0:
            raise ValueError("pathfinder generator: dash_gap must be >= 1 (paths are dashed), num_distractors and "
                             "marker_radius >= 0")
        if not 0 < out.path_value < out.marker_value <= 255:
            raise ValueError(f"pathfinder generator: need 0 < path_value < marker_value <= 255, got "
                             f"{out.path_value} and {out.marker_value}")
        return out


# The release's difficulty directories: only the long paths' length changes.
DIFFICULTY_PARAMS = {DIFFICULTIES["easy"]: 6, DIFFICULTIES["intermediate"]: 9, DIFFICULTIES["hard"]: 14}


def params_for(difficulty: str, **overrides: object) -> PathParams:
    """Generator settings for a release difficulty name (curv_baseline, curv_contour_length_9/14) or an alias
    (easy, intermediate, hard), with `overrides` applied."""
    name = DIFFICULTIES.get(difficulty, difficulty)
    if name not in DIFFICULTY_PARAMS:
        raise ValueError(f"unknown Pathfinder difficulty {difficulty!r}; valid: "
                         f"{', '.join(DIFFICULTY_PARAMS)} (or {', '.join(DIFFICULTIES)})")
    return PathParams(contour_length=DIFFICULTY_PARAMS[name], **overrides).resolved()  # type: ignore[arg-type]


# --- drawing -----------------------------------------------------------------------------------------------
@dataclass
class PathfinderSample:
    """One image (side x side uint8), its label, the marker centres (row, col) and the paths' pixel chains."""

    image: np.ndarray
    label: int
    markers: tuple[tuple[int, int], tuple[int, int]]
    paths: list[np.ndarray]
    distractors_placed: int


def _square(center: Sequence[int], radius: int) -> np.ndarray:
    r, c = center
    offsets = np.arange(-radius, radius + 1)
    return np.array([(r + dr, c + dc) for dr in offsets for dc in offsets])


class _Canvas:
    """Which pixels a new path may still use: those at least `separation` from every path drawn so far.
    (Plain Python sets and ints: the walk asks about one pixel at a time, where numpy calls cost more.)"""

    def __init__(self, p: PathParams) -> None:
        self.p = p
        self.blocked: set[tuple[int, int]] = set()

    def inside(self, r: int, c: int, margin: int = 0) -> bool:
        lo, hi = self.p.padding + margin, self.p.side - 1 - self.p.padding - margin
        return lo <= r <= hi and lo <= c <= hi

    def free(self, pixels: np.ndarray | Sequence[tuple[int, int]]) -> bool:
        return not any((int(r), int(c)) in self.blocked for r, c in pixels)

    def occupy(self, pixels: np.ndarray) -> None:
        reach = self.p.separation - 1
        for r, c in pixels:
            self.blocked.update((int(r) + dr, int(c) + dc) for dr in range(-reach, reach + 1)
                                for dc in range(-reach, reach + 1))


# Walk iterations allowed per chain pixel before a walk gives up (a fresh start is cheaper than a long search).
_BUDGET = 4


def _walk(canvas: _Canvas, n_pixels: int, rng: np.random.Generator, end_margin: int) -> np.ndarray | None:
    """A chain of `n_pixels` 8-neighbouring pixels on free canvas, or None when the walk gets stuck.

    When no turn within ±max_turn leads on, the walk backs up a few pixels and tries again (a bounded
    depth-first search), so long paths fit on a crowded 32x32 canvas without sharper turns."""
    p = canvas.p
    lo, hi = p.padding + end_margin, p.side - 1 - p.padding - end_margin
    starts = [(r, c) for r in range(lo, hi + 1) for c in range(lo, hi + 1) if (r, c) not in canvas.blocked]
    if not starts:
        return None
    r0, c0 = starts[int(rng.integers(len(starts)))]
    centre = (p.side - 1) / 2
    # Head roughly inwards, so a path starting near the border does not leave at once.
    heading = math.atan2(centre - c0, centre - r0) + rng.uniform(-math.pi / 2, math.pi / 2)
    chain = [(r0, c0)]
    states = [(float(r0), float(c0), heading)]  # the turtle's position and heading on reaching each chain pixel
    far = 2 * p.separation  # self-avoidance applies to chain pixels this many steps back or more
    reach, blocked = p.separation - 1, canvas.blocked
    near: dict[tuple[int, int], int] = {}  # pixels too close to the chain's older part (counts, for backing up)

    def mark(pixel: tuple[int, int], delta: int) -> None:
        for dr in range(-reach, reach + 1):
            for dc in range(-reach, reach + 1):
                key = (pixel[0] + dr, pixel[1] + dc)
                near[key] = near.get(key, 0) + delta

    budget = _BUDGET * n_pixels
    turns = rng.uniform(-p.max_turn, p.max_turn, size=8 * budget + 8).tolist()
    while len(chain) < n_pixels:
        budget -= 1
        if budget < 0:
            return None
        y, x, heading = states[-1]
        last = chain[-1]
        moved = False
        for _ in range(8):
            turn = heading + turns.pop()
            ny, nx = y + math.sin(turn), x + math.cos(turn)
            pix = (int(round(ny)), int(round(nx)))
            if pix == last:
                states[-1] = (ny, nx, turn)  # still inside the same pixel: keep walking
                y, x, heading = ny, nx, turn
                continue
            if max(abs(pix[0] - last[0]), abs(pix[1] - last[1])) != 1:
                continue
            if not canvas.inside(*pix) or pix in blocked:
                continue
            if near.get(pix, 0) > 0:
                continue
            chain.append(pix)
            states.append((ny, nx, turn))
            if len(chain) > far:
                mark(chain[-1 - far], 1)
            moved = True
            break
        if not moved:
            back = min(len(chain) - 1, int(rng.integers(1, 6)))
            if back == 0:
                return None
            for i in range(len(chain) - back, len(chain)):
                if i >= far:
                    mark(chain[i - far], -1)
            del chain[-back:], states[-back:]
    if end_margin and not (canvas.inside(*chain[0], end_margin) and canvas.inside(*chain[-1], end_margin)):
        return None
    return np.asarray(chain)


def _chain_pixels(dashes: int, p: PathParams) -> int:
    return dashes * (p.dash_length + p.dash_gap) - p.dash_gap


def _lit(chain: np.ndarray, p: PathParams) -> np.ndarray:
    period = p.dash_length + p.dash_gap
    return chain[np.arange(len(chain)) % period < p.dash_length]


def _draw_geometry(p: PathParams, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], int] | None:
    canvas = _Canvas(p)
    contours: list[np.ndarray] = []
    for _ in range(2):
        for _attempt in range(20):
            chain = _walk(canvas, _chain_pixels(p.contour_length, p), rng, end_margin=p.marker_radius)
            if chain is None:
                continue
            squares = np.concatenate([_square(chain[0], p.marker_radius), _square(chain[-1], p.marker_radius)])
            if not canvas.free(squares):
                continue
            canvas.occupy(np.concatenate([chain, squares]))
            contours.append(chain)
            break
        else:
            return None
    ends = [c[i] for c in contours for i in (0, -1)]
    if min(np.hypot(*(a - b)) for i, a in enumerate(ends) for b in ends[i + 1:]) < p.min_marker_distance:
        return None
    distractors: list[np.ndarray] = []
    for _ in range(p.num_distractors or 0):
        for _attempt in range(20):
            chain = _walk(canvas, _chain_pixels(p.distractor_length or 1, p), rng, end_margin=0)
            if chain is not None:
                canvas.occupy(chain)
                distractors.append(chain)
                break
    return contours, distractors, len(distractors)


def generate_sample(label: int, rng: np.random.Generator, params: PathParams | None = None) -> PathfinderSample:
    """One image with the given label (1: the dots are joined by one path), drawn with `rng`."""
    p = (params or PathParams()).resolved()
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    for _ in range(p.max_tries):
        drawn = _draw_geometry(p, rng)
        if drawn is not None:
            break
    else:
        raise RuntimeError(f"could not place two paths of {p.contour_length} dashes on a {p.side}x{p.side} canvas in "
                           f"{p.max_tries} tries; use shorter paths, fewer distractors or a larger max_turn")
    contours, distractors, placed = drawn
    image = np.zeros((p.side, p.side), dtype=np.uint8)
    for chain in contours + distractors:
        lit = _lit(chain, p)
        image[lit[:, 0], lit[:, 1]] = p.path_value
    if label == 1:
        path = contours[int(rng.integers(2))]
        markers = (path[0], path[-1])
    else:
        markers = (contours[0][[0, -1][int(rng.integers(2))]], contours[1][[0, -1][int(rng.integers(2))]])
    for center in markers:
        square = _square(center, p.marker_radius)
        image[square[:, 0], square[:, 1]] = p.marker_value
    return PathfinderSample(image, label, (tuple(markers[0]), tuple(markers[1])), contours + distractors, placed)


# --- the independent check ---------------------------------------------------------------------------------
def link_components(image: np.ndarray, link: int) -> np.ndarray:
    """Component id per pixel (-1 where dark) when lit pixels within Chebyshev distance `link` are joined."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    coords = np.argwhere(image > 0)
    labels = np.full(image.shape, -1, dtype=np.int64)
    if len(coords) == 0:
        return labels
    pairs = cKDTree(coords).query_pairs(r=link + 1e-9, p=np.inf, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(coords),) * 2)
    _, comp = connected_components(graph, directed=False)
    labels[coords[:, 0], coords[:, 1]] = comp
    return labels


def check_label(image: np.ndarray, link: int = 2, marker_value: int = 255) -> int:
    """The label read off a rendered image alone: 1 when the two marker squares (the pixels at
    `marker_value`, 8-connected) lie in one component of lit pixels linked within `link` (module doc)."""
    from scipy import ndimage

    markers, count = ndimage.label(image == marker_value, structure=np.ones((3, 3)))
    if count != 2:
        raise ValueError(f"expected 2 marker blobs (pixels at {marker_value}), found {count}")
    comp = link_components(image, link)
    first = {int(c) for c in comp[markers == 1]}
    second = {int(c) for c in comp[markers == 2]}
    return int(bool(first & second))


# --- data sets ---------------------------------------------------------------------------------------------
def generate_pathfinder(count: int, seed: int = 0, params: PathParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (count, side, side) uint8 and their labels (balanced: a seeded permutation of
    count//2 positives and the rest negatives); image i is drawn with default_rng([seed, i])."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    p = (params or PathParams()).resolved()
    labels = np.random.default_rng([seed, 2**31]).permutation(np.arange(count) < count // 2).astype(np.int64)
    images = np.empty((count, p.side, p.side), dtype=np.uint8)
    for i in range(count):
        images[i] = generate_sample(int(labels[i]), np.random.default_rng([seed, i]), p).image
    return images, labels


def _metadata_line(k: int, i: int, label: int, p: PathParams) -> str:
    settings = (p.max_turn, p.contour_length, p.distractor_length, p.dash_length, p.dash_gap, p.num_distractors)
    return " ".join([f"imgs/{k}", f"sample_{i}.png", str(i), str(label)] + [str(v) for v in settings])


def write_pathfinder(out: str | os.PathLike, count: int, difficulty: str = DIFFICULTIES["hard"], seed: int = 0,
                     images_per_file: int = 1000, overwrite: bool = False, params: PathParams | None = None) -> Path:
    """Write `count` images as `<out>/<difficulty>/{imgs,metadata}` (module doc); returns that directory.

    `params` None takes the difficulty's settings (`params_for`). An existing difficulty directory is an error
    unless `overwrite`."""
    from PIL import Image

    if images_per_file < 1:
        raise ValueError(f"images_per_file must be >= 1, got {images_per_file}")
    p = params.resolved() if params is not None else params_for(difficulty)
    name = DIFFICULTIES.get(difficulty, difficulty)
    final = Path(out) / name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True / --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    images, labels = generate_pathfinder(count, seed, p)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    try:
        (tmp / METADATA_DIR).mkdir()
        for k, start in enumerate(range(0, count, images_per_file)):
            folder = tmp / "imgs" / str(k)
            folder.mkdir(parents=True)
            lines = []
            for i, index in enumerate(range(start, min(start + images_per_file, count))):
                Image.fromarray(images[index], mode="L").save(folder / f"sample_{i}.png", format="PNG")
                lines.append(_metadata_line(k, i, int(labels[index]), p))
            atomic_write_text(tmp / METADATA_DIR / f"{k}.npy", "\n".join(lines) + "\n")
        settings = dict(asdict(p), difficulty=name, count=count, seed=seed, images_per_file=images_per_file)
        atomic_write_text(tmp / "generator.json", json.dumps(settings, indent=2, sort_keys=True) + "\n")
        old = None
        if final.exists():
            old = final.parent / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


if __name__ == "__main__":  # `python -m bort.lra.pathfinder_gen OUT_DIR …`: the flags of `bort lra generate-pathfinder`
    from .cli import main_pathfinder

    raise SystemExit(main_pathfinder())
