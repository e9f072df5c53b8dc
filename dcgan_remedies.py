"""The DCGAN's remedies: what the study names against GAN instability and mode collapse, and its
future work, each a flag that is off by default, built on the plain DCGAN of dcgan.py by import.
Read dcgan.py first: every remedy here is a difference from its models or its train_step.

Run (every flag of dcgan.py works here too; with no remedy flag this is dcgan.py's run):
    python dcgan_remedies.py --loss wgan-gp --out runs/dcgan_wgangp
    python dcgan_remedies.py --spectral-norm --ttur --minibatch-disc --out runs/dcgan_all
    python dcgan_remedies.py --ema 0.99 --out runs/dcgan_ema099
    python dcgan_remedies.py --bench --subset 2000 --loss hinge      # the selected step's speed

The remedies, and where each enters:
    --spectral-norm   Miyato et al. 2018: W / sigma(W) in every layer of D (then no BN in D)
    --ttur            Heusel et al. 2017: D's Adam at 4e-4, G's at 1e-4 (optimisers)
    --minibatch-disc  Salimans et al. 2016, sec. 3.2: D compares each sample with its batch
    --loss hinge      Lim & Ye 2017, Miyato et al. 2018: D minimises mean(relu(1 - D(x))) +
                      mean(relu(1 + D(G(z)))), G minimises -mean(D(G(z)))
    --loss wgan-gp    Gulrajani et al. 2017: a critic without BN, D minimises mean(D(G(z))) -
                      mean(D(x)) + lambda * gradient penalty, 5 critic steps per G step, Adam
                      1e-4 with betas (0.5, 0.9); G minimises -mean(D(G(z)))
    --diffaugment     Zhao et al. 2020: random differentiable transforms of every batch D sees
    --ema             Yazici et al. 2019: pictures and figures from an average of G's weights
    --self-attention  Zhang et al. 2019 (SAGAN): an attention block at 16 x 16 in G and in D,
                      its output scale gamma starting at 0
For hinge and wgan-gp D outputs an unbounded score, shown as it is; every loss is a batch mean.
The record of each: README.md's claims table and docs/results.md.
"""
import copy
import sys
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import dcgan
import runs

# ==== Settings ================================================================================
TTUR_LR_D, TTUR_LR_G = 4e-4, 1e-4   # --ttur: D learns faster than G (Heusel et al. 2017)
WGAN_LR, WGAN_BETAS = 1e-4, (0.5, 0.9)  # --loss wgan-gp: the official CIFAR-10 settings of
WGAN_N_CRITIC, GP_WEIGHT = 5, 10.0   # Gulrajani et al. 2017: Adam 1e-4, (0.5, 0.9), 5 critic
                         # steps per G step, penalty weight lambda = 10
MBD_KERNELS = 100        # minibatch discrimination: B kernels ...
MBD_KERNEL_DIM = 5       # ... of C dimensions each (Salimans et al. 2016, their CIFAR-10 code)
AUGMENTS = ("color", "translation", "cutout")  # DiffAugment's transforms (Zhao et al. 2020)
TRANSLATE_FRAC = 0.125   # translation: up to 1/8 of the side (4 px on 32 x 32), zeros shifted in
CUTOUT_FRAC = 0.5        # cutout: one square of half the side (16 x 16) set to 0
SA_KEY_RATIO = 8         # --self-attention: f and g map C channels to C/8 (SAGAN's k = 8)
# The settings --resume must find unchanged: the plain DCGAN's and the remedies'
RESUME_KEYS = dcgan.RESUME_KEYS + ("spectral_norm", "minibatch_disc", "loss", "n_critic",
                                   "gp_weight", "diffaugment", "ema", "self_attention")
# What a config saved before a remedy existed meant by it (checkpoints of older runs still load)
OLD_CONFIGS = dict(loss="bce", n_critic=1, gp_weight=GP_WEIGHT, diffaugment=[], ema=0.0,
                betas=list(dcgan.BETAS), precision="fp32", script="dcgan.py",
                self_attention=False)


def setting(cfg, key):
    """cfg[key], or what configs saved before that setting existed meant (OLD_CONFIGS)."""
    return cfg.get(key, OLD_CONFIGS[key])


# ==== Models: D without BN (spectral norm, WGAN-GP), with a minibatch layer ====================
class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, sec. 3.2: lets D compare each sample with the rest of its batch.
    f (B, A) -> M = f T, viewed (B, K, C): K kernels of C dims; per kernel k, c_k(i, j) =
    exp(-||M_i,k - M_j,k||_1) and o(i)_k = sum_{j != i} c_k(i, j); output [f, o] (B, A + K).
    Near-copies in a batch (mode collapse) give a large o, which D can learn to call fake. The
    paper's j = i term, the constant exp(0) = 1, is left out. T: 4096 x 500 = 2.05M weights."""

    def __init__(self, in_features, kernels=MBD_KERNELS, kernel_dim=MBD_KERNEL_DIM):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * dcgan.INIT_STD)

    def forward(self, f):
        m = (f @ self.T).view(f.shape[0], self.kernels, self.kernel_dim)  # (B, K, C)
        m = m.transpose(0, 1)                                             # (K, B, C)
        l1 = torch.cdist(m, m, p=1)  # (K, B, B): all pairs' L1, no (K, B, B, C) temporary
        o = torch.exp(-l1).sum(2).t() - 1.0                               # (B, K): drop j == i
        return torch.cat([f, o], dim=1)                                   # (B, A + K)


class Discriminator(dcgan.Discriminator):
    """dcgan.Discriminator with two options. batchnorm=False: no BN, conv biases instead (spectral
    norm: BN's per-batch rescaling would undo its bound; WGAN-GP: BN makes each sample's score
    depend on its batch, which the per-sample penalty assumes away). minibatch_disc: the minibatch
    layer before the last Linear. The layers are made in the plain D's order, so the same seed
    gives the plain D's initial weights wherever the two agree."""

    def __init__(self, width=1.0, batchnorm=True, minibatch_disc=False):
        nn.Module.__init__(self)     # not dcgan.Discriminator's: the layers differ, below
        c1, c2, c3 = (runs.channels(c, width) for c in (64, 128, 256))
        conv = lambda c_in, c_out: nn.Conv2d(c_in, c_out, 4, stride=2, padding=1,
                                             bias=not batchnorm)
        norm = lambda c: nn.BatchNorm2d(c) if batchnorm else nn.Identity()
        self.conv1 = nn.Conv2d(3, c1, 4, stride=2, padding=1)
        self.conv2, self.bn2 = conv(c1, c2), norm(c2)
        self.conv3, self.bn3 = conv(c2, c3), norm(c3)
        self.mbd = MinibatchDiscrimination(c3 * 16) if minibatch_disc else nn.Identity()
        self.fc = nn.Linear(c3 * 16 + (MBD_KERNELS if minibatch_disc else 0), 1)
        self.feature_dim = 16 * (c1 + c2 + c3)
        self.attention = nn.Identity()   # --self-attention: add_self_attention puts the block here

    def conv_layers(self, x):
        """dcgan.Discriminator's, with the attention slot after conv1 (the probe's features too)."""
        h1 = self.attention(F.leaky_relu(self.conv1(x), dcgan.LEAKY_SLOPE))   # (B, 64, 16, 16)
        h2 = F.leaky_relu(self.bn2(self.conv2(h1)), dcgan.LEAKY_SLOPE)        # (B, 128, 8, 8)
        h3 = F.leaky_relu(self.bn3(self.conv3(h2)), dcgan.LEAKY_SLOPE)        # (B, 256, 4, 4)
        return h1, h2, h3

    def forward(self, x):
        f = self.mbd(self.conv_layers(x)[2].flatten(1))  # (B, 4096); --minibatch-disc (B, 4196)
        return self.fc(f).squeeze(1)


def add_spectral_norm(D):
    """Miyato et al. 2018: W / sigma(W) in every layer of D, sigma from one power iteration per
    training forward (a conv kernel seen as (out, in*4*4), as in the paper). The minibatch layer's
    T is not normalised: with --minibatch-disc the bound covers the layers, not all of D."""
    for layer in (D.conv1, D.conv2, D.conv3, D.fc):
        nn.utils.parametrizations.spectral_norm(layer)


# ==== Models: self-attention at 16 x 16 (--self-attention) ====================================
class SelfAttention(nn.Module):
    """Zhang et al. 2019 (SAGAN), sec. 3: each position of a feature map draws on every other, so
    a distant part of the image can shape this one (a 4x4 conv sees only its neighbours). With
    x (B, C, H, W), N = H * W positions x_i, and 1x1 convs f, g: C -> C/8 and h: C -> C:
        s_ij = f(x_i)^T g(x_j),   beta_{j,i} = exp(s_ij) / sum_i exp(s_ij)    (softmax over i)
        o_j = sum_i beta_{j,i} h(x_i),   y_j = gamma * o_j + x_j
    gamma, a learnable scalar, starts at 0: the block starts as the identity and the net as the
    plain one, and training opens it as far as it helps. The values keep all C channels, the form
    of the paper's equations. SAGAN's official code instead sends them through C/2 channels and a
    fourth 1x1 conv back to C, with keys and values max-pooled 2 x 2 (N/4 of them): savings for its
    64 x 64 and 128 x 128 maps; at 16 x 16 the full 256 x 256 map is cheap, and three convs keep
    the code on the equations. No biases, as in the official code: a bias of h passes the softmax
    unchanged (its weights sum to 1), a constant the next layer's bias or BN absorbs."""

    def __init__(self, channels):
        super().__init__()
        c_key = max(1, channels // SA_KEY_RATIO)
        self.f = nn.Conv2d(channels, c_key, 1, bias=False)     # f(x_i): what position i offers
        self.g = nn.Conv2d(channels, c_key, 1, bias=False)     # g(x_j): what position j looks for
        self.h = nn.Conv2d(channels, channels, 1, bias=False)  # h(x_i): what i passes on
        self.gamma = nn.Parameter(torch.zeros(()))             # 0: the block is the identity

    def attention(self, x):
        """beta (B, N, N), beta[:, j, i] = beta_{j,i}: the share of position i in output j; each
        row sums to 1."""
        f, g = self.f(x).flatten(2), self.g(x).flatten(2)      # (B, C/8, N) each, N = H * W
        return torch.softmax(g.transpose(1, 2) @ f, dim=2)     # [:, j, i] = s_ij, softmax over i

    def forward(self, x):                                      # x (B, C, H, W): (B, 64, 16, 16)
        h = self.h(x).flatten(2)                               # (B, C, N)
        o = h @ self.attention(x).transpose(1, 2)              # (B, C, N): sum_i beta_{j,i} h(x_i)
        return self.gamma * o.view(x.shape) + x                # (B, C, H, W)


class Generator(dcgan.Generator):
    """dcgan.Generator (its layers, its init draws) with the attention slot after up2."""

    def __init__(self, width=1.0):
        super().__init__(width)
        self.attention = nn.Identity()   # --self-attention: add_self_attention puts the block here

    def forward(self, z):
        h = F.relu(self.bn0(self.fc(z).view(-1, self.c1, 4, 4)))  # (B, 128, 4, 4)
        h = F.relu(self.bn1(self.up1(h)))                          # (B, 128, 8, 8)
        h = self.attention(F.relu(self.bn2(self.up2(h))))          # (B, 64, 16, 16)
        return torch.tanh(self.up3(h))                             # (B, 3, 32, 32)


def add_self_attention(G, D, spectral_norm):
    """--self-attention: a SelfAttention block at 16 x 16 in G (after up2's BN + ReLU) and in D
    (after conv1's LeakyReLU), 64 channels each at width 1. Made after every other layer is drawn,
    initialised and spectral-normed, so those hold the very weights of the run without it, which
    (gamma = 0) this run starts as, output for output. Its convs from N(0, 0.02), as every layer
    here (Radford et al.). With --spectral-norm, D's f, g, h are normalised too, as SAGAN does in
    every layer; G's are not, as --spectral-norm leaves all of G (SAGAN normalises G too). gamma
    stays free, so the bound covers the block's convs, not the block."""
    G.attention = SelfAttention(G.bn2.num_features)
    D.attention = SelfAttention(D.conv1.out_channels)
    G.attention.apply(dcgan.init_weights), D.attention.apply(dcgan.init_weights)
    if spectral_norm:
        for conv in (D.attention.f, D.attention.g, D.attention.h):
            nn.utils.parametrizations.spectral_norm(conv)


def build_models(cfg, device="cpu"):
    """dcgan.build_models with the remedies' D: the same seed, the same draws in the same order."""
    torch.manual_seed(cfg["seed"])
    G = Generator(cfg["width"])
    batchnorm = not (cfg["spectral_norm"] or loss_of(cfg).penalty)
    D = Discriminator(cfg["width"], batchnorm, cfg["minibatch_disc"])
    G.apply(dcgan.init_weights)
    D.apply(dcgan.init_weights)
    if cfg["spectral_norm"]:
        add_spectral_norm(D)            # after the init, so the init touches the raw weights
    if setting(cfg, "self_attention"):
        add_self_attention(G, D, cfg["spectral_norm"])   # last: the other draws as without it
    return runs.to_device(G, cfg, device), runs.to_device(D, cfg, device)


# ==== Losses: --loss picks a pair =============================================================
class LossSettings(NamedTuple):
    """One --loss: the pair of functions of D's outputs, and the optimiser settings it comes with."""
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
    "bce": LossSettings(dcgan.d_loss_fn, dcgan.g_loss_fn, torch.sigmoid, dcgan.LABELS["output"],
                        dcgan.LABELS["units"], dcgan.LR, dcgan.BETAS, 1, False),
    # Lim & Ye 2017, Miyato et al. 2018 (with Radford's Adam, one of the settings they test): D
    # pushes reals to a score >= 1 and fakes to <= -1, and no further
    "hinge": LossSettings(lambda real, fake: F.relu(1 - real).mean() + F.relu(1 + fake).mean(),
                          critic_g_loss, as_is, "score", "hinge loss on D's scores, batch means "
                          "(d_loss sums its real and fake halves)", dcgan.LR, dcgan.BETAS, 1, False),
    # Gulrajani et al. 2017, algorithm 1: -d_loss (without the penalty) estimates the
    # Wasserstein-1 distance while D is 1-Lipschitz, which the penalty enforces
    "wgan-gp": LossSettings(lambda real, fake: fake.mean() - real.mean(), critic_g_loss, as_is,
                            "critic score", "critic scores, batch means (d_loss: mean D(G(z)) - "
                            "mean D(x) + gp_weight * gradient penalty)", WGAN_LR, WGAN_BETAS,
                            WGAN_N_CRITIC, True),
}


def loss_of(cfg):
    return LOSSES[setting(cfg, "loss")]


def gradient_penalty(D, real, fake, alpha):
    """E[(||grad_xhat D(xhat)||_2 - 1)^2] at xhat = alpha x + (1 - alpha) G(z), alpha (B, 1, 1, 1)
    ~ U[0, 1], a batch mean. The norm is over each sample's WHOLE gradient (3 x 32 x 32 values),
    not over one axis (a common bug). create_graph: the penalty's own gradient must reach D's
    weights. fake comes detached: the penalty never moves G."""
    xhat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    torch.clear_autocast_cache()   # --precision bf16: D's weights cast anew for the penalty's pass
    grad, = torch.autograd.grad(D(xhat).sum(), xhat, create_graph=True)   # (B, 3, 32, 32)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# ==== DiffAugment and the EMA generator =======================================================
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


# ==== One training step, as a difference from dcgan.train_step =================================
def adam_step(opt, loss):
    """One update of opt's net down the gradient of loss (dcgan.train_step's three lines)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def game_step(G, D, opt_g, opt_d, x, z, loss, see, alpha, gp_weight, update_g):
    """dcgan.train_step with what the remedies change in it: the pair of a LOSSES entry, D seeing
    each batch through `see` (DiffAugment), the penalty at alpha (B, 1, 1, 1) (WGAN-GP), and with
    update_g=False a critic-only step, (1) alone, logging G's loss against D before D's update."""
    with torch.set_grad_enabled(update_g):          # a critic-only step needs no graph through G
        fake = G(z)
    # (1) Update D: minimise loss.d_loss (+ gp_weight * penalty) on what D sees
    real_in, fake_in = see(x), see(fake.detach())  # DiffAugment: a draw for real, then for fake
    out_real, out_fake = D(real_in), D(fake_in)                            # (B,) each
    d_loss = loss.d_loss(out_real, out_fake)
    if alpha is not None:
        d_loss = d_loss + gp_weight * gradient_penalty(D, real_in, fake_in, alpha)
    adam_step(opt_d, d_loss)
    # (2) Update G: minimise loss.g_loss through D, frozen as in train_step, on a third draw of see
    if not update_g:                              # critic-only: G's loss against D before (1)
        g_loss = loss.g_loss(out_fake.detach())
    else:
        D.requires_grad_(False)
        g_loss = loss.g_loss(D(see(fake)))
        adam_step(opt_g, g_loss)
        D.requires_grad_(True)
    return torch.stack([d_loss.detach(), g_loss.detach(), loss.shown(out_real.detach()).mean(),
                        loss.shown(out_fake.detach()).mean()])


def select_step(cfg, noise, epoch, device):
    """The step the flags select, called as dcgan.train_step is: train_step itself for the study's
    game (BCE, one D step per G step, D sees the images as they are); else game_step with the
    --loss, DiffAugment seeded from (seed, epoch), WGAN-GP's alpha drawn from `noise` right after
    each z, and G updated on every --n-critic-th call."""
    loss, n_critic, policy = loss_of(cfg), setting(cfg, "n_critic"), setting(cfg, "diffaugment")
    if loss is LOSSES["bce"] and n_critic == 1 and not policy:
        return dcgan.train_step
    aug_g = torch.Generator(device=device)
    aug_g.manual_seed(runs.noise_seed(cfg["seed"], "diffaug", epoch))
    see = (lambda t: diff_augment(t, policy, aug_g)) if policy else as_is
    calls = [0]

    def step(G, D, opt_g, opt_d, x, z):
        alpha = torch.rand(len(x), 1, 1, 1, generator=noise).to(x.device) if loss.penalty else None
        calls[0] += 1
        return game_step(G, D, opt_g, opt_d, x, z, loss, see, alpha, setting(cfg, "gp_weight"),
                         calls[0] % n_critic == 0)
    return step


# ==== The training loop: dcgan.py's, with the step chosen per epoch and the EMA of G ===========
def optimisers(G, D, cfg):
    """Adam for each net, with the --loss's betas and the resolved learning rates."""
    betas = tuple(setting(cfg, "betas"))
    return (torch.optim.Adam(G.parameters(), lr=cfg["lr_g"], betas=betas),
            torch.optim.Adam(D.parameters(), lr=cfg["lr_d"], betas=betas))


def remedies(cfg):
    """The start line's list of what this run adds to the study's plain DCGAN, or 'none'."""
    on = [s.replace("_", " ") for s in ("spectral_norm", "ttur", "minibatch_disc",
                                        "self_attention") if cfg[s]]
    on += [f"{cfg['n_critic']} D steps per G step"] if cfg["n_critic"] > 1 else []
    on += [f"gradient penalty lambda {cfg['gp_weight']:g}"] if loss_of(cfg).penalty else []
    on += [f"diffaugment {','.join(cfg['diffaugment'])}"] if cfg["diffaugment"] else []
    return ", ".join(on + ([f"ema {cfg['ema']:g}"] if cfg["ema"] else [])) or "none"


def train(cfg, device):
    """dcgan.train with the remedies' models, optimisers and step; with --ema, G_ema (its
    pictures and figures) is saved in every checkpoint beside G."""
    G, D = build_models(cfg, device)
    G_ema = copy.deepcopy(G) if cfg["ema"] else None
    opt_g, opt_d = optimisers(G, D, cfg)
    run = dcgan.start(cfg, device, G, D, opt_g, opt_d, RESUME_KEYS, OLD_CONFIGS)   # or --resume
    if G_ema is not None:
        add_ema(G_ema, G, opt_g, cfg["ema"], run["ckpt"])
    print(f"loss {cfg['loss']}: {loss_of(cfg).units} | remedies: {remedies(cfg)}")
    for epoch in range(run["epoch"], cfg["epochs"]):
        noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "gan_z", epoch))
        step = select_step(cfg, noise, epoch, device)           # train_step, or a remedies' step
        stats, seconds = dcgan.train_epoch(G, D, opt_g, opt_d, run, epoch, noise, cfg, step)
        extra = {} if G_ema is None else {"G_ema": G_ema.state_dict()}
        ckpt = dcgan.end_epoch(run, cfg, epoch, stats, seconds, G, D, opt_g, opt_d,
                               shown=G_ema or G, extra=extra)
    return ckpt


# ==== Evaluation and outputs: dcgan.py's, on the remedies' models ==============================
def load_trained(checkpoint, device):
    """G (with --ema the averaged G_ema: every picture and figure comes from it) and D of a
    checkpoint dict, on device."""
    G, D = build_models(dict(OLD_CONFIGS, **checkpoint["config"]), device)
    G.load_state_dict(checkpoint.get("G_ema", checkpoint["G"]))
    D.load_state_dict(checkpoint["D"])
    return G, D


def sample_images(checkpoint, n, seed, device="cpu"):
    return dcgan.draw_samples(load_trained(checkpoint, device)[0], n, seed)


def labels(cfg):
    loss = loss_of(cfg)
    return dict(G="G(z)" + (" (G's EMA)" if setting(cfg, "ema") else ""), units=loss.units,
                output=loss.output)


def pictures(cfg, ckpt, device):
    dcgan.save_pictures(cfg, ckpt, load_trained(ckpt, device)[0], labels(cfg))


# ==== Command line ============================================================================
def parse_args(argv=None):
    """dcgan.py's flags, the remedies', then the shared ones, validated before any work starts.
    The --loss's LOSSES entry gives the learning rates, betas and --n-critic not set."""
    p = runs.make_parser("The DCGAN's remedies on CIFAR-10 (the docstring of dcgan_remedies.py "
                         "explains them; dcgan.py the plain DCGAN).", runs.doc_examples(__doc__),
                         dcgan.OUTPUTS)
    dcgan.add_flags(p)
    r = p.add_argument_group("remedies, off by default")
    r.add_argument("--loss", choices=list(LOSSES), default="bce",
                   help="bce: the study's game; hinge: Lim & Ye 2017; wgan-gp: Gulrajani et al. "
                        f"2017, a critic without BN, Adam {WGAN_LR:g} with betas {WGAN_BETAS}")
    r.add_argument("--n-critic", type=runs.checked(int, lambda v: v >= 1, ">= 1"), default=None,
                   help=f"D steps per G step, each on its own batch; unset: {WGAN_N_CRITIC} for "
                        "wgan-gp, else 1")
    r.add_argument("--gp-weight", type=runs.NON_NEGATIVE, default=GP_WEIGHT,
                   help="lambda of wgan-gp's penalty")
    r.add_argument("--spectral-norm", action="store_true", help="Miyato et al. 2018, on D (no BN)")
    r.add_argument("--ttur", action="store_true", help=f"Heusel et al. 2017: lr-d {TTUR_LR_D:g}, "
                   f"lr-g {TTUR_LR_G:g} (unless --lr-d/--lr-g); wgan-gp's lr is {WGAN_LR:g}")
    r.add_argument("--minibatch-disc", action="store_true",
                   help="Salimans et al. 2016, before D's last Linear")
    r.add_argument("--diffaugment", default="", metavar="POLICY",
                   help=f"Zhao et al. 2020: comma-separated transforms from {','.join(AUGMENTS)} "
                        "applied to every batch D sees (e.g. color,translation,cutout)")
    r.add_argument("--ema", type=runs.checked(float, lambda v: 0 <= v < 1, "in [0, 1)"),
                   default=0.0,
                   help="Yazici et al. 2019: decay of an average of G's weights, in [0, 1) (0: "
                        "off; docs/results.md measures 0.99 and 0.999); pictures and figures then "
                        "come from it")
    r.add_argument("--self-attention", action="store_true",
                   help="Zhang et al. 2019 (SAGAN): an attention block at 16 x 16 in G and in D, "
                        "its output scale gamma from 0 (the run starts as the one without it)")
    runs.add_run_flags(p, epochs=dcgan.EPOCHS, subset=dcgan.SUBSET, batch_size=dcgan.BATCH_SIZE,
                       seed=dcgan.SEED, out=dcgan.OUT)
    return runs.parse_run_flags(p, argv, "dcgan_remedies.py", check_remedy_flags)


def check_remedy_flags(a):
    """Validate the remedies' flags and resolve what they leave unset (n_critic, betas, lrs)."""
    loss = LOSSES[a.loss]
    if loss.penalty and a.minibatch_disc:
        raise ValueError(f"--loss {a.loss} cannot be combined with --minibatch-disc: it makes each "
                         "sample's critic score depend on the rest of the batch, as BatchNorm "
                         "does, which the per-sample gradient penalty assumes away")
    a.n_critic = loss.n_critic if a.n_critic is None else a.n_critic
    a.diffaugment = [t for t in a.diffaugment.split(",") if t]
    if set(a.diffaugment) - set(AUGMENTS):
        raise ValueError(f"--diffaugment: unknown {', '.join(set(a.diffaugment) - set(AUGMENTS))};"
                         f" choose from {', '.join(AUGMENTS)}")
    a.betas = list(loss.betas)
    a.lr_d = a.lr_d if a.lr_d is not None else (TTUR_LR_D if a.ttur else loss.lr)
    a.lr_g = a.lr_g if a.lr_g is not None else (TTUR_LR_G if a.ttur else loss.lr)


# ==== Main: as dcgan.py's =====================================================================
def main(argv=None):
    t_start = dcgan.time.perf_counter()
    cfg = parse_args(argv)
    device = runs.setup_run(cfg)
    if cfg["export"] or cfg["bench"] or cfg["weights"]:         # no training (runs.py's modes)
        return runs.other_mode(cfg, device, sys.modules[__name__])
    ckpt = train(cfg, device)
    G, D = load_trained(ckpt, device)
    figures = dcgan.evaluate_run(cfg, G, D, build_models(cfg, device)[1], device)
    dcgan.save_pictures(cfg, ckpt, G, labels(cfg))
    return dcgan.save_outputs(cfg, ckpt, figures, device, t_start, labels(cfg))


if __name__ == "__main__":
    runs.cli_main(main)
