#!/usr/bin/env bash
# reproduce.sh -- the study's full experiment from a fresh clone, in one command.
#
#   ./reproduce.sh                     # VAE 20 epochs + DCGAN 40 epochs on the 10k subset, seed 42
#   ./reproduce.sh --variants          # also cyclical-beta and beta-VAEs, the VAE-GAN, each DCGAN stabiliser
#   ./reproduce.sh --variants dcgan_mbd --reuse   # one variant more, finished runs reused
#   ./reproduce.sh --seeds 42 43 44    # every configuration per seed, figures as mean +- std
#   ./reproduce.sh --quick             # the whole pipeline at toy size (a smoke check)
#   ./reproduce.sh --reuse --fid-samples 10000   # FID at the literature's N (10k vs the test set)
#   ./reproduce.sh --variants vaegan vae_beta4 vae_beta025 --reuse   # the VAE's next steps
#   ./reproduce.sh --precision bf16    # bfloat16 training: faster on a GPU or a CPU with avx512_bf16
#   ./reproduce.sh --variants --seeds 42 43 44 --jobs 4   # the grid, 4 runs at a time (a GPU, many cores)
#
# Any other flags go to compare.py (python compare.py --help). Environment:
#   DATA_DIR  folder with cifar-10-python.tar.gz (default: data; downloaded there if missing)
#   FID_NET   TorchScript Inception-v3 for FID/KID/IS/precision/recall (default: data/fid_inception.pt).
#             Nothing is fetched silently: without the file those columns read "not measured".
#
# Time on the 2-core CPUs here (they differ by up to 2x): 15 to 30 minutes of training (VAE 1.5-3,
# DCGAN 14-26.5) and 8 to 11 more for the Inception features of 1,000 images per set. Measured
# from a fresh clone: 28m31s on a CPU with avx512_bf16 (22m10s with --precision bf16, 19m55s with
# --fid-precision bf16 too), 43m21s on a slower one (docs/results.md, "Whole runs in bf16").
set -euo pipefail
cd "$(dirname "$0")"
DATA_DIR=${DATA_DIR:-data}
FID_NET=${FID_NET:-data/fid_inception.pt}
STEP="start"
trap 'echo "reproduce.sh: FAILED at step: $STEP (see the message above)" >&2' ERR
start=$(date +%s)

STEP="check dependencies"
echo "== $STEP"
if ! python -c "import torch, numpy" 2>/dev/null; then
  echo "reproduce.sh: torch and numpy are needed: run  pip install -r requirements.txt" >&2
  exit 1
fi
python -c "import torch, numpy; print(f'torch {torch.__version__}, numpy {numpy.__version__}')"

STEP="get and check the data"
echo "== $STEP"
python data.py --data-dir "$DATA_DIR"

STEP="FID network"
echo "== $STEP"
fid_args=()
if [ -f "$FID_NET" ]; then
  echo "using $FID_NET"
  fid_args=(--fid-net "$FID_NET")
else
  echo "no FID network at $FID_NET: FID, KID, precision and recall will read 'not measured'."
  echo "To include them, fetch NVIDIA's inception-2015-12-05.pt (see README.md, 'FID') to $FID_NET."
fi

STEP="train and compare both models (compare.py)"
echo "== $STEP"
python compare.py --data-dir "$DATA_DIR" "${fid_args[@]}" "$@"

STEP="done"
secs=$(( $(date +%s) - start ))
echo "== results: runs/compare/results.md and runs/compare/results.json"
echo "== total time: $((secs / 60))m$((secs % 60))s"
