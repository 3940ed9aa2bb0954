"""LRA Image and Pathfinder: the CIFAR-10 pickle reader (layout, grayscale, hostile files), scikit-learn's digits
as real offline data (a tiny run learns them), the Pathfinder reader on LRA's layout, and the generator whose
labels are checked on the rendered images alone."""
from __future__ import annotations

import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bort.data.tasks.base import TaskDataError
from bort.lra import image as lra_image
from bort.lra import pathfinder, pathfinder_gen
from bort.lra.data import load_splits
from bort.lra.runner import LRARecipe, LRASettings, run_lra
from bort.lra.tasks import get_task


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)


NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


# --- CIFAR-10 python batches -----------------------------------------------------------------------------------
def _gray_reference(planar: np.ndarray) -> np.ndarray:
    """TensorFlow's rgb_to_grayscale on uint8, written out in float64: floor(255.5 · Σ w_c · x_c / 255)."""
    r, g, b = (planar[:, i * 1024:(i + 1) * 1024].astype(np.float64) / 255.0 for i in range(3))
    return np.floor(255.5 * (0.2989 * r + 0.5870 * g + 0.1140 * b))


def _write_batch(path: Path, data: np.ndarray, labels: list, **extra: object) -> None:
    """A batch as the CIFAR-10 python version stores it: a pickled dict with byte-string keys."""
    batch = {b"batch_label": b"synthetic", b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(data))]}
    batch.update(extra)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A small CIFAR-10 layout: five training batches of 20 images and a test batch of 10 (random pixels)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = rng.integers(0, 256, size=(110, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=110)
    for i, name in enumerate(lra_image.CIFAR_TRAIN_FILES):
        _write_batch(root / name, data[20 * i:20 * (i + 1)], labels[20 * i:20 * (i + 1)].tolist())
    _write_batch(root / "test_batch", data[100:], labels[100:].tolist())
    return root, data, labels


def test_grayscale_matches_tensorflow_rule_and_channel_planar_layout() -> None:
    rng = np.random.default_rng(1)
    planar = rng.integers(0, 256, size=(64, 3072), dtype=np.uint8)
    gray = lra_image.rgb_to_gray(planar).astype(np.float64)
    exact = _gray_reference(planar)
    # float32 (ours, as TF) and float64 (the reference) can differ only where 255.5·y is within rounding of an integer.
    value = 255.5 * (0.2989 * planar[:, :1024] + 0.5870 * planar[:, 1024:2048] + 0.1140 * planar[:, 2048:]) / 255.0
    clear = np.abs(value - np.round(value)) > 1e-3
    assert clear.mean() > 0.99 and np.array_equal(gray[clear], exact[clear])
    assert np.abs(gray - exact).max() <= 1
    # Plane order and row-major pixels: pure red at (row 3, col 5) lights only pixel 3·32+5, at floor(0.2989·255.5).
    one = np.zeros((1, 3072), dtype=np.uint8)
    one[0, 3 * 32 + 5] = 255
    out = lra_image.rgb_to_gray(one)[0]
    assert out[3 * 32 + 5] == 76 and np.count_nonzero(out) == 1
    assert lra_image.rgb_to_gray(np.full((1, 3072), 255, np.uint8)).min() == 255


def test_cifar_reader_counts_split_and_pixels(cifar_dir) -> None:
    root, data, labels = cifar_dir
    task = get_task("image")
    for given in (root, root.parent):  # the batches directory or its parent
        splits = load_splits(task, given)
        assert (len(splits.train), len(splits.dev), len(splits.test)) == (90, 10, 10)
    # LRA's 90/10 train/dev split of the training set, in file order; the test batch as it is.
    assert np.array_equal(splits.train.ids, lra_image.rgb_to_gray(data[:90]))
    assert np.abs(splits.train.ids.astype(int) - _gray_reference(data[:90])).max() <= 1
    assert np.array_equal(splits.dev.ids, lra_image.rgb_to_gray(data[90:100]))
    assert np.array_equal(splits.test.ids, lra_image.rgb_to_gray(data[100:]))
    assert splits.train.labels == labels[:90].tolist() and splits.test.labels == labels[100:].tolist()
    assert splits.vocab[splits.pad_id] == "<pad>" and len(splits.vocab) == 257 and splits.train.lengths[0] == 1024


def test_cifar_tarball_reads_like_the_directory(cifar_dir, tmp_path: Path) -> None:
    root, _, _ = cifar_dir
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(root, arcname="cifar-10-batches-py")
    a, b = load_splits(get_task("image"), root), load_splits(get_task("image"), tarball)
    for split in ("train", "dev", "test"):
        assert np.array_equal(getattr(a, split).ids, getattr(b, split).ids)
        assert getattr(a, split).labels == getattr(b, split).labels


def test_cifar_bad_files_are_named(cifar_dir, tmp_path: Path) -> None:
    root, data, labels = cifar_dir
    task = get_task("image")
    (root / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_splits(task, root)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_splits(task, tmp_path / "nowhere")
    _write_batch(root / "test_batch", data[:3, :3000], [1, 2, 3])
    with pytest.raises(TaskDataError, match=r"test_batch.*\(N, 3072\)"):
        load_splits(task, root)
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(TaskDataError, match="test_batch: not a readable CIFAR-10"):
        load_splits(task, root)
    with open(root / "test_batch", "wb") as handle:
        pickle.dump({b"data": data[:2]}, handle)
    with pytest.raises(TaskDataError, match="lacks 'labels'"):
        load_splits(task, root)


def test_cifar_bad_label_names_record_or_is_skipped(cifar_dir) -> None:
    root, data, labels = cifar_dir
    bad = labels[100:].tolist()
    bad[7] = 10
    _write_batch(root / "test_batch", data[100:], bad)
    with pytest.raises(TaskDataError, match=r"test_batch, record 7: label 10 is not an integer 0-9"):
        load_splits(get_task("image"), root)
    splits = load_splits(get_task("image"), root, skip_bad_rows=True)
    assert len(splits.test) == 9 and [str(r).endswith("record 7: label 10 is not an integer 0-9")
                                      for r in splits.bad_rows] == [True]
    keep = [i for i in range(10) if i != 7]
    assert np.array_equal(splits.test.ids, lra_image.rgb_to_gray(data[100:][keep]))


class _Hostile:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_pickle_cannot_run_code(cifar_dir, tmp_path: Path) -> None:
    root, _, _ = cifar_dir
    target = tmp_path / "pwned"
    with open(root / "test_batch", "wb") as handle:
        pickle.dump({b"data": _Hostile(str(target)), b"labels": []}, handle, protocol=2)
    with pytest.raises(TaskDataError, match="refusing to load"):
        load_splits(get_task("image"), root)
    assert not target.exists()


# --- scikit-learn digits (real data, offline) -----------------------------------------------------------------
def test_digits_alias_counts_scaling_and_split() -> None:
    from sklearn.datasets import load_digits

    real = load_digits()
    splits = load_splits(get_task("image"), "digits")
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (1437, 180, 180)
    ids = np.concatenate([splits.train.ids, splits.dev.ids, splits.test.ids])
    assert ids.shape == (1797, 64) and ids.dtype == np.uint8
    assert set(np.unique(ids)) <= {int(np.floor(k * 255 / 16 + 0.5)) for k in range(17)}
    assert ids.max() == 255 and ids.min() == 0
    # The scaling is invertible: every row is one of sklearn's images, each used once, with its own label.
    back = np.round(ids.astype(np.float64) * 16 / 255).astype(int)
    rows = {tuple(r): int(t) for r, t in zip(real.data.astype(int), real.target)}
    labels = splits.train.labels + splits.dev.labels + splits.test.labels
    assert [rows[tuple(r)] for r in back] == labels
    assert len({tuple(r) for r in back}) == len({tuple(r) for r in real.data.astype(int)})
    other = load_splits(get_task("image"), "digits", split_seed=1)
    assert other.test.labels != splits.test.labels


def test_digits_tiny_run_learns_above_majority(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    summary = run_lra(LRASettings(task="image", data="digits", output_dir=str(out), max_steps=150, batch_size=32,
                                  lr=2e-3, warmup_ratio=0.1, eval_interval=50, progress=False,
                                  model_overrides=NO_DROPOUT))
    # About 0.3 test accuracy after 150 steps (majority class: 0.08); dev picks the checkpoint, test scores it.
    assert summary["test_accuracy"] > 2 * summary["majority_accuracy"]
    assert summary["sizes"] == {"train": 1437, "dev": 180, "test": 180}
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] == summary["test_accuracy"] and (out / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("mechanism,params", [("yoso", None), ("bigbird", {"block": 16}), ("longformer", None),
                                              ("dam_s", None)])
def test_image_runs_with_other_mechanisms(mechanism: str, params) -> None:
    from bort.attention import available_attention

    if mechanism not in available_attention():
        pytest.skip(f"attention {mechanism!r} is not registered in this tree")
    trainer = LRARecipe(LRASettings(task="image", data="digits", output_dir=None, attention=mechanism,
                                    attention_params=params, max_steps=2, batch_size=8, eval_interval=2,
                                    eval_batch_size=200, progress=False)).build()
    trainer.train_steps(2)
    assert trainer.history and 0.0 <= trainer.history[-1]["dev_accuracy"] <= 1.0
    assert all(np.isfinite(s) for s in trainer.step_seconds)


# --- the Pathfinder generator ------------------------------------------------------------------------------------
def _eight_connected_label(img: np.ndarray, marker: int = 255) -> int:
    from scipy import ndimage

    markers, _ = ndimage.label(img == marker, structure=np.ones((3, 3)))
    comp, _ = ndimage.label(img > 0, structure=np.ones((3, 3)))
    return int(bool(set(comp[markers == 1].tolist()) & set(comp[markers == 2].tolist())))


@pytest.mark.parametrize("difficulty", ["curv_baseline", "curv_contour_length_14"])
def test_generator_labels_hold_on_the_rendered_images(difficulty: str) -> None:
    p = pathfinder_gen.params_for(difficulty)
    images, labels = pathfinder_gen.generate_pathfinder(40, seed=3, params=p)
    assert labels.sum() == 20 and images.shape == (40, 32, 32)
    checked = [pathfinder_gen.check_label(img, p.link, p.marker_value) for img in images]
    assert checked == labels.tolist()
    # The paths really are dashed: plain 8-connectivity loses most positives' connection.
    eight = [_eight_connected_label(img) for img, y in zip(images, labels) if y == 1]
    assert sum(eight) < len(eight) // 2
    # Pixel values: background, path, markers only; two 3x3 markers.
    assert set(np.unique(images).tolist()) == {0, p.path_value, p.marker_value}


def test_generator_geometry_guarantees_the_check() -> None:
    """What makes `check_label` valid, measured on the drawn paths: lit pixels of one path within `link`,
    different paths at least `separation` apart (Chebyshev), and the label changes only where the dots go."""
    p = pathfinder_gen.params_for("hard")
    for seed in range(6):
        pos = pathfinder_gen.generate_sample(1, np.random.default_rng(seed), p)
        neg = pathfinder_gen.generate_sample(0, np.random.default_rng(seed), p)
        assert all(np.array_equal(a, b) for a, b in zip(pos.paths, neg.paths)) and len(pos.paths) == len(neg.paths)
        for i, chain in enumerate(pos.paths):
            lit = pathfinder_gen._lit(chain, p)
            steps = np.abs(np.diff(lit, axis=0)).max(axis=1)
            assert steps.max() <= p.link and (steps >= 2).any()  # gaps exist, none too wide
            for other in pos.paths[i + 1:]:
                gap = np.abs(chain[:, None, :] - other[None, :, :]).max(axis=2).min()
                assert gap >= p.separation
        ends = [tuple(c[k]) for c in pos.paths[:2] for k in (0, -1)]
        assert set(pos.markers) <= set(ends) and set(neg.markers) <= set(ends)
        assert pathfinder_gen.check_label(pos.image) == 1 and pathfinder_gen.check_label(neg.image) == 0


def test_check_label_is_not_fooled() -> None:
    """Hand-drawn images: dots on one dashed line (1); dots on two lines 8 rows apart (0); a dashed connector
    with gaps of one pixel joins them (1), one with a 2-pixel gap does not (0)."""
    img = np.zeros((32, 32), dtype=np.uint8)
    img[10, 5:26:3] = 191
    img[10, 6:27:3] = 191
    img[9:12, 4:7] = 255
    img[9:12, 24:27] = 255
    assert pathfinder_gen.check_label(img) == 1
    two = np.zeros_like(img)
    two[8, 4:27] = 191
    two[16, 4:27] = 191
    two[7:10, 3:6] = 255
    two[15:18, 25:28] = 255
    assert pathfinder_gen.check_label(two) == 0
    wide = two.copy()
    wide[[10, 11, 14], 15] = 191  # 11 → 14: two dark pixels between, beyond the link distance
    assert pathfinder_gen.check_label(wide) == 0
    two[[10, 11, 13, 14], 15] = 191  # one dark pixel between neighbours everywhere
    assert pathfinder_gen.check_label(two) == 1
    with pytest.raises(ValueError, match="expected 2 marker blobs"):
        pathfinder_gen.check_label(np.zeros((32, 32), dtype=np.uint8))


# --- Pathfinder files ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pf_release(tmp_path_factory) -> Path:
    """30 generated images in LRA's layout, 8 a folder (so 4 metadata files)."""
    out = tmp_path_factory.mktemp("pf") / "pathfinder32"
    pathfinder_gen.write_pathfinder(out, 30, "curv_baseline", seed=5, images_per_file=8)
    return out


def test_written_layout_reads_back_exactly(pf_release: Path) -> None:
    root = pf_release / "curv_baseline"
    assert sorted(p.name for p in (root / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy", "3.npy"]
    assert sorted(p.name for p in (root / "imgs").iterdir()) == ["0", "1", "2", "3"]
    first = (root / "metadata" / "1.npy").read_text().splitlines()[0].split()
    assert first[:4] == ["imgs/1", "sample_0.png", "0", first[3]] and first[3] in ("0", "1")
    assert not [p for p in pf_release.iterdir() if p.name.startswith(".")]  # no temporary directory left
    with Image.open(root / "imgs" / "0" / "sample_0.png") as img:
        assert img.mode == "L" and img.size == (32, 32)
    images, labels = pathfinder_gen.generate_pathfinder(30, 5, pathfinder_gen.params_for("curv_baseline"))
    data = pathfinder.read_pathfinder(root)
    assert len(data) == 30 and np.array_equal(data.pixels, images.reshape(30, -1))
    assert data.labels.tolist() == labels.tolist()
    assert [pathfinder_gen.check_label(x.reshape(32, 32)) for x in data.pixels] == labels.tolist()


def test_pathfinder_splits_and_data_paths(pf_release: Path, tmp_path: Path) -> None:
    task = get_task("pathfinder32")
    with pytest.raises(FileNotFoundError, match="curv_contour_length_14"):
        load_splits(task, pf_release)  # the default (hard) set is not there
    splits = load_splits(task, pf_release / "curv_baseline")
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (24, 3, 3)
    all_labels = sorted(splits.train.labels + splits.dev.labels + splits.test.labels)
    assert all_labels == [0] * 15 + [1] * 15
    hard = pathfinder_gen.write_pathfinder(tmp_path / "release" / "pathfinder32", 10, "hard", seed=1)
    for given in (hard, hard.parent, hard.parent.parent):  # difficulty dir, pathfinder32/, lra_release/
        assert len(pathfinder.read_pathfinder(given)) == 10
    with pytest.raises(FileExistsError, match="overwrite"):
        pathfinder_gen.write_pathfinder(hard.parent, 10, "hard", seed=1)
    pathfinder_gen.write_pathfinder(hard.parent, 12, "hard", seed=2, overwrite=True)
    assert len(pathfinder.read_pathfinder(hard)) == 12
    few = pathfinder_gen.write_pathfinder(tmp_path / "few", 4, "easy", seed=0)
    with pytest.raises(ValueError, match=r"Pathfinder data in .*few/curv_baseline: 4 rows cannot give a dev set"):
        load_splits(task, few)


def _copy_release(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src / "curv_baseline", dest / "curv_baseline")
    return dest / "curv_baseline"


def test_pathfinder_bad_rows_name_file_and_line(pf_release: Path, tmp_path: Path) -> None:
    root = _copy_release(pf_release, tmp_path)
    meta = root / "metadata" / "2.npy"
    lines = meta.read_text().splitlines()
    cases = [
        ("imgs/2 sample_1.png 1\n", "expected at least 4 space-separated fields"),
        ("imgs/2 sample_1.png 1 2\n", "label \\(field 4\\) '2' is not 0 or 1"),
        ("imgs/2 missing.png 1 1\n", "image .*missing.png not found"),
        ("../.. etc 1 1\n", "image path .*leaves the difficulty directory"),
    ]
    for bad, message in cases:
        meta.write_text("\n".join([lines[0], bad.strip()] + lines[2:]) + "\n")
        with pytest.raises(TaskDataError, match=rf"2\.npy, line 2: {message}"):
            pathfinder.read_pathfinder(root)
    meta.write_text("\n".join(lines) + "\n")
    (root / "imgs" / "0" / "sample_3.png").write_bytes(b"")
    Image.new("L", (16, 16)).save(root / "imgs" / "1" / "sample_2.png")
    Image.new("L", (32, 32)).save(root / "imgs" / "1" / "sample_5.png", format="JPEG")
    with pytest.raises(TaskDataError, match=r"0\.npy, line 4: image .*sample_3\.png is empty"):
        pathfinder.read_pathfinder(root)
    data = pathfinder.read_pathfinder(root, skip_bad_rows=True)
    assert len(data) == 27 and len(data.bad_rows) == 3
    reasons = " | ".join(str(r) for r in data.bad_rows)
    assert "is 16x16, expected 32x32" in reasons and "is JPEG, expected PNG" in reasons
    with pytest.raises(FileNotFoundError, match="metadata"):
        pathfinder.read_pathfinder(tmp_path / "nothing")


def test_numpy_saved_metadata_is_read_too(pf_release: Path, tmp_path: Path) -> None:
    root = _copy_release(pf_release, tmp_path)
    for meta in (root / "metadata").iterdir():
        rows = [line.split() for line in meta.read_text().splitlines()]
        with open(meta, "wb") as handle:
            np.save(handle, np.array(rows))
    assert np.array_equal(pathfinder.read_pathfinder(root).pixels, pathfinder.read_pathfinder(
        pf_release / "curv_baseline").pixels)


def test_cli_generates_and_trains_pathfinder(tmp_path: Path, capsys) -> None:
    from bort.cli import main

    data = tmp_path / "pf32"
    assert main(["lra", "generate-pathfinder", str(data), "--count", "40", "--difficulty", "easy",
                 "--images-per-file", "16", "--seed", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["count"] == 40
    assert main(["lra", "generate-pathfinder", str(data), "--count", "40", "--difficulty", "easy"]) == 2
    assert "exists" in capsys.readouterr().err
    out = tmp_path / "run"
    code = main(["lra", "pathfinder32", "--data", str(data / "curv_baseline"), "--attention", "yoso",
                 "--max-steps", "3", "--eval-interval", "3", "--batch-size", "8", "--output-dir", str(out),
                 "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "pathfinder32" and summary["steps"] == 3
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == {"train": 32, "dev": 4, "test": 4} and (out / "best" / "config.json").is_file()
    assert main(["lra", "pathfinder32", "--data", str(tmp_path / "absent")]) == 2
    assert "data not found" in capsys.readouterr().err
