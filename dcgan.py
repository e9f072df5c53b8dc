"""DCGAN on CIFAR-10: the study's generator and discriminator, trained as Radford et al. 2016 train
theirs, then measured: how varied the samples are, whether they copy training images, and what
the discriminator learned (a linear probe on its features). The remedies the study names and its
future work are flags, off by default, in their own section after the plain model and loop.

Run:
    python dcgan.py --epochs 5 --width 0.5 --no-probe --out runs/dcgan_quick
    python dcgan.py                                  # the study: 40 epochs, 10k subset, seed 42
    python dcgan.py --loss wgan-gp --out runs/dcgan_wgangp   # a remedy (python dcgan.py --help)
    python dcgan.py --resume                         # continue runs/dcgan/checkpoint.pt exactly
    python dcgan.py --bench --subset 2000            # the selected step's loop vs the tutorial's
The first is the quick look: 390 steps of a half-width G and D (203k and 168k parameters), 31 s
on this project's 2-core CPU when idle (on cores other jobs share add --threads 1: 1m25s at load
average ~4, where a second thread, waiting for the busy core, made each step 4x slower).
progress.png goes from one brownish fog for every z (epoch 1) to blurred scenes by epoch 5: a
bright or sky-blue top over green or brown ground, dark or coloured blobs in the middle, a faint
checkerboard from the transposed convolutions, no objects yet; each row of interpolations.png
changes smoothly. The study's run gives object-like silhouettes on plausible
backgrounds (docs/dcgan_samples.png; figures in README.md, "Results").

Papers: Goodfellow et al. 2014 (the GAN game, the non-saturating G loss); Radford et al. 2016
(DCGAN: N(0, 0.02) init, Adam 2e-4 with beta1 0.5, BatchNorm; sec. 5.1: a linear classifier on
max-pooled D features). Remedies: Miyato et al. 2018 (spectral norm; the hinge loss, with Lim & Ye
2017), Heusel et al. 2017 (TTUR), Salimans et al. 2016 (minibatch discrimination), Gulrajani et
al. 2017 (WGAN-GP), Zhao et al. 2020 (DiffAugment), Yazici et al. 2019 (an EMA of G's weights).

Model, the study's layer lists (4x4 kernels, stride 2, padding 1, z in R^100):
    G: z -> Linear -> 4x4x128 -> ConvT 128 -> ConvT 64 (each + BN + ReLU) -> ConvT 3 + Tanh
    D: x -> Conv 64 + LReLU(0.2) -> Conv 128 -> Conv 256 (each + BN + LReLU) -> Linear -> logit

Losses (--loss), each term a mean over the batch; every loss figure is printed in these units:
    bce (the study): D minimises -[log D(x) + log(1 - D(G(z)))], G minimises -log D(G(z));
             D(x) and D(G(z)) are shown as D's probability "real"
    hinge:   D minimises mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), G -mean(D(G(z)))
    wgan-gp: D minimises mean(D(G(z))) - mean(D(x)) + lambda * gradient penalty, G -mean(D(G(z)))
    (for hinge and wgan-gp D outputs an unbounded score, shown as it is). The diversity and
    memorisation distances are L2 over the 3072 pixels in [-1, 1] (metrics.py).

Outputs in --out (default runs/dcgan): checkpoint.pt (atomic, every epoch), history.json,
metrics.json, samples.png, progress.png, interpolations.png, curves.png; with --bench only
bench.json. Same seed, device and thread count -> the same numbers; --resume of a killed run gives
the very weights of an uninterrupted one.

Left out on purpose: FID / Inception Score (need a pretrained network; compare.py's business),
label smoothing, feature matching and the other Salimans et al. tricks the study does not use,
and float16 with loss scaling (--precision bf16 needs no scaling: bfloat16 has float32's range).
"""
import contextlib
import copy
import json
import math
import os
import time
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import metrics
import runs

# ==== Settings: the plain DCGAN's (the remedies' are in their own section) ====================
# Flags use the same names in kebab-case; the resolved config is printed and saved with results.
EPOCHS = 40              # passes over the subset (the study: 40 epochs)
SUBSET = 10_000          # training images, class-stratified: 1,000 per class (the study's subset)
BATCH_SIZE = 128         # images per step; an epoch's last partial batch is dropped (see train)
SEED = 42                # one seed drives init, data order, noise: same seed + device, same numbers
OUT = "runs/dcgan"       # folder for every output
Z_DIM = 100              # latent size (the study)
LR = 2e-4                # Adam learning rate for both nets (Radford et al. 2016)
BETAS = (0.5, 0.999)     # beta1 0.5 instead of 0.9: momentum 0.9 oscillated in Radford et al.
INIT_STD = 0.02          # std of N(0, std) for conv/linear weights; BN scale from N(1, std)
LEAKY_SLOPE = 0.2        # LeakyReLU slope in D (Radford et al. 2016)
N_FIXED = 64             # fixed noise vectors: samples.png (8 x 8); the first 8 feed progress.png
PROGRESS_ROWS = 10       # at most this many epochs shown in progress.png (first and last always)
N_DIVERSITY = 500        # generated / real / test images of the diversity and memorisation checks
MIN_DIVERSITY = 0.1      # below it the samples are near-copies of one image (see save_outputs)
FEATURE_BATCH = 500      # images per forward pass when generating or extracting probe features
# Settings that define the experiment: --resume refuses a checkpoint made with different ones.
# --epochs, --device and --channels-last may change (a resume is bit-exact only on the same device
# with the same --channels-last: both change the order of floating-point sums).
RESUME_KEYS = ("subset", "batch_size", "seed", "width", "spectral_norm", "minibatch_disc", "lr_d",
               "lr_g", "loss", "n_critic", "gp_weight", "diffaugment", "ema", "precision")


# ==== Model ===================================================================================
class Generator(nn.Module):
    """z (B, 100) -> image (B, 3, 32, 32) in [-1, 1]. The study writes "FC -> 4x4x128" and no
    more; BN + ReLU follow the Linear here, as in Radford et al.: without a nonlinearity the Linear
    and the first ConvT would collapse into one linear map of z. Layers followed by BN have no
    bias (BN's shift replaces it)."""

    def __init__(self, width=1.0, z_dim=Z_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.c1, c2 = runs.channels(128, width), runs.channels(64, width)
        self.fc = nn.Linear(z_dim, self.c1 * 4 * 4, bias=False)
        self.bn0 = nn.BatchNorm2d(self.c1)  # 2d over the 4x4 map: also works for a batch of one
        self.up1 = nn.ConvTranspose2d(self.c1, self.c1, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.c1)
        self.up2 = nn.ConvTranspose2d(self.c1, c2, 4, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.up3 = nn.ConvTranspose2d(c2, 3, 4, stride=2, padding=1)

    def forward(self, z):
        h = F.relu(self.bn0(self.fc(z).view(-1, self.c1, 4, 4)))  # (B, 128, 4, 4)
        h = F.relu(self.bn1(self.up1(h)))                          # (B, 128, 8, 8)
        h = F.relu(self.bn2(self.up2(h)))                          # (B, 64, 16, 16)
        return torch.tanh(self.up3(h))                             # (B, 3, 32, 32), data's range


class Discriminator(nn.Module):
    """image (B, 3, 32, 32) -> logit (B,), the log-odds that it is real (a score, for the losses
    without a sigmoid). build_models sets the options the remedies need: batchnorm=False (no BN,
    biases instead) and minibatch_disc (MinibatchDiscrimination before the last Linear)."""

    def __init__(self, width=1.0, batchnorm=True, minibatch_disc=False):
        super().__init__()
        c1, c2, c3 = (runs.channels(c, width) for c in (64, 128, 256))
        self.conv1 = nn.Conv2d(3, c1, 4, stride=2, padding=1)  # no BN on D's input layer (Radford)
        self.conv2 = nn.Conv2d(c1, c2, 4, stride=2, padding=1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(c2) if batchnorm else nn.Identity()
        self.conv3 = nn.Conv2d(c2, c3, 4, stride=2, padding=1, bias=not batchnorm)
        self.bn3 = nn.BatchNorm2d(c3) if batchnorm else nn.Identity()
        self.mbd = MinibatchDiscrimination(c3 * 16) if minibatch_disc else nn.Identity()
        self.fc = nn.Linear(c3 * 16 + (MBD_KERNELS if minibatch_disc else 0), 1)
        self.feature_dim = 16 * (c1 + c2 + c3)  # probe features: 7,168 at width 1

    def conv_layers(self, x):
        h1 = F.leaky_relu(self.conv1(x), LEAKY_SLOPE)               # (B, 64, 16, 16)
        h2 = F.leaky_relu(self.bn2(self.conv2(h1)), LEAKY_SLOPE)    # (B, 128, 8, 8)
        h3 = F.leaky_relu(self.bn3(self.conv3(h2)), LEAKY_SLOPE)    # (B, 256, 4, 4)
        return h1, h2, h3

    def forward(self, x):
        f = self.mbd(self.conv_layers(x)[2].flatten(1))  # (B, 4096); --minibatch-disc (B, 4196)
        return self.fc(f).squeeze(1)                     # (B,) logits, no sigmoid

    def features(self, x):
        """Radford et al. sec. 5.1: every conv layer max-pooled to 4x4, flattened, concatenated."""
        return torch.cat([F.adaptive_max_pool2d(h, 4).flatten(1) for h in self.conv_layers(x)], 1)


def init_weights(m):
    """Radford et al. 2016: weights from N(0, 0.02), BN scale from N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, mean=1.0, std=INIT_STD)
        nn.init.zeros_(m.bias)


def build_models(cfg, device="cpu"):
    """G and D at their init for cfg["seed"], on device: twice gives the same weights (the random-
    init probe baseline is the very D training started from). --channels-last stores weights NHWC,
    for oneDNN's direct convolutions on a CPU: same values, another order of sums."""
    torch.manual_seed(cfg["seed"])
    G = Generator(cfg["width"])
    # No BN in D under spectral norm (BN's per-batch rescaling would undo its bound) or under a
    # per-sample gradient penalty (BN makes each sample's score depend on its whole batch)
    batchnorm = not (cfg["spectral_norm"] or loss_of(cfg).penalty)
    D = Discriminator(cfg["width"], batchnorm, cfg["minibatch_disc"])
    G.apply(init_weights)
    D.apply(init_weights)
    if cfg["spectral_norm"]:
        add_spectral_norm(D)            # after the init, so the init touches the raw weights
    fmt = torch.channels_last if cfg.get("channels_last") else torch.preserve_format
    return G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)


def draw_noise(seed):
    """The run's fixed noise, drawn on the CPU from seed: N_FIXED z for the pictures (as
    sample_images(ckpt, N_FIXED, seed) draws), then N_DIVERSITY for the diversity checks."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.randn(N_FIXED, Z_DIM, generator=g)             # samples, progress, interpolations
    return fixed, torch.randn(N_DIVERSITY, Z_DIM, generator=g)    # diversity + memorisation


# ==== Loss ====================================================================================
# Goodfellow et al. 2014. BCE on logits: log-sigmoid computed stably inside one op.
# Every term is a mean over the batch; d_loss adds the real half and the fake half.
def d_loss_fn(logit_real, logit_fake):
    """-[log D(x) + log(1 - D(G(z)))], each averaged over the batch: minimising it maximises
    D's log-likelihood of telling real from fake. Its optimum for a perfect D is 0; at the game's
    equilibrium (D = 1/2 everywhere) it is 2 log 2 = 1.386."""
    real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
    fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    return real + fake


def g_loss_fn(logit_fake):
    """Non-saturating generator loss -log D(G(z)), averaged over the batch. Minimising
    log(1 - D(G(z))) instead (the minimax form) gives vanishing gradients when D wins early;
    -log D(G(z)) has the same fixed point and strong gradients then (Goodfellow et al., sec. 3)."""
    return F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))


# ==== One training step =======================================================================
def train_step(G, D, opt_g, opt_d, x, z, amp=contextlib.nullcontext):
    """One iteration of the GAN game on real images x (B, 3, 32, 32) and noise z (B, 100).
    Returns the detached (d_loss, g_loss, D(x), D(G(z))) as one tensor, with no .item() (no GPU
    sync). amp: runs.autocast's context around the forward passes (--precision bf16)."""
    with amp():
        fake = G(z).float()                       # (B, 3, 32, 32); one G forward serves both steps

    # (1) Update D: maximise log D(x) + log(1 - D(G(z)))   [minimise d_loss]
    with amp():
        logit_real = D(x).float()                 # (B,); losses from float32, backward outside amp
        logit_fake = D(fake.detach()).float()     # detach: this step must not move G
    d_loss = d_loss_fn(logit_real, logit_fake)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # (2) Update G: maximise log D(G(z))   [non-saturating; minimise g_loss]
    # D's weights are frozen for this backward: the gradient flows through D into G, but D's own
    # weight gradients (which opt_d would discard anyway) are never computed.
    D.requires_grad_(False)
    with amp():
        logit = D(fake).float()                   # the D just updated, as in Goodfellow et al.
    g_loss = g_loss_fn(logit)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    # D(x), D(G(z)): D's mean probabilities "real" in step (1), before its update
    return torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(logit_real.detach()).mean(),
                        torch.sigmoid(logit_fake.detach()).mean()])


# ==== The training loop =======================================================================
def optimisers(G, D, cfg):
    """Adam for each net, with its own learning rate (equal unless --ttur or --lr-d/--lr-g)."""
    betas = tuple(setting(cfg, "betas"))   # BETAS, or the --loss's own (LOSSES)
    return (torch.optim.Adam(G.parameters(), lr=cfg["lr_g"], betas=betas),
            torch.optim.Adam(D.parameters(), lr=cfg["lr_d"], betas=betas))


def check_finite(stats, first_step, steps, out):
    runs.check_finite(stats, first_step, steps, out, ("d_loss", "g_loss"),
                      "try a lower --lr-d/--lr-g, --ttur or --spectral-norm")


def train_epoch(G, D, opt_g, opt_d, step, batches, noise, cfg, first_step, steps):
    """`step` (train_step, or the one select_step picks) over one epoch of `batches`, z drawn from
    the CPU generator `noise` (the same numbers on every device). Returns the (steps, 4) CPU
    tensor of d_loss, g_loss, D(x), D(G(z)), read off the device once; --log-every N adds a line
    (and a sync) every N steps."""
    G.train(), D.train()
    device = next(G.parameters()).device
    stats = torch.zeros(steps, 4, device=device)
    n, amp = cfg["log_every"], runs.autocast(cfg, device)
    for i, (x, _) in enumerate(batches):
        z = torch.randn(x.shape[0], Z_DIM, generator=noise).to(device)   # (B, 100)
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)           # same values, NHWC
        stats[i] = step(G, D, opt_g, opt_d, x, z, amp)
        if n and (i + 1) % n == 0:                                       # logging step: sync here
            window = stats[i + 1 - n:i + 1].cpu()
            check_finite(window, first_step + i + 1 - n, steps, cfg["out"])
            m = window.mean(0).tolist()
            print(f"  step {first_step + i + 1:6d} | d_loss {m[0]:.3f} | g_loss {m[1]:.3f} | "
                  f"D(x) {m[2]:.3f} | D(G(z)) {m[3]:.3f}")
    return stats.cpu()


def train(cfg, device):
    """Train (or --resume) the run cfg describes; after every epoch, OUT/checkpoint.pt and
    OUT/history.json. Returns the last checkpoint dict, which everything after training reads."""
    ckpt_path = os.path.join(cfg["out"], "checkpoint.pt")
    ckpt = runs.resume_checkpoint(cfg, RESUME_KEYS, DEFAULTS)
    print("config " + json.dumps(cfg, sort_keys=True))
    train_x, train_y = data.load_subset(cfg)                     # uint8 (N, 3, 32, 32), int64 (N,)
    # drop_last: every step sees a full batch, so BN never normalises over a handful of images
    batches = runs.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True, drop_last=True)
    steps, real_pairwise = len(batches), real_diversity(train_x, cfg["seed"])
    G, D = build_models(cfg, device)
    G_ema = copy.deepcopy(G) if cfg["ema"] else None   # --ema: pictures and figures come from it
    opt_g, opt_d = optimisers(G, D, cfg)
    fixed_noise, diversity_noise = draw_noise(cfg["seed"])
    history, progress_rows = {"epochs": [], "steps": []}, []   # rows: (8, 3, 32, 32) uint8 each
    start_epoch, train_seconds = 0, 0.0
    if ckpt is not None:
        G.load_state_dict(ckpt["G"]), D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"]), opt_d.load_state_dict(ckpt["opt_d"])
        fixed_noise, history, start_epoch = ckpt["fixed_noise"], ckpt["history"], ckpt["epoch"]
        progress_rows, train_seconds = list(ckpt["progress_rows"]), ckpt["train_seconds"]
        print(f"resumed from {ckpt_path} at epoch {start_epoch}")
    if G_ema is not None:
        add_ema(G_ema, G, opt_g, cfg["ema"], ckpt)
    print(f"params G {runs.count_params(G):,}  D {runs.count_params(D):,} | device {device} | "
          f"{steps} steps/epoch | lr_d {cfg['lr_d']:g} lr_g {cfg['lr_g']:g} | speed: "
          f"{'channels_last, ' if cfg['channels_last'] else ''}{torch.get_num_threads()} threads\n"
          f"loss {cfg['loss']}: {loss_of(cfg).units} | remedies: {remedies(cfg)}")

    for epoch in range(start_epoch, cfg["epochs"]):
        # ---- forward, backward, update: one pass over the subset, timed as training ----
        noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "gan_z", epoch))
        step = select_step(cfg, noise, epoch, device)           # train_step, or a remedies' step
        t0 = time.perf_counter()
        stats = train_epoch(G, D, opt_g, opt_d, step, batches.epoch(epoch), noise, cfg,
                            epoch * steps, steps)
        seconds = time.perf_counter() - t0
        check_finite(stats, epoch * steps, steps, cfg["out"])   # before this epoch is saved
        train_seconds += seconds

        # ---- evaluation and logging: one line per epoch, with the ETA ----
        shown = G if G_ema is None else G_ema
        generated = generate(shown, diversity_noise, device)
        diversity = metrics.mean_pairwise_distance(generated) / real_pairwise
        progress_rows.append(data.to_uint8(generate(shown, fixed_noise[:8], device)))
        m = stats.mean(0).tolist()
        history["epochs"].append(dict(epoch=epoch + 1, seconds=round(seconds, 3), d_loss=m[0],
                                      g_loss=m[1], d_x=m[2], d_g_z=m[3], diversity=diversity))
        history["steps"] += [dict(step=epoch * steps + i + 1, d_loss=s[0], g_loss=s[1], d_x=s[2],
                                  d_g_z=s[3]) for i, s in enumerate(stats.tolist())]
        eta = train_seconds / len(history["epochs"]) * (cfg["epochs"] - epoch - 1)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | d_loss {m[0]:.3f} | g_loss {m[1]:.3f} | "
              f"D(x) {m[2]:.3f} | D(G(z)) {m[3]:.3f} | diversity {diversity:.3f} | "
              f"{seconds:.1f} s | ETA {data.format_seconds(eta)}")

        # ---- checkpoint: one dict, atomic, every epoch ----
        ckpt = dict(G=G.state_dict(), D=D.state_dict(), opt_g=opt_g.state_dict(),
                    opt_d=opt_d.state_dict(), config=cfg, epoch=epoch + 1, history=history,
                    fixed_noise=fixed_noise, progress_rows=progress_rows,
                    train_seconds=train_seconds, torch_rng=torch.get_rng_state(),
                    note="z noise and data order are reseeded from (seed, epoch)",
                    script="dcgan.py")
        if G_ema is not None:
            ckpt["G_ema"] = G_ema.state_dict()     # the averaged G: pictures, metrics, resume
        runs.atomic_torch_save(ckpt, ckpt_path)
        data.write_json(os.path.join(cfg["out"], "history.json"), history)
    return ckpt


# ==== The remedies the study names and its future work; skip on a first read ==================
# Each is a flag, off by default, and enters by composition, never as a branch of train_step:
# spectral norm and minibatch discrimination are options of build_models; a --loss is one entry
# of LOSSES; select_step picks each epoch's step once; DiffAugment wraps what D sees; the EMA of
# G follows every step of G's Adam (add_ema).
TTUR_LR_D, TTUR_LR_G = 4e-4, 1e-4   # --ttur: D learns faster than G (Heusel et al. 2017)
WGAN_LR, WGAN_BETAS = 1e-4, (0.5, 0.9)  # --loss wgan-gp: the official CIFAR-10 settings of
WGAN_N_CRITIC, GP_WEIGHT = 5, 10.0   # Gulrajani et al. 2017: Adam 1e-4, (0.5, 0.9), 5 critic
                         # steps per G step, penalty weight lambda = 10
MBD_KERNELS = 100        # minibatch discrimination: B kernels ...
MBD_KERNEL_DIM = 5       # ... of C dimensions each (Salimans et al. 2016, their CIFAR-10 code)
AUGMENTS = ("color", "translation", "cutout")  # DiffAugment's transforms (Zhao et al. 2020)
TRANSLATE_FRAC = 0.125   # translation: up to 1/8 of the side (4 px on 32 x 32), zeros shifted in
CUTOUT_FRAC = 0.5        # cutout: one square of half the side (16 x 16) set to 0
# What a config saved before a setting existed meant by it (checkpoints of older runs still load)
DEFAULTS = dict(loss="bce", n_critic=1, gp_weight=GP_WEIGHT, diffaugment=[], ema=0.0,
                betas=list(BETAS), precision="fp32")


def setting(cfg, key):
    """cfg[key], or what configs saved before that setting existed meant (DEFAULTS)."""
    return cfg.get(key, DEFAULTS[key])


def add_spectral_norm(D):
    """Miyato et al. 2018: W / sigma(W) in every layer of D, sigma from one power iteration per
    training forward (a conv kernel seen as (out, in*4*4), as in the paper). The minibatch layer's
    T is not normalised: with --minibatch-disc the bound covers the layers, not all of D."""
    for layer in (D.conv1, D.conv2, D.conv3, D.fc):
        nn.utils.parametrizations.spectral_norm(layer)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, sec. 3.2: lets D compare each sample with the rest of its batch.
    f (B, A) -> M = f T, viewed (B, K, C): K kernels of C dims; per kernel k, c_k(i, j) =
    exp(-||M_i,k - M_j,k||_1) and o(i)_k = sum_{j != i} c_k(i, j); output [f, o] (B, A + K).
    Near-copies in a batch (mode collapse) give a large o, which D can learn to call fake. The
    paper's j = i term, the constant exp(0) = 1, is left out. T: 4096 x 500 = 2.05M weights."""

    def __init__(self, in_features, kernels=MBD_KERNELS, kernel_dim=MBD_KERNEL_DIM):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * INIT_STD)  # (A, KC)

    def forward(self, f):
        m = (f @ self.T).view(f.shape[0], self.kernels, self.kernel_dim)  # (B, K, C)
        m = m.transpose(0, 1)                                             # (K, B, C)
        l1 = torch.cdist(m, m, p=1)  # (K, B, B): all pairs' L1, no (K, B, B, C) temporary
        o = torch.exp(-l1).sum(2).t() - 1.0                               # (B, K): drop j == i
        return torch.cat([f, o], dim=1)                                   # (B, A + K)


class Loss(NamedTuple):
    """One --loss: a pair of functions of D's outputs, and what goes with it."""
    d_loss: Callable     # (D's outputs on x (B,), on G(z) (B,)) -> the scalar D minimises
    g_loss: Callable     # D's outputs on G(z) (B,) -> the scalar G minimises
    shown: Callable      # D's output as logged in D(x), D(G(z)): a probability, or as it is
    output: str          # ... and its name
    units: str           # what d_loss and g_loss are in (start line, curves.png, metrics.json)
    lr: float            # Adam's learning rate for both nets, unless --ttur or --lr-d/--lr-g
    betas: tuple         # Adam's (beta1, beta2)
    n_critic: int        # D steps per G step, unless --n-critic
    penalty: bool        # a per-sample gradient penalty: alpha drawn each step, no BN in D


def as_is(t):
    return t


def critic_g_loss(score_fake):
    return -score_fake.mean()        # -mean(D(G(z))): G raises its samples' scores


# A new loss is one entry here, a --loss choice (automatic) and a test. Every term a batch mean.
LOSSES = {
    "bce": Loss(d_loss_fn, g_loss_fn, torch.sigmoid, "probability real",
                "BCE on logits, batch means (d_loss sums its real and fake halves)", LR, BETAS, 1,
                False),
    # Lim & Ye 2017, Miyato et al. 2018 (with Radford's Adam, one of the settings they test): D
    # pushes reals to a score >= 1 and fakes to <= -1, and no further
    "hinge": Loss(lambda real, fake: F.relu(1 - real).mean() + F.relu(1 + fake).mean(),
                  critic_g_loss, as_is, "score", "hinge loss on D's scores, batch means "
                  "(d_loss sums its real and fake halves)", LR, BETAS, 1, False),
    # Gulrajani et al. 2017, algorithm 1: -d_loss (without the penalty) estimates the
    # Wasserstein-1 distance while D is 1-Lipschitz, which the penalty enforces
    "wgan-gp": Loss(lambda real, fake: fake.mean() - real.mean(), critic_g_loss, as_is,
                    "critic score", "critic scores, batch means (d_loss: mean D(G(z)) - mean "
                    "D(x) + gp_weight * gradient penalty)", WGAN_LR, WGAN_BETAS, WGAN_N_CRITIC,
                    True),
}


def loss_of(cfg):
    return LOSSES[setting(cfg, "loss")]


def gradient_penalty(D, real, fake, alpha, amp=contextlib.nullcontext):
    """E[(||grad_xhat D(xhat)||_2 - 1)^2] at xhat = alpha x + (1 - alpha) G(z), alpha (B, 1, 1, 1)
    ~ U[0, 1], a batch mean. The norm is over each sample's WHOLE gradient (3 x 32 x 32 values),
    not over one axis (a common bug). create_graph: the penalty's own gradient must reach D's
    weights. fake comes detached: the penalty never moves G. D's forward under amp."""
    xhat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with amp():
        score = D(xhat).float().sum()
    grad, = torch.autograd.grad(score, xhat, create_graph=True)   # (B, 3, 32, 32)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def diff_augment(x, policy, g):
    """DiffAugment (Zhao et al. 2020): random, differentiable transforms of every batch D sees,
    real or generated, in both steps, so D cannot memorise the 10k images and G is not pushed to
    reproduce them (they are on both sides). x: (B, 3, H, W) in [-1, 1]; policy: names from
    AUGMENTS, applied in that order; g: a generator on x's device. Each image its own draw:
      color:       + U(-0.5, 0.5) brightness; saturation: (x - mean over channels) * U(0, 2) + that
                   mean; contrast: (x - image mean) * U(0.5, 1.5) + that mean (may leave [-1, 1])
      translation: shift by whole pixels, dx, dy ~ U{-4..4}, zeros shifted in
      cutout:      one 16 x 16 square, centre uniform over the image, set to 0"""
    b, _, h, w = x.shape
    u = lambda: torch.rand(b, 1, 1, 1, generator=g, device=x.device, dtype=x.dtype)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    shift = lambda lo, hi: torch.randint(lo, hi, (b, 1, 1), generator=g, device=x.device)
    for name in policy:
        if name == "color":
            x = x + (u() - 0.5)
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * (2 * u()) + m
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * (u() + 0.5) + m
        elif name == "translation":
            s = int(h * TRANSLATE_FRAC + 0.5)
            dy, dx = shift(-s, s + 1), shift(-s, s + 1)
            padded = F.pad(x, (s, s, s, s)).permute(0, 2, 3, 1)          # (B, H + 2s, W + 2s, C)
            batch = torch.arange(b, device=x.device).view(b, 1, 1)
            x = padded[batch, rows + dy + s, cols + dx + s].permute(0, 3, 1, 2)  # (i+dy, j+dx)
        elif name == "cutout":
            half = int(h * CUTOUT_FRAC + 0.5) / 2
            cy, cx = shift(0, h), shift(0, w)
            keep = ((rows - cy).abs() >= half) | ((cols - cx).abs() >= half)    # (B, H, W)
            x = x * keep.unsqueeze(1).to(x.dtype)
    return x


@torch.no_grad()
def ema_update(G_ema, G, decay):
    """Yazici et al. 2019: G_ema <- decay * G_ema + (1 - decay) * G, for the weights and BN's
    running statistics (so they belong to weights like G_ema's own; the step counter is copied)."""
    for a, p in zip(G_ema.parameters(), G.parameters()):
        a.lerp_(p, 1.0 - decay)
    for a, b in zip(G_ema.buffers(), G.buffers()):
        a.lerp_(b, 1.0 - decay) if a.dtype.is_floating_point else a.copy_(b)


def add_ema(G_ema, G, opt_g, decay, ckpt=None):
    """--ema: G_ema (restored from ckpt, if resuming) moves toward G after every step of G's
    Adam: after each G update, never after a critic-only step."""
    if ckpt is not None:
        G_ema.load_state_dict(ckpt["G_ema"])
    opt_g.register_step_post_hook(lambda *_: ema_update(G_ema, G, decay))


def adam_step(opt, loss):
    """One update of opt's net down the gradient of loss (train_step's three lines)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def game_step(G, D, opt_g, opt_d, x, z, loss, see, alpha, gp_weight, update_g, amp):
    """train_step with what the remedies change in it: the pair of a LOSSES entry, D seeing each
    batch through `see` (DiffAugment), the penalty at alpha (B, 1, 1, 1) (WGAN-GP), and with
    update_g=False a critic-only step, (1) alone, logging G's loss against D before D's update."""
    with torch.set_grad_enabled(update_g), amp():  # a critic-only step needs no graph through G
        fake = G(z).float()
    # (1) Update D: minimise loss.d_loss (+ gp_weight * penalty) on what D sees
    real_in, fake_in = see(x), see(fake.detach())  # DiffAugment: a draw for real, then for fake
    with amp():
        out_real, out_fake = D(real_in).float(), D(fake_in).float()          # (B,) each
    d_loss = loss.d_loss(out_real, out_fake)
    if alpha is not None:
        d_loss = d_loss + gp_weight * gradient_penalty(D, real_in, fake_in, alpha, amp)
    adam_step(opt_d, d_loss)
    # (2) Update G: minimise loss.g_loss through D, frozen as in train_step, on a third draw of see
    if not update_g:                              # critic-only: G's loss against D before (1)
        g_loss = loss.g_loss(out_fake.detach())
    else:
        D.requires_grad_(False)
        with amp():
            out_g = D(see(fake)).float()
        g_loss = loss.g_loss(out_g)
        adam_step(opt_g, g_loss)
        D.requires_grad_(True)
    return torch.stack([d_loss.detach(), g_loss.detach(), loss.shown(out_real.detach()).mean(),
                        loss.shown(out_fake.detach()).mean()])


def select_step(cfg, noise, epoch, device):
    """The step the flags select, called as train_step is: train_step itself for the study's game
    (BCE, one D step per G step, D sees the images as they are); else game_step with the --loss,
    DiffAugment seeded from (seed, epoch), WGAN-GP's alpha drawn from `noise` right after each z,
    and G updated on every --n-critic-th call."""
    loss, n_critic, policy = loss_of(cfg), setting(cfg, "n_critic"), setting(cfg, "diffaugment")
    if loss is LOSSES["bce"] and n_critic == 1 and not policy:
        return train_step
    seed = runs.noise_seed(cfg["seed"], "diffaug", epoch)
    aug_g = torch.Generator(device=device).manual_seed(seed)
    see = (lambda t: diff_augment(t, policy, aug_g)) if policy else as_is
    calls = [0]

    def step(G, D, opt_g, opt_d, x, z, amp=contextlib.nullcontext):
        alpha = torch.rand(len(x), 1, 1, 1, generator=noise).to(x.device) if loss.penalty else None
        calls[0] += 1
        return game_step(G, D, opt_g, opt_d, x, z, loss, see, alpha, setting(cfg, "gp_weight"),
                         calls[0] % n_critic == 0, amp)
    return step


def remedies(cfg):
    """The start line's list of what this run adds to the study's plain DCGAN, or 'none'."""
    on = [s.replace("_", " ") for s in ("spectral_norm", "ttur", "minibatch_disc") if cfg[s]]
    on += [f"{cfg['n_critic']} D steps per G step"] if cfg["n_critic"] > 1 else []
    on += [f"gradient penalty lambda {cfg['gp_weight']:g}"] if loss_of(cfg).penalty else []
    on += [f"diffaugment {','.join(cfg['diffaugment'])}"] if cfg["diffaugment"] else []
    return ", ".join(on + ([f"ema {cfg['ema']:g}"] if cfg["ema"] else [])) or "none"


# ==== Evaluation ==============================================================================
@torch.no_grad()
def generate(G, z, device):
    """Images in eval mode (BN uses its running statistics), so a picture of z does not depend on
    what else is in the batch. Returns float (N, 3, 32, 32) in [-1, 1] on the CPU."""
    was_training = G.training
    G.eval()
    out = torch.cat([G(z[i:i + FEATURE_BATCH].to(device)).cpu()
                     for i in range(0, len(z), FEATURE_BATCH)])
    G.train(was_training)
    return out


def real_diversity(train_x, seed):
    """Mean pairwise L2 of N_DIVERSITY training images drawn with seed: the yardstick of the
    diversity ratio (generated / real)."""
    g = torch.Generator().manual_seed(seed)
    real = train_x[torch.randperm(len(train_x), generator=g)[:N_DIVERSITY]]
    return metrics.mean_pairwise_distance(data.to_float(real))


@torch.no_grad()
def probe_features(D, images_uint8, device):
    """D.features for every image, eval mode, as a float32 NumPy array (N, feature_dim)."""
    D.eval()
    out = [D.features(data.to_float(images_uint8[i:i + FEATURE_BATCH].to(device))).float().cpu()
           for i in range(0, len(images_uint8), FEATURE_BATCH)]
    D.train()
    return torch.cat(out).numpy()


def evaluate_run(cfg, ckpt, device):
    """The final figures of a trained run (ckpt: its checkpoint.pt's dict): the memorisation check
    (are samples nearer to the training images than unseen test images are?) and, unless
    --no-probe, the linear probe on D's features, trained and at its random init (Radford)."""
    G, D = load_trained(ckpt, device)
    train_x, train_y = data.load_subset(cfg)
    test_x, test_y = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    g = torch.Generator().manual_seed(cfg["seed"])
    test_sample = data.to_float(test_x[torch.randperm(len(test_x), generator=g)[:N_DIVERSITY]])
    nn_gen = metrics.mean_nearest_distance(generate(G, draw_noise(cfg["seed"])[1], device), train_x)
    nn_test = metrics.mean_nearest_distance(test_sample, train_x)
    figures = dict(params_g=runs.count_params(G), params_d=runs.count_params(D), probe_acc=None,
                   random_probe_acc=None, probe_l2=None, random_probe_l2=None, probe_gain=None,
                   probe_dim=D.feature_dim, probe_train=len(train_x), probe_test=len(test_x),
                   real_pairwise_l2=real_diversity(train_x, cfg["seed"]),
                   nn_train_l2_generated=nn_gen, nn_train_l2_test=nn_test,
                   memorisation_ratio=nn_gen / nn_test)
    t0 = time.perf_counter()
    if not cfg["no_probe"]:
        print(f"linear probes on the {D.feature_dim} D features (fitted on the training subset, "
              "scored on the test images):")
        D0 = build_models(cfg, device)[1]   # the same D at its random init (same seed)
        for name, net in (("probe", D), ("random_probe", D0)):
            figures.update(metrics.probe_figures(name, probe_features(net, train_x, device),
                                                 train_y, probe_features(net, test_x, device),
                                                 test_y, cfg["seed"]))
        figures["probe_gain"] = figures["probe_acc"] - figures["random_probe_acc"]
        print(f"  gain of training {figures['probe_gain']:+.4f}")
    figures["probe_seconds"] = time.perf_counter() - t0
    return figures


# ---- images from a trained run: this file's pictures and compare.py's scores use these ----
def load_trained(checkpoint, device):
    """G and D of a checkpoint dict (runs.load_checkpoint), on device, memory format as trained.
    With --ema, G is the averaged generator: every picture and figure comes from it."""
    G, D = build_models(checkpoint["config"], device)
    G.load_state_dict(checkpoint.get("G_ema", checkpoint["G"]))
    D.load_state_dict(checkpoint["D"])
    return G, D


def sample_images(checkpoint, n, seed, device="cpu"):
    """n images G(z), z ~ N(0, I) drawn on the CPU with seed -> uint8 (n, 3, 32, 32) on the CPU.
    With the run's own seed and n = N_FIXED these z are the run's fixed noise."""
    G = load_trained(checkpoint, device)[0]
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    return data.to_uint8(generate(G, z, device))


# ==== Outputs =================================================================================
def save_pictures(cfg, ckpt, device):
    """samples.png, progress.png, interpolations.png and curves.png of a trained run, each with a
    caption that says what its rows and columns are."""
    out, hist, rows, loss = cfg["out"], ckpt["history"], ckpt["progress_rows"], loss_of(cfg)
    G = "G(z)" + (" (G's EMA)" if cfg["ema"] else "")
    data.save_grid(sample_images(ckpt, N_FIXED, cfg["seed"], device),
                   os.path.join(out, "samples.png"), nrow=8,
                   caption=f"{G} for 64 fixed z ~ N(0, I) after {len(rows)} epochs")
    pick = np.linspace(0, len(rows) - 1, min(PROGRESS_ROWS, len(rows))).round().astype(int)
    pick = sorted(set(pick.tolist()))
    data.save_grid(torch.cat([rows[i] for i in pick]), os.path.join(out, "progress.png"), nrow=8,
                   caption=f"{G} for the same 8 fixed z: one row per epoch",
                   row_labels=[f"ep {i + 1}" for i in pick])
    t = torch.linspace(0, 1, 10).view(1, 10, 1)     # 8 rows: 10 steps from one fixed z to another
    a, b = ckpt["fixed_noise"][0:16:2].unsqueeze(1), ckpt["fixed_noise"][1:16:2].unsqueeze(1)
    z = ((1 - t) * a + t * b).reshape(-1, Z_DIM)                      # (80, 100)
    data.save_grid(generate(load_trained(ckpt, device)[0], z, device),
                   os.path.join(out, "interpolations.png"), nrow=10, caption=f"each row: {G} "
                   "along the straight line between two fixed z, left to right")
    steps = hist["steps"]
    xs, k = [s["step"] for s in steps], max(1, min(50, len(steps) // 10))
    curve = lambda key: (xs, data.smooth([s[key] for s in steps], k))
    ep = [e["epoch"] for e in hist["epochs"]]
    charts = [data.draw_chart({"D loss": curve("d_loss"), "G loss": curve("g_loss")},
                              title=f"losses, mean of {k} steps", xlabel="step",
                              ylabel=loss.units.split(",")[0]),
              data.draw_chart({"D(x)": curve("d_x"), "D(G(z))": curve("d_g_z")},
                              title=f"D outputs, mean of {k} steps", xlabel="step",
                              ylabel=loss.output),
              data.draw_chart({"generated / real": (ep, [e["diversity"] for e in hist["epochs"]])},
                              title="diversity (pairwise L2)", xlabel="epoch", ylabel="ratio")]
    data.save_charts(os.path.join(out, "curves.png"), charts, ncols=3,
                     caption=f"--loss {cfg['loss']}: losses and D's outputs per training step "
                             "(D's before its update), sample diversity per epoch")


def save_outputs(cfg, ckpt, figures, device, t_start):
    """The pictures, then metrics.json (the last epoch's losses and diversity, then the final
    figures). Returns metrics.json's dict."""
    save_pictures(cfg, ckpt, device)
    epochs, train_seconds = ckpt["history"]["epochs"], ckpt["train_seconds"]
    last = epochs[-1]
    out = dict(
        d_loss=last["d_loss"], g_loss=last["g_loss"], g_d_ratio=last["g_loss"] / last["d_loss"],
        d_x=last["d_x"], d_g_z=last["d_g_z"], diversity=last["diversity"], **figures,
        epochs=len(epochs), train_seconds=train_seconds, run_seconds=time.perf_counter() - t_start,
        seconds_per_epoch=train_seconds / len(epochs), device=str(device),
        torch=torch.__version__, seed=cfg["seed"], precision=cfg["precision"], config=cfg,
        commit=runs.git_commit(),
        units=f"losses: {loss_of(cfg).units}; d_x, d_g_z: D's mean {loss_of(cfg).output}; "
              "seconds: wall clock (train: training steps only; run: this call, resumed epochs "
              "not included); distances: L2 over 3072 pixels scaled to [-1, 1]; diversity: "
              "generated / real mean pairwise L2; memorisation_ratio: nearest-training-image L2 "
              "of generated / of test images")
    data.write_json(os.path.join(cfg["out"], "metrics.json"), out)
    print(f"d_loss {last['d_loss']:.3f} | g_loss {last['g_loss']:.3f} | ratio g/d "
          f"{out['g_d_ratio']:.2f} | diversity {last['diversity']:.3f} | memorisation ratio "
          f"{out['memorisation_ratio']:.3f} | train {data.format_seconds(train_seconds)} | "
          f"outputs in {cfg['out']}")
    if last["diversity"] < MIN_DIVERSITY:
        print(f"warning: diversity {last['diversity']:.3f} < {MIN_DIVERSITY}: the samples are "
              "near-copies of one image, so the memorisation ratio only says how far that image "
              "is from the training set, nothing about copying; train longer (the quick look "
              "of the docstring reaches ~0.9)")
    return out


# ==== Speed check (--bench) ===================================================================
def bench_step(cfg, device, tutorial):
    """For runs.bench: G and D at their init for cfg (and their Adams), and a function that runs
    one training step on a batch x: the step the flags select (select_step), or with tutorial
    the pytorch/examples one (BCE, one D step per G step, whatever the flags say)."""
    G, D = build_models(cfg, device)
    opt_g, opt_d = optimisers(G, D, cfg)
    if tutorial:
        return lambda x: runs.tutorial_gan_step(G, D, opt_g, opt_d, x, device)
    noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "gan_z"))
    step, amp = select_step(cfg, noise, 0, device), runs.autocast(cfg, device)  # bf16 timed too

    def one(x):
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        z = torch.randn(x.shape[0], Z_DIM, generator=noise).to(device)
        return step(G, D, opt_g, opt_d, x, z, amp)
    return one


# ==== Command line ============================================================================
EXAMPLES = ("python dcgan.py --epochs 5 --width 0.5 --no-probe --out runs/dcgan_quick  "
            "# quick look, ~30 s",
            "python dcgan.py                                    # the study: 40 epochs, 10k images",
            "python dcgan.py --loss hinge --spectral-norm --out runs/dcgan_sn_hinge  # remedies")
OUTPUTS = ("checkpoint.pt   all it takes to --resume exactly (written atomically every epoch)",
           "history.json    losses, D(x), D(G(z)) per step; diversity per epoch",
           "metrics.json    the final figures, with their units",
           "samples.png, progress.png, interpolations.png, curves.png   captioned pictures",
           "bench.json      with --bench, instead of all the above")


def parse_args(argv=None):
    """The DCGAN's flags, the remedies', then the shared ones (runs.add_run_flags), validated before
    any work starts (runs.cli_main prints a ValueError as one line, exit status 2). The --loss's
    LOSSES entry gives the learning rates, betas and --n-critic not set."""
    p = runs.make_parser("DCGAN on CIFAR-10 (the file's docstring explains it).", EXAMPLES, OUTPUTS)
    g = p.add_argument_group("the DCGAN")
    g.add_argument("--lr-d", type=float, default=None, help="D's Adam lr; unset: the --loss's, "
                   f"{LR:g}, or {WGAN_LR:g} for wgan-gp; {TTUR_LR_D:g} with --ttur")
    g.add_argument("--lr-g", type=float, default=None,
                   help=f"G's Adam lr; unset: as --lr-d, but {TTUR_LR_G:g} with --ttur")
    g.add_argument("--log-every", type=int, default=0, help="also log every N steps (0: per epoch)")
    r = p.add_argument_group("remedies, off by default (the remedies section of dcgan.py)")
    r.add_argument("--loss", choices=list(LOSSES), default="bce",
                   help="bce: the study's game; hinge: Lim & Ye 2017; wgan-gp: Gulrajani et al. "
                        f"2017, a critic without BN, Adam {WGAN_LR:g} with betas {WGAN_BETAS}")
    r.add_argument("--n-critic", type=int, default=None,
                   help=f"D steps per G step, each on its own batch; unset: {WGAN_N_CRITIC} for "
                        "wgan-gp, else 1")
    r.add_argument("--gp-weight", type=float, default=GP_WEIGHT, help="lambda of wgan-gp's penalty")
    r.add_argument("--spectral-norm", action="store_true", help="Miyato et al. 2018, on D (no BN)")
    r.add_argument("--ttur", action="store_true",
                   help=f"Heusel et al. 2017: lr-d {TTUR_LR_D:g}, lr-g {TTUR_LR_G:g}")
    r.add_argument("--minibatch-disc", action="store_true",
                   help="Salimans et al. 2016, before D's last Linear")
    r.add_argument("--diffaugment", default="", metavar="POLICY",
                   help=f"Zhao et al. 2020: comma-separated transforms from {','.join(AUGMENTS)} "
                        "applied to every batch D sees (e.g. color,translation,cutout)")
    r.add_argument("--ema", type=float, default=0.0,
                   help="Yazici et al. 2019: decay of an average of G's weights, in [0, 1) "
                        "(0: off; 0.999 typical); pictures and figures then come from it")
    runs.add_run_flags(p, epochs=EPOCHS, subset=SUBSET, batch_size=BATCH_SIZE, seed=SEED, out=OUT)
    a = p.parse_args(argv)
    loss = LOSSES[a.loss]
    if a.log_every < 0:
        raise ValueError(f"--log-every must be >= 0, got {a.log_every}")
    if loss.penalty and a.minibatch_disc:
        raise ValueError(f"--loss {a.loss} cannot be combined with --minibatch-disc: it makes each "
                         "sample's critic score depend on the rest of the batch, as BatchNorm "
                         "does, which the per-sample gradient penalty assumes away")
    a.n_critic = loss.n_critic if a.n_critic is None else a.n_critic
    if a.n_critic < 1:
        raise ValueError(f"--n-critic must be >= 1, got {a.n_critic}")
    if not (math.isfinite(a.gp_weight) and a.gp_weight >= 0):
        raise ValueError(f"--gp-weight must be a number >= 0, got {a.gp_weight}")
    a.diffaugment = [t for t in a.diffaugment.split(",") if t]
    if set(a.diffaugment) - set(AUGMENTS):
        raise ValueError(f"--diffaugment: unknown {', '.join(set(a.diffaugment) - set(AUGMENTS))};"
                         f" choose from {', '.join(AUGMENTS)}")
    if not (math.isfinite(a.ema) and 0 <= a.ema < 1):
        raise ValueError(f"--ema must be in [0, 1), got {a.ema}")
    a.betas = list(loss.betas)
    a.lr_d = a.lr_d if a.lr_d is not None else (TTUR_LR_D if a.ttur else loss.lr)
    a.lr_g = a.lr_g if a.lr_g is not None else (TTUR_LR_G if a.ttur else loss.lr)
    for name, lr in (("--lr-d", a.lr_d), ("--lr-g", a.lr_g)):
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"{name} must be a positive number, got {lr}")
    runs.check_run_flags(a)   # last: its --out and --resume checks touch the disk
    return vars(a)


# ==== Main: config, training, evaluation, outputs =============================================
def main(argv=None):
    t_start = time.perf_counter()                               # run_seconds: this whole call
    cfg = parse_args(argv)
    device = runs.setup_run(cfg)
    if cfg["export"]:                                           # images only, no training
        samples = lambda ckpt, n: sample_images(ckpt, n, metrics.EVAL_SEED, device)  # compare's
        return runs.export(cfg, "dcgan.py", {"samples": samples})
    if cfg["bench"]:
        return runs.bench(cfg, device, bench_step, drop_last=True)   # bench.json, nothing else
    ckpt = train(cfg, device)                                   # checkpoint.pt, history.json
    figures = evaluate_run(cfg, ckpt, device)                   # memorisation, probes
    return save_outputs(cfg, ckpt, figures, device, t_start)    # pictures, metrics.json


if __name__ == "__main__":
    runs.cli_main(main)
