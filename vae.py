"""Convolutional VAE on CIFAR-10: trains the study's model, evaluates it, and measures with linear
probes what its latent code learned -- next to the baselines that give that number a meaning.

Run:
    python vae.py                            # study settings: 20 epochs, 10k subset, seed 42
    python vae.py --epochs 5 --no-probe --out runs/vae_quick    # a quick look
    python vae.py --beta-schedule cyclical --cycles 4 --out runs/vae_cyclical
    python vae.py --resume                   # continue runs/vae/checkpoint.pt exactly
    python vae.py --bench --subset 2000      # this loop vs the DataLoader tutorial loop

The quick look took 24 s on this project's 2-core CPU when idle; on cores other jobs share, add
--threads 1 (1m24s at load average 6, where the default 2 threads took 5 minutes).
In runs/vae_quick, reconstructions.png shows each test image (rows "test") above a blurry copy
(rows "recon"): its colours, the object a soft blob in the right place, no edges or texture (a
squared error rewards the mean of what z cannot pin down). interpolations.png fades smoothly from
test image A (first column) to B (last), every column a plausible blur; samples.png shows soft
blobs of sky, earth and dark shapes, but no object one could name.

Papers: Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (the ELBO, the reparameterisation
trick, the closed-form Gaussian KL of their appendix B); future work the study names: Higgins et
al. 2017 (a weight beta on the KL), Fu et al. 2019, "Cyclical Annealing Schedule".

Model, the study's layer list (4x4 kernels, stride 2, padding 1; shapes in class VAE):
    encoder: x (3x32x32) -> Conv 32 -> Conv 64 -> Conv 128 (each + BN + ReLU) -> flatten 2048
             -> Linear -> mu (64), Linear -> log sigma^2 (64)
    sample:  z = mu + sigma * eps, eps ~ N(0, I)          (the reparameterisation trick)
    decoder: z -> Linear -> 4x4x128 -> ConvT 64 -> ConvT 32 (each + BN + ReLU) -> ConvT 3 + Tanh

Loss (vae_loss), and the unit of every figure this file prints: per image, averaged over the batch,
    L = MSE + KL, MSE summed over the 3072 values in [-1, 1], KL(q(z|x) || N(0, I)) summed over
    the 64 latent dimensions. "ELBO" here means MSE + KL (lower is better, the study's unit): the
    negative ELBO in nats of a Gaussian decoder N(x_hat, I/2), less 1536 ln(pi).
Future work, after the plain model under its own banner: a weight beta on the KL (--beta) and
KL-weight schedules (--beta-schedule linear | cyclical).

Outputs in --out (default runs/vae): checkpoint.pt (atomic, every epoch), history.json,
metrics.json, latents.npz, reconstructions.png, interpolations.png, samples.png, curves.png; with
--bench only bench.json. Same seed, device and thread count -> the same numbers; --resume of a
killed run gives the very weights of an uninterrupted one. Measured results: README.md, "Results".

Left out on purpose: the study's perceptual (VGG) loss (needs a pretrained network), a learned
decoder variance, importance-weighted ELBO bounds, and float16 with loss scaling (--precision
bf16 needs none: bfloat16 has float32's range).
"""
import contextlib
import functools
import io
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn

import data
import metrics
import runs

# ==== Settings ================================================================================
# Flags use the same names in kebab-case; the resolved config is printed and saved with every
# result. The KL weight's settings (future work) are in their own section below.
EPOCHS = 20              # passes over the subset (the study: 20)
SUBSET = 10_000          # training images, class-stratified: 1,000 per class (the study's subset)
BATCH_SIZE = 128         # images per Adam step; the last, smaller batch of an epoch is kept
SEED = 42                # one seed drives init, data order and noise
OUT = "runs/vae"         # folder for every output
LR = 1e-3                # Adam learning rate (the study; betas stay at PyTorch's (0.9, 0.999))
LATENT_DIM = 64          # size of z (the study); a config may set another ("latent_dim")
EVAL_BATCH = 500         # images per forward pass at evaluation (no gradients, so larger is fine)
EPOCH_TEST = 2_000       # test images in each epoch's line: the first 2,000 (~200 per class); all
                         # 10,000 cost a third of a training epoch, so they are used once, last
N_SHOW = 16              # test images shown in reconstructions.png (2 rows of 8 over their recons)
N_INTERP_PAIRS = 8       # rows in interpolations.png ...
N_INTERP_STEPS = 8       # ... each: image A, 8 decoded points from mu_A to mu_B, image B
N_SAMPLES = 64           # decoded z ~ N(0, I) in samples.png (8 x 8)
# Settings that define the experiment: --resume refuses a checkpoint made with different ones.
RESUME_KEYS = ("subset", "batch_size", "lr", "seed", "width", "beta", "beta_schedule", "cycles",
               "precision")
DEFAULTS = dict(precision="fp32")   # what a config saved before a setting existed meant by it


# ==== Model ===================================================================================
def down(c_in, c_out):
    """Conv 4x4, stride 2, padding 1 (halves H and W) + BN + ReLU. No conv bias: BN subtracts the
    batch mean, which cancels any bias exactly, so it would be wasted parameters."""
    return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU()]


def up(c_in, c_out):
    """ConvTranspose 4x4, stride 2, padding 1 (doubles H and W) + BN + ReLU, no bias (as above)."""
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


# The reparameterisation trick (Kingma & Welling 2014, section 2.4). The encoder gives q(z|x) =
# N(mu, sigma^2), but a sample drawn from it has no gradient with respect to mu and sigma. As
#     z = mu + sigma * eps,   eps ~ N(0, I),   sigma = exp(log sigma^2 / 2)
# the randomness is an input and z a differentiable function of mu and sigma, so the loss's
# gradient reaches the encoder. It outputs log sigma^2, any real number: sigma > 0 for free.
def reparameterise(mu, logvar, eps):
    """z = mu + sigma * eps; mu, logvar (= log sigma^2) and eps ~ N(0, I) all (B, 64)."""
    return mu + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """x (B, 3, 32, 32) in [-1, 1] -> (x_hat, mu, logvar); shapes at --width 1, latent_dim 64."""

    def __init__(self, latent_dim=LATENT_DIM, width=1.0):
        super().__init__()
        self.latent_dim = latent_dim
        c1, c2, c3 = runs.channels(32, width), runs.channels(64, width), runs.channels(128, width)
        self.feature_dim = c3 * 4 * 4                               # 2048: the conv-probe features
        self.encoder = nn.Sequential(
            *down(3, c1),                                           # (B, 32, 16, 16)
            *down(c1, c2),                                          # (B, 64, 8, 8)
            *down(c2, c3),                                          # (B, 128, 4, 4)
            nn.Flatten())                                           # (B, 2048)
        self.fc_mu = nn.Linear(self.feature_dim, latent_dim)        # (B, 64)
        self.fc_logvar = nn.Linear(self.feature_dim, latent_dim)    # (B, 64): log sigma^2
        self.fc_dec = nn.Linear(latent_dim, self.feature_dim)       # (B, 2048), no BN/ReLU after
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (c3, 4, 4)),                            # (B, 128, 4, 4)
            *up(c3, c2),                                            # (B, 64, 8, 8)
            *up(c2, c1),                                            # (B, 32, 16, 16)
            nn.ConvTranspose2d(c1, 3, 4, stride=2, padding=1),      # (B, 3, 32, 32)
            nn.Tanh())                                              # in [-1, 1], like the data

    def encode(self, x):
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.decoder(self.fc_dec(z))

    def forward(self, x, eps=None):
        """eps: (B, 64) noise for the reparameterisation trick, z = mu + sigma * eps. None: z = mu,
        the deterministic code used for reconstructions and probes."""
        mu, logvar = self.encode(x)
        z = mu if eps is None else reparameterise(mu, logvar, eps)
        return self.decode(z), mu, logvar


def build_model(cfg, device="cpu"):
    """The model at its initialisation for cfg's seed, on device: called again after training, it
    gives the very same untrained network for the random-init probe baselines."""
    torch.manual_seed(cfg["seed"])
    model = VAE(cfg.get("latent_dim", LATENT_DIM), cfg["width"])
    if cfg.get("channels_last"):  # NHWC conv weights: every conv then runs (and outputs) NHWC
        model = model.to(memory_format=torch.channels_last)
    return model.to(device)


# ==== Loss ====================================================================================
def vae_loss(x_hat, x, mu, logvar, beta=1.0):
    """Kingma & Welling 2014, eq. 10 with the Gaussian KL of their appendix B:

        ELBO(x) = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2) + log p(x | z)

    with z = mu + sigma * eps. We minimise the negative (beta = 1; other betas: future work):

        L   = MSE + beta * KL
        MSE = sum over the 3072 values (3 x 32 x 32) of (x_hat - x)^2                  per image
        KL  = -1/2 sum over the 64 latent dims of (1 + logvar - mu^2 - exp(logvar))    per image

    Both are then AVERAGED over the batch. MSE equals -log N(x; x_hat, I/2) less 1536 ln(pi), so
    MSE + KL is the negative ELBO (nats per image) of that Gaussian decoder, up to a constant.
    Returns (loss, mse, kl), three scalars.
    """
    mse = (x_hat - x).pow(2).sum(dim=(1, 2, 3)).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return mse + beta * kl, mse, kl


# ==== One training step =======================================================================
def train_step(model, optimizer, x, eps, beta=1.0, amp=contextlib.nullcontext):
    """One Adam step on the batch x (B, 3, 32, 32) with the noise eps (B, latent_dim) and KL weight
    beta (1: the plain ELBO). amp: runs.autocast's context (--precision bf16) around the forward
    pass; the loss is taken on float32 outputs and the backward pass runs outside it. Returns the
    detached (loss, mse, kl) as one (3,) tensor: no .item(), so no device sync."""
    with amp():
        x_hat, mu, logvar = model(x, eps)          # z = mu + sigma * eps inside
    loss, mse, kl = vae_loss(x_hat.float(), x, mu.float(), logvar.float(), beta=beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([loss, mse, kl]).detach()   # stays on the device


# ==== The training loop =======================================================================
def train_epoch(model, optimizer, batches, betas, noise, amp=contextlib.nullcontext):
    """train_step over `batches` (any iterable of (x, y), x float (B, 3, 32, 32) on the model's
    device); betas[i] is the KL weight of step i, noise the CPU generator for eps. Returns a
    (steps, 4) CPU tensor of loss, mse, kl and batch size per step, moved off the device once."""
    model.train()
    device = next(model.parameters()).device
    stats, sizes = [], []
    for i, (x, _) in enumerate(batches):
        # eps drawn on the CPU from the epoch's generator: the same numbers on every device
        eps = torch.randn(x.shape[0], model.latent_dim, generator=noise).to(device)   # (B, 64)
        stats.append(train_step(model, optimizer, x, eps, betas[i], amp))
        sizes.append(x.shape[0])
    sizes = torch.tensor(sizes, dtype=torch.float32)[:, None]
    return torch.cat([torch.stack(stats).cpu(), sizes], dim=1)


def epoch_record(model, stats, betas, test_x, cfg, device, epoch, seconds):
    """One epoch's entry of history.json: the running means of its training steps (train mode,
    sampled z, weights moving; batch means weighted by batch size, as the last batch is smaller)
    and the test figures on the first EPOCH_TEST test images (beta = 1, eval mode)."""
    t0 = time.perf_counter()
    w = stats[:, 3] / stats[:, 3].sum()
    mse, kl = float((stats[:, 1] * w).sum()), float((stats[:, 2] * w).sum())
    te = evaluate(model, test_x[:EPOCH_TEST], device, cfg["seed"])
    if not math.isfinite(te["elbo"]):
        raise runs.NonFiniteLoss(f"test ELBO is {te['elbo']} after epoch {epoch + 1}: the last "
                                 "update made the weights non-finite; stopped, last good "
                                 f"checkpoint kept at {os.path.join(cfg['out'], 'checkpoint.pt')}")
    return dict(epoch=epoch + 1, seconds=round(seconds, 3), beta=sum(betas) / len(betas),
                train_elbo=mse + kl, train_recon=mse, train_kl=kl,
                test_elbo=te["elbo"], test_recon=te["recon"], test_kl=te["kl"],
                test_images=min(EPOCH_TEST, len(test_x)),
                eval_seconds=round(time.perf_counter() - t0, 3))


def train(cfg, device):
    """Train (or --resume) the run cfg describes; after every epoch, OUT/checkpoint.pt and
    OUT/history.json. Returns the last checkpoint dict: everything after training reads the run
    from it, as compare.py does."""
    ckpt_path = os.path.join(cfg["out"], "checkpoint.pt")
    ckpt = runs.resume_checkpoint(cfg, RESUME_KEYS, DEFAULTS)   # None without --resume
    if ckpt is not None and ckpt["epoch"] > cfg["epochs"]:
        raise ValueError(f"--resume: the checkpoint already has {ckpt['epoch']} epochs, more "
                         f"than --epochs {cfg['epochs']}")
    print("config " + json.dumps(cfg, sort_keys=True))
    train_x, train_y = data.load_subset(cfg)                     # uint8 (N, 3, 32, 32), int64 (N,)
    test_x, _ = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    batches = runs.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True)   # the whole subset on the device as uint8; no DataLoader
    steps = len(batches)
    beta_of = beta_schedule(cfg, cfg["epochs"] * steps, ckpt)   # step -> KL weight (1.0: ELBO)
    model = build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    print(f"params {runs.count_params(model):,} | device {device} | threads "
          f"{torch.get_num_threads()} | {len(train_x)} train / {len(test_x)} test images | "
          f"{steps} steps/epoch | beta {cfg['beta']:g} ({cfg['beta_schedule']})"
          + (" | channels_last" if cfg["channels_last"] else ""))
    history, start_epoch = {"epochs": []}, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, start_epoch = ckpt["metrics"], ckpt["epoch"]
        torch.set_rng_state(ckpt["rng"])  # not needed for exactness (noise_seed); for other draws
        print(f"resumed from {ckpt_path} after epoch {start_epoch}")

    for epoch in range(start_epoch, cfg["epochs"]):
        # ---- forward, backward, update: one pass over the subset, timed as training ----
        t0 = time.perf_counter()
        betas = [beta_of(epoch * steps + i) for i in range(steps)]
        noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "vae_eps", epoch))
        stats = train_epoch(model, optimizer, batches.epoch(epoch), betas, noise,
                            runs.autocast(cfg, device))
        seconds = time.perf_counter() - t0
        runs.check_finite(stats, epoch * steps, steps, cfg["out"], ("loss", "mse", "kl"),
                          "try a lower --lr")

        # ---- evaluation and logging: one line per epoch, with the ETA ----
        e = epoch_record(model, stats, betas, test_x, cfg, device, epoch, seconds)
        history["epochs"].append(e)
        done = history["epochs"][start_epoch:]
        eta = sum(d["seconds"] + d["eval_seconds"] for d in done) / len(done) * (
            cfg["epochs"] - epoch - 1)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | train elbo {e['train_elbo']:7.2f} recon "
              f"{e['train_recon']:7.2f} kl {e['train_kl']:6.2f} | test[:{EPOCH_TEST}] elbo "
              f"{e['test_elbo']:7.2f} recon {e['test_recon']:7.2f} kl {e['test_kl']:6.2f} | "
              f"beta {e['beta']:.3f} | {seconds:.1f} s | ETA {data.format_seconds(eta)}",
              flush=True)

        # ---- checkpoint: one dict, atomic, every epoch ----
        ckpt = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), config=cfg,
                    epoch=epoch + 1, step=(epoch + 1) * steps, metrics=history,
                    rng=torch.get_rng_state(), torch_version=str(torch.__version__),
                    script="vae.py")
        runs.atomic_torch_save(ckpt, ckpt_path)
        data.write_json(os.path.join(cfg["out"], "history.json"), history)
    return ckpt


# ==== Future work: the KL weight beta and its schedules -- skip on a first read =================
# The plain VAE above minimises MSE + KL: beta = 1 at every step. The study names two changes.
# Higgins et al. 2017 weight the KL by beta (--beta): above 1 presses q(z|x) towards N(0, I),
# below 1 lets z carry more of the image. KL annealing (Bowman et al. 2016; Fu et al. 2019,
# cyclically) starts beta at 0 and ramps it up, so the decoder learns to use z before the KL pulls
# the code onto the prior. Applied by composition: the run picks one function step -> beta
# (beta_schedule), and train_step only ever sees a number.
BETA = 1.0               # weight of the KL (its maximum under a schedule); 1.0 = the plain ELBO
BETA_SCHEDULE = "constant"  # constant | linear | cyclical (see beta_at)
CYCLES = 4               # cyclical: number of 0 -> beta ramps over the run (the study's slide: 4)
RAMP_FRACTION = 0.5      # linear/cyclical: share of each cycle spent rising (Fu et al.: R = 0.5)


def beta_at(step, total_steps, beta_max=BETA, schedule=BETA_SCHEDULE, cycles=CYCLES):
    """KL weight at optimiser step `step` (0-based) of `total_steps`.

    constant: beta_max throughout.
    cyclical (Fu et al. 2019, eq. 6): the run is split into `cycles` cycles of T / M steps; in
        each, beta rises linearly from 0 to beta_max over the first RAMP_FRACTION (half), then
        holds. With tau = (step mod ceil(T / M)) / (T / M):  beta = beta_max * min(1, tau / R).
    linear: the same with a single cycle -- one ramp from 0 over the first half of the whole run,
        then beta_max for the second half (monotonic KL annealing, Bowman et al. 2016).
    """
    if schedule == "constant":
        return float(beta_max)
    m = 1 if schedule == "linear" else cycles
    period = total_steps / m
    tau = (step % math.ceil(period)) / period
    return float(beta_max) * min(1.0, tau / RAMP_FRACTION)


def beta_schedule(cfg, total_steps, ckpt=None):
    """The run's KL weight as one function of the optimiser step (0-based) of total_steps. The
    linear and cyclical schedules are laid out over the whole run, so a resumed run (ckpt) may
    change --epochs only with the constant one: a new total would change the betas already used."""
    if ckpt is not None and ckpt["config"]["epochs"] != cfg["epochs"] \
            and cfg["beta_schedule"] != "constant":
        raise ValueError(f"--resume: checkpoint was made for --epochs {ckpt['config']['epochs']}; "
                         f"the {cfg['beta_schedule']} beta schedule depends on it, so pass the "
                         "same --epochs")
    return functools.partial(beta_at, total_steps=total_steps, beta_max=cfg["beta"],
                             schedule=cfg["beta_schedule"], cycles=cfg["cycles"])


# ==== Evaluation ==============================================================================
@torch.no_grad()
def evaluate(model, images_uint8, device, seed, with_mean_recon=False):
    """Test figures at beta = 1, eval mode (BN uses its running statistics, so an image's numbers
    do not depend on its batch). One z ~ q(z|x) per image from a fixed generator (an unbiased,
    deterministic one-sample estimate of the ELBO). with_mean_recon: also the MSE of decoding
    z = mu (recon_mu, lower than recon: no sampling noise). Per-image means, unit as vae_loss.
    The sums are float64 on the CPU: Apple GPUs (MPS) have no float64, so values leave the
    device as float32 first."""
    model.eval()
    noise = torch.Generator().manual_seed(runs.noise_seed(seed, "vae_eval"))
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(images_uint8), EVAL_BATCH):
        x = data.to_float(images_uint8[i:i + EVAL_BATCH].to(device))
        mu, logvar = model.encode(x)
        eps = torch.randn(x.shape[0], model.latent_dim, generator=noise).to(device)
        _, mse, kl = vae_loss(model.decode(reparameterise(mu, logvar, eps)), x, mu, logvar)
        sums[0] += mse.cpu().double() * len(x)
        sums[1] += kl.cpu().double() * len(x)
        if with_mean_recon:
            sums[2] += (model.decode(mu) - x).pow(2).sum(dim=(1, 2, 3)).cpu().double().sum()
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
    """Five linear probes (metrics.probe_figures), each fitted on the training subset and scored on
    the 10,000 test images: the trained mu; raw pixels; mu of the same network at its random init
    (same seed, never trained); the trained conv features; the same at random init. Linear probes
    reward dimension, so each accuracy is reported with its feature size (64, 3072 or 2048).
    trained: (mu_train, feat_train, mu_test, feat_test) of the trained model, from encode_all."""
    untrained = build_model(cfg, device)
    r_mu_train, r_feat_train = encode_all(untrained, train_x, device)
    r_mu_test, r_feat_test = encode_all(untrained, test_x, device)
    mu_train, feat_train, mu_test, feat_test = trained
    jobs = [("probe", mu_train, mu_test),
            ("pixel_probe", metrics.pixel_features(train_x), metrics.pixel_features(test_x)),
            ("random_probe", r_mu_train, r_mu_test),
            ("conv_probe", feat_train, feat_test),
            ("random_conv_probe", r_feat_train, r_feat_test)]
    out = {}
    for name, a, b in jobs:
        out.update(metrics.probe_figures(name, a, train_y, b, test_y, cfg["seed"]))
    return out


def evaluate_run(cfg, ckpt, device):
    """The final figures of a trained run (ckpt: the dict of its checkpoint.pt): the test ELBO on
    all 10,000 test images, mu of every training and test image, and (unless --no-probe) the
    probes. Returns (figures, latents): metrics.json's figures, and the arrays of latents.npz."""
    model = load_trained(ckpt, device)
    train_x, train_y = data.load_subset(cfg)
    test_x, test_y = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    final = evaluate(model, test_x, device, cfg["seed"], with_mean_recon=True)
    train_seconds = sum(e["seconds"] for e in ckpt["metrics"]["epochs"])
    print(f"test (beta = 1, {len(test_x)} images): elbo {final['elbo']:.2f} = recon "
          f"{final['recon']:.2f} + kl {final['kl']:.2f} | recon at z = mu {final['recon_mu']:.2f}"
          f" | training {data.format_seconds(train_seconds)}", flush=True)
    mu_train, feat_train = encode_all(model, train_x, device)
    mu_test, feat_test = encode_all(model, test_x, device)
    figures = dict(test_elbo=final["elbo"], test_recon=final["recon"], test_kl=final["kl"],
                   test_recon_mu=final["recon_mu"])
    if not cfg["no_probe"]:
        print("linear probes (fitted on the training subset, scored on the test images):")
        if len(train_x) < SUBSET:   # a validation split of a few images per class picks the L2
            print(f"  warning: {len(train_x)} training images ({len(train_x) // 10} per class) "
                  f"are too few for these accuracies to mean much; the study fits on {SUBSET:,}")
        t0 = time.perf_counter()
        figures.update(run_probes(cfg, device, train_x, train_y, test_x, test_y,
                                  (mu_train, feat_train, mu_test, feat_test)))
        figures["probe_seconds"] = time.perf_counter() - t0
    figures["params"] = runs.count_params(model)
    latents = dict(train_z=mu_train.numpy(), train_y=train_y.numpy(),   # mu (N, 64), labels (N,)
                   test_z=mu_test.numpy(), test_y=test_y.numpy())
    return figures, latents


# ---- images from a trained run: this file's pictures and compare.py's scores use these ----
def load_trained(checkpoint, device):
    """The trained model of a checkpoint dict (runs.load_checkpoint), in eval mode on device (BN
    with its running statistics: an image does not depend on its batch)."""
    model = build_model(checkpoint["config"], device)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


@torch.no_grad()
def sample_images(checkpoint, n, seed, device="cpu"):
    """n decoded z ~ N(0, I), z drawn on the CPU with seed -> uint8 (n, 3, 32, 32) on the CPU."""
    model = load_trained(checkpoint, device)
    z = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([data.to_uint8(model.decode(z[i:i + EVAL_BATCH].to(device)).cpu())
                      for i in range(0, n, EVAL_BATCH)])


@torch.no_grad()
def reconstruct_images(checkpoint, images_uint8, device="cpu"):
    """Reconstructions (decoded z = mu) of uint8 (N, 3, 32, 32) images -> uint8, on the CPU."""
    model = load_trained(checkpoint, device)
    return torch.cat([data.to_uint8(model(data.to_float(images_uint8[i:i + EVAL_BATCH])
                                          .to(device))[0].cpu())
                      for i in range(0, len(images_uint8), EVAL_BATCH)])


def export_sets(cfg, device):
    """--export's two image sets (runs.export), the very ones compare.py scores: samples from noise
    drawn with metrics.EVAL_SEED, and reconstructions of the reference draw of n test images."""
    def reference(n):
        return metrics.reference_images(cfg["data_dir"], "test", n, download=not cfg["no_download"])
    return {"samples": lambda ckpt, n: sample_images(ckpt, n, metrics.EVAL_SEED, device),
            "reconstructions": lambda ckpt, n: reconstruct_images(ckpt, reference(n), device)}


# ==== Outputs =================================================================================
OUTPUTS = ["checkpoint.pt  every epoch: model, optimiser, config, history (what --resume reads)",
           "history.json   per epoch: train and test figures;  latents.npz: mu of every image",
           "metrics.json   the final figures on all 10,000 test images, the probe accuracies",
           "reconstructions.png, interpolations.png, samples.png, curves.png: captioned pictures"]


@torch.no_grad()
def save_pictures(cfg, ckpt, device, name="VAE"):
    """reconstructions.png, interpolations.png, samples.png and curves.png of a trained run,
    each with a caption that says what it shows; name: the model, for the captions."""
    out, epochs = cfg["out"], ckpt["metrics"]["epochs"]
    after = f"{name} after {len(epochs)} epoch{'s' * (len(epochs) != 1)}"
    test_x, _ = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    # Reconstructions: rows of 8 test images, each row above the decoded z = mu of those images
    shown, rec = test_x[:N_SHOW], reconstruct_images(ckpt, test_x[:N_SHOW], device)
    rows = [t for i in range(0, N_SHOW, 8) for t in (shown[i:i + 8], rec[i:i + 8])]
    data.save_grid(torch.cat(rows), os.path.join(out, "reconstructions.png"), nrow=8,
                   caption=f"{after}: test images above their reconstructions (decoded z = mu)",
                   row_labels=["test", "recon"] * (N_SHOW // 8))
    # Interpolations: row k goes from test image 2k to 2k+1 along the line between their mu
    model = load_trained(ckpt, device)
    xa = data.to_float(test_x[0:2 * N_INTERP_PAIRS:2].to(device))   # (8, 3, 32, 32)
    xb = data.to_float(test_x[1:2 * N_INTERP_PAIRS:2].to(device))
    ma, mb = model.encode(xa)[0], model.encode(xb)[0]                 # (8, 64)
    t = torch.linspace(0, 1, N_INTERP_STEPS, device=device).view(1, -1, 1)
    z = ((1 - t) * ma.unsqueeze(1) + t * mb.unsqueeze(1)).reshape(-1, model.latent_dim)  # (64, 64)
    mid = model.decode(z).reshape(N_INTERP_PAIRS, N_INTERP_STEPS, 3, 32, 32)
    grid = torch.cat([xa.unsqueeze(1), mid, xb.unsqueeze(1)], 1).flatten(0, 1)  # (80, 3, 32, 32)
    data.save_grid(grid.cpu(), os.path.join(out, "interpolations.png"), nrow=N_INTERP_STEPS + 2,
                   caption=f"{after}: first and last columns are real test images A and B; the "
                   f"{N_INTERP_STEPS} between decode points on the line from mu_A to mu_B")
    # Samples: decoded z ~ N(0, I), a fixed draw for the seed
    data.save_grid(sample_images(ckpt, N_SAMPLES, cfg["seed"], device),
                   os.path.join(out, "samples.png"), nrow=8,
                   caption=f"{after}: {N_SAMPLES} samples, decoded z ~ N(0, I)")
    # Curves: one chart per quantity, train (running mean over the epoch) and test
    ep = [e["epoch"] for e in epochs]

    def chart(k, title):
        series = {"train": (ep, [e[f"train_{k}"] for e in epochs]),
                  f"test (first {EPOCH_TEST})": (ep, [e[f"test_{k}"] for e in epochs])}
        return data.draw_chart(series, title=title, xlabel="epoch", ylabel="per image")
    charts = [chart("elbo", "ELBO = recon + KL"), chart("recon", "recon: summed squared error"),
              chart("kl", "KL to N(0, I), nats")]
    data.save_charts(os.path.join(out, "curves.png"), charts, ncols=3,
                     caption=f"{name}, per image: train = running mean over each epoch's steps, "
                     "test at beta = 1")


def save_outputs(cfg, ckpt, figures, latents, device, t_start, name="VAE"):
    """latents.npz, the pictures (name: the model, for their captions), then metrics.json (its
    total_seconds: this process, data to last file). Returns metrics.json's dict."""
    buf = io.BytesIO()  # np.savez into memory, then one atomic write: never a torn file
    np.savez(buf, **latents)
    data.atomic_write_bytes(os.path.join(cfg["out"], "latents.npz"), buf.getvalue())
    save_pictures(cfg, ckpt, device, name)
    epochs = ckpt["metrics"]["epochs"]
    train_seconds = sum(e["seconds"] for e in epochs)
    total_seconds = time.perf_counter() - t_start
    dim = latents["test_z"].shape[1]
    metrics_out = dict(
        **figures, epochs=len(epochs), train_seconds=train_seconds,
        seconds_per_epoch=train_seconds / len(epochs), total_seconds=total_seconds,
        device=str(device), threads=torch.get_num_threads(), torch=str(torch.__version__),
        seed=cfg["seed"], precision=cfg["precision"], config=cfg, commit=runs.git_commit(),
        units="elbo = recon + kl at beta 1, per image, mean over the 10,000 test images; recon = "
              "squared error summed over 3072 values in [-1, 1]; kl = KL(q(z|x) || N(0, I)) summed "
              f"over {dim} dims; one z ~ q(z|x) per image (recon_mu: z = mu); probe accuracies in "
              "[0, 1]; seconds: wall (train_seconds: training epochs only; total_seconds: this "
              "process, data to last file)")
    data.write_json(os.path.join(cfg["out"], "metrics.json"), metrics_out)
    print(f"outputs in {cfg['out']} | total {data.format_seconds(total_seconds)} "
          f"(training {data.format_seconds(train_seconds)})")
    return metrics_out


# ==== Speed check (--bench) ===================================================================
def bench_step(cfg, device, tutorial):
    """For runs.bench: the model at its init for cfg (and its Adam), and a function that runs one
    training step on a batch x -- ours (train_step), or with tutorial the pytorch/examples one."""
    model = build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    if tutorial:
        return lambda x: runs.tutorial_vae_step(model, optimizer, x, device, vae_loss)
    noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "vae_eps"))

    def step(x):
        eps = torch.randn(x.shape[0], model.latent_dim, generator=noise).to(device)
        return train_step(model, optimizer, x, eps, cfg["beta"], runs.autocast(cfg, device))
    return step


# ==== Command line ============================================================================
def parse_args(argv=None):
    """The VAE's own flags, then those every training script shares (runs.add_run_flags); all
    validated before any work starts (runs.cli_main turns the ValueError into one line)."""
    p = runs.make_parser(
        "Convolutional VAE on CIFAR-10: train it, evaluate it, and probe what its latent code\n"
        "learned. The docstring of vae.py explains the model, the loss and its units.",
        examples=["python vae.py                      # the study: 20 epochs, 10k subset, seed 42",
                  "python vae.py --epochs 5 --no-probe --out runs/vae_quick"
                  "   # a quick look, ~30 s",
                  "python vae.py --beta-schedule cyclical --cycles 4 --out runs/vae_cyclical"],
        outputs=OUTPUTS + ["bench.json     with --bench: the speed check, and nothing else"])
    g = p.add_argument_group("the VAE")
    g.add_argument("--lr", type=float, default=LR, help="Adam learning rate")
    g = p.add_argument_group("KL weight and schedules (future work; the defaults give the ELBO)")
    g.add_argument("--beta", type=float, default=BETA, help="KL weight (maximum under a schedule)")
    g.add_argument("--beta-schedule", default=BETA_SCHEDULE,
                   choices=("constant", "linear", "cyclical"),
                   help="KL weight per step: constant; linear = one ramp over the first half of "
                   "the run; cyclical = Fu et al. 2019")
    g.add_argument("--cycles", type=int, default=CYCLES,
                   help="number of 0 -> beta ramps for --beta-schedule cyclical")
    runs.add_run_flags(p, epochs=EPOCHS, subset=SUBSET, batch_size=BATCH_SIZE, seed=SEED, out=OUT)
    a = p.parse_args(argv)
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {a.lr}")
    if not (math.isfinite(a.beta) and a.beta >= 0):
        raise ValueError(f"--beta must be a number >= 0, got {a.beta}")
    if a.cycles < 1:
        raise ValueError(f"--cycles must be >= 1, got {a.cycles}")
    runs.check_run_flags(a)   # last: its --out and --resume checks touch the disk
    return vars(a)


# ==== Main: config, training, evaluation, outputs =============================================
def main(argv=None):
    cfg = parse_args(argv)
    device = runs.setup_run(cfg)
    if cfg["export"]:
        return runs.export(cfg, "vae.py", export_sets(cfg, device))    # images only, no training
    if cfg["bench"]:
        return runs.bench(cfg, device, bench_step, drop_last=False)   # bench.json, nothing else
    t_start = time.perf_counter()
    ckpt = train(cfg, device)                                   # checkpoint.pt, history.json
    figures, latents = evaluate_run(cfg, ckpt, device)          # all 10,000 test images, probes
    return save_outputs(cfg, ckpt, figures, latents, device, t_start)   # pictures, metrics.json


if __name__ == "__main__":
    runs.cli_main(main)
