"""
test_all.py -- the project's tests: fast (a few minutes on 2 CPU cores), no network, no GPU.

    python -m unittest test_all.py          # everything
    python -m unittest test_all.TestData    # one group

Four kinds of test (see STYLE.md): against a trusted reference (torch.distributions, float64),
on cases with a known answer, shape/overfit checks, and small end-to-end runs of the real scripts
on tiny synthetic CIFAR archives written in the exact official layouts (data.make_fake_cifar).
The one test that needs the real archive (data/cifar-10-python.tar.gz) is skipped without it.
"""
import contextlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zlib

import numpy as np
import torch

import data

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
            tx, ty, vx, vy = data.make_fake_cifar(root, n_train_per_batch=10, n_test=20, fmt=fmt)
            with contextlib.redirect_stderr(io.StringIO()):  # the fake md5 warning
                x, y = data.load_cifar10(root, train=True, download=False)
                x2, y2 = data.load_cifar10(root, train=False, download=False)
            self.assertEqual((x.dtype, y.dtype, tuple(x.shape)), (torch.uint8, torch.int64, (50, 3, 32, 32)))
            self.assertTrue(torch.equal(x, tx) and torch.equal(y, ty), fmt)
            self.assertTrue(torch.equal(x2, vx) and torch.equal(y2, vy), fmt)

    def test_python_and_binary_archives_give_identical_tensors(self):
        a, b = os.path.join(self.dir, "a"), os.path.join(self.dir, "b")
        data.make_fake_cifar(a, fmt="python", seed=3)
        data.make_fake_cifar(b, fmt="binary", seed=3)
        with contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                xa, ya = data.load_cifar10(a, train=train, download=False)
                xb, yb = data.load_cifar10(b, train=train, download=False)
                self.assertTrue(torch.equal(xa, xb) and torch.equal(ya, yb))

    def test_unpacked_folders(self):
        tx, ty, _, _ = data.make_fake_cifar(self.dir, fmt="binary", seed=1)
        path = os.path.join(self.dir, "cifar-10-binary.tar.gz")
        with tarfile.open(path) as tf:
            tf.extractall(self.dir, filter="data")
        os.remove(path)
        x, y = data.load_cifar10(self.dir, download=False)
        self.assertTrue(torch.equal(x, tx) and torch.equal(y, ty))

    def test_channel_layout(self):
        """Official layout: 1024 red bytes, then green, then blue, each row-major 32x32."""
        root = os.path.join(self.dir, "c")
        data.make_fake_cifar(root, fmt="binary", seed=2)
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
        data.make_fake_cifar(self.dir, fmt="python")
        path = os.path.join(self.dir, "cifar-10-python.tar.gz")
        members = {}
        with tarfile.open(path) as tf:
            for m in tf:
                members[m.name] = tf.extractfile(m).read()
        # Written like the official pickles, so the first name it asks for is os.system itself.
        members["cifar-10-batches-py/data_batch_3"] = data._py2_pickle({b"data": Evil()})
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
        data.make_fake_cifar(self.dir, fmt="python")
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
        data.make_fake_cifar(root, fmt="binary")
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
        b = data.Batches(x, torch.arange(10), batch_size=4, seed=7)
        self.assertEqual(len(b), 3)
        first = [yb.tolist() for _, yb in b.epoch(0)]
        self.assertEqual([yb.tolist() for _, yb in b.epoch(0)], first)  # a pure function of the epoch
        self.assertNotEqual([yb.tolist() for _, yb in b.epoch(1)], first)
        self.assertEqual(sorted(sum(first, [])), list(range(10)))
        xb, yb = next(b.epoch(0))
        self.assertEqual(xb.dtype, torch.float32)
        self.assertTrue(torch.allclose(xb[:, 0, 0, 0], yb.float() / 127.5 - 1))
        self.assertEqual(len(data.Batches(x, torch.arange(10), 4, drop_last=True)), 2)

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

    def test_cli_one_line_error(self):
        r = subprocess.run([sys.executable, os.path.join(HERE, "data.py"), "--data-dir", self.dir,
                            "--no-download"], capture_output=True, text=True, cwd=self.dir)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1)
        self.assertTrue(r.stderr.startswith("error: no CIFAR-10"))

    def test_cli_summary_and_examples(self):
        data.make_fake_cifar(self.dir, n_train_per_batch=20, n_test=20)
        out = os.path.join(self.dir, "ex.png")
        r = subprocess.run([sys.executable, os.path.join(HERE, "data.py"), "--data-dir", self.dir,
                            "--no-download", "--out", out], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("NOT the official archive", r.stdout)
        self.assertIn("total", r.stdout)
        self.assertEqual(decode_png(read_bytes(out)).shape, (10 * 34 + 2, 8 * 34 + 2, 3))

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


if __name__ == "__main__":
    unittest.main()
