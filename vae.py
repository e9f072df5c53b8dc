"""Convolutional VAE on CIFAR-10: trains the study's model, evaluates it, and measures with linear
probes what its latent code learned -- next to the baselines that give that number a meaning.

Run:
    python vae.py                                      # study settings: 20 epochs, 10k subset, seed 42
    python vae.py --beta-schedule cyclical --cycles 4 --out runs/vae_cyclical
    python vae.py --epochs 2 --subset 1000 --no-probe  # a quick look
    python vae.py --bench --subset 2000                # this loop vs the DataLoader tutorial loop
    python vae.py --resume                             # continue runs/vae/checkpoint.pt exactly

Papers: Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (the ELBO, the reparameterisation
trick, the closed-form Gaussian KL of their appendix B); Higgins et al. 2017 (a weight beta on the
KL term); Fu et al. 2019, "Cyclical Annealing Schedule" (--beta-schedule cyclical).

Model, exactly the study's layer list (4x4 kernels, stride 2, padding 1, latent z in R^64):
    encoder: x (3x32x32) -> Conv(3->32)+BN+ReLU -> Conv(32->64)+BN+ReLU -> Conv(64->128)+BN+ReLU
             -> flatten 2048 -> Linear -> mu (64), Linear -> log sigma^2 (64)
    decoder: z (64) -> Linear -> 4x4x128 -> ConvT(128->64)+BN+ReLU -> ConvT(64->32)+BN+ReLU
             -> ConvT(32->3)+Tanh
    Parameters at --width 1: 726,787. The study's slides say 1.38M; the layers they list cannot
    give that number, so we print the real count and do not widen the model to match it
    (`--width 2` doubles every channel count: 2.11M). The study lists nothing between the
    decoder's Linear and its first ConvT, so there is nothing there: the two compose into one
    linear map of z, and the first nonlinearity is the ReLU after the first ConvT's BN.

Loss, and the unit of every figure this file prints (per image, averaged over the batch):
    L = MSE + beta * KL,  MSE = sum over the 3072 values of (x_hat - x)^2, pixels in [-1, 1],
                          KL  = KL(q(z|x) || N(0, I)) summed over the 64 latent dimensions.
    "ELBO" below means MSE + KL at beta = 1, the study's unit (lower is better); it is the
    negative ELBO in nats of a Gaussian decoder N(x_hat, I/2), less the constant 1536 ln(pi).

Outputs in --out (default runs/vae): checkpoint.pt (written atomically every epoch), history.json,
metrics.json, latents.npz, reconstructions.png, interpolations.png, samples.png, curves.png; with
--bench only bench.json. Same seed, device and thread count -> the same numbers, and --resume of a
killed run gives the very weights of an uninterrupted one (data order and eps are pure functions of
(seed, epoch)).

Result, default run (`python vae.py`, seed 42, 2-core AMD EPYC CPU, torch 2.13.0, 2 threads; the
CIFAR-10 archive the README names, not the official file):
    test ELBO 197.59 = recon 139.34 + KL 58.25 (study: 200.82 = 139.56 + 61.25); recon at z = mu 114.78
    linear probes, 10k train / 10k test: mu 38.96% (64-d) | raw pixels 38.21% (3072-d) |
    mu at random init 32.23% (64-d) | conv features 49.29% (2048-d) | at random init 45.63% (2048-d)
    So the latent code barely beats raw pixels, and the untrained encoder's conv features beat both.
    Training 2m36s (7.8 s an epoch of 79 steps), 3m11s with the probes. `--bench --subset 2000`:
    our loop 1.09x the speed of the DataLoader tutorial loop (2 threads, fastest of 4), the gain
    from channels_last: the data path is < 1% of an epoch on a CPU. The test ELBO moves by 2-4
    from one epoch to the next at the end of training. Over seeds 42, 43, 44 (compare.py --seeds):
    test ELBO 198.53 +- 2.16, mu probe 38.7 +- 0.7% vs raw pixels 38.9 +- 0.6%. Cyclical beta
    (seed 42): ELBO 200.60 = 138.92 + 61.69, mu probe 38.3%, i.e. no measurable change.

Left out on purpose: the study's perceptual (VGG) loss (needs a pretrained network), a learned
decoder variance, importance-weighted ELBO bounds, and mixed precision.
"""
import argparse
import io
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn

import data

# ----------------------------------------------------------------------------------------------
# Settings (flags use the same names in kebab-case; the resolved config is printed and saved)
# ----------------------------------------------------------------------------------------------
EPOCHS = 20              # passes over the subset (the study: 20)
SUBSET = 10_000          # training images, class-stratified: 1,000 per class (the study's 10k subset)
BATCH_SIZE = 128         # images per Adam step; the last, smaller batch of an epoch is kept
LR = 1e-3                # Adam learning rate (the study; betas stay at PyTorch's (0.9, 0.999))
BETA = 1.0               # weight of the KL term (its maximum under a schedule); 1.0 = the plain ELBO
BETA_SCHEDULE = "constant"  # constant | linear | cyclical (see beta_at)
CYCLES = 4               # cyclical: number of 0 -> beta ramps over the run (the study's slide: 4)
RAMP_FRACTION = 0.5      # linear/cyclical: share of each cycle spent rising (Fu et al. 2019: R = 0.5)
LATENT_DIM = 64          # size of z (the study)
SEED = 42                # one seed drives init, data order and noise (same seed, device and thread
                         # count -> the same numbers; CPU kernels split their sums by thread)
EVAL_BATCH = 500         # images per forward pass at evaluation (no gradients, so larger is fine)
EPOCH_TEST = 2_000       # test images in each epoch's progress line: the first 2,000 (the archive's
                         # order is shuffled, ~200 per class); a pass over all 10,000 costs a third of
                         # a training epoch, so they are used once, for the final figures
N_SHOW = 16              # test images shown in reconstructions.png (two rows of 8 over their recons)
N_INTERP_PAIRS = 8       # rows in interpolations.png ...
N_INTERP_STEPS = 8       # ... each: image A, 8 decoded points from mu_A to mu_B, image B
N_SAMPLES = 64           # decoded z ~ N(0, I) in samples.png (8 x 8)


def noise_seed(seed, epoch):
    """Seed of the reparameterisation noise of one epoch: a pure function of (seed, epoch), so a
    resumed run draws the very same eps with no generator state to save. The offset keeps it
    apart from data.Batches' seed * 1000003 + epoch (and from dcgan.py's + 500,000)."""
    return seed * 1000003 + epoch + 700_000


EVAL_SEED_OFFSET = 900_000  # eps for the test ELBO: one fixed draw, the same at every evaluation


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def channels(base, width):
    """Channel count after the --width multiplier (at least 1)."""
    return max(1, int(round(base * width)))


def down(c_in, c_out):
    """Conv 4x4, stride 2, padding 1 (halves H and W) + BN + ReLU. No conv bias: BN subtracts the
    batch mean, which cancels any bias exactly, so it would be wasted parameters."""
    return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def up(c_in, c_out):
    """ConvTranspose 4x4, stride 2, padding 1 (doubles H and W) + BN + ReLU, no bias (as above)."""
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU()]


class VAE(nn.Module):
    """x (B, 3, 32, 32) in [-1, 1] -> (x_hat, mu, logvar); shapes below at --width 1."""

    def __init__(self, latent_dim=LATENT_DIM, width=1.0):
        super().__init__()
        c1, c2, c3 = channels(32, width), channels(64, width), channels(128, width)
        self.feature_dim = c3 * 4 * 4                                 # 2048: the conv-probe features
        self.encoder = nn.Sequential(
            *down(3, c1),                                             # (B, 32, 16, 16)
            *down(c1, c2),                                            # (B, 64, 8, 8)
            *down(c2, c3),                                            # (B, 128, 4, 4)
            nn.Flatten())                                             # (B, 2048)
        self.fc_mu = nn.Linear(self.feature_dim, latent_dim)          # (B, 64)
        self.fc_logvar = nn.Linear(self.feature_dim, latent_dim)      # (B, 64): log sigma^2, any real
        self.fc_dec = nn.Linear(latent_dim, self.feature_dim)         # (B, 2048)
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (c3, 4, 4)),                              # (B, 128, 4, 4)
            *up(c3, c2),                                              # (B, 64, 8, 8)
            *up(c2, c1),                                              # (B, 32, 16, 16)
            nn.ConvTranspose2d(c1, 3, 4, stride=2, padding=1),        # (B, 3, 32, 32)
            nn.Tanh())                                                # in [-1, 1], like the data

    def encode(self, x):
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.decoder(self.fc_dec(z))

    def forward(self, x, eps=None):
        """eps: (B, 64) standard normal noise for z = mu + sigma * eps (the reparameterisation
        trick: the randomness is an input, so gradients flow through mu and sigma). None: z = mu,
        the deterministic code used for reconstructions and probes."""
        mu, logvar = self.encode(x)
        z = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def build_model(cfg):
    """The model at its initialisation for cfg's seed: called again after training, it gives the
    very same untrained network for the random-init probe baselines."""
    torch.manual_seed(cfg["seed"])
    model = VAE(LATENT_DIM, cfg["width"])
    if cfg.get("channels_last"):  # NHWC conv weights: every conv then runs (and outputs) NHWC
        model = model.to(memory_format=torch.channels_last)
    return model


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
def vae_loss(x_hat, x, mu, logvar, beta=1.0):
    """Kingma & Welling 2014, eq. 10 with the Gaussian KL of their appendix B:

        ELBO(x) = 1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2) + log p(x | z),  z = mu + sigma * eps

    We minimise the negative, with a weight beta on the KL (beta = 1: the plain negative ELBO):

        L   = MSE + beta * KL
        MSE = sum over the 3072 values (3 x 32 x 32) of (x_hat - x)^2        per image
        KL  = -1/2 * sum over the 64 latent dims of (1 + logvar - mu^2 - exp(logvar))   per image

    Both are then AVERAGED over the batch. MSE equals -log N(x; x_hat, I/2) less 1536 ln(pi), so
    MSE + KL is the negative ELBO (nats per image) of that Gaussian decoder, up to a constant.
    Returns (loss, mse, kl), three scalars.
    """
    mse = (x_hat - x).pow(2).sum(dim=(1, 2, 3)).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return mse + beta * kl, mse, kl


def beta_at(step, total_steps, beta_max=BETA, schedule=BETA_SCHEDULE, cycles=CYCLES):
    """KL weight at optimiser step `step` (0-based) of `total_steps`, recomputed every step.

    constant: beta_max throughout.
    cyclical (Fu et al. 2019, eq. 6): the run is split into `cycles` cycles of T / M steps; in each,
        beta rises linearly from 0 to beta_max over the first RAMP_FRACTION (half), then holds.
        With tau = (step mod ceil(T / M)) / (T / M):  beta = beta_max * min(1, tau / R).
    linear: the same with a single cycle -- one ramp from 0 over the first half of the whole run,
        then beta_max for the second half (monotonic KL annealing, Bowman et al. 2016).
    """
    if schedule == "constant":
        return float(beta_max)
    m = 1 if schedule == "linear" else cycles
    period = total_steps / m
    tau = (step % math.ceil(period)) / period
    return float(beta_max) * min(1.0, tau / RAMP_FRACTION)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = data.OneLineParser(description="Convolutional VAE on CIFAR-10 (see the file docstring).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # run
    p.add_argument("--epochs", type=int, default=EPOCHS, help="total epochs (with --resume: the new total)")
    p.add_argument("--subset", type=int, default=SUBSET, help="training images, a multiple of 10")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per Adam step")
    p.add_argument("--lr", type=float, default=LR, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=SEED, help="init, data order and noise")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1: the study's 32/64/128)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N], mps")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default, one "
                   "per core; 1 is much faster when other jobs share the cores)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="store activations NHWC (about 8%% faster per step on this CPU; numbers differ from "
                   "--no-channels-last only by float rounding)")
    p.add_argument("--out", default="runs/vae", help="folder for every output")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-python.tar.gz")
    p.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    # KL weight
    p.add_argument("--beta", type=float, default=BETA, help="KL weight (maximum under a schedule)")
    p.add_argument("--beta-schedule", default=BETA_SCHEDULE, choices=("constant", "linear", "cyclical"),
                   help="KL weight per step: constant; linear = one ramp over the first half of the run; "
                   "cyclical = Fu et al. 2019")
    p.add_argument("--cycles", type=int, default=CYCLES,
                   help="number of 0 -> beta ramps for --beta-schedule cyclical")
    # measurements
    p.add_argument("--no-probe", action="store_true", help="skip the linear probes at the end")
    p.add_argument("--bench", action="store_true",
                   help="time one epoch vs the DataLoader tutorial loop, write bench.json, then exit")
    a = p.parse_args(argv)

    # Validate everything before any work starts (data.cli_main turns ValueError into one line).
    if a.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {a.epochs}")
    if not 10 <= a.subset <= 50_000 or a.subset % 10:
        raise ValueError(f"--subset must be a multiple of 10 in [10, 50000], got {a.subset}")
    if a.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}")
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {a.lr}")
    if not (math.isfinite(a.beta) and a.beta >= 0):
        raise ValueError(f"--beta must be a number >= 0, got {a.beta}")
    if a.cycles < 1:
        raise ValueError(f"--cycles must be >= 1, got {a.cycles}")
    if a.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {a.threads}")
    if not (math.isfinite(a.width) and 0 < a.width <= 16):
        raise ValueError(f"--width must be in (0, 16], got {a.width}")
    data.pick_device(a.device)  # raises ValueError on a bad or unavailable device
    try:  # an unwritable --out should fail now, not after 20 epochs
        os.makedirs(a.out, exist_ok=True)
        probe = os.path.join(a.out, ".write_test.tmp")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"--out {a.out} is not a writable folder ({e.strerror or e})") from None
    if a.resume and not os.path.isfile(os.path.join(a.out, "checkpoint.pt")):
        raise ValueError(f"--resume: no checkpoint at {os.path.join(a.out, 'checkpoint.pt')}")
    return vars(a)


# Settings that define the experiment: --resume refuses a checkpoint made with different ones.
# --epochs may grow on resume only with the constant schedule: the linear and cyclical ones are
# laid out over the whole run, so a new total would change the betas already used.
RESUME_KEYS = ("subset", "batch_size", "lr", "seed", "width", "beta", "beta_schedule", "cycles")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
class NonFiniteLoss(ValueError):
    """A loss became inf/nan; data.cli_main prints it as one line and exits with status 2."""


def train_epoch(model, optimizer, batches, betas, noise):
    """One pass of Adam over `batches` (any iterable of (x, y), x float (B, 3, 32, 32) on the
    model's device); betas[i] is the KL weight of step i, noise the CPU generator for eps.
    Returns a (steps, 4) tensor of loss, mse, kl and batch size per step -- detached, with no
    .item() inside the loop (no device sync per step)."""
    model.train()
    device = next(model.parameters()).device
    stats, sizes = [], []
    for i, (x, _) in enumerate(batches):
        # eps drawn on the CPU from the epoch's generator: the same numbers on every device
        eps = torch.randn(x.shape[0], LATENT_DIM, generator=noise).to(device)   # (B, 64)
        x_hat, mu, logvar = model(x, eps)
        loss, mse, kl = vae_loss(x_hat, x, mu, logvar, beta=betas[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats.append(torch.stack([loss, mse, kl]).detach())   # stays on the device: no sync
        sizes.append(x.shape[0])
    return torch.cat([torch.stack(stats).cpu(), torch.tensor(sizes, dtype=torch.float32)[:, None]], dim=1)


def check_finite(stats, epoch, steps_per_epoch, ckpt_path):
    """Raise NonFiniteLoss naming the first step whose loss is inf/nan; nothing of this epoch has
    been saved at that point, so the checkpoint on disk is the last good one."""
    bad = (~torch.isfinite(stats[:, :3])).any(1).nonzero()
    if len(bad):
        i = int(bad[0])
        kept = (f"last good checkpoint kept at {ckpt_path}" if os.path.exists(ckpt_path)
                else "no checkpoint written yet")
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch + 1}, step {i + 1} of {steps_per_epoch} "
                            f"(global step {epoch * steps_per_epoch + i + 1}): loss={stats[i, 0].item()} "
                            f"mse={stats[i, 1].item()} kl={stats[i, 2].item()}; stopped, {kept}; "
                            f"try a lower --lr")


def epoch_means(stats):
    """Per-image means over an epoch: batch means weighted by batch size (the last one is smaller)."""
    w = stats[:, 3] / stats[:, 3].sum()
    mse, kl = float((stats[:, 1] * w).sum()), float((stats[:, 2] * w).sum())
    return dict(elbo=mse + kl, recon=mse, kl=kl)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, images_uint8, device, seed, with_mean_recon=False):
    """Test figures at beta = 1, eval mode (BN uses its running statistics, so an image's numbers
    do not depend on its batch). One z ~ q(z|x) per image from a fixed generator (an unbiased,
    deterministic one-sample estimate of the ELBO). with_mean_recon: also the MSE of decoding
    z = mu (recon_mu, lower than recon: no sampling noise). Per-image means, unit as vae_loss."""
    model.eval()
    noise = torch.Generator().manual_seed(seed * 1000003 + EVAL_SEED_OFFSET)
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(images_uint8), EVAL_BATCH):
        x = data.to_float(images_uint8[i:i + EVAL_BATCH].to(device))
        mu, logvar = model.encode(x)
        eps = torch.randn(x.shape[0], LATENT_DIM, generator=noise).to(device)
        _, mse, kl = vae_loss(model.decode(mu + torch.exp(0.5 * logvar) * eps), x, mu, logvar)
        sums[0] += mse.double().cpu() * len(x)
        sums[1] += kl.double().cpu() * len(x)
        if with_mean_recon:
            sums[2] += (model.decode(mu) - x).pow(2).sum(dim=(1, 2, 3)).double().sum().cpu()
    model.train()
    mse, kl, mse_mu = (sums / len(images_uint8)).tolist()
    out = dict(elbo=mse + kl, recon=mse, kl=kl)
    if with_mean_recon:
        out["recon_mu"] = mse_mu
    return out


@torch.no_grad()
def encode_all(model, images_uint8, device):
    """mu (N, 64) and the encoder's last conv features (N, 2048: after BN + ReLU, flattened), eval
    mode, as float32 CPU tensors: the inputs of the linear probes and of latents.npz."""
    model.eval()
    mus, feats = [], []
    for i in range(0, len(images_uint8), EVAL_BATCH):
        h = model.encoder(data.to_float(images_uint8[i:i + EVAL_BATCH].to(device)))
        mus.append(model.fc_mu(h).float().cpu())
        feats.append(h.float().cpu())
    model.train()
    return torch.cat(mus), torch.cat(feats)


def run_probes(cfg, device, train_x, train_y, test_x, test_y, trained):
    """Five linear probes (metrics.linear_probe), each fitted on the training subset and scored on
    the 10,000 test images: the trained mu; raw pixels; mu of the same network at its random init
    (same seed, never trained); the trained conv features; the same at random init. Linear probes
    reward dimension, so each accuracy is reported with its feature size (64, 3072 or 2048).
    trained: (mu_train, feat_train, mu_test, feat_test) of the trained model, from encode_all."""
    import metrics  # imported here so training (and its tests) do not need the probe's module
    untrained = build_model(cfg).to(device)
    r_mu_train, r_feat_train = encode_all(untrained, train_x, device)
    r_mu_test, r_feat_test = encode_all(untrained, test_x, device)
    mu_train, feat_train, mu_test, feat_test = trained
    jobs = [("probe", mu_train, mu_test),
            ("pixel_probe", metrics.pixel_features(train_x), metrics.pixel_features(test_x)),  # (N, 3072)
            ("random_probe", r_mu_train, r_mu_test),
            ("conv_probe", feat_train, feat_test),
            ("random_conv_probe", r_feat_train, r_feat_test)]
    out = {}
    for name, a, b in jobs:
        t0 = time.perf_counter()
        a, b = np.asarray(a), np.asarray(b)
        r = metrics.linear_probe(a, train_y.numpy(), b, test_y.numpy(), seed=cfg["seed"])
        out[f"{name}_acc"], out[f"{name}_dim"] = float(r["acc"]), int(a.shape[1])
        out[f"{name}_l2"] = float(r["l2"])   # the L2 strength the validation split chose
        print(f"  {name + '_acc':22s} {r['acc']:.4f}  ({a.shape[1]:4d}-d, l2 {r['l2']:g}, "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# Main: config, data, model, training loop, evaluation, saving
# ----------------------------------------------------------------------------------------------
def main(argv=None):
    cfg = parse_args(argv)
    if cfg["bench"]:
        return bench(cfg)
    t_start = time.perf_counter()
    device = data.pick_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if device.type == "cuda":  # same seed + device -> same numbers (cuDNN picks kernels by timing)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    out = cfg["out"]
    ckpt_path = os.path.join(out, "checkpoint.pt")
    ckpt = None
    if cfg["resume"]:
        ckpt = data.load_checkpoint(ckpt_path, "run without --resume to start afresh", cfg, RESUME_KEYS)
        if ckpt["config"]["epochs"] != cfg["epochs"] and cfg["beta_schedule"] != "constant":
            raise ValueError(f"--resume: checkpoint was made for --epochs {ckpt['config']['epochs']}; the "
                             f"{cfg['beta_schedule']} beta schedule depends on it, so pass the same --epochs")
        if ckpt["epoch"] > cfg["epochs"]:
            raise ValueError(f"--resume: the checkpoint already has {ckpt['epoch']} epochs, more than "
                             f"--epochs {cfg['epochs']}")
    print("config " + json.dumps(cfg, sort_keys=True))

    # ---- data ------------------------------------------------------------------------------------
    images, labels = data.load_cifar10(cfg["data_dir"], train=True, download=not cfg["no_download"])
    test_x, test_y = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    if cfg["subset"] > len(images):
        raise data.DataError(f"--subset {cfg['subset']} is larger than the {len(images)} training images")
    idx = data.stratified_indices(labels, cfg["subset"], seed=cfg["seed"])
    train_x, train_y = images[idx], labels[idx]                  # uint8 (N, 3, 32, 32), int64 (N,)
    del images, labels
    batches = data.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True)   # the whole subset on the device as uint8; no DataLoader
    steps_per_epoch = len(batches)
    total_steps = cfg["epochs"] * steps_per_epoch

    # ---- model -----------------------------------------------------------------------------------
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    params = count_params(model)
    print(f"params {params:,} (the study's slides said 1.38M; see the docstring) | device {device} | "
          f"threads {torch.get_num_threads()} | {len(train_x)} train / {len(test_x)} test images | "
          f"{steps_per_epoch} steps/epoch | beta {cfg['beta']:g} ({cfg['beta_schedule']})"
          + (" | channels_last" if cfg["channels_last"] else ""))
    history = {"epochs": []}
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, start_epoch = ckpt["metrics"], ckpt["epoch"]
        torch.set_rng_state(ckpt["rng"])  # not needed for exactness (noise_seed), kept for any other draw
        print(f"resumed from {ckpt_path} after epoch {start_epoch}")

    # ---- training loop ---------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.perf_counter()
        betas = [beta_at(epoch * steps_per_epoch + i, total_steps, cfg["beta"], cfg["beta_schedule"],
                         cfg["cycles"]) for i in range(steps_per_epoch)]
        noise = torch.Generator().manual_seed(noise_seed(cfg["seed"], epoch))
        stats = train_epoch(model, optimizer, batches.epoch(epoch), betas, noise)
        seconds = time.perf_counter() - t0
        check_finite(stats, epoch, steps_per_epoch, ckpt_path)      # before anything of this epoch is saved

        # ---- evaluation (not timed as training) ----
        tr = epoch_means(stats)   # running means over the epoch: train mode, sampled z, weights moving
        te = evaluate(model, test_x[:EPOCH_TEST], device, cfg["seed"])   # beta = 1, eval mode
        if not math.isfinite(te["elbo"]):
            raise NonFiniteLoss(f"test ELBO is {te['elbo']} after epoch {epoch + 1}: the last update made "
                                f"the weights non-finite; stopped, last good checkpoint kept at {ckpt_path}")
        history["epochs"].append(dict(
            epoch=epoch + 1, seconds=round(seconds, 3), beta=sum(betas) / len(betas),
            train_elbo=tr["elbo"], train_recon=tr["recon"], train_kl=tr["kl"],
            test_elbo=te["elbo"], test_recon=te["recon"], test_kl=te["kl"],
            test_images=min(EPOCH_TEST, len(test_x)),
            eval_seconds=round(time.perf_counter() - t0 - seconds, 3)))
        done = history["epochs"][start_epoch:]
        wall = sum(e["seconds"] + e["eval_seconds"] for e in done) / len(done)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | train elbo {tr['elbo']:7.2f} recon {tr['recon']:7.2f} "
              f"kl {tr['kl']:6.2f} | test[:{EPOCH_TEST}] elbo {te['elbo']:7.2f} recon {te['recon']:7.2f} "
              f"kl {te['kl']:6.2f} | beta {history['epochs'][-1]['beta']:.3f} | {seconds:.1f} s | "
              f"ETA {data.format_seconds(wall * (cfg['epochs'] - epoch - 1))}", flush=True)

        # ---- saving: one dict, atomic, every epoch ----
        data.atomic_torch_save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), config=cfg,
                                    epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch, metrics=history,
                                    rng=torch.get_rng_state(), torch_version=str(torch.__version__)), ckpt_path)
        data.write_json(os.path.join(out, "history.json"), history)

    # ---- final evaluation on the 10,000 test images, beta = 1 ------------------------------------
    train_seconds = sum(e["seconds"] for e in history["epochs"])
    final = evaluate(model, test_x, device, cfg["seed"], with_mean_recon=True)
    print(f"test (beta = 1, {len(test_x)} images): elbo {final['elbo']:.2f} = recon {final['recon']:.2f} + "
          f"kl {final['kl']:.2f} | recon at z = mu {final['recon_mu']:.2f} | "
          f"training {data.format_seconds(train_seconds)}", flush=True)
    mu_train, feat_train = encode_all(model, train_x, device)
    mu_test, feat_test = encode_all(model, test_x, device)
    probes = {}
    if not cfg["no_probe"]:
        print("linear probes (fitted on the training subset, scored on the test images):")
        t0 = time.perf_counter()
        probes = run_probes(cfg, device, train_x, train_y, test_x, test_y,
                            (mu_train, feat_train, mu_test, feat_test))
        probes["probe_seconds"] = time.perf_counter() - t0

    # ---- saving ------------------------------------------------------------------------------------
    buf = io.BytesIO()  # np.savez into memory, then one atomic write: never a torn file
    np.savez(buf, train_z=mu_train.numpy(), train_y=train_y.numpy(),     # mu (N, 64), labels (N,)
             test_z=mu_test.numpy(), test_y=test_y.numpy())
    data.atomic_write_bytes(os.path.join(out, "latents.npz"), buf.getvalue())
    save_pictures(model, cfg, test_x, history, device)
    total_seconds = time.perf_counter() - t_start
    metrics_out = dict(
        test_elbo=final["elbo"], test_recon=final["recon"], test_kl=final["kl"],
        test_recon_mu=final["recon_mu"],
        **probes,
        params=params, epochs=len(history["epochs"]), train_seconds=train_seconds,
        seconds_per_epoch=train_seconds / len(history["epochs"]), total_seconds=total_seconds,
        device=str(device), threads=torch.get_num_threads(), torch=str(torch.__version__), seed=cfg["seed"],
        config=cfg,
        units="elbo = recon + kl at beta 1, per image, mean over the 10,000 test images; recon = squared "
              "error summed over 3072 values in [-1, 1]; kl = KL(q(z|x) || N(0, I)) summed over 64 dims; "
              "one z ~ q(z|x) per image (recon_mu: z = mu); probe accuracies in [0, 1]; seconds: wall "
              "(train_seconds: training epochs only; total_seconds: this process, data to last file)")
    data.write_json(os.path.join(out, "metrics.json"), metrics_out)
    print(f"outputs in {out} | total {data.format_seconds(total_seconds)} "
          f"(training {data.format_seconds(train_seconds)})")
    return metrics_out


# ----------------------------------------------------------------------------------------------
# Saving pictures
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def save_pictures(model, cfg, test_x, history, device):
    out = cfg["out"]
    model.eval()
    # Reconstructions: rows of 8 test images, each row above the decoded z = mu of those images
    x = data.to_float(test_x[:N_SHOW].to(device))
    rec = model.decode(model.encode(x)[0])
    rows = [t for i in range(0, N_SHOW, 8) for t in (x[i:i + 8], rec[i:i + 8])]
    data.save_grid(torch.cat(rows).cpu(), os.path.join(out, "reconstructions.png"), nrow=8)
    # Interpolations: row k goes from test image 2k to 2k+1 along the straight line between their mu
    xa = data.to_float(test_x[0:2 * N_INTERP_PAIRS:2].to(device))   # (8, 3, 32, 32)
    xb = data.to_float(test_x[1:2 * N_INTERP_PAIRS:2].to(device))
    ma, mb = model.encode(xa)[0], model.encode(xb)[0]                 # (8, 64)
    t = torch.linspace(0, 1, N_INTERP_STEPS, device=device).view(1, -1, 1)
    z = ((1 - t) * ma.unsqueeze(1) + t * mb.unsqueeze(1)).reshape(-1, LATENT_DIM)    # (64, 64)
    mid = model.decode(z).reshape(N_INTERP_PAIRS, N_INTERP_STEPS, 3, 32, 32)
    grid = torch.cat([xa.unsqueeze(1), mid, xb.unsqueeze(1)], dim=1).flatten(0, 1)   # (80, 3, 32, 32)
    data.save_grid(grid.cpu(), os.path.join(out, "interpolations.png"), nrow=N_INTERP_STEPS + 2)
    # Samples: decoded z ~ N(0, I), a fixed draw for the seed
    z = torch.randn(N_SAMPLES, LATENT_DIM, generator=torch.Generator().manual_seed(cfg["seed"])).to(device)
    data.save_grid(model.decode(z).cpu(), os.path.join(out, "samples.png"), nrow=8)
    model.train()
    # Curves: one chart per quantity, train (running mean over the epoch) and test
    ep = [e["epoch"] for e in history["epochs"]]
    charts = [data.draw_chart({"train": (ep, [e[f"train_{k}"] for e in history["epochs"]]),
                               f"test (first {EPOCH_TEST})": (ep, [e[f"test_{k}"] for e in history["epochs"]])},
                              title=title, xlabel="epoch", ylabel="per image")
              for k, title in (("elbo", "ELBO = recon + KL"), ("recon", "recon: summed squared error"),
                               ("kl", "KL to N(0, I), nats"))]
    data.save_charts(os.path.join(out, "curves.png"), charts, ncols=3)


# ----------------------------------------------------------------------------------------------
# Speed check: this loop vs the plain tutorial loop (pytorch/examples vae: DataLoader, .item())
# ----------------------------------------------------------------------------------------------
def tutorial_epoch(model, optimizer, images_float, batch_size, device):
    """The pytorch/examples VAE loop over a TensorDataset + DataLoader (defaults: no workers),
    .item() every step; the same model, optimiser, loss and batch size as ours."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images_float),
                                         batch_size=batch_size, shuffle=True)
    model.train()
    train_loss = 0.0
    for (x,) in loader:
        x = x.to(device)
        optimizer.zero_grad()
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        loss, _, _ = vae_loss(model.decode(z), x, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss / len(loader)


def bench(cfg, repeats=4):
    """Time one training epoch of each loop on the same subset from the same init; `repeats`
    rounds, alternating which loop goes first, the fastest of each kept (the machine may be
    shared). Writes bench.json."""
    device = data.pick_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    images, labels = data.load_cifar10(cfg["data_dir"], train=True, download=not cfg["no_download"])
    if cfg["subset"] > len(images):
        raise data.DataError(f"--subset {cfg['subset']} is larger than the {len(images)} training images")
    idx = data.stratified_indices(labels, cfg["subset"], seed=cfg["seed"])
    batches = data.Batches(images[idx], labels[idx], cfg["batch_size"], device=device, seed=cfg["seed"])
    train_float = data.to_float(images[idx])   # the tutorial's TensorDataset holds floats, made once
    betas = [cfg["beta"]] * len(batches)
    times = {"ours": [], "tutorial": []}
    for r in range(repeats):
        for name in (("ours", "tutorial") if r % 2 == 0 else ("tutorial", "ours")):  # neither always first
            # the tutorial's model is the plain one (NCHW); ours is as configured (channels_last)
            model = build_model(cfg if name == "ours" else {**cfg, "channels_last": False}).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
            t0 = time.perf_counter()
            if name == "ours":
                train_epoch(model, optimizer, batches.epoch(0), betas,
                            torch.Generator().manual_seed(noise_seed(cfg["seed"], 0)))
            else:
                tutorial_epoch(model, optimizer, train_float, cfg["batch_size"], device)
            times[name].append(time.perf_counter() - t0)
            print(f"  {name:8s} epoch: {times[name][-1]:.2f} s", flush=True)
    ours, tut = min(times["ours"]), min(times["tutorial"])
    res = dict(subset=cfg["subset"], batch_size=cfg["batch_size"], steps=len(batches), device=str(device),
               ours_seconds=ours, tutorial_seconds=tut, speedup=tut / ours, all_seconds=times,
               threads=torch.get_num_threads(), channels_last=cfg["channels_last"],
               torch=str(torch.__version__))
    print(f"one epoch of {len(batches)} steps: ours {ours:.2f} s | DataLoader tutorial {tut:.2f} s | "
          f"tutorial / ours = {tut / ours:.2f}x (fastest of {repeats}; channels_last "
          f"{'on' if cfg['channels_last'] else 'off'} in ours, off in the tutorial)")
    data.write_json(os.path.join(cfg["out"], "bench.json"), res)
    return res


if __name__ == "__main__":
    data.cli_main(main)
