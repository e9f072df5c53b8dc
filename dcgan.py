"""DCGAN on CIFAR-10: the study's generator and discriminator, three optional stabilisers, and
measurements of what the discriminator learned and how varied the samples are.

Run:
    python dcgan.py                                   # study settings: 40 epochs, 10k subset, seed 42
    python dcgan.py --minibatch-disc --out runs/dcgan_mbd
    python dcgan.py --spectral-norm --ttur --out runs/dcgan_sn_ttur
    python dcgan.py --loss wgan-gp --out runs/dcgan_wgangp       # critic + gradient penalty
    python dcgan.py --diffaugment color,translation,cutout --ema 0.999 --out runs/dcgan_diffaug_ema
    python dcgan.py --bench --subset 2000             # this loop vs the DataLoader tutorial loop
    python dcgan.py --resume                          # continue runs/dcgan/checkpoint.pt exactly

Papers: Goodfellow et al. 2014 (the GAN game, non-saturating generator loss); Radford et al. 2016
(DCGAN conventions: N(0, 0.02) init, Adam 2e-4 with beta1 0.5, BatchNorm, and section 5.1: a linear
classifier on max-pooled discriminator features); Miyato et al. 2018 (spectral normalisation);
Heusel et al. 2017 (two time-scale update rule, TTUR); Salimans et al. 2016 (minibatch
discrimination). The remedies for the 10k-image regime, each a flag, off by default:
Gulrajani et al. 2017 (WGAN-GP, --loss wgan-gp); Zhao et al. 2020 (DiffAugment, --diffaugment);
Yazici et al. 2019 (an exponential moving average of G's weights, --ema).

Models, exactly the study's layer lists (4x4 kernels, stride 2, padding 1, z in R^100):
    G: z -> Linear -> 4x4x128 -> ConvT(128->128)+BN+ReLU -> ConvT(128->64)+BN+ReLU -> ConvT(64->3)+Tanh
    D: x -> Conv(3->64)+LReLU(0.2) -> Conv(64->128)+BN+LReLU -> Conv(128->256)+BN+LReLU -> Linear -> logit
    G has 601,731 parameters and D 663,361: the study's slides say 1.24M and 2.76M, which these
    layers cannot give, so the real counts are printed and the models are not widened to match.
    --minibatch-disc adds Salimans et al.'s T tensor, 4096 x (100 x 5) = 2.05M weights, to D.

Loss: binary cross-entropy on logits, each term averaged over the batch (d_loss sums its real and
fake halves); with --loss wgan-gp the critic's unbounded scores, averaged over the batch, plus
the gradient penalty, a batch mean of per-sample terms; the distances of the diversity and memorisation checks are L2 over 3072 pixels in
[-1, 1] (metrics.mean_pairwise_distance, metrics.mean_nearest_distance).

Outputs in --out (default runs/dcgan): checkpoint.pt (atomic, every epoch), history.json,
metrics.json, samples.png, progress.png, interpolations.png, curves.png; with --bench only
bench.json. Same seed, device and thread count -> the same numbers; --resume of a killed run gives
the very weights of an uninterrupted one. Measured results: README.md, "Results".

Left out on purpose: FID / Inception Score (need a pretrained network; compare.py's business),
label smoothing, feature matching and the other Salimans et al. tricks the study does not use,
and float16 with loss scaling (--precision bf16 needs no scaling: bfloat16 has float32's range).
"""
import argparse
import contextlib
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import metrics
import runs

# ==== Settings ================================================================================
# Flags use the same names in kebab-case; the resolved config is printed and saved with every result.
EPOCHS = 40              # passes over the subset (the study: 40 epochs)
SUBSET = 10_000          # training images, class-stratified: 1,000 per class (the study's 10k subset)
BATCH_SIZE = 128         # images per step; the last partial batch of an epoch is dropped (see train())
SEED = 42                # one seed drives init, data order, noise: same seed + device -> same numbers
OUT = "runs/dcgan"       # folder for every output
Z_DIM = 100              # latent size (the study)
LR = 2e-4                # Adam learning rate for both nets (Radford et al. 2016)
BETAS = (0.5, 0.999)     # beta1 0.5 instead of 0.9: momentum 0.9 oscillated in Radford et al.
TTUR_LR_D, TTUR_LR_G = 4e-4, 1e-4   # --ttur: D learns faster than G (Heusel et al. 2017)
WGAN_LR, WGAN_BETAS = 1e-4, (0.5, 0.9)  # --loss wgan-gp: the official CIFAR-10 settings of
WGAN_N_CRITIC, GP_WEIGHT = 5, 10.0   # Gulrajani et al. 2017: Adam 1e-4, (0.5, 0.9), 5 critic
                         # steps per G step, penalty weight lambda = 10
AUGMENTS = ("color", "translation", "cutout")  # DiffAugment's transforms (Zhao et al. 2020)
TRANSLATE_FRAC = 0.125   # translation: up to 1/8 of the side (4 px on 32 x 32), zeros shifted in
CUTOUT_FRAC = 0.5        # cutout: one square of half the side (16 x 16) set to 0
INIT_STD = 0.02          # std of N(0, std) for conv/linear weights; BN scale from N(1, std)
LEAKY_SLOPE = 0.2        # LeakyReLU slope in D (Radford et al. 2016)
MBD_KERNELS = 100        # minibatch discrimination: B kernels ...
MBD_KERNEL_DIM = 5       # ... of C dimensions each (Salimans et al. 2016, their CIFAR-10 code)
N_FIXED = 64             # fixed noise vectors for samples.png (8x8 grid); the first 8 feed progress.png
PROGRESS_ROWS = 10       # at most this many epochs shown in progress.png (first and last always)
N_DIVERSITY = 500        # generated / real / test images used by the diversity and memorisation checks
FEATURE_BATCH = 500      # images per forward pass when generating or extracting probe features (no grad)
# Settings that define the experiment: --resume refuses a checkpoint made with different ones.
# --epochs, --device and --channels-last may change (a resume is bit-exact only on the same device
# with the same --channels-last: both change the order of floating-point sums).
RESUME_KEYS = ("subset", "batch_size", "seed", "width", "spectral_norm", "minibatch_disc", "lr_d", "lr_g",
               "loss", "n_critic", "gp_weight", "diffaugment", "ema", "precision")
# What a config saved before a setting existed meant by it (checkpoints of older runs still load)
DEFAULTS = dict(loss="bce", n_critic=1, gp_weight=GP_WEIGHT, diffaugment=[], ema=0.0, betas=list(BETAS),
                precision="fp32")


# ==== Model ===================================================================================
class Generator(nn.Module):
    """z (B, 100) -> image (B, 3, 32, 32) in [-1, 1].

    The study writes "FC -> 4x4x128" and says nothing about what follows the Linear. We follow it
    with BatchNorm + ReLU, as Radford et al. do after their projection: without a nonlinearity the
    Linear and the first ConvT would collapse into one linear map of z. Layers followed by BN have no
    bias (BN's shift replaces it; a bias there is wasted parameters).
    """

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
        return torch.tanh(self.up3(h))                             # (B, 3, 32, 32), same range as data


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, section 3.2: lets D compare each sample with the rest of its batch.

    f (B, A) -> M = f T, viewed (B, K, C) with K kernels of C dims; for every kernel k
    c_k(i, j) = exp(-||M_i,k - M_j,k||_1) and o(i)_k = sum_{j != i} c_k(i, j). Output: [f, o] (B, A+K).
    A batch of near-copies (mode collapse) gives large o, which D can learn to call fake. The paper
    sums over all j, including j = i; that term is the constant exp(0) = 1, so we leave it out
    (a sample alone in its batch gets o = 0).
    """

    def __init__(self, in_features, kernels=MBD_KERNELS, kernel_dim=MBD_KERNEL_DIM):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * INIT_STD)  # (A, K*C)

    def forward(self, f):
        m = (f @ self.T).view(f.shape[0], self.kernels, self.kernel_dim)  # (B, K, C)
        m = m.transpose(0, 1)                                             # (K, B, C)
        # L1 distances between all pairs, per kernel. cdist(p=1) gives the same numbers as
        # (m[:, :, None] - m[:, None]).abs().sum(-1) without the (K, B, B, C) temporary.
        l1 = torch.cdist(m, m, p=1)                                       # (K, B, B)
        o = torch.exp(-l1).sum(2).t() - 1.0                               # (B, K): drop j == i
        return torch.cat([f, o], dim=1)                                   # (B, A + K)


class Discriminator(nn.Module):
    """image (B, 3, 32, 32) -> logit (B,): log-odds that the image is real.

    With spectral_norm=True the BatchNorm layers are left out (Identity) and the convs get biases:
    Miyato et al.'s SN discriminators use no BN, and BN's per-batch rescaling would undo the
    Lipschitz bound that SN puts on each layer. The SN wrappers themselves are added in
    build_models, after the N(0, 0.02) init, so the init touches the raw weights. A WGAN-GP critic
    has no BN either (batchnorm=False): BN makes each sample's score depend on the rest of the
    batch, while the penalty constrains the gradient of each sample's score on its own input. We
    use no normalisation at all, as the official CIFAR-10 code's DCGAN critic (the paper also
    suggests layer normalisation; not used here).
    """

    def __init__(self, width=1.0, spectral_norm=False, minibatch_disc=False, batchnorm=True):
        super().__init__()
        c1, c2, c3 = runs.channels(64, width), runs.channels(128, width), runs.channels(256, width)
        bn = batchnorm and not spectral_norm
        self.conv1 = nn.Conv2d(3, c1, 4, stride=2, padding=1)  # no BN on D's input layer (Radford)
        self.conv2 = nn.Conv2d(c1, c2, 4, stride=2, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(c2) if bn else nn.Identity()
        self.conv3 = nn.Conv2d(c2, c3, 4, stride=2, padding=1, bias=not bn)
        self.bn3 = nn.BatchNorm2d(c3) if bn else nn.Identity()
        self.mbd = MinibatchDiscrimination(c3 * 16) if minibatch_disc else None
        self.fc = nn.Linear(c3 * 16 + (MBD_KERNELS if minibatch_disc else 0), 1)
        self.feature_dim = 16 * (c1 + c2 + c3)  # probe features: 7,168 at width 1

    def conv_layers(self, x):
        h1 = F.leaky_relu(self.conv1(x), LEAKY_SLOPE)               # (B, 64, 16, 16)
        h2 = F.leaky_relu(self.bn2(self.conv2(h1)), LEAKY_SLOPE)    # (B, 128, 8, 8)
        h3 = F.leaky_relu(self.bn3(self.conv3(h2)), LEAKY_SLOPE)    # (B, 256, 4, 4)
        return h1, h2, h3

    def forward(self, x):
        f = self.conv_layers(x)[2].flatten(1)                       # (B, 4096)
        if self.mbd is not None:
            f = self.mbd(f)                                         # (B, 4096 + 100)
        return self.fc(f).squeeze(1)                                # (B,) logits, no sigmoid

    def features(self, x):
        """Radford et al. 2016 sec. 5.1: every conv layer max-pooled to 4x4, flattened, concatenated."""
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
    """G and D at their initialisation for cfg["seed"], on device: calling it twice gives identical
    weights (that is how the random-init probe baseline gets the very D that training started
    from). With --channels-last the conv weights are stored NHWC, so that on a CPU oneDNN runs its
    direct convolution kernels without reordering the activations at every layer; values are
    unchanged, only the summation order inside the convolutions differs (runs stay deterministic)."""
    torch.manual_seed(cfg["seed"])
    G = Generator(cfg["width"])
    D = Discriminator(cfg["width"], cfg["spectral_norm"], cfg["minibatch_disc"],
                      batchnorm=setting(cfg, "loss") == "bce")
    G.apply(init_weights)
    D.apply(init_weights)
    if cfg["spectral_norm"]:
        # Miyato et al. 2018: W / sigma(W), sigma from one power iteration per training forward
        # (the conv kernel is reshaped to (out, in*4*4), as in the paper). The minibatch layer's T
        # is not normalised, so with --minibatch-disc the bound covers the layers, not all of D.
        for layer in (D.conv1, D.conv2, D.conv3, D.fc):
            nn.utils.parametrizations.spectral_norm(layer)
    if cfg.get("channels_last"):
        return G.to(device, memory_format=torch.channels_last), D.to(device, memory_format=torch.channels_last)
    return G.to(device), D.to(device)


def setting(cfg, key):
    """cfg[key], or what configs saved before that setting existed meant (DEFAULTS)."""
    return cfg.get(key, DEFAULTS[key])


def draw_noise(seed):
    """The run's fixed noise, drawn on the CPU from seed: N_FIXED z for the sample grids, then
    N_DIVERSITY more for the diversity and memorisation checks. (sample_images(ckpt, N_FIXED, seed)
    draws the same N_FIXED.)"""
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
    -log D(G(z)) has the same fixed point and strong gradients then (Goodfellow et al. 2014, sec. 3)."""
    return F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))


# WGAN-GP (Gulrajani et al. 2017, algorithm 1): the critic's score is unbounded (no sigmoid);
# the critic minimises E[D(G(z))] - E[D(x)] + lambda * penalty, the generator -E[D(G(z))].
def gradient_penalty(D, real, fake, alpha, amp=contextlib.nullcontext):
    """E[(||grad_xhat D(xhat)||_2 - 1)^2] at xhat = alpha x + (1 - alpha) G(z), alpha (B, 1, 1, 1)
    ~ U[0, 1] per sample, the mean over the batch. The norm is over each sample's WHOLE flattened
    gradient (3 x 32 x 32 values), not over one axis (a common bug). create_graph: the penalty's
    own gradient must reach D's weights. fake comes in detached: the penalty never moves G. amp:
    train_step's; D's forward under it, the gradient taken outside (float32, like xhat)."""
    xhat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with amp():
        score = D(xhat).float().sum()
    grad, = torch.autograd.grad(score, xhat, create_graph=True)   # (B, 3, 32, 32)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def diff_augment(x, policy, g):
    """DiffAugment (Zhao et al. 2020): the same kinds of random, differentiable transforms on every
    batch D sees, real or generated, in D's step and in G's, so D cannot memorise the 10k images
    and G is not pushed to reproduce the augmentations (they are on both sides). x: (B, 3, H, W) in
    [-1, 1]; policy: names from AUGMENTS, applied in that order; g: a generator on x's device,
    seeded per epoch, so a resumed run draws the same transforms. Each image its own draw:
      color:       + U(-0.5, 0.5) brightness; saturation: (x - mean over channels) * U(0, 2) + that
                   mean; contrast: (x - image mean) * U(0.5, 1.5) + that mean (may leave [-1, 1])
      translation: shift by whole pixels, dx, dy ~ U{-4..4}, zeros shifted in
      cutout:      one 16 x 16 square, centre uniform over the image, set to 0
    Whole-batch tensor ops only; gradients flow through to G. Returns a new tensor."""
    b, _, h, w = x.shape
    u = lambda: torch.rand(b, 1, 1, 1, generator=g, device=x.device, dtype=x.dtype)
    rows, cols = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
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
            x = padded[batch, rows + dy + s, cols + dx + s].permute(0, 3, 1, 2)  # pixel (i, j) <- (i + dy, j + dx)
        elif name == "cutout":
            half = int(h * CUTOUT_FRAC + 0.5) / 2
            cy, cx = shift(0, h), shift(0, w)
            keep = ((rows - cy).abs() >= half) | ((cols - cx).abs() >= half)    # (B, H, W)
            x = x * keep.unsqueeze(1).to(x.dtype)
    return x


@torch.no_grad()
def ema_update(G_ema, G, decay):
    """Yazici et al. 2019: G_ema <- decay * G_ema + (1 - decay) * G after every G step, for the
    weights and for BatchNorm's running mean and variance (averaged the same way, so the averaged
    G's BN statistics belong to weights like its own; the step counter is copied)."""
    for a, p in zip(G_ema.parameters(), G.parameters()):
        a.lerp_(p, 1.0 - decay)
    for a, b in zip(G_ema.buffers(), G.buffers()):
        a.lerp_(b, 1.0 - decay) if a.dtype.is_floating_point else a.copy_(b)


# ==== One training step =======================================================================
def train_step(G, D, opt_g, opt_d, x, z, wgan=None, update_g=True, augment=None, amp=contextlib.nullcontext):
    """One iteration of the GAN game on a real batch x and noise z. Returns detached
    (d_loss, g_loss, D(x), D(G(z))) as one tensor, with no .item(): no sync on a GPU.
    wgan: None for the BCE game; for WGAN-GP, (gp_weight, alpha (B, 1, 1, 1)). update_g=False
    (the critic-only steps between G steps, --n-critic) skips step (2). augment: DiffAugment's
    transform (a fresh draw per call), applied to every batch D sees. amp: runs.autocast's context
    around every forward pass (--precision bf16); losses from float32 outputs, backward outside it."""
    aug = augment or (lambda t: t)
    with torch.set_grad_enabled(update_g), amp():  # a critic-only step needs no graph through G
        fake = G(z).float()                       # (B, 3, 32, 32); one G forward serves both steps

    # (1) Update D: maximise log D(x) + log(1 - D(G(z)))   [minimise d_loss]
    #     or, for WGAN-GP, the critic: maximise E[D(x)] - E[D(G(z))] under the gradient penalty
    real_in, fake_in = aug(x), aug(fake.detach())  # detach: this step must not move G
    with amp():
        logit_real = D(real_in).float()           # (B,)
        logit_fake = D(fake_in).float()
    if wgan is None:
        d_loss = d_loss_fn(logit_real, logit_fake)
    else:
        gp_weight, alpha = wgan
        d_loss = logit_fake.mean() - logit_real.mean() + gp_weight * gradient_penalty(D, real_in, fake_in, alpha, amp)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # (2) Update G: maximise log D(G(z))   [non-saturating; minimise g_loss], or -E[D(G(z))]
    # D's weights are frozen for this backward: the gradient flows through D into G, but D's own
    # weight gradients (which opt_d would discard anyway) are never computed.
    g_loss_of = g_loss_fn if wgan is None else (lambda s: -s.mean())
    if update_g:
        D.requires_grad_(False)
        with amp():
            logit = D(aug(fake)).float()          # the D just updated, as in Goodfellow et al.
        g_loss = g_loss_of(logit)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)
    else:                                         # logged: G's loss against D before its update
        g_loss = g_loss_of(logit_fake.detach())

    # D(x), D(G(z)): mean probabilities (WGAN-GP: mean critic scores) from step (1), before D's update
    out = (torch.sigmoid if wgan is None else (lambda t: t))
    return torch.stack([d_loss.detach(), g_loss.detach(),
                        out(logit_real.detach()).mean(), out(logit_fake.detach()).mean()])


# ==== The training loop =======================================================================
def optimisers(G, D, cfg):
    """Adam for each net, with its own learning rate (equal unless --ttur or --lr-d/--lr-g)."""
    betas = tuple(setting(cfg, "betas"))   # (0.5, 0.999); WGAN-GP (0.5, 0.9)
    return (torch.optim.Adam(G.parameters(), lr=cfg["lr_g"], betas=betas),
            torch.optim.Adam(D.parameters(), lr=cfg["lr_d"], betas=betas))


def check_finite(stats, first_step, steps, out):
    """runs.check_finite with this file's two losses and advice."""
    runs.check_finite(stats, first_step, steps, out, ("d_loss", "g_loss"),
                      "try a lower --lr-d/--lr-g, --ttur or --spectral-norm")


def train_epoch(G, D, opt_g, opt_d, batches, noise, cfg, first_step, steps, G_ema=None, augment=None):
    """train_step over one epoch of `batches`, z (and WGAN-GP's alpha) from the CPU generator
    `noise` (the same numbers on every device); G steps on every --n-critic-th batch, each followed
    by the --ema update of G_ema. Returns the (steps, 4) CPU tensor of d_loss, g_loss, D(x), D(G(z))
    per step, read off the device once; --log-every N adds a line (and a sync) every N steps."""
    G.train(), D.train()
    device = next(G.parameters()).device
    stats = torch.zeros(steps, 4, device=device)
    n, n_critic, wgan = cfg["log_every"], setting(cfg, "n_critic"), setting(cfg, "loss") == "wgan-gp"
    amp = runs.autocast(cfg, device)
    for i, (x, _) in enumerate(batches):
        z = torch.randn(x.shape[0], Z_DIM, generator=noise).to(device)   # (B, 100)
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)           # same values, NHWC
        penalty = (cfg["gp_weight"], torch.rand(x.shape[0], 1, 1, 1, generator=noise).to(device)) if wgan else None
        update_g = (i + 1) % n_critic == 0
        stats[i] = train_step(G, D, opt_g, opt_d, x, z, penalty, update_g, augment, amp)
        if update_g and G_ema is not None:
            ema_update(G_ema, G, cfg["ema"])
        if n and (i + 1) % n == 0:                                       # logging step: sync here
            window = stats[i + 1 - n:i + 1].cpu()
            check_finite(window, first_step + i + 1 - n, steps, cfg["out"])
            m = window.mean(0).tolist()
            print(f"  step {first_step + i + 1:6d} | d_loss {m[0]:.3f} | g_loss {m[1]:.3f} | "
                  f"D(x) {m[2]:.3f} | D(G(z)) {m[3]:.3f}")
    return stats.cpu()


def stabilisers(cfg):
    """The start line's list of what this run adds to the study's plain DCGAN, or 'none'."""
    on = [s for s in ("spectral_norm", "ttur", "minibatch_disc") if cfg[s]]
    if cfg["loss"] == "wgan-gp":
        on.append(f"wgan-gp (lambda {cfg['gp_weight']:g}, {cfg['n_critic']} critic steps per G step)")
    if cfg["diffaugment"]:
        on.append(f"diffaugment {','.join(cfg['diffaugment'])}")
    if cfg["ema"]:
        on.append(f"ema {cfg['ema']:g}")
    return ", ".join(on) or "none"


def restore(ckpt, G, D, G_ema, opt_g, opt_d):
    """--resume: load a checkpoint's weights and optimiser states in place; return what the loop
    carries on with: (fixed_noise, history, progress_rows, epoch, train_seconds)."""
    G.load_state_dict(ckpt["G"]), D.load_state_dict(ckpt["D"])
    if G_ema is not None:
        G_ema.load_state_dict(ckpt["G_ema"])
    opt_g.load_state_dict(ckpt["opt_g"]), opt_d.load_state_dict(ckpt["opt_d"])
    return ckpt["fixed_noise"], ckpt["history"], list(ckpt["progress_rows"]), ckpt["epoch"], ckpt["train_seconds"]


def train(cfg, device):
    """Train (or --resume) the run cfg describes; after every epoch, OUT/checkpoint.pt and
    OUT/history.json. Returns the last checkpoint dict: everything after training reads the run
    from it, as compare.py does."""
    ckpt_path = os.path.join(cfg["out"], "checkpoint.pt")
    ckpt = runs.resume_checkpoint(cfg, RESUME_KEYS, DEFAULTS)
    print("config " + json.dumps(cfg, sort_keys=True))
    train_x, train_y = data.load_subset(cfg)                     # uint8 (N, 3, 32, 32), int64 (N,)
    # drop_last: every step sees a full batch, so BN statistics are never taken over a handful of images
    batches = runs.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True, drop_last=True)
    steps = len(batches)
    real_pairwise = real_diversity(train_x, cfg["seed"])
    G, D = build_models(cfg, device)
    G_ema = copy.deepcopy(G) if cfg["ema"] else None   # --ema: every picture and figure comes from it
    opt_g, opt_d = optimisers(G, D, cfg)
    fixed_noise, diversity_noise = draw_noise(cfg["seed"])
    print(f"params G {runs.count_params(G):,}  D {runs.count_params(D):,}  (the study's slides said 1.24M / "
          f"2.76M; see the docstring)\ndevice {device} | {steps} steps/epoch | lr_d {cfg['lr_d']:g} lr_g "
          f"{cfg['lr_g']:g} | stabilisers: {stabilisers(cfg)} | speed: "
          f"{'channels_last memory format, ' if cfg['channels_last'] else ''}{torch.get_num_threads()} threads")
    history, progress_rows = {"epochs": [], "steps": []}, []   # rows: (8, 3, 32, 32) uint8 per epoch
    start_epoch, train_seconds = 0, 0.0
    if ckpt is not None:
        fixed_noise, history, progress_rows, start_epoch, train_seconds = restore(ckpt, G, D, G_ema, opt_g, opt_d)
        print(f"resumed from {ckpt_path} at epoch {start_epoch}"
              + (" (already at or past --epochs: nothing left to train)" if start_epoch >= cfg["epochs"] else ""))

    for epoch in range(start_epoch, cfg["epochs"]):
        # ---- forward, backward, update: one pass over the subset, timed as training ----
        noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "gan_z", epoch))
        aug_g = torch.Generator(device=device).manual_seed(runs.noise_seed(cfg["seed"], "diffaug", epoch))
        augment = (lambda t: diff_augment(t, cfg["diffaugment"], aug_g)) if cfg["diffaugment"] else None
        t0 = time.perf_counter()
        stats = train_epoch(G, D, opt_g, opt_d, batches.epoch(epoch), noise, cfg, epoch * steps, steps,
                            G_ema, augment)
        seconds = time.perf_counter() - t0
        check_finite(stats, epoch * steps, steps, cfg["out"])    # before anything of this epoch is saved
        train_seconds += seconds

        # ---- evaluation and logging: one line per epoch, with the ETA ----
        shown = G if G_ema is None else G_ema
        diversity = metrics.mean_pairwise_distance(generate(shown, diversity_noise, device)) / real_pairwise
        progress_rows.append(data.to_uint8(generate(shown, fixed_noise[:8], device)))
        m = stats.mean(0).tolist()
        history["epochs"].append(dict(epoch=epoch + 1, seconds=round(seconds, 3), d_loss=m[0], g_loss=m[1],
                                      d_x=m[2], d_g_z=m[3], diversity=diversity))
        history["steps"] += [dict(step=epoch * steps + i + 1, d_loss=s[0], g_loss=s[1], d_x=s[2], d_g_z=s[3])
                             for i, s in enumerate(stats.tolist())]
        eta = train_seconds / len(history["epochs"]) * (cfg["epochs"] - epoch - 1)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | d_loss {m[0]:.3f} | g_loss {m[1]:.3f} | D(x) {m[2]:.3f} | "
              f"D(G(z)) {m[3]:.3f} | diversity {diversity:.3f} | {seconds:.1f} s | ETA {data.format_seconds(eta)}")

        # ---- checkpoint: one dict, atomic, every epoch ----
        ckpt = dict(G=G.state_dict(), D=D.state_dict(), opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(),
                    config=cfg, epoch=epoch + 1, fixed_noise=fixed_noise, history=history,
                    progress_rows=progress_rows, train_seconds=train_seconds, torch_rng=torch.get_rng_state(),
                    note="z noise and data order are reseeded from (seed, epoch)")
        if G_ema is not None:
            ckpt["G_ema"] = G_ema.state_dict()     # the averaged G: pictures, metrics, resume
        runs.atomic_torch_save(ckpt, ckpt_path)
        data.write_json(os.path.join(cfg["out"], "history.json"), history)
    return ckpt


# ==== Evaluation ==============================================================================
@torch.no_grad()
def generate(G, z, device):
    """Images in eval mode (BN uses its running statistics), so a picture of z does not depend on
    what else is in the batch. Returns float (N, 3, 32, 32) in [-1, 1] on the CPU."""
    was_training = G.training
    G.eval()
    out = torch.cat([G(z[i:i + FEATURE_BATCH].to(device)).cpu() for i in range(0, len(z), FEATURE_BATCH)])
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
    """The final figures of a trained run (ckpt: the dict of its checkpoint.pt): the memorisation
    check (are samples nearer to the training images than unseen test images are?) and, unless
    --no-probe, the linear probe on D's features, trained and at its random init (Radford et al.)."""
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
                   real_pairwise_l2=real_diversity(train_x, cfg["seed"]), nn_train_l2_generated=nn_gen,
                   nn_train_l2_test=nn_test, memorisation_ratio=nn_gen / nn_test)
    t0 = time.perf_counter()
    if not cfg["no_probe"]:
        print(f"linear probes on the {D.feature_dim} D features (fitted on the training subset, scored on "
              "the test images):")
        D0 = build_models(cfg, device)[1]   # the same D at its random init (same seed)
        for name, net in (("probe", D), ("random_probe", D0)):
            figures.update(metrics.probe_figures(name, probe_features(net, train_x, device), train_y,
                                                 probe_features(net, test_x, device), test_y, cfg["seed"]))
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
    """samples.png, progress.png, interpolations.png and curves.png of a trained run."""
    out, hist = cfg["out"], ckpt["history"]
    data.save_grid(sample_images(ckpt, N_FIXED, cfg["seed"], device), os.path.join(out, "samples.png"), nrow=8)
    rows = ckpt["progress_rows"]
    pick = sorted(set(np.linspace(0, len(rows) - 1, min(PROGRESS_ROWS, len(rows))).round().astype(int).tolist()))
    data.save_grid(torch.cat([rows[i] for i in pick]), os.path.join(out, "progress.png"), nrow=8)
    # Interpolations: 8 rows, each 10 images on the straight line between two fixed noise vectors
    t = torch.linspace(0, 1, 10).view(1, 10, 1)
    a, b = ckpt["fixed_noise"][0:16:2].unsqueeze(1), ckpt["fixed_noise"][1:16:2].unsqueeze(1)  # (8, 1, 100)
    z = ((1 - t) * a + t * b).reshape(-1, Z_DIM)                                              # (80, 100)
    data.save_grid(generate(load_trained(ckpt, device)[0], z, device), os.path.join(out, "interpolations.png"),
                   nrow=10)
    # Curves
    steps = hist["steps"]
    xs = [s["step"] for s in steps]
    k = max(1, min(50, len(steps) // 10))
    ep = [e["epoch"] for e in hist["epochs"]]
    charts = [
        data.draw_chart({"D loss": (xs, data.smooth([s["d_loss"] for s in steps], k)),
                         "G loss": (xs, data.smooth([s["g_loss"] for s in steps], k))},
                        title=f"losses, mean of {k} steps", xlabel="step",
                        ylabel="BCE, batch mean" if setting(cfg, "loss") == "bce" else "critic loss, batch mean"),
        data.draw_chart({"D(x)": (xs, data.smooth([s["d_x"] for s in steps], k)),
                         "D(G(z))": (xs, data.smooth([s["d_g_z"] for s in steps], k))},
                        title=f"D outputs, mean of {k} steps", xlabel="step",
                        ylabel="probability real" if setting(cfg, "loss") == "bce" else "critic score"),
        data.draw_chart({"generated / real": (ep, [e["diversity"] for e in hist["epochs"]])},
                        title="diversity (pairwise L2)", xlabel="epoch", ylabel="ratio"),
    ]
    data.save_charts(os.path.join(out, "curves.png"), charts, ncols=3)


def save_outputs(cfg, ckpt, figures, device, t_start):
    """The pictures, then metrics.json (the last epoch's losses and diversity, then the final
    figures). Returns metrics.json's dict."""
    save_pictures(cfg, ckpt, device)
    epochs, train_seconds = ckpt["history"]["epochs"], ckpt["train_seconds"]
    last = epochs[-1]
    metrics_out = dict(
        d_loss=last["d_loss"], g_loss=last["g_loss"], g_d_ratio=last["g_loss"] / last["d_loss"],
        d_x=last["d_x"], d_g_z=last["d_g_z"], diversity=last["diversity"], **figures,
        epochs=len(epochs), train_seconds=train_seconds, run_seconds=time.perf_counter() - t_start,
        seconds_per_epoch=train_seconds / len(epochs), device=str(device),
        torch=torch.__version__, seed=cfg["seed"], precision=cfg["precision"], config=cfg,
        units="losses: BCE averaged over the batch (d_loss sums its real and fake halves); "
              "seconds: wall clock (train: training steps only; run: this call, resumed epochs not included); "
              "distances: L2 over 3072 pixels scaled to [-1, 1]; diversity: generated / real mean pairwise L2; "
              "memorisation_ratio: nearest-training-image L2 of generated / of test images",
    )
    data.write_json(os.path.join(cfg["out"], "metrics.json"), metrics_out)
    print(f"d_loss {last['d_loss']:.3f} | g_loss {last['g_loss']:.3f} | ratio g/d {metrics_out['g_d_ratio']:.2f} | "
          f"diversity {last['diversity']:.3f} | memorisation ratio {metrics_out['memorisation_ratio']:.3f} | "
          f"train {data.format_seconds(train_seconds)} | outputs in {cfg['out']}")
    return metrics_out


# ==== Speed check (--bench) ===================================================================
def bench_step(cfg, device, tutorial):
    """For runs.bench: G and D at their init for cfg (and their Adams), and a function that
    runs one training step on a batch x -- ours (train_step), or with tutorial the pytorch/examples one."""
    G, D = build_models(cfg, device)
    opt_g, opt_d = optimisers(G, D, cfg)
    if tutorial:
        return lambda x: runs.tutorial_gan_step(G, D, opt_g, opt_d, x, device)
    noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "gan_z"))
    amp = runs.autocast(cfg, device)                          # --precision bf16 is timed too

    def step(x):
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        z = torch.randn(x.shape[0], Z_DIM, generator=noise).to(device)
        return train_step(G, D, opt_g, opt_d, x, z, None, True, None, amp)
    return step


# ==== Command line ============================================================================
def parse_args(argv=None):
    """The flags shared with vae.py (runs.add_run_flags), then the DCGAN's own; all validated
    before any work starts (runs.cli_main prints a ValueError as one line, exit status 2). The
    learning rates are resolved here: --lr-d/--lr-g if given, else the --ttur pair, else LR."""
    p = runs.OneLineParser(description="DCGAN on CIFAR-10 (see the file docstring).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    runs.add_run_flags(p, epochs=EPOCHS, subset=SUBSET, batch_size=BATCH_SIZE, seed=SEED, out=OUT)
    p.add_argument("--log-every", type=int, default=0, help="also log every N steps (0: per epoch only)")
    # stabilisers (off by default: the study's baseline has none)
    p.add_argument("--spectral-norm", action="store_true", help="Miyato et al. 2018, on D (drops D's BN)")
    p.add_argument("--ttur", action="store_true", help="Heusel et al. 2017: lr-d 4e-4, lr-g 1e-4")
    p.add_argument("--lr-d", type=float, default=None, help="D's Adam lr; None: 2e-4, or 4e-4 with --ttur")
    p.add_argument("--lr-g", type=float, default=None, help="G's Adam lr; None: 2e-4, or 1e-4 with --ttur")
    p.add_argument("--minibatch-disc", action="store_true", help="Salimans et al. 2016, before D's last linear")
    # the remedies for the 10k-image regime (off by default)
    p.add_argument("--loss", choices=["bce", "wgan-gp"], default="bce",
                   help="bce: the study's game; wgan-gp: Gulrajani et al. 2017, a critic without BN, "
                        f"Adam {WGAN_LR:g} with betas {WGAN_BETAS} unless --lr-d/--lr-g")
    p.add_argument("--n-critic", type=int, default=None,
                   help=f"D steps per G step, each on its own batch (default {WGAN_N_CRITIC} with wgan-gp, else 1)")
    p.add_argument("--gp-weight", type=float, default=GP_WEIGHT, help="lambda of the gradient penalty (wgan-gp)")
    p.add_argument("--diffaugment", default="", metavar="POLICY",
                   help=f"Zhao et al. 2020: comma-separated transforms from {','.join(AUGMENTS)} "
                        "applied to every batch D sees (e.g. color,translation,cutout)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="Yazici et al. 2019: decay of an average of G's weights, in [0, 1) (0: off; "
                        "0.999 typical); pictures and figures then come from the averaged G")
    a = p.parse_args(argv)
    if a.log_every < 0:
        raise ValueError(f"--log-every must be >= 0, got {a.log_every}")
    wgan = a.loss == "wgan-gp"
    if wgan and a.minibatch_disc:
        raise ValueError("--loss wgan-gp cannot be combined with --minibatch-disc: it makes each sample's critic "
                         "score depend on the rest of the batch, as BatchNorm does, which the per-sample "
                         "gradient penalty assumes away")
    a.n_critic = a.n_critic if a.n_critic is not None else (WGAN_N_CRITIC if wgan else 1)
    if a.n_critic < 1:
        raise ValueError(f"--n-critic must be >= 1, got {a.n_critic}")
    if not (math.isfinite(a.gp_weight) and a.gp_weight >= 0):
        raise ValueError(f"--gp-weight must be a number >= 0, got {a.gp_weight}")
    a.diffaugment = [t for t in a.diffaugment.split(",") if t]
    unknown = [t for t in a.diffaugment if t not in AUGMENTS]
    if unknown:
        raise ValueError(f"--diffaugment: unknown {', '.join(unknown)}; choose from {', '.join(AUGMENTS)}")
    if not (math.isfinite(a.ema) and 0 <= a.ema < 1):
        raise ValueError(f"--ema must be in [0, 1), got {a.ema}")
    a.betas = list(WGAN_BETAS if wgan else BETAS)
    base = WGAN_LR if wgan else LR
    a.lr_d = a.lr_d if a.lr_d is not None else (TTUR_LR_D if a.ttur else base)
    a.lr_g = a.lr_g if a.lr_g is not None else (TTUR_LR_G if a.ttur else base)
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
    if cfg["bench"]:
        return runs.bench(cfg, device, bench_step, drop_last=True)   # bench.json, nothing else
    ckpt = train(cfg, device)                                   # checkpoint.pt, history.json
    figures = evaluate_run(cfg, ckpt, device)                   # memorisation, probes
    return save_outputs(cfg, ckpt, figures, device, t_start)    # pictures, metrics.json


if __name__ == "__main__":
    runs.cli_main(main)
