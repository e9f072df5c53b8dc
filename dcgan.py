"""DCGAN on CIFAR-10: the study's generator and discriminator, three optional stabilisers, and
measurements of what the discriminator learned and how varied the samples are.

Run:
    python dcgan.py                                   # study settings: 40 epochs, 10k subset, seed 42
    python dcgan.py --minibatch-disc --out runs/dcgan_mbd
    python dcgan.py --spectral-norm --ttur --out runs/dcgan_sn_ttur
    python dcgan.py --bench --subset 2000             # this loop vs the DataLoader tutorial loop
    python dcgan.py --resume                          # continue runs/dcgan/checkpoint.pt exactly

Papers: Goodfellow et al. 2014 (the GAN game, non-saturating generator loss); Radford et al. 2016
(DCGAN conventions: N(0, 0.02) init, Adam 2e-4 with beta1 0.5, BatchNorm, and section 5.1: a linear
classifier on max-pooled discriminator features); Miyato et al. 2018 (spectral normalisation);
Heusel et al. 2017 (two time-scale update rule, TTUR); Salimans et al. 2016 (minibatch
discrimination).

Models, exactly the study's layer lists (4x4 kernels, stride 2, padding 1, z in R^100):
    G: z -> Linear -> 4x4x128 -> ConvT(128->128)+BN+ReLU -> ConvT(128->64)+BN+ReLU -> ConvT(64->3)+Tanh
    D: x -> Conv(3->64)+LReLU(0.2) -> Conv(64->128)+BN+LReLU -> Conv(128->256)+BN+LReLU -> Linear -> logit
    Parameters at --width 1: G 601,731, D 663,361. The study's slides say 1.24M and 2.76M; the layers
    they list cannot give those numbers, so we print the real counts and do not widen the models to
    match. `--width 2` doubles every channel count (G 1.99M, D 2.64M) for anyone who wants more.
    --minibatch-disc adds Salimans et al.'s T tensor, 4096 x (100 x 5) = 2.05M weights, to D.

Outputs in --out: checkpoint.pt, history.json, metrics.json, samples.png, progress.png,
interpolations.png, curves.png (see save_outputs / the checkpoint dict for the fields).

Result, default run (inside ./reproduce.sh: seed 42, 2-core AMD EPYC CPU, torch 2.13.0, 2 threads;
the CIFAR-10 archive the README names): no divergence; final d_loss 0.587, g_loss 2.599 (ratio 4.4),
D(x) 0.78, D(G(z)) 0.22; diversity 0.995 of real; memorisation ratio 1.03 (samples are no nearer the
training images than test images are); linear probe on the 7168 D features 62.0% vs 54.8% for the
same D at its random init (+7.2 points). Training 25m13s (37.9 s an epoch of 78 steps; a step of
128 images is ~50 GFLOP, ~100 GFLOP/s here), 26.5 min with the probes. `--bench --subset 2000`:
our loop 1.19x the speed of the DataLoader tutorial loop on the same models (channels_last). On a
machine shared with other jobs, `--threads 1` avoids two threads waiting on a busy core.
Over seeds 42, 43, 44 (compare.py --seeds): D probe 62.0 +- 0.3%, diversity 0.983 +- 0.011, no
divergence. --minibatch-disc (seed 42) did worse: from epoch 17 its D repeatedly wins outright
(epoch-mean d_loss 0.04-0.12), diversity ends at 0.89, and its samples' KID is 0.196 vs 0.069.

Left out on purpose: FID / Inception Score (need a pretrained network; compare.py's business),
label smoothing, feature matching and the other Salimans et al. tricks the study does not use,
and mixed precision (this CPU has no bfloat16 units; float32 throughout).
"""
import argparse
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

# ----------------------------------------------------------------------------------------------
# Settings (flags use the same names in kebab-case; the resolved config is printed and saved)
# ----------------------------------------------------------------------------------------------
EPOCHS = 40              # passes over the subset (the study: 40 epochs)
SUBSET = 10_000          # training images, class-stratified: 1,000 per class (the study's 10k subset)
BATCH_SIZE = 128         # images per step; the last partial batch of an epoch is dropped (see train())
SEED = 42                # one seed drives init, data order, noise: same seed + device -> same numbers
Z_DIM = 100              # latent size (the study)
LR = 2e-4                # Adam learning rate for both nets (Radford et al. 2016)
BETAS = (0.5, 0.999)     # beta1 0.5 instead of 0.9: momentum 0.9 oscillated in Radford et al.
TTUR_LR_D, TTUR_LR_G = 4e-4, 1e-4   # --ttur: D learns faster than G (Heusel et al. 2017)
INIT_STD = 0.02          # std of N(0, std) for conv/linear weights; BN scale from N(1, std)
LEAKY_SLOPE = 0.2        # LeakyReLU slope in D (Radford et al. 2016)
MBD_KERNELS = 100        # minibatch discrimination: B kernels ...
MBD_KERNEL_DIM = 5       # ... of C dimensions each (Salimans et al. 2016, their CIFAR-10 code)
N_FIXED = 64             # fixed noise vectors for samples.png (8x8 grid); the first 8 feed progress.png
PROGRESS_ROWS = 10       # at most this many epochs shown in progress.png (first and last always)
N_DIVERSITY = 500        # generated / real / test images used by the diversity and memorisation checks
FEATURE_BATCH = 500      # images per forward pass when extracting probe features (no grad)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def channels(base, width):
    """Channel count after the --width multiplier (at least 1)."""
    return max(1, int(round(base * width)))


class Generator(nn.Module):
    """z (B, 100) -> image (B, 3, 32, 32) in [-1, 1].

    The study writes "FC -> 4x4x128" and says nothing about what follows the Linear. We follow it
    with BatchNorm + ReLU, as Radford et al. do after their projection: without a nonlinearity the
    Linear and the first ConvT would collapse into one linear map of z. Layers followed by BN have no
    bias (BN's shift replaces it; a bias there is wasted parameters).
    """

    def __init__(self, width=1.0):
        super().__init__()
        self.c1, c2 = channels(128, width), channels(64, width)
        self.fc = nn.Linear(Z_DIM, self.c1 * 4 * 4, bias=False)
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
        # (m[:, :, None] - m[:, None]).abs().sum(-1) without the (K, B, B, C) temporary: 3x faster.
        l1 = torch.cdist(m, m, p=1)                                       # (K, B, B)
        o = torch.exp(-l1).sum(2).t() - 1.0                               # (B, K): drop j == i
        return torch.cat([f, o], dim=1)                                   # (B, A + K)


class Discriminator(nn.Module):
    """image (B, 3, 32, 32) -> logit (B,): log-odds that the image is real.

    With spectral_norm=True the BatchNorm layers are left out (Identity) and the convs get biases:
    Miyato et al.'s SN discriminators use no BN, and BN's per-batch rescaling would undo the
    Lipschitz bound that SN puts on each layer. The SN wrappers themselves are added in
    build_models, after the N(0, 0.02) init, so the init touches the raw weights.
    """

    def __init__(self, width=1.0, spectral_norm=False, minibatch_disc=False):
        super().__init__()
        c1, c2, c3 = channels(64, width), channels(128, width), channels(256, width)
        bn = not spectral_norm
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


def build_models(cfg):
    """G, D and the fixed noise, all from cfg["seed"]: calling it twice gives identical tensors
    (that is how the random-init probe baseline gets the very D that training started from)."""
    torch.manual_seed(cfg["seed"])
    G = Generator(cfg["width"])
    D = Discriminator(cfg["width"], cfg["spectral_norm"], cfg["minibatch_disc"])
    G.apply(init_weights)
    D.apply(init_weights)
    if cfg["spectral_norm"]:
        # Miyato et al. 2018: W / sigma(W), sigma from one power iteration per training forward
        # (the conv kernel is reshaped to (out, in*4*4), as in the paper). The minibatch layer's T
        # is not normalised, so with --minibatch-disc the bound covers the layers, not all of D.
        for layer in (D.conv1, D.conv2, D.conv3, D.fc):
            nn.utils.parametrizations.spectral_norm(layer)
    g = torch.Generator().manual_seed(cfg["seed"])
    fixed_noise = torch.randn(N_FIXED, Z_DIM, generator=g)        # samples/progress/interpolations
    diversity_noise = torch.randn(N_DIVERSITY, Z_DIM, generator=g)  # diversity + memorisation
    return G, D, fixed_noise, diversity_noise


def to_device(model, cfg, device):
    """Move a model to the device; with --channels-last also store its conv weights NHWC.
    On a CPU this lets oneDNN run its direct convolution kernels without reordering the
    activations at every layer (about 15% faster per step here). Values are unchanged; only the
    summation order inside the convolutions differs, so runs stay deterministic."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.get("channels_last") else model


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Loss (Goodfellow et al. 2014). BCE on logits: log-sigmoid computed stably inside one op.
# Every term is a mean over the batch; d_loss adds the real half and the fake half.
# ----------------------------------------------------------------------------------------------
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


def noise_seed(seed, epoch):
    """Seed of the per-epoch noise generator. A pure function of (seed, epoch), like data.Batches'
    permutation, so resuming at any epoch draws the same z with no generator state to save.
    The offset keeps it apart from Batches' seed*1000003 + epoch."""
    return seed * 1000003 + epoch + 500_000


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = data.OneLineParser(description="DCGAN on CIFAR-10 (see the file docstring).")
    # run
    p.add_argument("--epochs", type=int, default=EPOCHS, help="total epochs (with --resume: the new total)")
    p.add_argument("--subset", type=int, default=SUBSET, help="training images, multiple of 10")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default="runs/dcgan", help="folder for every output")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier for G and D")
    p.add_argument("--no-probe", action="store_true", help="skip the two linear probes at the end")
    p.add_argument("--log-every", type=int, default=0, help="also log every N steps (0: per epoch only)")
    p.add_argument("--bench", action="store_true", help="time one epoch vs the DataLoader tutorial loop, then exit")
    # speed (on by default, printed at start; the tests also run with it off)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for both nets: oneDNN's fast conv path on CPUs")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0: torch's default, one per core); 1 on a machine shared with other jobs")
    # stabilisers (off by default: the study's baseline has none)
    p.add_argument("--spectral-norm", action="store_true", help="Miyato et al. 2018, on D (drops D's BN)")
    p.add_argument("--ttur", action="store_true", help="Heusel et al. 2017: lr-d 4e-4, lr-g 1e-4")
    p.add_argument("--lr-d", type=float, default=None, help="D's Adam lr (default 2e-4, 4e-4 with --ttur)")
    p.add_argument("--lr-g", type=float, default=None, help="G's Adam lr (default 2e-4, 1e-4 with --ttur)")
    p.add_argument("--minibatch-disc", action="store_true", help="Salimans et al. 2016, before D's last linear")
    a = p.parse_args(argv)

    # Validate everything before any work starts.
    if a.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {a.epochs}")
    if not 10 <= a.subset <= 50_000 or a.subset % 10:
        raise ValueError(f"--subset must be a multiple of 10 in [10, 50000], got {a.subset}")
    if not 2 <= a.batch_size <= a.subset:
        raise ValueError(f"--batch-size must be in [2, --subset={a.subset}], got {a.batch_size}")
    if not (math.isfinite(a.width) and 0 < a.width <= 16):
        raise ValueError(f"--width must be in (0, 16], got {a.width}")
    if a.log_every < 0:
        raise ValueError(f"--log-every must be >= 0, got {a.log_every}")
    if a.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {a.threads}")
    if not 0 <= a.seed < 2**31:
        raise ValueError(f"--seed must be in [0, 2**31), got {a.seed}")
    lr_d = a.lr_d if a.lr_d is not None else (TTUR_LR_D if a.ttur else LR)
    lr_g = a.lr_g if a.lr_g is not None else (TTUR_LR_G if a.ttur else LR)
    for name, lr in (("--lr-d", lr_d), ("--lr-g", lr_g)):
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"{name} must be a positive number, got {lr}")
    data.pick_device(a.device)  # raises ValueError on a bad name
    cfg = {k: v for k, v in vars(a).items() if k not in ("lr_d", "lr_g")}
    cfg.update(lr_d=lr_d, lr_g=lr_g)
    return cfg


# Settings that define the experiment: --resume refuses a checkpoint made with different ones.
# --epochs, --device and --channels-last may change (a resume is bit-exact only on the same device
# with the same --channels-last: both change the order of floating-point sums).
RESUME_KEYS = ("subset", "batch_size", "seed", "width", "spectral_norm", "minibatch_disc", "lr_d", "lr_g")


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(G, z, device):
    """Images in eval mode (BN uses its running statistics), so a picture of z does not depend on
    what else is in the batch. Returns float (N, 3, 32, 32) in [-1, 1] on the CPU."""
    was_training = G.training
    G.eval()
    out = torch.cat([G(z[i:i + FEATURE_BATCH].to(device)).cpu() for i in range(0, len(z), FEATURE_BATCH)])
    G.train(was_training)
    return out


@torch.no_grad()
def mean_pairwise_distance(x):
    """Mean L2 distance over all pairs i != j of flattened images (pixels scaled to [-1, 1]).
    float64: cdist's fast matrix-product path leaves the diagonal at ~1e-5 instead of 0, which
    the sum then includes; negligible next to distances of ~40."""
    f = x.flatten(1).double()
    n = f.shape[0]
    return (torch.cdist(f, f).sum() / (n * (n - 1))).item()


@torch.no_grad()
def mean_nearest_distance(queries, reference, chunk=2000):
    """Mean over queries of the L2 distance to the nearest reference image ([-1, 1] pixel scale)."""
    q = queries.flatten(1).float()
    best = torch.full((q.shape[0],), float("inf"))
    for i in range(0, len(reference), chunk):
        r = data.to_float(reference[i:i + chunk]).flatten(1) if reference.dtype == torch.uint8 \
            else reference[i:i + chunk].flatten(1).float()
        best = torch.minimum(best, torch.cdist(q, r).min(1).values)
    return best.mean().item()


@torch.no_grad()
def probe_features(D, images_uint8, device):
    """D.features for every image, eval mode, as a float32 NumPy array (N, feature_dim)."""
    D.eval()
    out = [D.features(data.to_float(images_uint8[i:i + FEATURE_BATCH].to(device))).float().cpu()
           for i in range(0, len(images_uint8), FEATURE_BATCH)]
    D.train()
    return torch.cat(out).numpy()


def run_probe(D, train_x, train_y, test_x, test_y, device, seed):
    """Linear probe on D's features -> (test accuracy, the L2 strength the validation split chose)."""
    res = metrics.linear_probe(probe_features(D, train_x, device), train_y.numpy(),
                               probe_features(D, test_x, device), test_y.numpy(), seed=seed)
    return float(res["acc"]), float(res["l2"])


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
class NonFiniteLoss(ValueError):
    """A loss became inf/nan; data.cli_main prints it as one line and exits with status 2."""


def train_step(G, D, opt_g, opt_d, x, z):
    """One iteration of the GAN game on a real batch x and noise z. Returns detached
    (d_loss, g_loss, D(x), D(G(z))) as one tensor, with no .item(): no sync on a GPU."""
    fake = G(z)                                   # (B, 3, 32, 32); one G forward serves both steps

    # (1) Update D: maximise log D(x) + log(1 - D(G(z)))   [minimise d_loss]
    logit_real = D(x)                             # (B,)
    logit_fake = D(fake.detach())                 # detach: this step must not move G
    d_loss = d_loss_fn(logit_real, logit_fake)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # (2) Update G: maximise log D(G(z))   [non-saturating; minimise g_loss]
    # D's weights are frozen for this backward: the gradient flows through D into G, but D's own
    # weight gradients (which opt_d would discard anyway) are never computed.
    D.requires_grad_(False)
    g_loss = g_loss_fn(D(fake))                   # the D just updated, as in Goodfellow et al.
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    D.requires_grad_(True)

    # D(x), D(G(z)): mean probabilities from step (1), before D's update
    return torch.stack([d_loss.detach(), g_loss.detach(),
                        torch.sigmoid(logit_real.detach()).mean(), torch.sigmoid(logit_fake.detach()).mean()])


def check_finite(stats, first_step, epoch, out):
    """stats: (n, 4) CPU tensor of steps first_step.. ; raise NonFiniteLoss at the first bad one."""
    bad = (~torch.isfinite(stats[:, :2])).any(1).nonzero()
    if len(bad):
        i = int(bad[0])
        ckpt = os.path.join(out, "checkpoint.pt")
        kept = f"last good checkpoint kept at {ckpt}" if os.path.exists(ckpt) else "no checkpoint written yet"
        raise NonFiniteLoss(f"non-finite loss at step {first_step + i + 1} (epoch {epoch + 1}): "
                            f"d_loss={stats[i, 0].item()} g_loss={stats[i, 1].item()}; {kept}; "
                            f"try a lower --lr-d/--lr-g, --ttur or --spectral-norm")


def train(cfg):
    device = data.pick_device(cfg["device"])
    if device.type == "cuda":  # same seed + device -> same numbers (cuDNN picks kernels by timing)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    out = cfg["out"]
    ckpt_path = os.path.join(out, "checkpoint.pt")
    ckpt = None
    if cfg["resume"]:
        ckpt = data.load_checkpoint(ckpt_path, "run without --resume to start afresh", cfg, RESUME_KEYS)
    os.makedirs(out, exist_ok=True)
    print("config " + json.dumps(cfg, sort_keys=True))

    # ---- data ----------------------------------------------------------------------------------
    images, labels = data.load_cifar10(cfg["data_dir"], train=True, download=not cfg["no_download"])
    if cfg["subset"] > len(images):
        raise data.DataError(f"--subset {cfg['subset']} is larger than the {len(images)} training images")
    idx = data.stratified_indices(labels, cfg["subset"], seed=cfg["seed"])
    train_x, train_y = images[idx], labels[idx]                   # uint8 (N, 3, 32, 32), int64 (N,)
    del images, labels
    # drop_last: every step sees a full batch, so BN statistics are never taken over a handful of images
    batches = data.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True, drop_last=True)
    steps_per_epoch = len(batches)
    g = torch.Generator().manual_seed(cfg["seed"])
    real_div = train_x[torch.randperm(len(train_x), generator=g)[:N_DIVERSITY]]  # fixed real images
    real_diversity = mean_pairwise_distance(data.to_float(real_div))

    # ---- model -----------------------------------------------------------------------------------
    G, D, fixed_noise, diversity_noise = build_models(cfg)
    G, D = to_device(G, cfg, device), to_device(D, cfg, device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["lr_g"], betas=BETAS)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr_d"], betas=BETAS)
    params_g, params_d = count_params(G), count_params(D)
    print(f"params G {params_g:,}  D {params_d:,}  (the study's slides said 1.24M / 2.76M; see docstring)")
    stab = [s for s in ("spectral_norm", "ttur", "minibatch_disc") if cfg[s]]
    print(f"device {device} | {steps_per_epoch} steps/epoch | lr_d {cfg['lr_d']:g} lr_g {cfg['lr_g']:g} | "
          f"stabilisers: {', '.join(stab) or 'none'} | speed: "
          f"{'channels_last memory format, ' if cfg['channels_last'] else ''}{torch.get_num_threads()} threads")
    history = {"epochs": [], "steps": []}
    progress_rows = []                      # per epoch: (8, 3, 32, 32) uint8 from fixed_noise[:8]
    start_epoch, train_seconds = 0, 0.0
    if ckpt is not None:
        G.load_state_dict(ckpt["G"]), D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"]), opt_d.load_state_dict(ckpt["opt_d"])
        fixed_noise = ckpt["fixed_noise"]
        history, progress_rows = ckpt["history"], list(ckpt["progress_rows"])
        start_epoch, train_seconds = ckpt["epoch"], ckpt["train_seconds"]
        print(f"resumed from {ckpt_path} at epoch {start_epoch}"
              + (" (already at or past --epochs: nothing left to train)" if start_epoch >= cfg["epochs"] else ""))

    # ---- training loop ---------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg["epochs"]):
        G.train(), D.train()
        noise = torch.Generator().manual_seed(noise_seed(cfg["seed"], epoch))
        stats = torch.zeros(steps_per_epoch, 4, device=device)   # d_loss, g_loss, D(x), D(G(z))
        first_step = epoch * steps_per_epoch
        t0 = time.perf_counter()
        for i, (x, _) in enumerate(batches.epoch(epoch)):
            z = torch.randn(x.shape[0], Z_DIM, generator=noise).to(device)   # (B, 100)
            if cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)           # same values, NHWC
            stats[i] = train_step(G, D, opt_g, opt_d, x, z)
            if cfg["log_every"] and (i + 1) % cfg["log_every"] == 0:         # logging step: sync here
                window = stats[i + 1 - cfg["log_every"]:i + 1].cpu()
                check_finite(window, first_step + i + 1 - cfg["log_every"], epoch, out)
                m = window.mean(0).tolist()
                print(f"  step {first_step + i + 1:6d} | d_loss {m[0]:.3f} | g_loss {m[1]:.3f} | "
                      f"D(x) {m[2]:.3f} | D(G(z)) {m[3]:.3f}")
        seconds = time.perf_counter() - t0
        stats = stats.cpu()
        check_finite(stats, first_step, epoch, out)   # before anything of this epoch is saved
        train_seconds += seconds

        # ---- evaluation (not timed as training) ----
        diversity = mean_pairwise_distance(generate(G, diversity_noise, device)) / real_diversity
        progress_rows.append(data.to_uint8(generate(G, fixed_noise[:8], device)))
        m = stats.mean(0).tolist()
        history["epochs"].append(dict(epoch=epoch + 1, seconds=round(seconds, 3), d_loss=m[0], g_loss=m[1],
                                      d_x=m[2], d_g_z=m[3], diversity=diversity))
        history["steps"] += [dict(step=first_step + i + 1, d_loss=s[0], g_loss=s[1], d_x=s[2], d_g_z=s[3])
                             for i, s in enumerate(stats.tolist())]
        done = len(history["epochs"])
        eta = train_seconds / done * (cfg["epochs"] - epoch - 1)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | d_loss {m[0]:.3f} | g_loss {m[1]:.3f} | D(x) {m[2]:.3f} | "
              f"D(G(z)) {m[3]:.3f} | diversity {diversity:.3f} | {seconds:.1f} s | ETA {data.format_seconds(eta)}")

        # ---- saving: one dict, atomic, every epoch ----
        data.atomic_torch_save(dict(G=G.state_dict(), D=D.state_dict(), opt_g=opt_g.state_dict(),
                                    opt_d=opt_d.state_dict(), config=cfg, epoch=epoch + 1,
                                    fixed_noise=fixed_noise, history=history, progress_rows=progress_rows,
                                    train_seconds=train_seconds, torch_rng=torch.get_rng_state(),
                                    note="z noise and data order are reseeded from (seed, epoch)"), ckpt_path)
        data.write_json(os.path.join(out, "history.json"), history)

    return dict(G=G, D=D, device=device, fixed_noise=fixed_noise, diversity_noise=diversity_noise,
                history=history, progress_rows=progress_rows, train_seconds=train_seconds,
                train_x=train_x, train_y=train_y, real_diversity=real_diversity,
                params_g=params_g, params_d=params_d)


# ----------------------------------------------------------------------------------------------
# Evaluation and saving
# ----------------------------------------------------------------------------------------------
def smooth(ys, k):
    """Trailing moving average over k points (shorter at the start), for the loss curves."""
    c = np.cumsum(np.insert(np.asarray(ys, dtype=np.float64), 0, 0.0))
    n = np.arange(1, len(ys) + 1)
    lo = np.maximum(n - k, 0)
    return ((c[n] - c[lo]) / (n - lo)).tolist()


def save_outputs(cfg, r):
    out, G, device = cfg["out"], r["G"], r["device"]
    hist = r["history"]
    data.save_grid(generate(G, r["fixed_noise"], device), os.path.join(out, "samples.png"), nrow=8)
    rows = r["progress_rows"]
    pick = sorted(set(np.linspace(0, len(rows) - 1, min(PROGRESS_ROWS, len(rows))).round().astype(int).tolist()))
    data.save_grid(torch.cat([rows[i] for i in pick]), os.path.join(out, "progress.png"), nrow=8)
    # Interpolations: 8 rows, each 10 images on the straight line between two fixed noise vectors
    t = torch.linspace(0, 1, 10).view(1, 10, 1)
    a, b = r["fixed_noise"][0:16:2].unsqueeze(1), r["fixed_noise"][1:16:2].unsqueeze(1)  # (8, 1, 100)
    z = ((1 - t) * a + t * b).reshape(-1, Z_DIM)                                        # (80, 100)
    data.save_grid(generate(G, z, device), os.path.join(out, "interpolations.png"), nrow=10)
    # Curves
    steps = hist["steps"]
    xs = [s["step"] for s in steps]
    k = max(1, min(50, len(steps) // 10))
    ep = [e["epoch"] for e in hist["epochs"]]
    charts = [
        data.draw_chart({"D loss": (xs, smooth([s["d_loss"] for s in steps], k)),
                         "G loss": (xs, smooth([s["g_loss"] for s in steps], k))},
                        title=f"losses, mean of {k} steps", xlabel="step", ylabel="BCE, batch mean"),
        data.draw_chart({"D(x)": (xs, smooth([s["d_x"] for s in steps], k)),
                         "D(G(z))": (xs, smooth([s["d_g_z"] for s in steps], k))},
                        title=f"D outputs, mean of {k} steps", xlabel="step", ylabel="probability real"),
        data.draw_chart({"generated / real": (ep, [e["diversity"] for e in hist["epochs"]])},
                        title="diversity (pairwise L2)", xlabel="epoch", ylabel="ratio"),
    ]
    data.save_charts(os.path.join(out, "curves.png"), charts, ncols=3)


def main(argv=None):
    cfg = parse_args(argv)
    if cfg["threads"]:
        # Each op splits over the threads and waits for the slowest; when another job holds a
        # core, that wait dominates (3x slower per step measured here with 2 threads on 2 busy cores).
        torch.set_num_threads(cfg["threads"])
    if cfg["bench"]:
        return bench(cfg)
    t_start = time.perf_counter()
    r = train(cfg)
    save_outputs(cfg, r)
    G, D, device, hist = r["G"], r["D"], r["device"], r["history"]
    last = hist["epochs"][-1]

    # Memorisation check: are samples nearer to training images than unseen test images are?
    test_x, test_y = data.load_cifar10(cfg["data_dir"], train=False, download=not cfg["no_download"])
    g = torch.Generator().manual_seed(cfg["seed"])
    test_sample = test_x[torch.randperm(len(test_x), generator=g)[:N_DIVERSITY]]
    gen = generate(G, r["diversity_noise"], device)
    nn_gen = mean_nearest_distance(gen, r["train_x"])
    nn_test = mean_nearest_distance(data.to_float(test_sample), r["train_x"])

    probe_acc = random_probe_acc = probe_l2 = random_probe_l2 = None
    t0 = time.perf_counter()
    if not cfg["no_probe"]:
        probe_acc, probe_l2 = run_probe(D, r["train_x"], r["train_y"], test_x, test_y, device, cfg["seed"])
        D0 = to_device(build_models(cfg)[1], cfg, device)   # the same D at its random init (same seed)
        random_probe_acc, random_probe_l2 = run_probe(D0, r["train_x"], r["train_y"], test_x, test_y,
                                                      device, cfg["seed"])
        print(f"linear probe on {D.feature_dim} D features: trained {probe_acc:.4f} (l2 {probe_l2:g}) | "
              f"random init {random_probe_acc:.4f} (l2 {random_probe_l2:g}) | "
              f"gain {probe_acc - random_probe_acc:+.4f} ({time.perf_counter() - t0:.0f} s)")

    metrics_out = dict(
        d_loss=last["d_loss"], g_loss=last["g_loss"], g_d_ratio=last["g_loss"] / last["d_loss"],
        d_x=last["d_x"], d_g_z=last["d_g_z"], params_g=r["params_g"], params_d=r["params_d"],
        probe_acc=probe_acc, random_probe_acc=random_probe_acc,
        probe_l2=probe_l2, random_probe_l2=random_probe_l2,   # the L2 strengths the validation split chose
        probe_gain=None if probe_acc is None else probe_acc - random_probe_acc,
        probe_dim=D.feature_dim, probe_train=len(r["train_x"]), probe_test=len(test_x),
        diversity=last["diversity"], real_pairwise_l2=r["real_diversity"],
        nn_train_l2_generated=nn_gen, nn_train_l2_test=nn_test, memorisation_ratio=nn_gen / nn_test,
        epochs=len(hist["epochs"]), train_seconds=r["train_seconds"],
        probe_seconds=time.perf_counter() - t0, run_seconds=time.perf_counter() - t_start,
        seconds_per_epoch=r["train_seconds"] / len(hist["epochs"]), device=str(device),
        torch=torch.__version__, seed=cfg["seed"], config=cfg,
        units="losses: BCE averaged over the batch (d_loss sums its real and fake halves); "
              "seconds: wall clock (train: training steps only; run: this call, resumed epochs not included); "
              "distances: L2 over 3072 pixels scaled to [-1, 1]; diversity: generated / real mean pairwise L2; "
              "memorisation_ratio: nearest-training-image L2 of generated / of test images",
    )
    data.write_json(os.path.join(cfg["out"], "metrics.json"), metrics_out)
    print(f"d_loss {last['d_loss']:.3f} | g_loss {last['g_loss']:.3f} | ratio g/d {metrics_out['g_d_ratio']:.2f} | "
          f"diversity {last['diversity']:.3f} | memorisation ratio {metrics_out['memorisation_ratio']:.3f} | "
          f"train {data.format_seconds(r['train_seconds'])} | outputs in {cfg['out']}")
    return metrics_out


# ----------------------------------------------------------------------------------------------
# Speed check: this loop vs the plain tutorial loop (pytorch/examples dcgan: DataLoader, .item())
# ----------------------------------------------------------------------------------------------
def tutorial_step(G, D, opt_g, opt_d, real, criterion, device):
    """One step of the pytorch/examples DCGAN loop, as written there (.item() every step, D's
    weight gradients computed in the G step too), with our models, optimisers and logit loss."""
    real = real.to(device)
    b = real.size(0)
    D.zero_grad()
    label = torch.full((b,), 1.0, device=device)
    output = D(real)
    err_d_real = criterion(output, label)
    err_d_real.backward()
    d_x = torch.sigmoid(output).mean().item()
    fake = G(torch.randn(b, Z_DIM, device=device))
    label.fill_(0.0)
    output = D(fake.detach())
    err_d_fake = criterion(output, label)
    err_d_fake.backward()
    d_g_z1 = torch.sigmoid(output).mean().item()
    opt_d.step()
    G.zero_grad()
    label.fill_(1.0)
    output = D(fake)
    err_g = criterion(output, label)
    err_g.backward()
    opt_g.step()
    return (err_d_real + err_d_fake).item(), err_g.item(), d_x, d_g_z1


def bench(cfg):
    """Time one epoch of our loop against the plain tutorial loop (TensorDataset + DataLoader with
    its defaults, shuffle, same batch size and drop_last; NCHW as in the tutorial), same models from
    the same init. The loops run step by step in turn, ours then the tutorial's (then ours without
    channels_last when that is on), so a shared machine slows them alike; each loop's time is the
    sum of its own steps, data loading included. Prints the figures; writes OUT/bench.json."""
    device = data.pick_device(cfg["device"])
    images, labels = data.load_cifar10(cfg["data_dir"], train=True, download=not cfg["no_download"])
    train_x = images[data.stratified_indices(labels, cfg["subset"], seed=cfg["seed"])]
    batches = data.Batches(train_x, torch.zeros(len(train_x), dtype=torch.int64), cfg["batch_size"],
                           device=device, seed=cfg["seed"], shuffle=True, drop_last=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.to_float(train_x)),
                                         batch_size=cfg["batch_size"], shuffle=True, drop_last=True)
    loops = {"ours": dict(cfg), "tutorial": dict(cfg, channels_last=False)}
    if cfg["channels_last"]:
        loops["ours_nchw"] = dict(cfg, channels_last=False)
    nets = {}
    for name, c in loops.items():
        G, D, _, _ = build_models(c)
        G, D = to_device(G, c, device), to_device(D, c, device)
        nets[name] = (G, D, torch.optim.Adam(G.parameters(), lr=c["lr_g"], betas=BETAS),
                      torch.optim.Adam(D.parameters(), lr=c["lr_d"], betas=BETAS))
    noise = torch.Generator().manual_seed(noise_seed(cfg["seed"], 0))
    criterion = nn.BCEWithLogitsLoss()
    stats = torch.zeros(len(batches), 4, device=device)

    def step(name, x, i):
        if name == "tutorial":
            return tutorial_step(*nets[name], x, criterion, device)
        if loops[name]["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        stats[i] = train_step(*nets[name], x, torch.randn(x.shape[0], Z_DIM, generator=noise).to(device))
        if i == len(batches) - 1:
            stats.cpu()   # ours reads its numbers once per epoch (a sync, on a GPU)

    def batch_source(name):
        return iter(loader) if name == "tutorial" else batches.epoch(0)

    for name in loops:   # one untimed step each: oneDNN builds its kernels on first use
        step(name, next(batch_source(name))[0], 0)
    seconds = {name: 0.0 for name in loops}
    sources = {name: batch_source(name) for name in loops}
    for i in range(len(batches)):
        for name in loops:
            t0 = time.perf_counter()
            x = next(sources[name])[0]      # fetching the batch counts: that is where the loops differ
            step(name, x, i)
            seconds[name] += time.perf_counter() - t0
    res = dict(subset=cfg["subset"], batch_size=cfg["batch_size"], steps=len(batches), device=str(device),
               threads=torch.get_num_threads(), ours_seconds=seconds["ours"],
               tutorial_seconds=seconds["tutorial"], speedup=seconds["tutorial"] / seconds["ours"],
               ours_nchw_seconds=seconds.get("ours_nchw"))
    extra = f" | ours without channels_last {seconds['ours_nchw']:.2f} s" if "ours_nchw" in seconds else ""
    print(f"one epoch of {len(batches)} steps: ours {seconds['ours']:.2f} s | DataLoader tutorial "
          f"{seconds['tutorial']:.2f} s | tutorial / ours = {res['speedup']:.2f}x{extra}")
    os.makedirs(cfg["out"], exist_ok=True)
    data.write_json(os.path.join(cfg["out"], "bench.json"), res)
    return res


if __name__ == "__main__":
    data.cli_main(main)
