"""DCGAN on CIFAR-10: the study's generator and discriminator, trained as Radford et al. 2016 train
theirs, then measured: how varied the samples are, whether they copy training images, and what
the discriminator learned (a linear probe on its features). This file is the plain DCGAN and only
it; the remedies the study names (spectral norm, TTUR, WGAN-GP, ...) are in dcgan_remedies.py.

Run:
    python dcgan.py --epochs 5 --width 0.5 --no-probe --out runs/dcgan_quick   # a quick look
    python dcgan.py                                  # the study: 40 epochs, 10k subset, seed 42
    python dcgan.py --resume                         # continue runs/dcgan/checkpoint.pt exactly
    python dcgan.py --weights weights/dcgan.pt --out runs/dcgan_shipped   # the shipped G: pictures
The README explains the game and says what the pictures show and how long each run takes.

Papers: Goodfellow et al. 2014 (the GAN game, the non-saturating G loss); Radford et al. 2016
(DCGAN: N(0, 0.02) init, Adam 2e-4 with beta1 0.5, BatchNorm; sec. 5.1: a linear classifier on
max-pooled D features). Losses: BCE on D's logits, batch means (d_loss_fn, g_loss_fn); D(x) and
D(G(z)) are shown as D's probability "real"; distances are L2 over the 3072 pixels in [-1, 1].
Outputs: OUTPUTS below, in --out (default runs/dcgan). Same seed, device and thread count: the
same numbers; --resume of a killed run gives the weights of an uninterrupted one.
Left out on purpose: FID and the Inception Score (compare.py's business: they need a pretrained
network), label smoothing, feature matching and the other tricks the study does not use.
"""
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import metrics
import runs

# ==== Settings: flags use these names in kebab-case; the resolved config is saved with results ==
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
HINT = "try a lower --lr-d/--lr-g"   # what the one-line stop at a non-finite loss advises
STATS = ("d_loss", "g_loss", "D(x)", "D(G(z))")   # what train_step returns, in this order
# Settings that define the experiment: --resume refuses a checkpoint made with different ones.
RESUME_KEYS = ("subset", "batch_size", "seed", "width", "lr_d", "lr_g", "precision")


# ==== Model ===================================================================================
class Generator(nn.Module):
    """z (B, 100) -> image (B, 3, 32, 32) in [-1, 1]. The study writes "FC -> 4x4x128" and no
    more; BN + ReLU follow the Linear here, as in Radford et al.: without a nonlinearity the Linear
    and the first ConvT would collapse into one linear map of z. Layers followed by BN have no
    bias (BN subtracts the batch mean, which cancels any bias)."""

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
    """image (B, 3, 32, 32) -> logit (B,), the log-odds that it is real; D(x) = sigmoid(logit)."""

    def __init__(self, width=1.0):
        super().__init__()
        c1, c2, c3 = (runs.channels(c, width) for c in (64, 128, 256))
        self.conv1 = nn.Conv2d(3, c1, 4, stride=2, padding=1)  # no BN on D's input layer (Radford)
        self.conv2 = nn.Conv2d(c1, c2, 4, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 4, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3 * 16, 1)
        self.feature_dim = 16 * (c1 + c2 + c3)  # probe features: 7,168 at width 1

    def conv_layers(self, x):
        h1 = F.leaky_relu(self.conv1(x), LEAKY_SLOPE)               # (B, 64, 16, 16)
        h2 = F.leaky_relu(self.bn2(self.conv2(h1)), LEAKY_SLOPE)    # (B, 128, 8, 8)
        h3 = F.leaky_relu(self.bn3(self.conv3(h2)), LEAKY_SLOPE)    # (B, 256, 4, 4)
        return h1, h2, h3

    def forward(self, x):
        return self.fc(self.conv_layers(x)[2].flatten(1)).squeeze(1)  # (B,) logits, no sigmoid

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
    init probe baseline is the very D training started from)."""
    torch.manual_seed(cfg["seed"])
    G, D = Generator(cfg["width"]), Discriminator(cfg["width"])
    G.apply(init_weights)
    D.apply(init_weights)
    return runs.to_device(G, cfg, device), runs.to_device(D, cfg, device)


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
def train_step(G, D, opt_g, opt_d, x, z):
    """One iteration of the GAN game on real images x (B, 3, 32, 32) and noise z (B, 100). Returns
    the detached (d_loss, g_loss, D(x), D(G(z))) as one tensor: no .item(), so no GPU sync."""
    fake = G(z)                                   # (B, 3, 32, 32); one G forward serves both steps

    # (1) Update D: maximise log D(x) + log(1 - D(G(z)))   [minimise d_loss]
    logit_real = D(x)                             # (B,)
    # detach: d_loss.backward() then stops at fake. Without it the backward would also run
    # through G and free G's graph, which step (2) still needs (one G forward serves both)
    logit_fake = D(fake.detach())                 # (B,)
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
    # D(x), D(G(z)): D's mean probabilities "real" in step (1), before its update
    return torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(logit_real.detach()).mean(),
                        torch.sigmoid(logit_fake.detach()).mean()])


# ==== The training loop =======================================================================
def optimisers(G, D, cfg):   # Adam for each net, its own learning rate (both LR by default)
    return (torch.optim.Adam(G.parameters(), lr=cfg["lr_g"], betas=BETAS),
            torch.optim.Adam(D.parameters(), lr=cfg["lr_d"], betas=BETAS))


def train_epoch(G, D, opt_g, opt_d, run, epoch, noise, cfg, step=train_step):
    """`step` (train_step) over one epoch, z drawn from the CPU generator `noise` (the same on every
    device). Returns the (steps, 4) CPU tensor of STATS, read off the device once, and the seconds;
    stops at a non-finite loss before the epoch is saved. --log-every N: a line every N steps."""
    G.train(), D.train()
    G_, D_ = runs.mixed_precision(G, cfg), runs.mixed_precision(D, cfg)   # bf16: autocast inside
    steps, n, stats = len(run["batches"]), cfg["log_every"], []
    t0 = time.perf_counter()
    for i, (x, _) in enumerate(run["batches"].epoch(epoch)):
        z = torch.randn(x.shape[0], Z_DIM, generator=noise).to(x.device)   # (B, 100)
        with runs.autocast_scope(cfg):                                   # bf16: one per step
            stats.append(step(G_, D_, opt_g, opt_d, runs.memory_format(x, cfg), z))
        if n and (i + 1) % n == 0:                                       # logging step: sync here
            runs.log_steps(stats[-n:], epoch * steps + i + 1, steps, cfg["out"], STATS, HINT)
    stats = torch.stack(stats).cpu()
    runs.check_finite(stats, epoch * steps, steps, cfg["out"], STATS[:2], HINT)
    return stats, time.perf_counter() - t0


def start(cfg, device, G, D, opt_g, opt_d, keys=RESUME_KEYS, defaults=None):
    """What a run needs before epoch 1, as a dict: the batches, the fixed noise; with --resume the
    checkpoint's weights, optimiser states, history (keys: settings it must share)."""
    ckpt = runs.resume_checkpoint(cfg, keys, defaults)           # None without --resume
    train_x, train_y = data.load_subset(cfg)                     # uint8 (N, 3, 32, 32), int64 (N,)
    g = torch.Generator().manual_seed(cfg["seed"])               # the run's fixed noise:
    fixed = torch.randn(N_FIXED, Z_DIM, generator=g)             # samples, progress, interpolations
    # drop_last: every step sees a full batch, so BN never normalises over a handful of images
    batches = runs.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True, drop_last=True)
    run = dict(ckpt=ckpt, batches=batches, fixed_noise=fixed,
               diversity_noise=torch.randn(N_DIVERSITY, Z_DIM, generator=g),
               real_pairwise=real_diversity(train_x, cfg["seed"]), epoch=0, train_seconds=0.0,
               history={"epochs": [], "steps": []}, progress_rows=[])   # rows: (8, 3, 32, 32) uint8
    if ckpt is not None:
        G.load_state_dict(ckpt["G"]), D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"]), opt_d.load_state_dict(ckpt["opt_d"])
        run.update(fixed_noise=ckpt["fixed_noise"], history=ckpt["history"], epoch=ckpt["epoch"],
                   progress_rows=list(ckpt["progress_rows"]), train_seconds=ckpt["train_seconds"])
        print(f"resumed from {os.path.join(cfg['out'], 'checkpoint.pt')} at epoch {run['epoch']}")
    print(f"params G {runs.count_params(G):,}  D {runs.count_params(D):,} | device {device} | "
          f"{len(batches)} steps/epoch | lr_d {cfg['lr_d']:g} lr_g {cfg['lr_g']:g} | "
          f"{runs.speed_line(cfg)}")
    return run


def end_epoch(run, cfg, epoch, stats, seconds, G, D, opt_g, opt_d, shown, extra=None):
    """After an epoch: diversity and a progress row of `shown` (the G whose pictures are shown), one
    log line with the ETA, and the checkpoint (one dict, atomic; extra: more entries), returned."""
    steps, hist = len(run["batches"]), run["history"]
    run["train_seconds"] += seconds
    generated = generate(shown, run["diversity_noise"])                # (500, 3, 32, 32)
    diversity = metrics.mean_pairwise_distance(generated) / run["real_pairwise"]
    run["progress_rows"].append(data.to_uint8(generate(shown, run["fixed_noise"][:8])))
    m = stats.mean(0).tolist()
    hist["epochs"].append(dict(epoch=epoch + 1, seconds=round(seconds, 3), d_loss=m[0],
                               g_loss=m[1], d_x=m[2], d_g_z=m[3], diversity=diversity))
    hist["steps"] += [dict(step=epoch * steps + i + 1, d_loss=s[0], g_loss=s[1], d_x=s[2],
                           d_g_z=s[3]) for i, s in enumerate(stats.tolist())]
    eta = runs.eta(hist["epochs"][run["epoch"]:], cfg["epochs"] - epoch - 1)   # this process's
    print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | d_loss {m[0]:.3f} | g_loss {m[1]:.3f} | "
          f"D(x) {m[2]:.3f} | D(G(z)) {m[3]:.3f} | diversity {diversity:.3f} | "
          f"{seconds:.1f} s | ETA {data.format_seconds(eta)}")
    return runs.save_epoch(cfg, dict(
        G=G.state_dict(), D=D.state_dict(), opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(),
        epoch=epoch + 1, history=hist, fixed_noise=run["fixed_noise"],
        progress_rows=run["progress_rows"], train_seconds=run["train_seconds"],
        torch_rng=torch.get_rng_state(), note="z noise and data order are reseeded from (seed, "
        "epoch)") | (extra or {}))


def train(cfg, device):
    """Train (or --resume) the run cfg describes; after every epoch, OUT/checkpoint.pt and
    OUT/history.json. Returns the last checkpoint dict, which everything after training reads."""
    G, D = build_models(cfg, device)
    opt_g, opt_d = optimisers(G, D, cfg)
    run = start(cfg, device, G, D, opt_g, opt_d)
    for epoch in range(run["epoch"], cfg["epochs"]):
        # z and the data order come from (seed, epoch): a resumed run draws what a whole one would
        noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "gan_z", epoch))
        stats, seconds = train_epoch(G, D, opt_g, opt_d, run, epoch, noise, cfg)
        ckpt = end_epoch(run, cfg, epoch, stats, seconds, G, D, opt_g, opt_d, shown=G)
    return ckpt


# ==== Evaluation ==============================================================================
@torch.no_grad()
def generate(G, z):
    """G(z) in eval mode (BN's running statistics: an image does not depend on its batch) -> float
    (N, 3, 32, 32) in [-1, 1] on the CPU."""
    was_training, device = G.training, next(G.parameters()).device
    G.eval()
    out = torch.cat([G(z[i:i + FEATURE_BATCH].to(device)).cpu()
                     for i in range(0, len(z), FEATURE_BATCH)])
    G.train(was_training)
    return out


def real_diversity(train_x, seed):
    """Mean pairwise L2 of N_DIVERSITY training images: diversity's yardstick (generated / real)."""
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


def evaluate_run(cfg, G, D, D0, device):
    """The final figures of a trained G and D: the memorisation check (are samples nearer to the
    training images than unseen test images are?) and, unless --no-probe, the linear probe on D's
    features, trained and at its random init D0 (the same seed, never trained; Radford)."""
    train_x, train_y = data.load_subset(cfg)
    test_x, test_y = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    seeded = lambda: torch.Generator().manual_seed(cfg["seed"])
    pick = torch.randperm(len(test_x), generator=seeded())[:N_DIVERSITY]
    test_sample = data.to_float(test_x[pick])
    z = torch.randn(N_FIXED + N_DIVERSITY, Z_DIM, generator=seeded())[N_FIXED:]   # start's 500 z
    nn_gen = metrics.mean_nearest_distance(generate(G, z), train_x)
    nn_test = metrics.mean_nearest_distance(test_sample, train_x)
    figures = dict(params_g=runs.count_params(G), params_d=runs.count_params(D), **dict.fromkeys((
                   "probe_acc", "random_probe_acc", "probe_l2", "random_probe_l2", "probe_gain")),
                   probe_dim=D.feature_dim, probe_train=len(train_x), probe_test=len(test_x),
                   real_pairwise_l2=real_diversity(train_x, cfg["seed"]),
                   nn_train_l2_generated=nn_gen, nn_train_l2_test=nn_test,
                   memorisation_ratio=nn_gen / nn_test)
    t0 = time.perf_counter()
    if not cfg["no_probe"]:   # D's features, trained and at init, each made when its turn comes
        print(f"linear probes on the {D.feature_dim} D features (fitted on the training subset, "
              "scored on the test images):")
        figures.update(metrics.probes(((name, probe_features(net, train_x, device), probe_features(
            net, test_x, device)) for name, net in (("probe", D), ("random_probe", D0))),
            train_y, test_y, cfg["seed"]))
        figures["probe_gain"] = figures["probe_acc"] - figures["random_probe_acc"]
        print(f"  gain of training {figures['probe_gain']:+.4f}")
    figures["probe_seconds"] = time.perf_counter() - t0
    return figures


# ---- images from a trained run: this file's pictures and compare.py's scores use these ----
def load_trained(checkpoint, device):
    """G and D of a checkpoint dict, on device; a run with remedies is dcgan_remedies.py's."""
    if checkpoint.get("script", "dcgan.py") != "dcgan.py" or "G_ema" in checkpoint:
        raise ValueError("this checkpoint was trained with remedies: read it with "
                         "dcgan_remedies.py (the same flags), not dcgan.py")
    G, D = build_models(checkpoint["config"], device)
    G.load_state_dict(checkpoint["G"]), D.load_state_dict(checkpoint["D"])
    return G, D


def draw_samples(G, n, seed):
    """n images G(z), z ~ N(0, I) drawn with seed -> uint8 (n, 3, 32, 32): with the run's own seed
    and n = N_FIXED, its fixed noise."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    return data.to_uint8(generate(G, z))


def sample_images(checkpoint, n, seed, device="cpu"):   # compare.py's and --export's samples
    return draw_samples(load_trained(checkpoint, device)[0], n, seed)


# ==== Outputs =================================================================================
LABELS = dict(G="G(z)", units="BCE on logits, batch means (d_loss sums its real and fake halves)",
              output="probability real")   # what the pictures and metrics.json call things


def save_pictures(cfg, ckpt, G, labels=LABELS):
    """samples.png, progress.png, interpolations.png and curves.png of a trained run's G, each
    with a caption that says what its rows and columns are."""
    out, hist, rows, name = cfg["out"], ckpt["history"], ckpt["progress_rows"], labels["G"]
    data.save_grid(draw_samples(G, N_FIXED, cfg["seed"]), os.path.join(out, "samples.png"), nrow=8,
                   caption=f"{name} for 64 fixed z ~ N(0, I) after {len(rows)} epochs")
    pick = runs.shown_epochs(len(rows), PROGRESS_ROWS)
    data.save_grid(torch.cat([rows[i] for i in pick]), os.path.join(out, "progress.png"), nrow=8,
                   caption=f"{name} for the same 8 fixed z: one row per epoch",
                   row_labels=[f"ep {i + 1}" for i in pick])
    z = runs.line_points(ckpt["fixed_noise"][0:16:2], ckpt["fixed_noise"][1:16:2], 10)   # (80, 100)
    data.save_grid(generate(G, z), os.path.join(out, "interpolations.png"), nrow=10,
                   caption=f"each row: {name} along the line between two fixed z, left to right")
    steps, ep = hist["steps"], [e["epoch"] for e in hist["epochs"]]
    xs, k = [s["step"] for s in steps], max(1, min(50, len(steps) // 10))   # k: steps per mean
    curve = lambda key: (xs, data.smooth([s[key] for s in steps], k))
    charts = [data.draw_chart({"D loss": curve("d_loss"), "G loss": curve("g_loss")},
                              title=f"losses, mean of {k} steps", xlabel="step",
                              ylabel=labels["units"].split(",")[0]),
              data.draw_chart({"D(x)": curve("d_x"), "D(G(z))": curve("d_g_z")},
                              title=f"D outputs, mean of {k} steps", xlabel="step",
                              ylabel=labels["output"]),
              data.draw_chart({"generated / real": (ep, [e["diversity"] for e in hist["epochs"]])},
                              title="diversity (pairwise L2)", xlabel="epoch", ylabel="ratio")]
    data.save_charts(os.path.join(out, "curves.png"), charts, ncols=3,
                     caption=f"--loss {cfg.get('loss', 'bce')}: losses and D's outputs per "
                             "training step (D's before its update), sample diversity per epoch")


def save_outputs(cfg, ckpt, figures, device, t_start, labels=LABELS):
    """metrics.json: the last epoch's losses and diversity, the final figures. Returns its dict."""
    epochs = ckpt["history"]["epochs"]
    last = epochs[-1]          # the last epoch's means: where training left the game
    game = dict(d_loss=last["d_loss"], g_loss=last["g_loss"],
                g_d_ratio=last["g_loss"] / last["d_loss"], d_x=last["d_x"], d_g_z=last["d_g_z"],
                diversity=last["diversity"])
    print(f"d_loss {last['d_loss']:.3f} | g_loss {last['g_loss']:.3f} | ratio g/d "
          f"{game['g_d_ratio']:.2f} | diversity {last['diversity']:.3f} | memorisation ratio "
          f"{figures['memorisation_ratio']:.3f}")
    if last["diversity"] < MIN_DIVERSITY:   # the figure above would mislead without this
        print(f"warning: diversity {last['diversity']:.3f} < {MIN_DIVERSITY}: near-copies of one "
              "image: the memorisation ratio only says how far it is from the training set")
    return runs.save_metrics(cfg, dict(game, **figures), len(epochs), ckpt["train_seconds"],
                             t_start, device, f"losses: {labels['units']}; d_x, d_g_z: D's mean "
                             f"{labels['output']}; distances: L2 over 3072 pixels in [-1, 1]; "
                             "diversity: generated / real mean pairwise L2; memorisation_ratio: "
                             "nearest-training-image L2 of generated / of test images")


# ==== Command line ============================================================================
OUTPUTS = ("checkpoint.pt   all it takes to --resume exactly (written atomically every epoch)",
           "history.json    losses, D(x), D(G(z)) per step; diversity per epoch;  metrics.json  "
           "the final figures, with their units",
           "samples.png, progress.png, interpolations.png, curves.png   captioned pictures")


def add_flags(p):   # the plain DCGAN's own flags (dcgan_remedies.py adds its own after these)
    g = p.add_argument_group("the DCGAN")
    g.add_argument("--lr-d", type=runs.POSITIVE, default=None, help=f"D's Adam lr (unset: {LR:g})")
    g.add_argument("--lr-g", type=runs.POSITIVE, default=None, help=f"G's Adam lr (unset: {LR:g})")
    g.add_argument("--log-every", type=runs.checked(int, lambda v: v >= 0, ">= 0"), default=0,
                   help="also log every N steps (0: per epoch)")


def parse_args(argv=None):
    """The DCGAN's flags, then the shared ones (runs.add_run_flags), checked before any work starts
    (runs.cli_main prints a ValueError as one line, exit 2); a remedy's flag: where it went."""
    p = runs.make_parser("The plain DCGAN on CIFAR-10 (the file's docstring explains it; the "
                         "remedies are in dcgan_remedies.py).", runs.doc_examples(__doc__), OUTPUTS)
    add_flags(p)
    runs.add_run_flags(p, epochs=EPOCHS, subset=SUBSET, batch_size=BATCH_SIZE, seed=SEED, out=OUT)
    a, unknown = p.parse_known_args(argv)
    if unknown:
        raise ValueError(f"dcgan.py, the plain DCGAN, does not take {' '.join(unknown)}: the "
                         "remedies (--loss, --spectral-norm, --ttur, --ema, ...) are flags of "
                         "dcgan_remedies.py, which takes every dcgan.py flag too")
    a.script = "dcgan.py"     # saved with the config: which file's models and loop made the run
    a.lr_d, a.lr_g = (LR if lr is None else lr for lr in (a.lr_d, a.lr_g))
    runs.check_run_flags(a)   # last: its --out and --resume checks touch the disk
    return vars(a)


# ==== Main: config, training, evaluation, outputs =============================================
def main(argv=None):
    t_start = time.perf_counter()                               # run_seconds: this whole call
    cfg = parse_args(argv)
    device = runs.setup_run(cfg)
    if cfg["export"] or cfg["bench"] or cfg["weights"]:         # no training (runs.py's modes)
        return runs.other_mode(cfg, device, sys.modules[__name__])
    ckpt = train(cfg, device)                                   # checkpoint.pt, history.json
    G, D = load_trained(ckpt, device)
    figures = evaluate_run(cfg, G, D, build_models(cfg, device)[1], device)  # memorisation, probes
    save_pictures(cfg, ckpt, G)                                 # the pictures
    return save_outputs(cfg, ckpt, figures, device, t_start)    # metrics.json


def pictures(cfg, ckpt, device):   # --weights FILE: a shipped model's pictures (runs.other_mode)
    save_pictures(cfg, ckpt, load_trained(ckpt, device)[0])


if __name__ == "__main__":
    runs.cli_main(main)
