"""runs.py -- the plumbing every training script shares (vae.py, dcgan.py, dcgan_remedies.py,
vaegan.py), written once so the scripts cannot drift apart. Read it on a second pass: the models,
their steps and loops are in the model files; nothing here is about VAEs or GANs.

What is here, in order:
  the command line   one parser per script with --help grouped and an epilog of examples
                     (make_parser), the 19 flags every script shares and their checks
                     (add_run_flags, check_run_flags), and one-line errors (cli_main: a bad flag,
                     missing data or a diverging run is one line on stderr and exit status 2)
  device and speed   the device, CPU threads, deterministic kernels (setup_run); --precision bf16
                     from outside the steps: a net seen through Autocast (mixed_precision); NHWC
                     memory (to_device, memory_format)
  checkpoints        written atomically (temp file, then rename), read back with weights_only,
                     refused in one line when their settings differ or their shape is wrong
                     (load_checkpoint, resume_checkpoint, check_checkpoint); older checkpoints'
                     settings and keys filled in (OLD_CONFIGS)
  seeds and batches  the seed of every random draw, a pure function of (seed, purpose, epoch), so
                     a resumed run draws exactly what an uninterrupted one would (noise_seed); the
                     subset as one uint8 tensor on the device, sliced into batches (Batches)
  the stop           at the first non-finite loss, before anything of that epoch is saved
                     (check_finite, log_steps)
  --bench            an epoch of our loop against the pytorch/examples DataLoader tutorial loop,
                     steps taken in turn (bench, bench_step, time_loops, tutorial_*_step)
  other modes        --bench, --export and --weights instead of training (other_mode); a run's
                     checkpoint as a shipped weights file (save_weights, read_weights)
  provenance         what made a run: config, commit, clean tree, a hash of the code it imported,
                     the data archive's md5 (provenance, code_files, code_sha256, data_md5); the
                     settings in which a saved config differs (config_differences: --reuse)
  --export           a finished run's images, for other tools: an .npz (uint8, NHWC, key
                     "images") or one PNG per image (export, export_images, check_export_count)

It imports data.py (CIFAR-10, file writes), never a model file; it has no command of its own.
"""
import argparse
import ast
import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

import data


# ==== The command line: the flags every training script shares, and one-line errors ==========
class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag raises ValueError, which cli_main prints as one line (exit 2)
    instead of argparse's usage block."""

    def error(self, message):
        raise ValueError(message)


def cli_main(main_fn):
    """Run a script's main(); turn expected failures into one line on stderr and exit status 2."""
    if hasattr(sys.stdout, "reconfigure"):  # progress lines appear at once under `| tee log` or `> log`
        sys.stdout.reconfigure(line_buffering=True)
    try:
        main_fn()
    except KeyboardInterrupt:
        print("error: interrupted (files already written are complete; rerun with --resume "
              "where the script has it)", file=sys.stderr)
        sys.exit(2)
    except (data.DataError, ValueError, OSError, RuntimeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def checked(kind, ok, rule):
    """An argparse type: kind(text) (int or float), refused unless finite and ok(value); a bad
    value's error names the flag, the rule and the value in one line (exit 2, as every error)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    parse.__name__ = kind.__name__    # argparse names the type in some messages
    return parse


POSITIVE = checked(float, lambda v: v > 0, "a number > 0")       # learning rates
NON_NEGATIVE = checked(float, lambda v: v >= 0, "a number >= 0")  # loss weights


PRECISIONS = ("fp32", "bf16")   # --precision of training (and metrics.py's of the Inception network)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with every default shown, and the epilog's example lines kept as written."""


def doc_examples(doc):
    """The command lines of a script's docstring (its lines "    python ..."): its --help examples."""
    return [line.strip() for line in doc.splitlines() if line.startswith("    python ")]


def make_parser(description, examples, outputs):
    """The parser of a training script: its --help ends with example commands and the files a run
    writes. The script adds its own flags first (they are listed first), then add_run_flags."""
    epilog = ("examples:\n" + "\n".join(f"  {e}" for e in examples)
              + "\n\noutputs in --out:\n" + "\n".join(f"  {o}" for o in outputs))
    return OneLineParser(description=description, epilog=epilog, formatter_class=HelpFormatter)


def add_run_flags(p, epochs, subset, batch_size, seed, out):
    """Declare the 19 flags every training script takes, in their own --help group after the
    script's own flags; the defaults come from each script's settings block. check_run_flags
    validates them."""
    p = p.add_argument_group("run settings, shared by every training script (runs.py)")
    p.add_argument("--epochs", type=int, default=epochs, help="total epochs (with --resume: the new total)")
    p.add_argument("--subset", type=int, default=subset,
                   help="training images, class-stratified: a multiple of 10 in [10, 50000]")
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per step, in [2, --subset]")
    p.add_argument("--seed", type=int, default=seed, help="init, data order and noise, in [0, 2**31)")
    p.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier, in (0, 16] (1: the study's layer sizes)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N], mps")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default, "
                   "one per core; 1 is faster when other jobs share the cores)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for the convolutions: oneDNN's fast path on CPUs (printed at "
                   "start; numbers differ from --no-channels-last only by float rounding)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="training arithmetic: fp32, or bf16 = bfloat16 autocast around the forward passes "
                   "(convolutions and matmuls in bf16; losses, BN statistics, weights and Adam in float32). "
                   "Fast on CUDA and on CPUs with avx512_bf16/amx_bf16, emulated (slower) elsewhere; "
                   "evaluation and pictures always run in float32")
    p.add_argument("--tf32", action="store_true", help="CUDA only: float32 matmuls and convolutions in TF32 "
                   "(faster on Ampere and later, different numbers; off by default)")
    p.add_argument("--out", default=out, help="folder for every output")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-python.tar.gz")
    p.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probes at the end")
    p.add_argument("--bench", action="store_true", help="time one epoch of this loop against the "
                   "DataLoader tutorial loop (runs.bench), write bench.json, then exit")
    p.add_argument("--export", nargs=2, metavar=("N", "PATH"), default=None,
                   help="write N images of the finished run in OUT (its checkpoint) to PATH, then exit: "
                   "PATH.npz (uint8, NHWC, key 'images') or, when PATH ends in /, one PNG per image; "
                   "the very images compare.py scores (noise seed metrics.EVAL_SEED); N at most "
                   "50,000; a PNG folder that already holds .png files is refused: name a new one")
    p.add_argument("--weights", metavar="FILE", default=None, help="no training: draw the pictures "
                   "of a trained model file (weights/vae.pt, weights/dcgan.pt) into --out, in seconds "
                   "and without the dataset; with --export, that model's images")
    p.add_argument("--export-recon", action="store_true", help="with --export, the VAEs only: "
                   "reconstructions of the N reference test images compare.py uses, not samples")


def parse_run_flags(p, argv, script, check=None):
    """Parse argv with a script's parser p; check(namespace), the script's own rules, if given;
    then the shared flags (check_run_flags, last: its checks touch the disk). -> the config dict,
    with "script": the file whose model and loop make the run."""
    a = p.parse_args(argv)
    a.script = script
    if check is not None:
        check(a)
    check_run_flags(a)
    return vars(a)


def check_run_flags(a):
    """Validate the shared flags of an argparse namespace, one rule each, before any work starts
    (cli_main prints the ValueError as one line). The checks that touch the disk come last, so a
    script validates its own flags first and a bad value never leaves a folder behind."""
    if a.export is not None:
        a.export = [check_export_count(a.export[0], a.export_recon), a.export[1]]
    elif a.export_recon:
        raise ValueError("--export-recon goes with --export N PATH")
    if a.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {a.epochs}")
    if not 10 <= a.subset <= 50_000 or a.subset % 10:
        raise ValueError(f"--subset must be a multiple of 10 in [10, 50000], got {a.subset}")
    if not 2 <= a.batch_size <= a.subset:  # 1: BatchNorm would use one image's own statistics
        raise ValueError(f"--batch-size must be in [2, --subset={a.subset}], got {a.batch_size}")
    if not 0 <= a.seed < 2**31:
        raise ValueError(f"--seed must be in [0, 2**31), got {a.seed}")
    if not (math.isfinite(a.width) and 0 < a.width <= 16):
        raise ValueError(f"--width must be in (0, 16], got {a.width}")
    if a.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {a.threads}")
    device = pick_device(a.device)  # raises ValueError on a bad or unavailable device
    if a.tf32 and device.type != "cuda":
        raise ValueError(f"--tf32 applies to CUDA GPUs only; this run's device is {device.type}")
    if a.precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"--precision bf16 runs on CUDA or the CPU; on {device.type} use fp32")
    try:  # an unwritable --out should fail now, not after the first epoch
        os.makedirs(a.out, exist_ok=True)
        probe = os.path.join(a.out, ".write_test.tmp")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"--out {a.out} is not a writable folder ({e.strerror or e})") from None
    ckpt = os.path.join(a.out, "checkpoint.pt")
    if a.weights is not None and not os.path.isfile(a.weights):
        raise ValueError(f"--weights: no file {a.weights}; the shipped ones are weights/vae.pt and "
                         "weights/dcgan.pt")
    if a.export is not None and a.weights is None and not os.path.isfile(ckpt):
        raise ValueError(f"--export: no checkpoint at {ckpt}; train the run first (same --out)")
    if a.resume and not os.path.isfile(ckpt):
        raise ValueError(f"--resume: no checkpoint at {ckpt}; run without --resume to start afresh")


def setup_run(cfg):
    """The device of a run, its CPU threads, and deterministic kernels -> torch.device."""
    if not (cfg.get("export") or cfg.get("bench") or cfg.get("weights")):   # a training run
        print("config " + json.dumps(cfg, sort_keys=True))   # every setting, resolved
        run_provenance(cfg)   # the code and data as the run begins, saved with every epoch
    device = pick_device(cfg["device"])
    if cfg["threads"]:
        # Each op splits over the threads and waits for the slowest; when another job holds a
        # core, that wait dominates, so one thread can be much faster on a shared machine.
        torch.set_num_threads(cfg["threads"])
    if device.type == "cuda":  # same seed + device -> same numbers (cuDNN picks kernels by timing)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        # TF32 rounds float32 matmul inputs to 10 mantissa bits: off unless asked (PyTorch leaves
        # it on for cuDNN convolutions by default, which would change an fp32 run's numbers)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(cfg.get("tf32"))
    if cfg.get("precision") == "bf16":
        print("precision bf16: " + ("bfloat16 autocast, native on this device" if native_bf16(device) else
              "bfloat16 is EMULATED on this CPU (no avx512_bf16 or amx_bf16): slower than fp32, "
              "use it here only to test"))
    return device


def native_bf16(device):
    """True where bfloat16 matmuls run in hardware: CUDA GPUs (Ampere and later) and CPUs with
    AVX512-BF16 or AMX (Linux /proc/cpuinfo flags). Elsewhere bf16 is emulated, and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast(cfg, device):
    """--precision as a context: bfloat16 autocast (convolutions, matmuls and Linear layers in
    bf16; weights, their gradients and Adam's state stay float32, and so do BatchNorm's running
    statistics) or, for fp32, a context that does nothing. A function: each use opens a fresh one."""
    if cfg.get("precision", "fp32") != "bf16":
        return contextlib.nullcontext
    return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


class Autocast(torch.nn.Module):
    """A net seen through --precision bf16: each forward under bfloat16 autocast, its outputs
    cast back to float32, so the losses are taken in float32 and backward runs outside autocast,
    as PyTorch's autocast guide asks. It holds the very net (same parameters): training steps
    call it as they would the net; the checkpoint saves the net itself."""

    def __init__(self, net, cfg):
        super().__init__()
        self.net, self.amp = net, autocast(cfg, next(net.parameters()).device)

    def forward(self, *args):
        with self.amp():
            out = self.net(*args)
        return out.float() if torch.is_tensor(out) else tuple(t.float() for t in out)

    def __getattr__(self, name):             # latent_dim, z_dim, ...: the net's own
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.net, name)


def autocast_scope(cfg):
    """--precision bf16: a context around one whole training step, inside which each Autocast
    forward opens its own region. It keeps autocast's cache of bf16 weight casts for the whole
    step (PyTorch clears it only when the outermost region ends), so D's two forwards of step (1)
    share one cast of its weights, as they did in one region; a frozen D (step 2) is never cached,
    so it sees its updated weights. fp32: a context that does nothing."""
    if cfg.get("precision", "fp32") != "bf16":
        return contextlib.nullcontext()
    return torch.autocast("cpu", enabled=False)   # any device: the nesting count is shared


def mixed_precision(net, cfg):
    """The net a training step calls: the net itself (fp32), or Autocast(net) for --precision bf16."""
    return Autocast(net, cfg) if cfg.get("precision", "fp32") == "bf16" else net


def to_device(net, cfg, device):
    """net on device; with --channels-last its conv weights stored NHWC (oneDNN's direct
    convolutions on a CPU: the same values, another order of sums)."""
    fmt = torch.channels_last if cfg.get("channels_last") else torch.preserve_format
    return net.to(device, memory_format=fmt)


def memory_format(x, cfg):
    """A batch as --channels-last wants it (the same values, NHWC in memory)."""
    return x.contiguous(memory_format=torch.channels_last) if cfg.get("channels_last") else x


def speed_line(cfg):
    return (f"speed: {'channels_last, ' if cfg.get('channels_last') else ''}"
            f"{torch.get_num_threads()} threads, {cfg.get('precision', 'fp32')}")


def run_record(cfg, device):
    """What metrics.json says of the run besides its figures: where, with what and by what code."""
    return dict(device=str(device), threads=torch.get_num_threads(), torch=str(torch.__version__),
                seed=cfg["seed"], precision=cfg["precision"], config=cfg, commit=git_commit(),
                provenance=run_provenance(cfg))


OLD_CONFIGS = dict(precision="fp32")   # what a config saved before a shared flag existed meant


def save_metrics(cfg, figures, epochs, train_seconds, t_start, device, units):
    """OUT/metrics.json: a run's final figures, its times (seconds, wall: train_seconds the
    training steps', run_seconds this call's since t_start) and record (run_record), with the
    units of its figures. Returns the dict written."""
    out = dict(figures, epochs=epochs, train_seconds=train_seconds,
               seconds_per_epoch=train_seconds / epochs, run_seconds=time.perf_counter() - t_start,
               **run_record(cfg, device), units=units + "; seconds: wall (train: the training "
               "steps; run: this call, data to last file)")
    data.write_json(os.path.join(cfg["out"], "metrics.json"), out)
    print(f"outputs in {cfg['out']} | run {data.format_seconds(out['run_seconds'])} (training "
          f"{data.format_seconds(train_seconds)})")
    return out


def resume_checkpoint(cfg, same_keys, defaults=None):
    """With --resume, OUT/checkpoint.pt, refused in one line if any of same_keys (the settings
    that define the experiment) differs from this run's, or if another script made it; without
    it, None. defaults: what the script's own settings meant in configs saved before they existed
    (its "script": the older script whose checkpoints it continues too)."""
    if not cfg["resume"]:
        return None
    path = os.path.join(cfg["out"], "checkpoint.pt")
    ckpt = load_checkpoint(path, "run without --resume to start afresh", cfg, same_keys,
                           dict(OLD_CONFIGS, **(defaults or {})))
    if ckpt.get("script", cfg["script"]) not in (cfg["script"], (defaults or {}).get("script")):
        raise ValueError(f"--resume: {path} was made by {ckpt['script']}, not {cfg['script']}; "
                         "resume it with that script")
    if ckpt["epoch"] > cfg["epochs"]:
        raise ValueError(f"--resume: the checkpoint already has {ckpt['epoch']} epochs, more than "
                         f"--epochs {cfg['epochs']}")
    return ckpt


# ==== Checkpoints: written atomically, refused in one line when they do not fit ==============
def atomic_torch_save(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    data.atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path, hint, config=None, same_keys=(), defaults=None):
    """Read a checkpoint that atomic_torch_save wrote. weights_only: tensors and plain containers,
    no code from the file runs. A missing or unreadable file, or (given config) a saved config that
    differs in any of same_keys, raises ValueError: one line naming the file and `hint`, what to do.
    defaults: what a key missing from an older checkpoint's config meant (a setting added since)."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}; {hint}")
    data.regular_file(path, "checkpoint")           # a FIFO or device would hang torch.load
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torn by hand, not a torch file, or holding objects weights_only refuses
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); {hint}") from None
    ckpt = check_checkpoint(ckpt, path)
    if "metrics" in ckpt and "history" not in ckpt:   # older vae.py/vaegan.py: the same history
        ckpt["history"] = ckpt.pop("metrics")
    for e in ckpt.get("history", {}).get("epochs", []):   # ... whose loss was named "elbo"
        e.update({k.replace("elbo", "neg_elbo"): e.pop(k) for k in list(e) if k.endswith("_elbo")
                  and not k.endswith("neg_elbo")})
    for k in same_keys:
        saved = ckpt["config"].get(k, (defaults or {}).get(k))
        if saved != config[k]:
            raise ValueError(f"{path} was made with {k}={saved}, this run has {config[k]}; "
                             "pass the same settings")
    return ckpt


def save_epoch(cfg, ckpt):
    """The end of an epoch on disk: ckpt (a dict: weights, optimiser states, "history", what
    --resume needs) with the config, the script and its provenance, written atomically to
    OUT/checkpoint.pt; its history to OUT/history.json. Returns the saved dict."""
    ckpt = dict(ckpt, config=cfg, script=cfg["script"], provenance=run_provenance(cfg))
    atomic_torch_save(ckpt, os.path.join(cfg["out"], "checkpoint.pt"))
    data.write_json(os.path.join(cfg["out"], "history.json"), ckpt["history"])
    return ckpt


def eta(epochs_done, epochs_left):
    """Seconds still to go: the mean time of this process's epochs (their "seconds" and
    "eval_seconds"), times the epochs left."""
    per_epoch = sum(e["seconds"] + e.get("eval_seconds", 0) for e in epochs_done) / len(epochs_done)
    return per_epoch * epochs_left


# ==== Seeds and batches ======================================================================
# Every random draw of a run has its own seed, a pure function of (run seed, purpose, epoch), so a
# resumed run redraws exactly what an uninterrupted one would, with no generator state to save.
# The offsets keep the purposes apart (epochs stay far below 500,000). Other fixed draws (the
# subset, the pictures' noise, the real images of dcgan.py's checks) use the run seed itself.
NOISE_OFFSETS = {
    "order": 0,            # data order of each epoch (Batches)
    "vaegan": 300_000,     # vaegan.py: eps and the prior's z_p of each epoch's training steps
    "gan_z": 500_000,      # dcgan.py: the z of each epoch's training steps
    "vae_eps": 700_000,    # vae.py: the reparameterisation noise of each epoch's steps
    "vae_eval": 900_000,   # vae.py: one fixed eps for the test loss (-ELBO), the same at every evaluation
    "diffaug": 1_100_000,  # dcgan_remedies.py --diffaugment: the transforms of each epoch's batches
}


def noise_seed(seed, purpose, epoch=0):
    """Seed of one CPU generator: seed * 1000003 + epoch + the purpose's offset."""
    return seed * 1000003 + epoch + NOISE_OFFSETS[purpose]


class Batches:
    """Minibatches from one uint8 tensor that lives on the device (4x smaller than float).
    The order of epoch e is a pure function of (seed, e), so a resumed run sees the very same
    batches as an uninterrupted one, with no iterator state to save."""

    def __init__(self, images, labels, batch_size, device="cpu", seed=42, shuffle=True,
                 drop_last=False):
        self.x = images.to(device)  # (N, 3, 32, 32) uint8
        self.y = labels.to(device)  # (N,) int64
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, e):
        n = len(self.x)
        if self.shuffle:  # permutation drawn on the CPU: identical on every device
            g = torch.Generator().manual_seed(noise_seed(self.seed, "order", e))
            order = torch.randperm(n, generator=g).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield data.to_float(self.x[idx]), self.y[idx]


# ==== The stop at a non-finite loss, and small helpers =======================================
class NonFiniteLoss(ValueError):
    """A loss became inf/nan; cli_main prints it as one line and exits with status 2."""


def check_finite(stats, first_step, steps_per_epoch, out, names, hint):
    """stats: (n, k) CPU tensor, one row per step from global step first_step (0-based), its first
    columns the losses called `names`. Raise NonFiniteLoss naming the first step with a non-finite
    one. Called before anything of the epoch is saved, so the checkpoint on disk is the last good one."""
    bad = (~torch.isfinite(stats[:, :len(names)])).any(1).nonzero()
    if len(bad):
        i = int(bad[0])
        step = first_step + i
        ckpt = os.path.join(out, "checkpoint.pt")
        kept = f"last good checkpoint kept at {ckpt}" if os.path.exists(ckpt) else "no checkpoint written yet"
        values = " ".join(f"{name}={stats[i, j].item()}" for j, name in enumerate(names))
        raise NonFiniteLoss(f"non-finite loss at epoch {step // steps_per_epoch + 1}, step "
                            f"{step % steps_per_epoch + 1} of {steps_per_epoch} (global step {step + 1}): "
                            f"{values}; stopped, {kept}; {hint}")


def channels(base, width):
    """Channel count after the --width multiplier (at least 1)."""
    return max(1, int(round(base * width)))


def log_steps(window, last_step, steps_per_epoch, out, names, hint):
    """--log-every: one line of the means of the last steps' figures (a list of (k,) tensors, their
    names in `names`, the first two losses), stopping first at a non-finite loss (check_finite)."""
    window = torch.stack(window).cpu()
    check_finite(window, last_step - len(window), steps_per_epoch, out, names[:2], hint)
    print(f"  step {last_step:6d} | " + " | ".join(f"{k} {v:.3f}" for k, v in
                                                   zip(names, window.mean(0).tolist())))


def line_points(za, zb, steps):
    """Interpolation: (k, d) start and end points -> (k * steps, d), `steps` evenly spaced points
    on each straight line from za[i] to zb[i], both ends included."""
    t = torch.linspace(0, 1, steps).view(1, -1, 1)
    return ((1 - t) * za.unsqueeze(1) + t * zb.unsqueeze(1)).flatten(0, 1)


def shown_epochs(n, most):
    """Indices of at most `most` of n epochs, evenly spread, the first and last always."""
    return sorted(set(np.linspace(0, n - 1, min(most, n)).round().astype(int).tolist()))


def count_params(model):
    return sum(p.numel() for p in model.parameters())

def pick_device(name="auto"):
    """'auto' takes cuda, then mps (Apple GPUs, which the study used), then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available here; use --device cpu")
    return torch.device(name)


# ==== Speed check (--bench): our loop against the pytorch/examples tutorial loop =============
BENCH_ROUNDS = 3  # epochs each loop is timed for; the fastest counts (other jobs only ever slow one)


def _sync(device):
    """Wait for the work queued on a GPU (a CPU runs each op before returning)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_loops(loops, steps, device, rounds=BENCH_ROUNDS, clock=time.perf_counter):
    """Time training loops against each other, one step of each in turn, so that a machine shared
    with other jobs slows them alike. loops: {name: (batches, step)}; batches(r) iterates over
    the batches of round r, step(x) runs one training step on batch x. First one untimed step
    each (oneDNN and cuDNN build their kernels on first use); then `rounds` epochs of `steps`
    steps, each step timed from fetching its batch (where a DataLoader and a tensor on the device
    differ) to the end of its work on the device. Returns {name: [seconds of each round]}."""
    for batches, step in loops.values():
        step(next(iter(batches(0))))
    times = {name: [] for name in loops}
    for r in range(rounds):
        sources = {name: iter(batches(r)) for name, (batches, _) in loops.items()}
        seconds = dict.fromkeys(loops, 0.0)
        for _ in range(steps):
            for name, (_, step) in loops.items():
                t0 = clock()
                step(next(sources[name]))
                _sync(device)
                seconds[name] += clock() - t0
        for name in loops:
            times[name].append(seconds[name])
    return times


def tutorial_vae_step(model, optimizer, x, device, loss_fn):
    """One step of the pytorch/examples VAE loop, as written there: the batch (from a DataLoader
    over a float TensorDataset) moved to the device, eps from randn_like, .item() every step (a
    device sync). loss_fn is vae.vae_loss, so that only the loop differs from ours."""
    x = x.to(device)
    optimizer.zero_grad()
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    loss, _, _ = loss_fn(model.decode(z), x, mu, logvar)
    loss.backward()
    optimizer.step()
    return loss.item()


def tutorial_gan_step(G, D, opt_g, opt_d, real, device):
    """One step of the pytorch/examples DCGAN loop, as written there (.item() four times a step,
    D's weight gradients computed in the G step too), with our models, optimisers and logit loss."""
    criterion = torch.nn.BCEWithLogitsLoss()
    real = real.to(device)
    b = real.size(0)
    D.zero_grad()
    label = torch.full((b,), 1.0, device=device)
    output = D(real)
    err_d_real = criterion(output, label)
    err_d_real.backward()
    d_x = torch.sigmoid(output).mean().item()
    fake = G(torch.randn(b, G.z_dim, device=device))
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


def bench_step(model_file, cfg, device, tutorial):
    """-> step(x): one training step of a model file on batch x, from the init for cfg: ours (its
    train_step, or dcgan_remedies.py's select_step) or with tutorial the matching tutorial_*_step."""
    if hasattr(model_file, "vae_loss"):                        # vae.py
        model = model_file.build_model(cfg, device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        if tutorial:
            return lambda x: tutorial_vae_step(model, opt, x, device, model_file.vae_loss)
        noise, net = torch.Generator().manual_seed(noise_seed(cfg["seed"], "vae_eps")), mixed_precision(model, cfg)
        return lambda x: model_file.train_step(net, opt, x, torch.randn(
            x.shape[0], model.latent_dim, generator=noise).to(device), cfg["beta"])
    G, D = model_file.build_models(cfg, device)                # dcgan.py, dcgan_remedies.py
    opt_g, opt_d = model_file.optimisers(G, D, cfg)
    if tutorial:
        return lambda x: tutorial_gan_step(G, D, opt_g, opt_d, x, device)
    noise = torch.Generator().manual_seed(noise_seed(cfg["seed"], "gan_z"))
    select = getattr(model_file, "select_step", lambda cfg, noise, epoch, device: model_file.train_step)
    step, G_, D_ = select(cfg, noise, 0, device), mixed_precision(G, cfg), mixed_precision(D, cfg)
    return lambda x: step(G_, D_, opt_g, opt_d, memory_format(x, cfg),
                          torch.randn(x.shape[0], G.z_dim, generator=noise).to(device))


def bench(cfg, device, model_file):
    """The --bench of vae.py and dcgan.py, one harness for both: an epoch of our loop (the subset
    as one uint8 tensor on the device, Batches) against the pytorch/examples tutorial loop (a
    DataLoader with its defaults over a float TensorDataset, NCHW models), the same models from
    the same init, batch size and drop_last; with --channels-last also ours without it.
    bench_step gives each loop's step for model_file. --precision bf16 runs our loops under
    bfloat16 autocast; the tutorial's stays float32, as the tutorial is. Prints the figures,
    writes OUT/bench.json (seconds: the fastest of BENCH_ROUNDS epochs) and returns its dict."""
    train_x, train_y = data.load_subset(cfg)
    drop_last = not hasattr(model_file, "vae_loss")           # the GAN drops a partial last batch
    make_step = lambda cfg, device, tutorial: bench_step(model_file, cfg, device, tutorial)
    ours = Batches(train_x, train_y, cfg["batch_size"], device=device, seed=cfg["seed"], shuffle=True,
                        drop_last=drop_last)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.to_float(train_x)),
                                         batch_size=cfg["batch_size"], shuffle=True, drop_last=drop_last)
    nchw = dict(cfg, channels_last=False)
    loops = {"ours": (lambda r: (x for x, _ in ours.epoch(r)), make_step(cfg, device, False)),
             "tutorial": (lambda r: (x for (x,) in loader), make_step(nchw, device, True))}
    if cfg["channels_last"]:
        loops["ours_nchw"] = (loops["ours"][0], make_step(nchw, device, False))
    times = time_loops(loops, len(ours), device)
    best = {name: min(t) for name, t in times.items()}
    res = dict(subset=cfg["subset"], batch_size=cfg["batch_size"], steps=len(ours), rounds=BENCH_ROUNDS,
               device=str(device), threads=torch.get_num_threads(), channels_last=cfg["channels_last"],
               precision=cfg.get("precision", "fp32"),
               torch=str(torch.__version__), ours_seconds=best["ours"], tutorial_seconds=best["tutorial"],
               speedup=best["tutorial"] / best["ours"], ours_nchw_seconds=best.get("ours_nchw"),
               all_seconds=times)
    extra = f" | ours without channels_last {best['ours_nchw']:.2f} s" if "ours_nchw" in best else ""
    print(f"one epoch of {len(ours)} steps: ours ({res['precision']}) {best['ours']:.2f} s | DataLoader tutorial "
          f"{best['tutorial']:.2f} s | tutorial / ours = {res['speedup']:.2f}x (fastest of {BENCH_ROUNDS} "
          f"epochs, steps taken in turn){extra}")
    data.write_json(os.path.join(cfg["out"], "bench.json"), res)
    return res


# ==== What a training script does instead of training: --bench, --export, --weights ===========
def other_mode(cfg, device, model_file):
    """--bench (bench), --export N PATH (export: from OUT/checkpoint.pt, or from the --weights
    file), or --weights alone: the file's pictures into --out, without training or the dataset."""
    import metrics   # here, not at the top: metrics.py imports this file
    if cfg["bench"]:
        return bench(cfg, device, model_file)
    script, ckpt = cfg["script"], read_weights(cfg["weights"], cfg["script"]) if cfg["weights"] else None
    sets = {"samples": lambda c, n: model_file.sample_images(c, n, metrics.EVAL_SEED, device)}
    if hasattr(model_file, "reconstruct"):   # the VAEs: the reference draw of n test images
        sets["reconstructions"] = lambda c, n: model_file.reconstruct(model_file.load_trained(
            c, device), metrics.reference_images(cfg["data_dir"], "test", n,
                                                 download=not cfg["no_download"]))
    if cfg["export"]:
        return export(cfg, script, sets, ckpt)
    model_file.pictures(dict(ckpt["config"], out=cfg["out"], data_dir=cfg["data_dir"]), ckpt, device)
    print(f"pictures of {cfg['weights']} ({ckpt['config'].get('epochs')} epochs, seed "
          f"{ckpt['config']['seed']}) in {cfg['out']}")
    return ckpt


WEIGHT_KEYS_DROPPED = ("opt_g", "opt_d", "optimizer", "opt_vae", "torch_rng", "rng")  # resume-only


def save_weights(checkpoint, dest, data_dir="data"):
    """A finished run's checkpoint.pt as a weights file (weights/): its models in float32, config,
    history and provenance (the commit that trained it, from its metrics.json, and the md5 of the
    data archive), not the optimiser states, which only --resume needs. Used as
    python -c "import runs; runs.save_weights('runs/vae/checkpoint.pt', 'weights/vae.pt')" """
    ckpt = load_checkpoint(checkpoint, "train the run first")
    with open(os.path.join(os.path.dirname(checkpoint), "metrics.json")) as f:
        finished = json.load(f)          # a run's metrics.json: it finished, and by which commit
    prov = dict(ckpt.get("provenance") or {}, commit=finished.get("commit"))
    prov.setdefault("data_md5", data_md5(data_dir))
    floats = lambda sd: {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    atomic_torch_save({k: floats(v) if k in ("G", "D", "G_ema", "model") else v
                       for k, v in ckpt.items() if k not in WEIGHT_KEYS_DROPPED} | {"provenance": prov},
                      dest)


def read_weights(path, script):
    """A weights file for `script`, or one line saying why not (missing, not a torch file, not
    weights_only-safe, or another model's)."""
    ckpt = load_checkpoint(path, "pass a weights file of this project, e.g. weights/dcgan.pt")
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError(f"--weights: {path} is not a weights file of this project (no config in it)")
    if ckpt.get("script") != script:
        raise ValueError(f"--weights: {path} holds a model of {ckpt.get('script')}, not of {script}; "
                         "pass it to that script")
    return ckpt


# ==== Provenance: is a finished run the one asked for, and which code made it =================
def config_differences(saved, want, defaults=None, ignore=()):
    """['epochs 1 -> 20', 'foo 3 -> (no such setting)']: the keys (all but `ignore`) in which a
    saved config and config `want` differ, both ways. A key missing from an older saved config
    means what `defaults` says (a setting added since: the older code ran as its default does);
    a saved key that `want` lacks differs (an edited file, or a setting since removed)."""
    defaults = defaults or {}
    get = lambda config, k: config.get(k, defaults.get(k, "(no such setting)"))
    return [f"{k} {get(saved, k)} -> {get(want, k)}" for k in dict.fromkeys([*want, *saved])
            if k not in ignore and get(saved, k) != get(want, k)]


def git_commit(folder=None):
    """The commit checked out where this code lives (folder: default runs.py's own), 40 hex
    digits; None outside a git checkout or where git is not installed. Uncommitted edits are not
    in it."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=30, cwd=folder or os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):   # no git on PATH, or it hung
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


HERE = os.path.dirname(os.path.abspath(__file__))
NOT_A_SCRIPT = ("runs.py", "data.py", "metrics.py", "compare.py")   # never the script of a run


def provenance(cfg, script=None):
    """What made a run, saved in its checkpoint and metrics.json: the script (e.g. "vae.py"; by
    default the outermost project file on the call stack that is not NOT_A_SCRIPT or a test), a
    sha256 of the code it runs (code_files: it and the project modules it imports, never docs),
    whether those files are as committed (clean; None without git), the commit, and the md5 of
    the data archive (None for an unpacked folder). compare.py --reuse compares these with today's
    (docs/protocol.md, 'What --reuse compares')."""
    script = script or cfg.get("script") or _calling_script()
    files = code_files(script)
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *files],
                               capture_output=True, text=True, timeout=30, cwd=HERE)
        clean = (not dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):   # no git on PATH, or it hung
        clean = None
    return dict(commit=git_commit(), clean=clean, code_sha256=code_sha256(files), code_files=files,
                data_md5=data_md5(cfg.get("data_dir", "data")), script=script)


_RUN_PROVENANCE = {}   # (out, script, data_dir) -> provenance, taken as a training run begins


def run_provenance(cfg):
    """provenance(cfg), taken once per run and process: the code this process loaded when the
    run began, not whatever the files on disk say at a later epoch (Python does not reload an
    edited module, so a later hash could name code that never ran)."""
    key = (os.path.abspath(cfg.get("out", "")), cfg.get("script"), cfg.get("data_dir", "data"))
    if key not in _RUN_PROVENANCE:
        _RUN_PROVENANCE[key] = provenance(cfg)
    return _RUN_PROVENANCE[key]


def _calling_script():
    frames, f = [], sys._getframe(1)
    while f is not None:
        frames.append(f.f_code.co_filename)
        f = f.f_back
    mine = [os.path.basename(p) for p in reversed(frames) if os.path.dirname(os.path.abspath(p)) == HERE]
    ours = [p for p in mine if p not in NOT_A_SCRIPT and not p.startswith("test")]
    return ours[0] if ours else os.path.basename(getattr(sys.modules["__main__"], "__file__", "?"))


def code_files(script):
    """script and every project module it imports, directly or not (import statements read with
    ast, also those inside functions), sorted: the files whose bytes decide what a run computes."""
    todo, seen = [script], set()
    while todo:
        name = todo.pop()
        path = os.path.join(HERE, name)
        if name in seen or not os.path.isfile(path):
            continue
        seen.add(name)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [a.name.split(".")[0] + ".py" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo.append(node.module.split(".")[0] + ".py")
    return sorted(seen)


def code_sha256(files):
    """sha256 over each file's name and bytes: equal only for the very same code."""
    h = hashlib.sha256()
    for name in files:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def data_md5(data_dir):
    """md5 of the CIFAR-10 archive in data_dir; None for an unpacked folder or no data."""
    found = data.find_archive(data_dir)
    return data.archive_md5_note(found[1])[0] if found and os.path.isfile(found[1]) else None


# ==== --export: a finished run's images, for other tools ======================================
EXPORT_MAX = 50_000   # images per --export: the literature's largest N (FID-50k); 150 MB of uint8


def check_export_count(text, recon):
    """--export's N as an int: 1 to EXPORT_MAX; for reconstructions a multiple of 10 up to 10,000
    (they are of the reference draw of N test images, N/10 per class, as compare.py scores them)."""
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--export N PATH: N must be a whole number, got {text!r}") from None
    top = 10_000 if recon else EXPORT_MAX
    if not 1 <= n <= top or (recon and n % 10):
        raise ValueError(f"--export N must be >= 1 and at most {top:,}" + (", a multiple of 10, "
                         "with --export-recon" if recon else "") + f" (the limit), got {n}")
    return n


def check_export_path(path):
    """A PNG folder that already holds .png files is refused, never mixed into: two exports into
    one folder would leave two sets that `metrics.py score` reads as one."""
    if path.endswith("/") and os.path.isdir(path):
        old = [f for f in os.listdir(path) if f.lower().endswith(".png")]
        if old:
            raise ValueError(f"--export: {path} already holds {len(old)} .png files; name an empty "
                             "or new folder (or delete them), so that no two sets mix")


def export_images(images, path):
    """uint8 (N, 3, H, W) -> PATH: an .npz with key "images" in NHWC (the layout torch-fidelity,
    clean-fid and `python metrics.py score` read), or, when PATH ends in /, PATH/00000.png, ...
    Each file is written atomically."""
    if path.endswith("/"):
        for i, img in enumerate(images):
            data.save_image(img, os.path.join(path, f"{i:05d}.png"))
    else:
        data.write_npz(path, images=images.permute(0, 2, 3, 1).contiguous().numpy())


def export(cfg, script, image_sets, ckpt=None):
    """--export N PATH: the images of the run in cfg["out"], written by export_images.
    image_sets: {"samples": fn(ckpt, n), "reconstructions": fn(ckpt, n)} of the model file; a
    checkpoint that records another script is refused (older ones record none)."""
    path = os.path.join(cfg["out"], "checkpoint.pt")
    check_export_path(cfg["export"][1])
    if ckpt is not None:    # --weights FILE: the shipped model's images (runs.other_mode)
        path = cfg["weights"]
    ckpt = ckpt or check_checkpoint(load_checkpoint(path, "train the run first (same --out), then --export"), path)
    if ckpt.get("script", script) != script:
        raise ValueError(f"--export: {path} was made by {ckpt['script']}, not {script}; run that script")
    what = "reconstructions" if cfg["export_recon"] else "samples"
    if what not in image_sets:
        raise ValueError(f"--export-recon: {script} has no encoder, so no reconstructions")
    n, out = cfg["export"]
    with checkpoint_errors(path):
        images = image_sets[what](ckpt, n)
    export_images(images, out)
    print(f"wrote {n} {what} of {path} (epoch {ckpt['epoch']}) to {out}")
    return images


# ==== Checkpoints of the wrong shape: one line, never a KeyError ===============================
def check_checkpoint(ckpt, path):
    """A checkpoint weights_only read back is any dict, list or tensor a file held: -> ckpt when
    it is a dict with a config dict and a whole-number epoch, else one line naming the file."""
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict)
            and isinstance(ckpt.get("epoch"), int)):
        got = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a checkpoint of this project (no config dict and epoch; it "
                         f"holds {got}); train the run again (delete the file)")
    return ckpt


@contextlib.contextmanager
def checkpoint_errors(path):
    """Around code that reads a checkpoint's weights: a missing key or a weight of another shape
    (a hand-made or foreign file) becomes one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "state_dict" not in str(e):
            raise                                    # out of memory and the like: not the file's fault
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a checkpoint of this model ({type(e).__name__}: {first}); "
                         "train the run again (delete the file)") from None
