"""Convolutional VAE on CIFAR-10: trains the study's model, shows what it learned in pictures, and
measures its test loss and, with linear probes, what its latent code learned.

Run:
    python vae.py --epochs 5 --no-probe --out runs/vae_quick    # a quick look
    python vae.py                            # the study: 20 epochs, 10k subset, seed 42
    python vae.py --resume                   # continue runs/vae/checkpoint.pt exactly
    python vae.py --beta-schedule cyclical --out runs/vae_cyclical   # the study's KL annealing
    python vae.py --weights weights/vae.pt --out runs/vae_shipped   # the shipped model's pictures
The README explains the model and says what the pictures show and how long each run takes.

Papers: Kingma & Welling 2014 (the ELBO, the reparameterisation trick, the Gaussian KL of their
appendix B); the study's future work: Higgins et al. 2017 (a weight beta on the KL), Fu et al. 2019
(cyclical KL annealing). Every loss figure is in vae_loss's unit: the negative ELBO per image.
Outputs: OUTPUTS below, in --out (default runs/vae). Same seed, device and thread count: the same
numbers; --resume of a killed run gives the weights of an uninterrupted one.
Left out on purpose: the study's perceptual (VGG) loss (needs a pretrained network), a learned
decoder variance, importance-weighted bounds.
"""
import math
import os
import sys
import time

import torch
import torch.nn as nn

import data
import metrics
import runs

# ==== Settings: flags use these names in kebab-case; the resolved config is saved with results ==
EPOCHS = 20              # passes over the subset (the study: 20)
SUBSET = 10_000          # training images, class-stratified: 1,000 per class (the study's subset)
BATCH_SIZE = 128         # images per Adam step; the last, smaller batch of an epoch is kept
SEED = 42                # one seed drives init, data order and noise
OUT = "runs/vae"         # folder for every output
LR = 1e-3                # Adam learning rate (the study; betas stay at PyTorch's (0.9, 0.999))
LATENT_DIM = 64          # size of z (the study); --latent-dim 2 also draws the plane (plane.png)
BETA = 1.0               # weight of the KL: 1 gives the negative ELBO (see beta_at)
BETA_SCHEDULE = "constant"  # constant | linear | cyclical (the study's future work, see beta_at)
CYCLES = 4               # cyclical: number of 0 -> beta ramps over the run (the study's slide: 4)
RAMP_FRACTION = 0.5      # linear/cyclical: share of each cycle spent rising (Fu et al.: R = 0.5)
EVAL_BATCH = 500         # images per forward pass at evaluation (no gradients, so larger is fine)
EPOCH_TEST = 2_000       # test images in each epoch's line (~200 per class; all 10,000 at the end)
N_SHOW, N_SAMPLES = 16, 64  # reconstructions.png: 16 test images; samples.png: 64 decoded z
N_INTERP_STEPS = 8       # interpolations.png: 8 rows of test image A, 8 points between, B
PROGRESS_ROWS, PLANE = 10, 15  # epochs shown in progress.png; plane.png (2-d z): 15 x 15 points
RESUME_KEYS = ("subset", "batch_size", "lr", "seed", "width", "beta", "beta_schedule", "cycles",
               "precision", "latent_dim")   # --resume refuses a checkpoint with other values


# ==== Model ===================================================================================
# down: conv 4x4, stride 2, padding 1 halves H and W; up: its transpose doubles them. Each then BN
# and ReLU, with no conv bias: BN subtracts the batch mean, which cancels any bias exactly.
def down(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU()]


def up(c_in, c_out):
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
        """eps (B, 64) ~ N(0, I): z = mu + sigma * eps, as in training; None: z = mu."""
        mu, logvar = self.encode(x)
        z = mu if eps is None else reparameterise(mu, logvar, eps)
        return self.decode(z), mu, logvar


def build_model(cfg, device="cpu"):
    """The model at its init for cfg's seed, on device (the probes' untrained baseline too)."""
    torch.manual_seed(cfg["seed"])
    return runs.to_device(VAE(cfg.get("latent_dim", LATENT_DIM), cfg["width"]), cfg, device)


# ==== Loss ====================================================================================
def vae_loss(x_hat, x, mu, logvar, beta=1.0):
    """Kingma & Welling 2014, eq. 10 with the Gaussian KL of their appendix B, z = mu + sigma * eps:
        ELBO(x) = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2) + log p(x | z)
    We minimise its negative (beta = 1), per image, then AVERAGED over the batch:
        L   = MSE + beta * KL
        MSE = sum over the 3072 values (3 x 32 x 32) of (x_hat - x)^2
        KL  = -1/2 sum over the 64 latent dims of (1 + logvar - mu^2 - exp(logvar))
    MSE is -log N(x; x_hat, I/2) less 1536 ln(pi), so MSE + KL is the negative ELBO (nats per image)
    of that Gaussian decoder, up to a constant. Returns (loss, mse, kl), three scalars."""
    mse = (x_hat - x).pow(2).sum(dim=(1, 2, 3)).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return mse + beta * kl, mse, kl


def beta_at(step, total_steps, beta_max=BETA, schedule=BETA_SCHEDULE, cycles=CYCLES):
    """The KL weight at step `step` (0-based) of `total_steps`: 1 throughout for the plain VAE. The
    study's future work: a weight beta (Higgins et al. 2017: above 1 presses q(z|x) to N(0, I),
    below 1 lets z carry more of the image) and KL annealing (beta from 0: the decoder learns to use
    z before the KL pulls the code onto the prior). cyclical: Fu et al. 2019, eq. 6, the study's
    slide: `cycles` cycles (linear: one), each a ramp 0 -> beta_max over RAMP_FRACTION, a hold."""
    if schedule == "constant":
        return float(beta_max)
    period = total_steps / (1 if schedule == "linear" else cycles)
    tau = (step % math.ceil(period)) / period
    return float(beta_max) * min(1.0, tau / RAMP_FRACTION)


# ==== One training step =======================================================================
def train_step(model, optimizer, x, eps, beta=1.0):
    """One Adam step on the batch x (B, 3, 32, 32) with the noise eps (B, latent_dim) and KL weight
    beta (1: the negative ELBO). Returns the detached (loss, mse, kl): no .item(), no GPU sync."""
    x_hat, mu, logvar = model(x, eps)              # z = mu + sigma * eps inside
    loss, mse, kl = vae_loss(x_hat, x, mu, logvar, beta=beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([loss, mse, kl]).detach()   # stays on the device


# ==== The training loop =======================================================================
def train_epoch(model, optimizer, batches, betas, noise, cfg):
    """train_step over `batches` ((x, y), x float (B, 3, 32, 32) on the device) with KL weights
    betas[i] and eps from the CPU generator noise -> a (steps, 4) CPU tensor: loss, mse, kl, B."""
    model.train()
    net, stats, sizes = runs.mixed_precision(model, cfg), [], []   # bf16: autocast inside net
    for i, (x, _) in enumerate(batches):
        # eps drawn on the CPU from the epoch's generator: the same numbers on every device
        eps = torch.randn(x.shape[0], model.latent_dim, generator=noise).to(x.device)   # (B, 64)
        stats.append(train_step(net, optimizer, x, eps, betas[i]))
        sizes.append([float(x.shape[0])])
    return torch.cat([torch.stack(stats).cpu(), torch.tensor(sizes)], dim=1)


def train(cfg, device):
    """Train (or --resume) the run cfg describes; after every epoch, OUT/checkpoint.pt and
    OUT/history.json. Returns the last checkpoint dict, which everything after training reads."""
    scheduled = ("epochs",) if cfg["beta_schedule"] != "constant" else ()   # laid over --epochs
    ckpt = runs.resume_checkpoint(cfg, RESUME_KEYS + scheduled, dict(latent_dim=LATENT_DIM))
    train_x, train_y = data.load_subset(cfg)                     # uint8 (N, 3, 32, 32), int64 (N,)
    test_x, _ = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    batches = runs.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True)   # the whole subset on the device as uint8; no DataLoader
    steps, model = len(batches), build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    print(f"params {runs.count_params(model):,} | {len(train_x)} train images | {steps} steps/epoch"
          f" | beta {cfg['beta']:g} ({cfg['beta_schedule']}) | {runs.speed_line(cfg)} on {device}")
    history, rows, start = {"epochs": []}, [], 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"]), optimizer.load_state_dict(ckpt["optimizer"])
        history, start, rows = ckpt["history"], ckpt["epoch"], list(ckpt.get("progress_rows", []))
        print(f"resumed from {os.path.join(cfg['out'], 'checkpoint.pt')} after epoch {start}")

    for epoch in range(start, cfg["epochs"]):
        # ---- forward, backward, update: one pass over the subset, timed as training ----
        t0 = time.perf_counter()
        betas = [beta_at(epoch * steps + i, cfg["epochs"] * steps, cfg["beta"],
                         cfg["beta_schedule"], cfg["cycles"]) for i in range(steps)]   # all 1.0
        noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "vae_eps", epoch))
        stats = train_epoch(model, optimizer, batches.epoch(epoch), betas, noise, cfg)
        seconds, t0 = time.perf_counter() - t0, time.perf_counter()
        runs.check_finite(stats, epoch * steps, steps, cfg["out"], ("loss", "mse", "kl"),
                          "try a lower --lr")

        # ---- evaluation and logging: one line per epoch, with the ETA ----
        # train: the running means of the epoch's steps (train mode, sampled z, moving weights),
        # by batch size (the last is smaller); test: the first EPOCH_TEST images, eval mode
        w = stats[:, 3] / stats[:, 3].sum()
        mse, kl = float((stats[:, 1] * w).sum()), float((stats[:, 2] * w).sum())
        te = evaluate(model, test_x[:EPOCH_TEST], cfg["seed"])
        runs.check_finite(torch.tensor([[te["neg_elbo"]]]), epoch, 1, cfg["out"], ("test loss",),
                          "the last update made the weights non-finite; try a lower --lr")
        rows.append(reconstruct(model, test_x[:8]))   # progress.png: 8 fixed test images
        history["epochs"].append(dict(
            epoch=epoch + 1, seconds=round(seconds, 3), beta=sum(betas) / len(betas),
            train_neg_elbo=mse + kl, train_recon=mse, train_kl=kl, test_neg_elbo=te["neg_elbo"],
            test_recon=te["recon"], test_kl=te["kl"], test_images=min(EPOCH_TEST, len(test_x)),
            eval_seconds=round(time.perf_counter() - t0, 3)))
        eta = runs.eta(history["epochs"][start:], cfg["epochs"] - epoch - 1)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | train loss {mse + kl:7.2f} = recon "
              f"{mse:7.2f} + kl {kl:6.2f} | test[:{EPOCH_TEST}] loss {te['neg_elbo']:7.2f} = recon "
              f"{te['recon']:7.2f} + kl {te['kl']:6.2f} | beta {sum(betas) / len(betas):.3f} | "
              f"{seconds:.1f} s | ETA {data.format_seconds(eta)}", flush=True)

        # ---- checkpoint (with the config, atomic) and history.json, every epoch ----
        ckpt = runs.save_epoch(cfg, dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                         epoch=epoch + 1, history=history, progress_rows=rows))
    return ckpt


# ==== Evaluation ==============================================================================
@torch.no_grad()
def evaluate(model, images_uint8, seed):
    """Test figures at beta = 1 in vae_loss's units, eval mode (BN's running statistics: an image's
    numbers do not depend on its batch): per-image means of recon, KL and their sum (the negative
    ELBO) with one z ~ q(z|x) per image from a fixed generator, and recon_mu, the error at z = mu.
    Sums in float64 on the CPU (Apple GPUs have none)."""
    device = next(model.eval().parameters()).device
    noise = torch.Generator().manual_seed(runs.noise_seed(seed, "vae_eval"))
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(images_uint8), EVAL_BATCH):
        x = data.to_float(images_uint8[i:i + EVAL_BATCH].to(device))
        mu, logvar = model.encode(x)
        eps = torch.randn(x.shape[0], model.latent_dim, generator=noise).to(device)
        _, mse, kl = vae_loss(model.decode(reparameterise(mu, logvar, eps)), x, mu, logvar)
        sums[:2] += torch.stack([mse, kl]).cpu().double() * len(x)   # batch means -> sums
        sums[2] += (model.decode(mu) - x).pow(2).sum(dim=(1, 2, 3)).cpu().double().sum()
    model.train()
    mse, kl, mse_mu = (sums / len(images_uint8)).tolist()
    return dict(neg_elbo=mse + kl, recon=mse, kl=kl, recon_mu=mse_mu)


@torch.no_grad()
def encode_all(model, images_uint8):
    """mu (N, 64) and the encoder's last conv features (N, 2048: after BN + ReLU, flattened), eval
    mode, float32 on the CPU: the inputs of the linear probes and of latents.npz."""
    device = next(model.eval().parameters()).device
    parts = [model.encoder(data.to_float(images_uint8[i:i + EVAL_BATCH].to(device)))
             for i in range(0, len(images_uint8), EVAL_BATCH)]
    model.train()
    return (torch.cat([model.fc_mu(h).float().cpu() for h in parts]),
            torch.cat([h.float().cpu() for h in parts]))


def evaluate_run(cfg, ckpt, device):
    """A trained run's figures: the loss on all 10,000 test images and, unless --no-probe, linear
    probes fitted on the training subset, scored on the test images: mu and the last conv features,
    both also at the random init, and pixels. -> (metrics.json's figures, latents.npz's arrays)."""
    model = load_trained(ckpt, device)
    train_x, train_y = data.load_subset(cfg)
    test_x, test_y = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    final = evaluate(model, test_x, cfg["seed"])
    print(f"test (beta = 1, {len(test_x)} images): loss {final['neg_elbo']:.2f} = recon "
          f"{final['recon']:.2f} + kl {final['kl']:.2f} | recon at z = mu {final['recon_mu']:.2f}")
    figures = dict(test_neg_elbo=final["neg_elbo"], test_recon=final["recon"], test_kl=final["kl"],
                   test_recon_mu=final["recon_mu"], params=runs.count_params(model))
    (mu, conv), (test_mu, test_conv) = encode_all(model, train_x), encode_all(model, test_x)
    if not cfg["no_probe"]:   # each with its feature size: linear probes reward dimension
        t0, untrained = time.perf_counter(), build_model(cfg, device)   # the same seed, untrained
        (r_mu, r_conv), (r_test_mu, r_test_conv) = (encode_all(untrained, x)
                                                    for x in (train_x, test_x))
        pixels = [metrics.pixel_features(x) for x in (train_x, test_x)]   # (N, 3072) each
        figures.update(metrics.probes([
            ("probe", mu, test_mu), ("pixel_probe", *pixels), ("random_probe", r_mu, r_test_mu),
            ("conv_probe", conv, test_conv), ("random_conv_probe", r_conv, r_test_conv)],
            train_y, test_y, cfg["seed"]), probe_seconds=time.perf_counter() - t0)
    return figures, dict(train_z=mu.numpy(), train_y=train_y.numpy(),   # mu (N, 64), labels (N,)
                         test_z=test_mu.numpy(), test_y=test_y.numpy())


# ---- images from a trained run: this file's pictures and compare.py's scores use these ----
def load_trained(checkpoint, device):
    """The trained model of a checkpoint dict, in eval mode on device."""
    model = build_model(checkpoint["config"], device)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


@torch.no_grad()
def decode(model, z):
    """Decoded z (N, latent_dim), eval mode, in batches -> uint8 (N, 3, 32, 32) on the CPU."""
    device = next(model.eval().parameters()).device
    return torch.cat([data.to_uint8(model.decode(z[i:i + EVAL_BATCH].to(device))).cpu()
                      for i in range(0, len(z), EVAL_BATCH)])


def reconstruct(model, images_uint8):
    """Reconstructions (decoded mu, eval mode) of uint8 (N, 3, 32, 32) images -> uint8, CPU."""
    return decode(model, encode_all(model, images_uint8)[0])


def sample_images(checkpoint, n, seed, device="cpu"):
    """n decoded z ~ N(0, I), z drawn on the CPU with seed -> uint8 (n, 3, 32, 32) on the CPU."""
    model = load_trained(checkpoint, device)
    g = torch.Generator().manual_seed(seed)
    return decode(model, torch.randn(n, model.latent_dim, generator=g))


# ==== Outputs =================================================================================
OUTPUTS = ["checkpoint.pt  every epoch: model, optimiser, config, history (what --resume reads)",
           "history.json   per epoch: train and test figures;  latents.npz: mu of every image",
           "metrics.json   the final figures on all 10,000 test images, the probe accuracies",
           "progress, reconstructions, interpolations, samples, curves (.png; plane.png: 2-d z)"]
UNITS = ("neg_elbo = recon + kl at beta 1 (the loss), per image, mean over the test images; recon: "
         "squared error over 3072 values in [-1, 1]; kl summed over {} dims; recon_mu: at z = mu")


@torch.no_grad()
def save_pictures(cfg, ckpt, device, name="VAE"):
    """The run's pictures, each captioned (name: the model). Without the dataset (--weights): only
    samples.png and interpolations.png, there between two z ~ N(0, I), not two test images' mu."""
    out, epochs, model, k = cfg["out"], ckpt["history"]["epochs"], load_trained(ckpt, device), 8
    def save(images, file, caption, n=k, **kw):
        data.save_grid(images, os.path.join(out, file), nrow=n, **kw,
                       caption=f"{name} after {len(epochs)} epoch(s): {caption}")
    test_x = (data.load_cifar10(cfg["data_dir"], train=False, download=False)[0]
              if data.find_archive(cfg["data_dir"]) else None)
    line, seeded = "between two z ~ N(0, I)", torch.Generator().manual_seed(cfg["seed"])
    za, zb = torch.randn(2, k, model.latent_dim, generator=seeded)   # no data: these two ends
    if test_x is not None:
        rows = ckpt.get("progress_rows", [])     # 8 fixed test images reconstructed per epoch
        pick = runs.shown_epochs(len(rows), PROGRESS_ROWS)
        if rows:
            save(torch.cat([test_x[:k]] + [rows[i] for i in pick]), "progress.png", "the same 8 "
                 "test images (top) reconstructed after each shown epoch",
                 row_labels=["test"] + [f"ep {i + 1}" for i in pick])
        shown, rec = test_x[:N_SHOW], reconstruct(model, test_x[:N_SHOW])   # decoded z = mu
        save(torch.cat([t for i in range(0, N_SHOW, k) for t in (shown[i:i + k], rec[i:i + k])]),
             "reconstructions.png", "test images above their reconstructions (decoded z = mu)",
             row_labels=["test", "recon"] * (N_SHOW // k))
        ends = test_x[0:2 * k:2], test_x[1:2 * k:2]        # row i: test images 2i and 2i + 1
        za, zb = (encode_all(model, t)[0] for t in ends)   # their mu, (8, 64) each
        line = "from mu_A to mu_B of test images A (first column) and B (last)"
    grid = decode(model, runs.line_points(za, zb, N_INTERP_STEPS)).view(k, -1, 3, 32, 32)
    if test_x is not None:
        grid = torch.cat([ends[0].unsqueeze(1), grid, ends[1].unsqueeze(1)], 1)   # A, steps, B
    save(grid.flatten(0, 1), "interpolations.png", f"each row decodes points on a line {line}",
         n=grid.shape[1])
    save(sample_images(ckpt, N_SAMPLES, cfg["seed"], device), "samples.png",
         f"{N_SAMPLES} samples, decoded z ~ N(0, I)")
    if model.latent_dim == 2:       # the whole code space on one page; rows: z2 from 3 down to -3
        g = torch.linspace(-3, 3, PLANE)
        save(decode(model, torch.stack([g.repeat(PLANE), g.flip(0).repeat_interleave(PLANE)], 1)),
             "plane.png", f"z on a {PLANE} x {PLANE} grid over [-3, 3]^2, z1 from -3 (left) to 3, "
             "z2 from 3 (top) to -3", n=PLANE)
    ep = [e["epoch"] for e in epochs]
    curve = lambda key: (ep, [e[key] for e in epochs])   # one figure per epoch, from history.json
    data.save_charts(os.path.join(out, "curves.png"), [data.draw_chart(
        {"train": curve(f"train_{key}"), f"test[:{EPOCH_TEST}]": curve(f"test_{key}")},
        title=title, xlabel="epoch", ylabel="per image") for key, title in (
        ("neg_elbo", "loss = -ELBO = recon + KL"), ("recon", "recon: summed squared error"),
        ("kl", "KL to N(0, I), nats"))], ncols=3, caption=f"{name}, per image, lower is better: "
        "train = running mean over each epoch's steps, test at beta = 1")


def save_outputs(cfg, ckpt, figures, latents, device, t_start, name="VAE"):
    """latents.npz, the pictures, then metrics.json (runs.save_metrics adds the times and the
    run's record). Returns metrics.json's dict."""
    data.write_npz(os.path.join(cfg["out"], "latents.npz"), **latents)
    save_pictures(cfg, ckpt, device, name)
    seconds = [e["seconds"] for e in ckpt["history"]["epochs"]]   # each epoch's training steps
    return runs.save_metrics(cfg, figures, len(seconds), sum(seconds), t_start, device,
                             UNITS.format(latents["test_z"].shape[1]))


# ==== Command line ============================================================================
def parse_args(argv=None):
    """The VAE's flags, then the shared ones (runs.add_run_flags), checked before any work."""
    p = runs.make_parser("Convolutional VAE on CIFAR-10: train, evaluate and probe it (vae.py's "
                         "docstring explains it).", runs.doc_examples(__doc__), OUTPUTS)
    g = p.add_argument_group("the VAE")
    g.add_argument("--lr", type=runs.POSITIVE, default=LR, help="Adam learning rate")
    g.add_argument("--latent-dim", type=runs.checked(int, lambda v: 1 <= v <= 4096, "in [1, 4096]"),
                   default=LATENT_DIM, help="size of z (2: plane.png)")
    g.add_argument("--beta", type=runs.NON_NEGATIVE, default=BETA,
                   help="KL weight (1: the negative ELBO; the maximum under a schedule)")
    g.add_argument("--beta-schedule", default=BETA_SCHEDULE, choices=("constant", "linear",
                   "cyclical"), help="KL weight per step (beta_at): constant; linear: one ramp "
                   "over the first half of the run; cyclical: Fu et al. 2019, --cycles ramps")
    g.add_argument("--cycles", type=runs.checked(int, lambda v: v >= 1, ">= 1"), default=CYCLES,
                   help="ramps of --beta-schedule cyclical")
    runs.add_run_flags(p, epochs=EPOCHS, subset=SUBSET, batch_size=BATCH_SIZE, seed=SEED, out=OUT)
    return runs.parse_run_flags(p, argv, "vae.py")   # a bad value: one line, exit status 2


# ==== Main: config, training, evaluation, outputs =============================================
def main(argv=None):
    t_start = time.perf_counter()
    cfg = parse_args(argv)
    device = runs.setup_run(cfg)
    if cfg["export"] or cfg["bench"] or cfg["weights"]:         # no training (runs.py's modes)
        return runs.other_mode(cfg, device, sys.modules[__name__])
    ckpt = train(cfg, device)                                   # checkpoint.pt, history.json
    figures, latents = evaluate_run(cfg, ckpt, device)          # all 10,000 test images, probes
    return save_outputs(cfg, ckpt, figures, latents, device, t_start)   # pictures, metrics.json


pictures = save_pictures   # --weights FILE: a shipped model's pictures (runs.other_mode)


if __name__ == "__main__":
    runs.cli_main(main)
