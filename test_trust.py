"""
test_trust.py -- issue 26: no figure silently wrong, no finished run lost. Provenance for
compare.py --reuse and its score cache, --train-flags that cannot override a variant, --variant,
the 95% t intervals, every hostile input one line (PNG bombs, FIFOs, devices, 0 x 0 images, npz
members, --export bounds), and Ctrl-C to compare.py --jobs 2. Tiny files written by the tests
themselves; no network, GPU, real archive or FID network file.

    python -m unittest test_trust.py
"""
import contextlib
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import unittest
import zipfile
import zlib
from unittest import mock

import numpy as np
import torch

import compare
import data
import metrics
import runs
import vae
from test_all import HERE, OneThread, _MetricsAtNetLayers, cli_exit, decode_png, make_fake_cifar


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
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
