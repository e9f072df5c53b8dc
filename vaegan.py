"""VAE-GAN on CIFAR-10 (Larsen et al. 2016): the VAE of vae.py whose reconstruction error is
measured in the features of the DCGAN discriminator of dcgan.py, trained jointly with it -- a
perceptual loss learned from the data itself, and the hybrid the study proposes as future work.

Run:
    python vaegan.py                          # the VAE's budget: 20 epochs, 10k subset, seed 42
    python vaegan.py --epochs 5 --subset 2000 --batch-size 32 --no-probe --threads 1 \
        --out runs/vaegan_quick                          # a quick look
    python vaegan.py --gamma 0.1 --out runs/vaegan_g01    # another weight on the feature error
    python vaegan.py --resume                 # continue runs/vaegan/checkpoint.pt exactly

The quick look uses batches of 32 (310 steps; at the study's 128 it would take 78 and show
little); docs/results.md says what its pictures show and how long it takes.

Papers: Larsen, Sonderby, Larochelle & Winther 2016, "Autoencoding beyond pixels using a learned
similarity metric" (the model, its losses, its Algorithm 1); Kingma & Welling 2014 (the VAE half,
vae.py); Goodfellow et al. 2014 and Radford et al. 2016 (the GAN half, dcgan.py).

Model: three networks, all imported unchanged.
    Enc + Dec  vae.VAE: x -> (mu, log sigma^2) -> z = mu + sigma * eps (64) -> x~
    Dis        dcgan.Discriminator: x -> 3 convs -> logit. Dis_l(x), the output of one of its conv
               layers (--feature-layer), is where a reconstruction is compared with its image.

Losses (Larsen et al. eqs. 8-9 and Algorithm 1), each per image and averaged over the batch:
    L_prior  KL(q(z|x) || N(0, I)) summed over the 64 latent dims (vae.vae_loss's KL)
    L_feat   sum over the values of Dis_l of (Dis_l(x~) - Dis_l(x))^2, x~ = Dec(z), z ~ q(z|x)
    L_GAN    Dis's BCE: real x against x~ and x_p = Dec(z_p), z_p ~ N(0, I) (dcgan.d_loss_fn)
    Enc minimises L_prior + L_feat; Dec minimises gamma * L_feat + the non-saturating generator
    loss on x~ and x_p (dcgan.g_loss_fn); Dis minimises L_GAN only (train_step: where each stops).

Outputs in --out (default runs/vaegan): those of vae.py in its units (test recon in pixels, KL per
image, the probes on mu beside their baselines), so the two compare line by line: checkpoint.pt
(atomic, every epoch), history.json, metrics.json, latents.npz, reconstructions.png,
interpolations.png, samples.png, curves.png; and gan_curves.png (the game: losses, D's outputs,
the feature error). Same seed, device and thread count -> the same numbers; --resume of a killed
run gives the very weights of an uninterrupted one. Measured results: docs/results.md.

Left out on purpose: the official code's equilibrium margin (it skips Dis's or Dec's update while
one side wins by more than a margin) and its 0.66 weight on real images in Dis's loss (here 1/2,
as in dcgan.py); its RMSProp with a decaying rate (Adam here, as in dcgan.py); the paper's
attribute arithmetic; and --bench (there is no tutorial VAE-GAN loop to time against).
"""
import contextlib
import json
import os
import sys
import time

import torch

import data
import dcgan
import runs
import vae

# ==== Settings =================================================================================
# Flags use the same names in kebab-case; the resolved config is printed and saved with every
# result.
EPOCHS = 20              # passes over the subset: the VAE's budget, so the two compare at equal
                         # epochs
SUBSET = 10_000          # training images, class-stratified: 1,000 per class (the study's subset)
BATCH_SIZE = 128         # real images per step; Dis sees 3 x 128 (real, reconstructed, prior
                         # samples). The last partial batch of an epoch is dropped: BN never sees
                         # a handful of images
SEED = 42                # one seed drives init, data order and noise
OUT = "runs/vaegan"      # folder for every output
LR = dcgan.LR            # Adam, 2e-4 with dcgan.BETAS (0.5, 0.999), for all three nets: Dec and Dis
                         # play the GAN game, where the VAE's 1e-3 with beta1 0.9 oscillates
GAMMA = 0.01             # weight of L_feat in Dec's loss against its GAN loss (Enc's weight is 1).
                         # L_feat sums 4,096 squared differences (thousands per image early on), the
                         # GAN loss is a BCE mean near 1, so early on L_feat's gradient on Dec's
                         # weights is two orders of magnitude larger: 0.01 makes the two pull on Dec
                         # comparably; at 1 the GAN term would barely count
FEATURE_LAYER = 3        # Dis_l: D's third (last) conv layer, after BN and LeakyReLU, (256, 4, 4):
                         # D's most abstract layer (the logit is linear in it), so L_feat forgives
                         # small shifts a pixel error punishes; after BN its scale stays ~1 however
                         # D's weights grow. 2: (128, 8, 8), closer to pixels; 1: (64, 16, 16)
EPOCH_TEST = vae.EPOCH_TEST  # test images in each epoch's line (the first 2,000; all at the end)
# Settings that define the experiment: --resume refuses a checkpoint made with different ones.
RESUME_KEYS = ("subset", "batch_size", "lr", "seed", "width", "gamma", "feature_layer",
               "precision")


# ==== Model ===================================================================================
def build_models(cfg, device="cpu"):
    """The VAE exactly as vae.build_model makes it for this seed (so vae.run_probes' random-init
    baseline is the very network this run started from), then Dis with dcgan.py's N(0, 0.02) init,
    drawn next from the same seeded stream; both on device."""
    model = vae.build_model(cfg, device)
    D = dcgan.Discriminator(cfg["width"])
    D.apply(dcgan.init_weights)
    fmt = torch.channels_last if cfg.get("channels_last") else torch.preserve_format
    return model, D.to(device, memory_format=fmt)


def encoder_params(model):
    return [p for m in (model.encoder, model.fc_mu, model.fc_logvar) for p in m.parameters()]


def decoder_params(model):
    return [p for m in (model.fc_dec, model.decoder) for p in m.parameters()]


def discriminate(D, x, layer):
    """One pass of Dis over x (N, 3, 32, 32) -> (Dis_l(x) flattened (N, F), logits (N,)): D(x) as
    dcgan.Discriminator.forward computes it (without its minibatch layer, unused here), keeping
    the intermediate layer. F = 4,096 at layer 3 and --width 1."""
    h = D.conv_layers(x)                        # (N, 64, 16, 16), (N, 128, 8, 8), (N, 256, 4, 4)
    return h[layer - 1].flatten(1), D.fc(h[2].flatten(1)).squeeze(1)


# ==== Loss ====================================================================================
def feature_error(f_rec, f_real):
    """Larsen et al. eq. 8, L_feat = -log N(Dis_l(x) | Dis_l(x~), I/2) less its constant: the
    squared error SUMMED over the features, per image, AVERAGED over the batch. It is vae.py's
    pixel error with Dis_l in place of the pixels (the same Gaussian, variance 1/2), so the KL
    beside it keeps weight 1. f_rec, f_real: (B, F). Returns a scalar."""
    return (f_rec - f_real).pow(2).sum(1).mean()


# ==== One training step =======================================================================
def train_step(model, D, opt_vae, opt_d, x, eps, z_prior, gamma, layer,
               amp=contextlib.nullcontext):
    """Larsen et al. Algorithm 1 on a real batch x (B, 3, 32, 32): one forward pass, each loss
    differentiated for the parameters it trains only, then all three nets updated at once (the
    same forward serves all three, unlike dcgan.py's alternating steps). eps, z_prior: (B, 64).
    amp: runs.autocast's context (--precision bf16) around the forward pass; losses from float32.
    Returns the detached (kl, feat, d_loss, g_loss, pixel mse, D(x), D(x~), D(x_p)): no .item()."""
    b = x.shape[0]
    # BatchNorm and the three batches: real, reconstructed and prior images go through Dis as ONE
    # batch of 3B (as in the official code's GAN pass), so Dis_l(x) and Dis_l(x~) are normalised
    # with the same statistics (two separate batches would each have their own mean removed,
    # hiding much of any shift that all reconstructions share), and so are all three's logits.
    with amp():
        mu, logvar = model.encode(x)                                   # (B, 64) each
        z = vae.reparameterise(mu, logvar, eps)                        # z = mu + sigma * eps
        fake = model.decode(torch.cat([z, z_prior]))                   # (2B, 3, 32, 32): x~, x_p
        feats, logits = discriminate(D, torch.cat([x, fake]), layer)   # (3B, F), (3B,)
    mu, logvar, fake, feats, logits = (t.float() for t in (mu, logvar, fake, feats, logits))
    _, mse, kl = vae.vae_loss(fake[:b], x, mu, logvar)      # mse: pixels, logged, in no loss
    # Dis_l(x) is the target: detached, so no gradient reaches it (D's parameters are not trained
    # by L_feat anyway; this also stops the decoder pulling on it through the shared BN statistics)
    feat = feature_error(feats[b:2 * b], feats[:b].detach())
    d_loss = dcgan.d_loss_fn(logits[:b], logits[b:])   # mean over B real + mean over 2B fake
    g_loss = dcgan.g_loss_fn(logits[b:])               # non-saturating, mean over x~ and x_p

    # Where each gradient stops: autograd.grad differentiates a loss for the listed parameters only.
    #   Enc <- L_prior + L_feat: no GAN gradient. The encoder infers z from x; fooling Dis is the
    #          decoder's job, and the game's gradients would move the code for reasons unrelated
    #          to x.
    #   Dec <- gamma * L_feat + GAN: gamma trades faithful reconstructions against realistic
    #          images.
    #   Dis <- L_GAN only: minimising L_feat too would teach Dis to shrink the feature differences
    #          it measures, collapsing the very metric it supplies (Larsen et al. make this point).
    enc, dec, dis = encoder_params(model), decoder_params(model), list(D.parameters())
    grads = (torch.autograd.grad(kl + feat, enc, retain_graph=True)
             + torch.autograd.grad(gamma * feat + g_loss, dec, retain_graph=True)
             + torch.autograd.grad(d_loss, dis))
    for p, g in zip(enc + dec + dis, grads):
        p.grad = g
    opt_vae.step()
    opt_d.step()
    p_real, p_rec, p_prior = torch.sigmoid(logits.detach()).split(b)   # D's probability "real"
    return torch.stack([kl, feat, d_loss, g_loss, mse,
                        p_real.mean(), p_rec.mean(), p_prior.mean()]).detach()


STATS = ("kl", "feat", "d_loss", "g_loss", "mse", "d_x", "d_rec", "d_prior")   # train_step's


# ==== The training loop =======================================================================
def train_epoch(model, D, opt_vae, opt_d, batches, noise, cfg):
    """train_step over one epoch's batches; noise: the CPU generator of eps and z_p. Returns the
    (steps, 8) CPU tensor of train_step's figures, moved off the device once."""
    model.train(), D.train()
    device = next(model.parameters()).device
    rows = []
    amp = runs.autocast(cfg, device)
    for x, _ in batches:
        noise_2b = torch.randn(2, x.shape[0], model.latent_dim, generator=noise)   # (2, B, 64)
        eps, z_prior = noise_2b.to(device).unbind(0)
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)             # same values, NHWC
        rows.append(train_step(model, D, opt_vae, opt_d, x, eps, z_prior, cfg["gamma"],
                               cfg["feature_layer"], amp))
    return torch.stack(rows).cpu()


def evaluate_epoch(model, stats, test_x, cfg, device, epoch, seconds):
    """One epoch's entry of history.json: the means of its training steps (full batches, so plain
    means are per image) and vae.py's test figures on the first EPOCH_TEST test images, in its
    units and its keys (vae.save_pictures draws them in curves.png beside the VAE's)."""
    t0 = time.perf_counter()
    m = dict(zip(STATS, stats.mean(0).tolist()))
    te = vae.evaluate(model, test_x[:EPOCH_TEST], cfg["seed"])
    runs.check_finite(torch.tensor([[te["neg_elbo"]]]), epoch, 1, cfg["out"], ("test loss",),
                      "the last update made the weights non-finite; try a lower --lr or --gamma")
    return dict(epoch=epoch + 1, seconds=round(seconds, 3), train_neg_elbo=m["mse"] + m["kl"],
                train_recon=m["mse"], train_kl=m["kl"], train_feature=m["feat"],
                d_loss=m["d_loss"], g_loss=m["g_loss"], d_x=m["d_x"], d_rec=m["d_rec"],
                d_prior=m["d_prior"], test_neg_elbo=te["neg_elbo"], test_recon=te["recon"],
                test_kl=te["kl"], test_images=min(EPOCH_TEST, len(test_x)),
                eval_seconds=round(time.perf_counter() - t0, 3))


def train(cfg, device):
    """Train (or --resume) the run cfg describes; after every epoch OUT/checkpoint.pt and
    OUT/history.json. Returns the last checkpoint dict, which everything after training reads."""
    ckpt_path = os.path.join(cfg["out"], "checkpoint.pt")
    ckpt = runs.resume_checkpoint(cfg, RESUME_KEYS)   # None without --resume
    train_x, train_y = data.load_subset(cfg)                     # uint8 (N, 3, 32, 32), int64 (N,)
    test_x, _ = data.load_cifar10(cfg["data_dir"], train=False, download=False)
    batches = runs.Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"],
                           shuffle=True, drop_last=True)
    steps = len(batches)
    model, D = build_models(cfg, device)
    opt_vae = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=dcgan.BETAS)  # Enc, Dec
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=dcgan.BETAS)
    print(f"params VAE {runs.count_params(model):,} D {runs.count_params(D):,} | device {device} "
          f"| threads {torch.get_num_threads()} | {len(train_x)} train images | {steps} steps/epoch"
          f" | gamma {cfg['gamma']:g} | Dis_l = conv layer {cfg['feature_layer']}"
          + (" | channels_last" if cfg["channels_last"] else ""))
    history, start_epoch = {"epochs": []}, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"]), D.load_state_dict(ckpt["D"])
        opt_vae.load_state_dict(ckpt["opt_vae"]), opt_d.load_state_dict(ckpt["opt_d"])
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        print(f"resumed from {ckpt_path} after epoch {start_epoch}")

    for epoch in range(start_epoch, cfg["epochs"]):
        # ---- forward, backward, update: one pass over the subset, timed as training ----
        t0 = time.perf_counter()
        noise = torch.Generator().manual_seed(runs.noise_seed(cfg["seed"], "vaegan", epoch))
        stats = train_epoch(model, D, opt_vae, opt_d, batches.epoch(epoch), noise, cfg)
        seconds = time.perf_counter() - t0
        runs.check_finite(stats, epoch * steps, steps, cfg["out"], STATS[:4],
                          "try a lower --lr or --gamma")

        # ---- evaluation and logging: one line per epoch, with the ETA ----
        e = evaluate_epoch(model, stats, test_x, cfg, device, epoch, seconds)
        history["epochs"].append(e)
        eta = runs.eta(history["epochs"][start_epoch:], cfg["epochs"] - epoch - 1)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']} | train recon {e['train_recon']:7.2f} kl "
              f"{e['train_kl']:6.2f} feat {e['train_feature']:8.2f} | d_loss {e['d_loss']:.3f} "
              f"g_loss {e['g_loss']:.3f} D(x) {e['d_x']:.3f} D(x~) {e['d_rec']:.3f} D(x_p) "
              f"{e['d_prior']:.3f} | test[:{EPOCH_TEST}] recon {e['test_recon']:7.2f} kl "
              f"{e['test_kl']:6.2f} | {seconds:.1f} s | ETA {data.format_seconds(eta)}",
              flush=True)

        # ---- checkpoint: one dict, atomic, every epoch (model: the VAE, under vae.py's key) ----
        ckpt = runs.save_epoch(cfg, dict(
            model=model.state_dict(), D=D.state_dict(), opt_vae=opt_vae.state_dict(),
            opt_d=opt_d.state_dict(), epoch=epoch + 1, step=(epoch + 1) * steps, history=history,
            torch_version=str(torch.__version__)))
    return ckpt


# ==== Evaluation ==============================================================================
def gan_figures(cfg, ckpt):
    """The figures vae.evaluate_run does not know: the game's last epoch and the discriminator."""
    last = ckpt["history"]["epochs"][-1]
    game = ("train_feature", "d_loss", "g_loss", "d_x", "d_rec", "d_prior")
    return dict({k: last[k] for k in game},
                params_d=runs.count_params(dcgan.Discriminator(cfg["width"])),
                gamma=cfg["gamma"], feature_layer=cfg["feature_layer"],
                gan_units="train_feature: the last epoch's mean feature error per image (what this "
                          "model minimises instead of the pixel recon); d_loss, g_loss: its BCE "
                          "batch means (as dcgan.py); d_x, d_rec, d_prior: D's mean probability "
                          "'real' for x, x~, x_p")


# ==== Outputs =================================================================================
def save_gan_curves(cfg, ckpt):
    """gan_curves.png: the game per epoch. (curves.png, drawn by vae.save_pictures, has the pixel
    error and the KL in the very charts of the VAE's.)"""
    epochs = ckpt["history"]["epochs"]
    ep = [e["epoch"] for e in epochs]

    def chart(title, ylabel, **labels):   # labels: legend label -> history key
        series = {label: (ep, [e[k] for e in epochs]) for label, k in labels.items()}
        return data.draw_chart(series, title=title, xlabel="epoch", ylabel=ylabel)
    charts = [chart("GAN losses", "BCE, batch mean", D="d_loss", G="g_loss"),
              chart("D: probability real", "batch mean", real="d_x", reconstructed="d_rec",
                    prior="d_prior"),
              chart(f"feature error, layer {cfg['feature_layer']}", "per image",
                    train="train_feature")]
    data.save_charts(os.path.join(cfg["out"], "gan_curves.png"), charts, ncols=3,
                     caption="VAE-GAN, the game: train means over each epoch's steps; x = real, "
                     "x~ = reconstructed, x_p = decoded z_p ~ N(0, I)")


# ==== Command line ============================================================================
def parse_args(argv=None):
    """This model's own flags, then those every training script shares (runs.add_run_flags); all
    validated before any work starts (runs.cli_main turns the ValueError into one line, exit 2)."""
    p = runs.make_parser(
        "VAE-GAN on CIFAR-10 (Larsen et al. 2016): vae.py's VAE, its reconstructions compared in\n"
        "the features of dcgan.py's discriminator. The docstring of vaegan.py explains the losses.",
        examples=["python vaegan.py                   # the VAE's budget: 20 epochs, 10k subset",
                  "python vaegan.py --epochs 5 --subset 2000 --batch-size 32 --no-probe "
                  "--threads 1 --out runs/vaegan_quick   # a quick look",
                  "python vaegan.py --gamma 0.1 --out runs/vaegan_g01"],
        outputs=vae.OUTPUTS + ["gan_curves.png: the game per epoch (losses, D's outputs, "
                               "the feature error)"])
    g = p.add_argument_group("the VAE-GAN")
    g.add_argument("--lr", type=runs.POSITIVE, default=LR,
                   help="Adam learning rate of all three nets")
    g.add_argument("--gamma", type=runs.NON_NEGATIVE, default=GAMMA,
                   help="weight of the feature error in Dec's loss")
    g.add_argument("--feature-layer", type=int, default=FEATURE_LAYER, choices=(1, 2, 3),
                   help="D's conv layer whose features compare a reconstruction with its image")
    runs.add_run_flags(p, epochs=EPOCHS, subset=SUBSET, batch_size=BATCH_SIZE, seed=SEED, out=OUT)
    def check(a):
        if a.bench:
            raise ValueError("--bench: vaegan.py has no tutorial loop to time against (vae.py and "
                             "dcgan.py have)")
    return runs.parse_run_flags(p, argv, "vaegan.py", check)


# ==== Main: config, training, evaluation, outputs =============================================
def main(argv=None):
    t_start = time.perf_counter()
    cfg = parse_args(argv)
    device = runs.setup_run(cfg)
    if cfg["export"] or cfg["weights"]:                        # no training (runs.py's modes)
        return runs.other_mode(cfg, device, sys.modules[__name__])
    ckpt = train(cfg, device)                                  # checkpoint.pt, history.json
    figures, latents = vae.evaluate_run(cfg, ckpt, device)     # vae.py's figures, the probes
    figures.update(gan_figures(cfg, ckpt))
    save_gan_curves(cfg, ckpt)                                 # gan_curves.png
    return vae.save_outputs(cfg, ckpt, figures, latents, device, t_start,
                            name="VAE-GAN")                    # vae.py's pictures, metrics.json


# --export and --weights read this file's runs as vae.py's (the VAE under the key "model")
sample_images, load_trained, reconstruct = vae.sample_images, vae.load_trained, vae.reconstruct


def pictures(cfg, ckpt, device):
    vae.save_pictures(cfg, ckpt, device, name="VAE-GAN")


if __name__ == "__main__":
    runs.cli_main(main)
