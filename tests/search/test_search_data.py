"""Data through torch.utils.data: image transforms against hand computations, memory-mapped .npz, bad data
and bad training arguments as clear errors with the line (status 2, before any study), the stored split."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from searchutil import REPO, cli, load_study, write_arch

from archdsl.search import images
from archdsl.search.data import load
from archdsl.search.loaders import loader
from archdsl.search.train import one_cycle

sys.path.insert(0, str(REPO / "benchmarks"))
from make_images import make  # noqa: E402


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# ---------------------------------------------------------------- transforms
def test_eval_transform_is_a_centre_crop_normalised(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)  # h=4, w=6: the shorter side is already 4
    Image.fromarray(pixels).save(tmp_path / "a.png")
    split = images.ImageSplit([str(tmp_path / "a.png")], [1], 4, False, [0.5, 0.25, 0.0], [0.5, 2.0, 1.0])
    x, y = split[(0, [0])]
    expected = pixels[:, 1:5, :].astype(np.float64) / 255.0  # columns 1..4 (left = (6 - 4) // 2)
    expected = (expected - [0.5, 0.25, 0.0]) / [0.5, 2.0, 1.0]
    assert x.shape == (1, 3, 4, 4) and y.tolist() == [1]
    assert np.allclose(x[0].numpy(), expected.transpose(2, 0, 1), atol=1e-6)


def test_standard_augmentation_is_a_crop_of_the_padded_image_maybe_flipped():
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    padded = np.zeros((10, 10, 3), dtype=np.uint8)  # size 8 pads by 8 // 8 = 1
    padded[1:9, 1:9] = pixels
    crops = {(y, x, flip): (padded[y:y + 8, x:x + 8, :][:, ::-1] if flip else padded[y:y + 8, x:x + 8, :])
             for y in range(3) for x in range(3) for flip in (False, True)}
    seen = set()
    for key in range(40):
        out = np.asarray(images.train_transform(Image.fromarray(pixels), 8, torch.Generator().manual_seed(key)))
        match = [k for k, c in crops.items() if np.array_equal(c, out)]
        assert match, key
        seen.add(match[0])
        again = images.train_transform(Image.fromarray(pixels), 8, torch.Generator().manual_seed(key))
        assert np.array_equal(np.asarray(again), out)  # the same seed, the same augmentation
    assert len(seen) > 8 and {f for _, _, f in seen} == {False, True}


def test_augmented_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    make(tmp_path / "shapes", 40, size=8, classes=4)
    data = load("images", (str(tmp_path / "shapes"),), kwargs={"size": 8})
    assert data.input_shape == (3, 8, 8) and data.classes == 4
    assert len(data.train) + len(data.val) + len(data.test) == 40

    def batches(workers):
        dl = loader(data.train, 5, shuffle=True, seed=7, workers=workers)
        dl.sampler.set_epoch(3)
        return list(dl)

    for (x0, y0), (x2, y2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


@pytest.mark.parametrize("total, warm", [(100, 20.0), (37, 5.0), (50, 50 * 0.3)])
def test_schedule_is_torchs_one_cycle(total, warm):
    """The step-wise schedule (resumable from the step alone) matches torch's OneCycleLR, momentum included."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=warm / total)
    for step in range(total):
        lr, momentum = one_cycle(step, total, warm, 0.1)
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        assert momentum == pytest.approx(opt.param_groups[0]["betas"][0], rel=1e-9), step
        opt.step()
        ref.step()


# ---------------------------------------------------------------- .npz
def test_npz_is_memory_mapped_and_read_by_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDSL_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2, 3)).astype(np.float32), rng.integers(0, 3, 50)
    np.savez_compressed(tmp_path / "d.npz", x=x, y=y)
    data = load("npz", (str(tmp_path / "d.npz"),))
    assert isinstance(data.train.x, np.memmap) and data.input_shape == (2, 3) and data.classes == 3
    rows = data.train.rows[[4, 0, 9]]
    xb, yb = data.train[(0, [4, 0, 9])]
    order = np.argsort(rows)  # a batch is read in row order
    assert np.array_equal(xb.numpy(), x[rows[order]]) and np.array_equal(yb.numpy(), y[rows[order]])
    assert np.array_equal(data.x_test.numpy(), x[40:])  # no x_test: the last 20% are held out


def _bad(tmp_path, **arrays):
    np.savez(tmp_path / "bad.npz", **arrays)


X = np.zeros((20, 4), dtype=np.float32)
Y = np.arange(20) % 2
BAD_NPZ = [
    ({"x": X, "y": np.array(["a", "b"] * 10)}, "y holds strings"),
    ({"x": X, "y": -Y}, "negative"),
    ({"x": X, "y": np.where(Y == 1, np.nan, 0.0)}, "NaN"),
    ({"x": X, "y": Y + 0.5}, "fractional"),
    ({"x": X.astype(np.complex64), "y": Y}, "complex"),
    ({"x": np.where(np.eye(20, 4) > 0, np.nan, X), "y": Y}, "row 0 holds NaN"),
    ({"x": np.float32(3), "y": Y}, "0-d"),
    ({"x": X, "y": np.int64(1)}, "0-d"),
    ({"x": X, "y": Y, "x_test": X}, "x_test but no y_test"),
    ({"x": X, "y": np.eye(2)[Y]}, "one-hot"),
    ({"x": X, "y": np.array([{"a": 1}] * 20, dtype=object)}, "Python objects"),
    ({"x": X[:, 0], "y": Y}, "feature axis"),
    ({"x": X, "y": Y[:15]}, "must match"),
]


@pytest.mark.parametrize("arrays, message", BAD_NPZ, ids=[m for _, m in BAD_NPZ])
def test_bad_npz_is_an_error_with_the_line_before_the_study(tmp_path, monkeypatch, arrays, message):
    monkeypatch.setenv("ARCHDSL_CACHE", str(tmp_path / "cache"))
    np.savez(tmp_path / "bad.npz", **arrays)
    _expect_data_error(tmp_path, 'npz("bad.npz")', message)


def test_truncated_npz_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHDSL_CACHE", str(tmp_path / "cache"))
    np.savez(tmp_path / "bad.npz", x=np.zeros((2000, 40), dtype=np.float32), y=np.arange(2000) % 2)
    data = (tmp_path / "bad.npz").read_bytes()
    (tmp_path / "bad.npz").write_bytes(data[:len(data) // 2])
    _expect_data_error(tmp_path, 'npz("bad.npz")', "truncated")


def _expect_data_error(tmp_path, over: str, message: str, shape: str = "[1, 4]"):
    arch = write_arch(tmp_path, f"""
        model net() {{
          input v{shape}
          head: flatten >> linear(2)
        }}
        search s over {over} {{
          maximize accuracy(epochs = 1)
        }}
    """)
    rc, stdout, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2, stderr
    assert re.match(rf"{re.escape(str(arch))}:{_line_of(arch, 'search s over')}:\d+: error: ", stderr), stderr
    assert message in stderr, stderr
    assert not (tmp_path / "out" / "study.db").exists()


# ---------------------------------------------------------------- images
@pytest.mark.parametrize("args, message", [
    ("size = 0", "from 1 to 1024"), ("size = -1", "from 1 to 1024"), ('size = "abc"', "from 1 to 1024"),
    ("size = 100000", "from 1 to 1024"), ('augment = "heavy"', "standard or none"), ("mean = [0.5]", "three numbers"),
])
def test_bad_image_arguments(tmp_path, args, message):
    make(tmp_path / "shapes", 12, size=8, classes=2)
    _expect_data_error(tmp_path, f'images("shapes", {args})', message, shape="[3, 8, 8]")


def _png(path: Path, width: int, height: int) -> None:
    """A valid PNG of 1x1 pixel whose header claims width x height (what a decompression bomb looks like)."""
    Image.new("RGB", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    raw[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr:ihdr + 17])))
    path.write_bytes(bytes(raw))


def test_decompression_bomb_is_an_error_naming_the_file(tmp_path):
    make(tmp_path / "shapes", 12, size=8, classes=2)
    _png(tmp_path / "shapes" / "circle" / "bomb.png", 30000, 30000)
    _expect_data_error(tmp_path, 'images("shapes", size = 8)', "bomb.png", shape="[3, 8, 8]")


def test_unreadable_image_is_an_error_naming_the_file(tmp_path):
    make(tmp_path / "shapes", 12, size=8, classes=2)
    (tmp_path / "shapes" / "square" / "broken.png").write_bytes(b"\x89PNG not really")
    _expect_data_error(tmp_path, 'images("shapes", size = 8)', "broken.png is not a readable image",
                       shape="[3, 8, 8]")


# ---------------------------------------------------------------- training arguments
@pytest.mark.parametrize("args, message", [
    ("epochs = 0", "epochs = 0"), ('lr = "x"', 'lr = ...) is "x", expected a number'), ("lr = 0", "above 0"), ("batch = 0", "batch = 0"),
    ("optimizer = lbfgs", "unknown name"), ("optimizer = fp32", "adamw or sgd"), ("precision = int8", "fp32, bf16 or fp16"),
    ("workers = -1", "workers = -1"), ("label_smoothing = 1", "below 1"), ("clip = -1", "clip = -1"),
    ('device = "tpu"', "auto, cpu, cuda"), ("warmup = 5", "below epochs"), ("act_bits = 4", "give 8"),
])
def test_bad_training_arguments_name_the_line(tmp_path, args, message):
    arch = write_arch(tmp_path, f"""
        model net() {{
          input v[1, 8, 8]
          head: flatten >> linear(10)
        }}
        search s over digits {{
          maximize accuracy(epochs = 2, {args})
        }}
    """.replace("epochs = 2, epochs = 0", "epochs = 0"))
    rc, stdout, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2, stderr
    assert stderr.startswith(f"{arch}:{_line_of(arch, 'maximize accuracy')}:"), stderr
    assert message in stderr, stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", '"cuda:1"'])
def test_cuda_without_a_gpu_is_an_error_before_the_study(tmp_path, device):
    arch = write_arch(tmp_path, f"""
        model net() {{
          input v[1, 8, 8]
          head: flatten >> linear(10)
        }}
        search s over digits {{
          maximize accuracy(epochs = 1, device = {device})
        }}
    """)
    rc, stdout, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2, stderr
    assert stderr.startswith(f"{arch}:{_line_of(arch, 'maximize accuracy')}:"), stderr
    assert "asks for a GPU" in stderr and "device = auto" in stderr
    assert not (tmp_path / "out" / "study.db").exists()


# ---------------------------------------------------------------- the split
def test_split_is_stored_with_the_study_and_identical_across_processes(tmp_path):
    code = ("import json; from archdsl.search.data import load; "
            "print(json.dumps(load('digits', val_fraction=0.25).split))")
    other = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                      check=True).stdout)
    here = load("digits", val_fraction=0.25)
    assert other == here.split
    val_rows = np.sort(here.val.rows)
    assert len(val_rows) == round(0.25 * 1437) and not set(val_rows) & set(here.train.rows)

    arch = write_arch(tmp_path, """
        model net(w = choice(4, 8)) {
          input v[1, 8, 8]
          head: conv(w, k = 3) >> gap >> linear(10)
        }
        search s over digits {
          maximize accuracy(epochs = 1)
          val_fraction = 0.25
          trials = 1
        }
    """)
    rc, stdout, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 0, stderr
    assert load_study(tmp_path / "out", "s").user_attrs["split"] == here.split
    arch.write_text(arch.read_text().replace("val_fraction = 0.25", "val_fraction = 0.3").replace("trials = 1",
                                                                                                  "trials = 2"))
    rc, stdout, stderr = cli("search", arch, "--out", tmp_path / "out", "--quiet")
    assert rc == 2 and "split differs" in stderr, stderr


def test_mnist1d_cache_is_never_unpickled(tmp_path, monkeypatch):
    """A crafted cache file (an object array, which np.load would unpickle if allowed) is not executed: the
    cache is read with allow_pickle=False and rebuilt."""
    monkeypatch.setenv("ARCHDSL_CACHE", str(tmp_path))
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "mnist1d-42.npz", x=np.array([_Evil(str(marker))], dtype=object),
             y=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    data = load("mnist1d")
    assert not marker.exists()
    assert data.input_shape == (1, 40) and len(data.test) == 1000
    with np.load(tmp_path / "mnist1d-42.npz", allow_pickle=False) as f:  # rebuilt without objects
        assert f["x"].shape == (4000, 40)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_image_folder_search_end_to_end(tmp_path):
    """A search over a generated image folder, loader workers and bf16 autocast on the CPU: trials train,
    the per-epoch line prints, the report measures test accuracy through the loader."""
    make(tmp_path / "shapes", 48, size=8, classes=3)
    arch = write_arch(tmp_path, """
        model net(w = choice(4, 8)) {
          input img[3, 8, 8]
          stem: conv(w, k = 3, padding = 1) >> relu
          head: gap >> linear(3)
        }
        search s over images("shapes", size = 8, augment = standard) {
          maximize accuracy(epochs = 2, batch = 8, workers = 2, precision = bf16, optimizer = sgd, lr = 0.05,
                            label_smoothing = 0.1, clip = 1.0)
          trials = 1
        }
    """)
    rc, stdout, stderr = cli("search", arch, "--out", tmp_path / "out")
    assert rc == 0, stderr
    assert re.search(r"trial 0 epoch 2/2  loss [\d.]+  val acc [\d.]+  [\d,]+ samples/s  ETA \d+s", stderr), stderr
    summary = json.loads((tmp_path / "out" / "pareto.json").read_text())
    (member,) = summary["pareto"]
    assert 0 <= member["test_accuracy"] <= 1 and summary["trials"]["complete"] == 1
    study = load_study(tmp_path / "out", "s")
    assert study.user_attrs["split"]["train"] + study.user_attrs["split"]["val"] == int(0.8 * 48)
    assert study.trials[0].user_attrs["epochs_trained"] == 2
