"""
data.py -- pixels in and pictures out: CIFAR-10 from the raw archives, the stratified subset,
and PNG/PPM images, captioned grids and line charts, every file written atomically.

    python data.py                      # looks in data/, downloads the archive if it is missing
    python data.py --data-dir DIR --no-download

It prints images per class per split, says whether the archive is the official one (md5), and
writes a grid of examples to runs/data_examples.png (docs/protocol.md, 'The data': what it reads).
Left out on purpose: torchvision, PIL and matplotlib (the PNG codec, the bitmap font and the line
chart below are a few dozen lines each).
"""
import hashlib
import io
import json
import os
import pickle
import stat
import struct
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# Settings: the official dataset's facts (https://www.cs.toronto.edu/~kriz/cifar.html)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# md5 of the official archives; any other file still loads, with a warning
OFFICIAL_MD5 = {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
                "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
TEST_BATCHES = ["test_batch"]
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
PIXELS = 3 * 32 * 32  # 3072 bytes per image


class DataError(Exception):
    """A problem with the data or the inputs, explained in one line for the user."""


# ----------------------------------------------------------------------------------------------
# Small file helpers (used by every script): nothing is ever half-written

def atomic_write_bytes(path, data):
    """Write via a temp file beside `path`, fsync and rename: a kill never leaves a torn file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a new file's usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_npz(path, **arrays):   # np.savez into memory, then one atomic write: never torn
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def format_seconds(s):
    """1234.5 -> '20m34s': short enough for a progress line."""
    s = int(round(max(s, 0.0)))
    if s < 3600:
        return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ----------------------------------------------------------------------------------------------
# Reading the archives

class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the names the official pickles use: os.system & co. are refused, never run."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: the official CIFAR-10 files "
                            "never contain it, so this file is not (or no longer) the official one")
        if name == "_reconstruct":  # numpy 2 moved numpy.core to numpy._core
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def _load_py_batch(raw, where):
    """One python-release batch (bytes of a pickle) -> (uint8 (n, 3072), int64 (n,))."""
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except Exception as e:  # truncated or garbage pickle: say so, not a raw traceback
        raise DataError(f"{where}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") \
            from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{where}: expected a dict with b'data' and b'labels'")
    x, y = d[b"data"], np.asarray(d[b"labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != PIXELS:
        raise DataError(f"{where}: b'data' should be a uint8 array (n, {PIXELS}), "
                        f"got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{where}: {x.shape[0]} images but {y.size} labels")
    return x, y.astype(np.int64)


def _load_bin_batch(raw, where):
    """One binary-release batch: records of [label byte][3072 pixel bytes]."""
    if len(raw) == 0 or len(raw) % (PIXELS + 1):
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of "
                        f"{PIXELS + 1}-byte records (truncated?)")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, PIXELS + 1)
    return rec[:, 1:], rec[:, 0].astype(np.int64)


def file_md5(path, chunk=1 << 22):
    """md5 of a file's bytes, read in 4 MiB blocks (archives, checkpoints, network files)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_md5_seen = {}  # (path, size, mtime) -> md5: each file is hashed and warned about once


def archive_md5_note(path):
    """Return (md5, is_official); print a one-line warning once per file if it is not official."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    first = key not in _md5_seen
    md5 = _md5_seen.setdefault(key, file_md5(path) if first else None)
    official = OFFICIAL_MD5.get(os.path.basename(path)) == md5
    if not official and first:
        print(f"warning: {path} has md5 {md5}, not the official "
              f"{OFFICIAL_MD5.get(os.path.basename(path))}; it loads, but figures may not be "
              "comparable with ones measured on the official archive", file=sys.stderr)
    return md5, official


def find_archive(root):
    """The first CIFAR-10 source in `root`, as (kind, path), or None."""
    for kind, name in (("py", "cifar-10-python.tar.gz"), ("bin", "cifar-10-binary.tar.gz"),
                       ("py", PY_DIR), ("bin", BIN_DIR)):
        p = os.path.join(root, name)
        if os.path.isfile(p) if name.endswith(".gz") else os.path.isdir(p):
            return kind, p
    return None


def download_archive(root):
    """Fetch the official python release into root, via a temp file, checking the md5."""
    dest = os.path.join(root, "cifar-10-python.tar.gz")
    os.makedirs(root, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix="cifar-10-python.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(URL, timeout=30) as r:
            total, done, t0 = int(r.headers.get("Content-Length") or 0), 0, time.time()
            while block := r.read(1 << 20):
                f.write(block)
                done += len(block)
                rate = done / max(time.time() - t0, 1e-9)
                eta = format_seconds((total - done) / rate) if total else "?"
                print(f"\rdownloading {URL}: {done / 2**20:.0f}/{total / 2**20:.0f} MiB, ETA {eta}",
                      end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        got = file_md5(tmp)
        if got != OFFICIAL_MD5["cifar-10-python.tar.gz"]:
            raise DataError(f"downloaded file has md5 {got}, expected "
                            f"{OFFICIAL_MD5['cifar-10-python.tar.gz']}; try again")
        os.replace(tmp, dest)
        return dest
    except (OSError, ValueError) as e:  # URLError is an OSError: no network, DNS, refused, ...
        raise DataError(f"could not download {URL} ({e}); put cifar-10-python.tar.gz into "
                        f"{os.path.abspath(root)}/ by hand and run again") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_decoded = {}  # (path, size, mtime) -> both splits, so the train and test loads decompress once


def load_cifar10(root="data", train=True, download=True):
    """-> uint8 images (N, 3, 32, 32), int64 labels, archive order; N: 50,000 train, 10,000 test."""
    found = find_archive(root)
    if found is None:
        if not download:
            raise DataError(f"no CIFAR-10 in {os.path.abspath(root)}/: put cifar-10-python.tar.gz "
                            f"(from {URL}) there, or allow the download")
        found = ("py", download_archive(root))
    kind, path = found
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)  # a changed file is never stale
    if key not in _decoded:
        _decoded.clear()  # keep at most one dataset in memory
        _decoded[key] = _read_splits(kind, path)
    x, y = _decoded[key][0 if train else 1]
    return torch.from_numpy(x), torch.from_numpy(y)


def _read_splits(kind, path):
    """Decode both splits of one source -> ((train_x, train_y), (test_x, test_y)) as numpy."""
    top, ext, decode = ((PY_DIR, "", _load_py_batch) if kind == "py"
                        else (BIN_DIR, ".bin", _load_bin_batch))
    members = [f"{top}/{n}{ext}" for n in TRAIN_BATCHES + TEST_BATCHES]
    raws = {}
    if os.path.isdir(path):
        for m in members:
            f = os.path.join(os.path.dirname(path), m)
            if not os.path.isfile(f):
                raise DataError(f"{path}: missing {os.path.basename(f)}")
            with open(f, "rb") as fh:
                raws[m] = fh.read()
    else:
        archive_md5_note(path)
        try:
            with tarfile.open(path, "r:gz") as tf:
                for member in tf:  # one pass over the gzip stream, in archive order
                    if member.name in members:
                        raws[member.name] = tf.extractfile(member).read()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e}); "
                            "delete it and download or copy it again") from None
        missing = [m for m in members if m not in raws]
        if missing:
            raise DataError(f"{path}: not a CIFAR-10 archive, missing member {missing[0]}")
    splits = []
    for part in (members[:len(TRAIN_BATCHES)], members[len(TRAIN_BATCHES):]):
        xs, ys = zip(*(decode(raws[m], f"{path}:{m}") for m in part))
        x, y = np.concatenate(xs), np.concatenate(ys)
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{path}: labels must lie in 0..9, found {y.min()}..{y.max()}")
        splits.append((x.reshape(-1, 3, 32, 32), y))
    return splits


# ----------------------------------------------------------------------------------------------
# Subsets and batches

def stratified_indices(labels, n, seed=42):
    """n/10 indices per class drawn by a seeded permutation, sorted (the study: 10,000, seed 42)."""
    labels = torch.as_tensor(labels)
    if n % 10 or n <= 0:
        raise ValueError(f"subset size must be a positive multiple of 10 (one tenth per class), "
                         f"not {n}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < n // 10:
            raise ValueError(f"subset of {n} needs {n // 10} images of class {c}, only {len(idx)} "
                             "exist")
        picks.append(idx[torch.randperm(len(idx), generator=g)[: n // 10]])
    return torch.cat(picks).sort().values


def to_float(x):
    """uint8 [0, 255] -> float32 [-1, 1], the range of a Tanh output."""
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x):
    """float [-1, 1] -> uint8 [0, 255], clamped and rounded."""
    return ((x.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def load_subset(cfg):
    """The run's training images: cfg["subset"] of them, stratified, drawn with cfg["seed"]."""
    images, labels = load_cifar10(cfg["data_dir"], train=True, download=not cfg["no_download"])
    if cfg["subset"] > len(images):
        raise DataError(f"--subset {cfg['subset']} is larger than the {len(images)} training "
                        "images")
    idx = stratified_indices(labels, cfg["subset"], seed=cfg["seed"])
    return images[idx], labels[idx]


# ----------------------------------------------------------------------------------------------
# Images out: PNG (zlib + struct) and binary PPM

def encode_png(img):
    """uint8 (3, H, W) -> PNG bytes: 8-bit RGB, no interlace, filter 0 on every row."""
    c, h, w = img.shape
    rows = img.permute(1, 2, 0).contiguous().numpy().reshape(h, w * 3)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0
    def chunk(kind, payload):  # length, type, data, CRC over type + data
        return struct.pack(">I", len(payload)) + kind + payload + \
            struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 = RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + \
        chunk(b"IEND", b"")


PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> bytes per pixel at bit depth 8
PNG_MAX_PIXELS = 1 << 24   # 16.8M pixels (4096 x 4096): a larger header is refused before any
                           # inflating, so a decode holds at most ~300 MB whatever the file claims
PNG_MAX_FILE = 1 << 28     # 256 MiB: no PNG of at most PNG_MAX_PIXELS needs more bytes than that


def regular_file(path, what="file"):
    """Refuse anything but a regular file (a FIFO blocks reads, a device never ends) -> its size."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{path}: not a readable {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a readable {what}: not a regular file (a folder, FIFO or "
                         "device); name a file")
    return st.st_size


def read_png_file(path):
    """decode_png of a regular file of at most PNG_MAX_FILE bytes."""
    if regular_file(path, "PNG file") > PNG_MAX_FILE:
        raise ValueError(f"{path}: over {PNG_MAX_FILE >> 20} MiB, more than a PNG of "
                         f"{PNG_MAX_PIXELS:,} pixels needs")
    with open(path, "rb") as fh:
        return decode_png(fh.read(), path)


def decode_png(raw, name="PNG"):
    """PNG bytes -> uint8 (3, H, W), for images made elsewhere (metrics.py score): 8-bit grey (to
    R, G and B), RGB, palette, grey + alpha or RGBA (alpha dropped), every row filter (PNG spec 1.2,
    sec. 6). Anything else, a bad CRC, truncated data, 0 x 0 or over PNG_MAX_PIXELS: ValueError."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{name}: not a PNG file")
    pos, head, palette, idat = 8, None, None, []
    while pos + 12 <= len(raw):                     # chunk: length, type, data, CRC(type + data)
        n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body, crc = raw[pos + 8:pos + 8 + n], raw[pos + 8 + n:pos + 12 + n]
        if len(crc) < 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ValueError(f"{name}: truncated or corrupt PNG ({kind.decode('latin-1')} chunk)")
        pos += 12 + n
        if kind == b"IHDR" and n == 13:
            head = struct.unpack(">IIBBBBB", body)   # width, height, depth, colour, -, -, interlace
        elif kind == b"PLTE":
            palette = np.frombuffer(body[:n - n % 3], np.uint8).reshape(-1, 3)   # (colours, 3)
        elif kind == b"IDAT":                       # the zlib stream, cut into chunks
            idat.append(body)
        elif kind == b"IEND":
            break
    if head is None or not idat or (head[3] == 3 and palette is None):
        raise ValueError(f"{name}: truncated PNG (no IHDR, IDAT or, for a palette, PLTE chunk)")
    w, h, depth, ctype, _, _, interlace = head
    if depth != 8 or interlace or ctype not in PNG_SAMPLES:
        raise ValueError(f"{name}: a {depth}-bit PNG of colour type {ctype}"
                         f"{', interlaced' if interlace else ''}: only 8-bit, non-interlaced "
                         "grey, RGB, palette or RGBA PNGs are read")
    if not (1 <= w and 1 <= h and w * h <= PNG_MAX_PIXELS):
        raise ValueError(f"{name}: {w} x {h} pixels; images of 1 to {PNG_MAX_PIXELS:,} pixels are "
                         "read")
    bpp = PNG_SAMPLES[ctype]
    rows = _inflate(idat, h * (w * bpp + 1), name).reshape(h, w * bpp + 1)
    filters, lines = rows[:, 0], rows[:, 1:]
    if filters.max() > 4:
        r = int(np.argmax(filters > 4))
        raise ValueError(f"{name}: row {r} has filter type {filters[r]}; PNG defines 0 to 4")
    px = _unfilter(filters, lines.reshape(h, w, bpp))                    # (H, W, bpp)
    if ctype == 3:
        if px.max() >= len(palette):
            raise ValueError(f"{name}: a pixel indexes past the palette's {len(palette)} colours")
        px = palette[px[..., 0]]                    # (H, W, 3)
    rgb = px[..., :3] if ctype in (2, 3, 6) else px[..., :1].repeat(3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _inflate(chunks, size, name):
    """The IDAT zlib stream -> `size` bytes, inflated with a bound: a bomb stops at size + 1."""
    z, out = zlib.decompressobj(), bytearray()
    try:
        for chunk in chunks:
            while chunk and len(out) <= size:
                out += z.decompress(chunk, size + 1 - len(out))
                chunk = z.unconsumed_tail
    except zlib.error:
        raise ValueError(f"{name}: truncated or corrupt PNG (image data)") from None
    if len(out) != size:
        more = "+" * (len(out) > size)
        raise ValueError(f"{name}: truncated or corrupt PNG ({len(out):,}{more} bytes of image "
                         f"data where its header needs {size:,})")
    return np.frombuffer(bytes(out), np.uint8)


def _unfilter(filters, lines):
    """Undo the row filters: lines (H, W, bpp) uint8 as stored, filters (H,) -> the pixels. None,
    Sub and Up: a whole row per numpy step. Average and Paeth need the decoded pixels left and
    above, so pixel (r, j) is decoded with its anti-diagonal d = r + j: h + w - 1 numpy steps."""
    h, w, bpp = lines.shape
    px = np.zeros((h + 1, w + 1, bpp), np.uint8)    # row and column 0: the zeros outside the image
    if filters.max() <= 2:
        for r in range(h):
            f, line = filters[r], lines[r]
            px[r + 1, 1:] = (line if f == 0 else np.cumsum(line, axis=0, dtype=np.uint8) if f == 1
                             else line + px[r, 1:])   # None; Sub: running sum mod 256; Up: + above
        return px[1:, 1:]
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h, d + 1))                   # the rows on diagonal d
        j = d - r
        a, b, c = (px[r + 1, j].astype(np.int16), px[r, j + 1].astype(np.int16),
                   px[r, j].astype(np.int16))                            # left, above, upper left
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)          # |p - a|, |p - b|, |p - c|
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        f = filters[r][:, None]
        pred = np.choose(f, [0 * a, a, b, (a + b) >> 1, paeth])          # by the row's filter type
        px[r + 1, j + 1] = (lines[r, j] + pred) & 255
    return px[1:, 1:]


def save_image(img, path):
    """uint8 (3, H, W) -> .png or .ppm (P6), chosen by the extension; written atomically."""
    img = torch.as_tensor(img).cpu()
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"save_image wants uint8 (3, H, W), got {img.dtype} {tuple(img.shape)}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".png":
        data = encode_png(img)
    elif ext == ".ppm":
        h, w = img.shape[1:]
        data = f"P6\n{w} {h}\n255\n".encode() + img.permute(1, 2, 0).contiguous().numpy().tobytes()
    else:
        raise ValueError(f"{path}: images are written as .png or .ppm")
    atomic_write_bytes(path, data)


def make_grid(images, nrow=8, padding=2, pad_value=255):
    """(N, 3, H, W) float in [-1, 1] or uint8 -> one uint8 (3, H', W') picture, nrow per row."""
    x = images.detach().cpu()
    x = x if x.dtype == torch.uint8 else to_uint8(x)
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = torch.full((3, rows * (h + padding) + padding, nrow * (w + padding) + padding),
                      pad_value, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, padding + r * (h + padding):][:, :h, padding + k * (w + padding):][:, :, :w] = x[i]
    return grid


def save_grid(images, path, nrow=8, padding=2, caption=None, row_labels=None):
    """make_grid, optional row labels (left) and caption (above), save_image; the grid is exact."""
    grid = make_grid(images, nrow=nrow, padding=padding)
    if row_labels:
        grid = label_rows(grid, row_labels, tile=images.shape[2] + padding, padding=padding)
    save_image(add_caption(grid, caption) if caption else grid, path)


# ----------------------------------------------------------------------------------------------
# Captions above a picture (saying what its rows and columns are), labels beside a grid's rows

INK, PAPER = (0, 0, 0), 255


def wrap_text(text, chars):
    """Split text at spaces into lines of at most `chars` characters (a longer word is cut)."""
    lines = [""]
    for word in text.split():
        while len(word) > chars:
            lines += [word[:chars]]
            word = word[chars:]
        lines[-1:] = ([lines[-1] + " " + word] if lines[-1] and len(lines[-1]) + len(word) < chars
                      else [lines[-1], word] if lines[-1] else [word])
    return lines


def add_caption(img, text):
    """uint8 (3, H, W) -> (3, h + H, W): `text` in the 5x7 font, wrapped, on a white strip above."""
    w = img.shape[2]
    lines = wrap_text(text, max(1, (w - 4) // 6))
    strip = np.full((10 * len(lines) + 4, w, 3), PAPER, np.uint8)
    for i, line in enumerate(lines):
        draw_text(strip, 2, 3 + 10 * i, line, INK)
    return torch.cat([torch.from_numpy(strip).permute(2, 0, 1), img], dim=1)


def label_rows(grid, labels, tile, padding):
    """make_grid's (3, H, W) -> (3, H, m + W): labels[r] left of row r; tile: the row pitch."""
    m = 6 * max(len(t) for t in labels) + 4
    strip = np.full((grid.shape[1], m, 3), PAPER, np.uint8)
    for r, label in enumerate(labels):
        draw_text(strip, 2, padding + r * tile + (tile - padding) // 2 - 3, label, INK)
    return torch.cat([torch.from_numpy(strip).permute(2, 0, 1), grid], dim=2)


# ----------------------------------------------------------------------------------------------
# Charts: a line chart drawn into a uint8 canvas with a 5x7 bitmap font

# Each glyph: its 7 rows of 5 pixels ('#' = ink), top to bottom. Lower case is drawn upper case.
_FONT_SRC = {
    "0": ".###.#...##..###.#.###..##...#.###.", "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####", "3": "####.....#....#.###.....#....#####.",
    "4": "...#...##..#.#.#..#.#####...#....#.", "5": "######....####.....#....##...#.###.",
    "6": ".###.#....#....####.#...##...#.###.", "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.", "9": ".###.#...##...#.####....#....#.###.",
    "A": ".###.#...##...#######...##...##...#", "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.", "D": "####.#...##...##...##...##...#####.",
    "E": "######....#....####.#....#....#####", "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####", "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.", "J": "..###...#....#....#.#..#.#..#..##..",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#", "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##.#.##...##...##...#", "N": "#...###..##.#.##..###...##...##...#",
    "O": ".###.#...##...##...##...##...#.###.", "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#", "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".#####....#.....###.....#....#####.", "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.", "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.", "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..", "Z": "#####....#...#...#...#...#....#####",
    ".": "..........................##...##..", ",": ".....................##....#...#...",
    "-": "...............#####...............", "+": ".......#....#..#####..#....#.......",
    "(": "...#...#...#....#....#.....#.....#.", ")": ".#.....#.....#....#....#...#...#...",
    "/": "....#....#...#...#...#...#....#....", ":": "......##...##........##...##.......",
    "%": "##..###..#...#...#...#...#..###..##", "=": "..........#####.....#####..........",
    "_": "..............................#####", " ": "...................................",
    "^": "..#...#.#.#...#....................", "x": "..........#...#.#.#...#...#.#.#...#",
    "'": "..#....#...........................", "*": ".....#.#.#.###.#####.###.#.#.#.....",
    "~": "...........#..##.##................", ">": ".#.....#.....#.....#...#...#...#...",
    "<": "...#...#...#...#.....#.....#.....#.", "[": ".###..#....#....#....#....#....###.",
    "]": ".###....#....#....#....#....#..###.", "|": "..#....#....#....#....#....#....#..",
    "?": ".###.#...#....#...#...#.........#..", "!": "..#....#....#....#....#.........#..",
    ";": "......##...##........##....#...#...", "#": ".#.#..#.#.#####.#.#.#####.#.#..#.#.",
}
_FONT = {k: np.array([c == "#" for c in v], bool).reshape(7, 5) for k, v in _FONT_SRC.items()}
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14),
           (148, 103, 189), (23, 190, 207), (140, 86, 75), (127, 127, 127)]


def draw_text(canvas, x, y, text, color=(0, 0, 0), scale=1):
    """Stamp text into canvas (H, W, 3) uint8 with its top-left corner at (x, y)."""
    for ch in str(text):
        glyph = _FONT.get(ch if ch in _FONT else ch.upper(),
                          _FONT["."] if ch.strip() else _FONT[" "])
        big = glyph.repeat(scale, 0).repeat(scale, 1)
        ys, xs = np.nonzero(big)
        ys, xs = ys + y, xs + x
        ok = (ys >= 0) & (ys < canvas.shape[0]) & (xs >= 0) & (xs < canvas.shape[1])
        canvas[ys[ok], xs[ok]] = color
        x += 6 * scale


def _draw_line(canvas, x0, y0, x1, y1, color, width=2):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.rint(np.linspace(x0, x1, n)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n)).astype(int)
    for dy in range(width):
        for dx in range(width):
            ok = (ys + dy < canvas.shape[0]) & (xs + dx < canvas.shape[1])
            canvas[ys[ok] + dy, xs[ok] + dx] = color


def _nice_ticks(lo, hi, n=5):
    """Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = min((m * 10 ** np.floor(np.log10(raw)) for m in (1, 2, 5, 10)),
               key=lambda s: abs((hi - lo) / s - n))
    first = np.ceil(lo / step - 1e-9) * step
    return [t for t in np.arange(first, hi + step * 1e-6, step)]


def _fmt_tick(v):
    """A tick's label: 15600 and 0.25 as they are, 2e6 and 1e-4 short (ticks are round numbers)."""
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.6g}"   # .6g: all digits below 1e5 (".4g" turned 15600 into "1.56e+04")


def draw_chart(series, title="", xlabel="", ylabel="", log_y=False, width=480, height=320):
    """Line chart -> uint8 (3, height, width). series: {name: (xs, ys)}; non-finite points are
    skipped (the line breaks there); log_y plots log10(y) for positive y only."""
    S = 1 if width < 400 else 2  # font scale: 5x7 pixels per glyph at 1, 10x14 at 2
    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, bottom = 14 * 6 * S // 2 + 8 * S, 8 * S, 22 * S
    legend_at, lx, ly = [], left, 13 * S  # legend entries flow left to right, wrapping
    for name in series:
        w = (13 + 6 * len(name) + 6) * S
        if lx + w > width and lx > left:
            lx, ly = left, ly + 10 * S
        legend_at.append((lx, ly))
        lx += w
    top = ly + 12 * S
    pw, ph = width - left - right, height - top - bottom
    data = []
    for name, (xs, ys) in series.items():
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        ok = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if log_y else True)
        ys = np.where(ok, np.log10(np.where(ok, ys, 1.0)) if log_y else ys, np.nan)
        data.append((name, xs, ys))
    allx = np.concatenate([d[1][np.isfinite(d[2])] for d in data] or [np.zeros(0)])
    ally = np.concatenate([d[2][np.isfinite(d[2])] for d in data] or [np.zeros(0)])
    x0, x1 = (allx.min(), allx.max()) if allx.size else (0.0, 1.0)
    y0, y1 = (ally.min(), ally.max()) if ally.size else (0.0, 1.0)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x1 == x0 else (x0, x1)
    y0, y1 = (y0 - 0.5, y1 + 0.5) if y1 == y0 else (y0, y1)
    y0, y1 = y0 - 0.04 * (y1 - y0), y1 + 0.04 * (y1 - y0)  # a little air above and below
    px = lambda x: left + (x - x0) / (x1 - x0) * (pw - 1)      # data -> pixel coordinates
    py = lambda y: top + (y1 - y) / (y1 - y0) * (ph - 1)
    grey, dark = (225, 225, 225), (60, 60, 60)
    yt = [(t, t) for t in _nice_ticks(y0, y1)]  # (position, value shown)
    if log_y:  # decades where the range spans two or more, else round values between the ends
        yt = [(float(t), 10.0 ** t) for t in range(int(np.ceil(y0)), int(np.floor(y1)) + 1)]
        if len(yt) < 2:
            yt = [(np.log10(v), v) for v in _nice_ticks(10 ** y0, 10 ** y1) if v > 0]
    for t, value in yt:
        yy, label = int(round(py(t))), _fmt_tick(value)
        canvas[yy, left:left + pw] = grey
        draw_text(canvas, left - 6 * S * len(label) - 4 * S, yy - 3 * S, label, dark, S)
    for t in _nice_ticks(x0, x1):
        xx, label = int(round(px(t))), _fmt_tick(t)
        canvas[top:top + ph, xx] = grey   # the label centred under its tick, kept inside the picture
        draw_text(canvas, min(xx - 3 * S * len(label), width - 6 * S * len(label)), top + ph + 4 * S,
                  label, dark, S)
    canvas[top:top + ph, left] = dark
    canvas[top + ph - 1, left:left + pw] = dark
    for i, (name, xs, ys) in enumerate(data):
        color = PALETTE[i % len(PALETTE)]
        for j in range(len(xs) - 1):
            if np.isfinite(ys[j]) and np.isfinite(ys[j + 1]):
                _draw_line(canvas, px(xs[j]), py(ys[j]), px(xs[j + 1]), py(ys[j + 1]), color, S)
        if len(xs) == 1 and np.isfinite(ys[0]):  # a single point still shows
            _draw_line(canvas, px(xs[0]) - 2, py(ys[0]), px(xs[0]) + 2, py(ys[0]), color, 2 * S)
        lx, ly = legend_at[i]                    # legend: the strip under the title, never on data
        canvas[ly + 2 * S: ly + 5 * S, lx: lx + 10 * S] = color
        draw_text(canvas, lx + 13 * S, ly, name, dark, S)
    title += "  (log scale)" if log_y else ""
    ts = S if left + 6 * S * len(title) <= width else 1  # a long title drops to the small font
    draw_text(canvas, left if ts == S else 2, 3 * S, title, (0, 0, 0), ts)
    draw_text(canvas, left + pw - 6 * S * len(xlabel), height - 9 * S, xlabel, dark, S)
    draw_text(canvas, 2, height - 9 * S, ylabel, dark, S)
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


def smooth(ys, k):
    """Trailing moving average over k points (shorter at the start), for noisy curves."""
    c = np.cumsum(np.insert(np.asarray(ys, dtype=np.float64), 0, 0.0))
    n = np.arange(1, len(ys) + 1)
    lo = np.maximum(n - k, 0)
    return ((c[n] - c[lo]) / (n - lo)).tolist()


def save_charts(path, charts, ncols=3, caption=None):
    """Tile equally sized charts (3, H, W) into one picture, ncols per row, a caption above."""
    charts = list(charts)
    grid = make_grid(torch.stack(charts), nrow=min(ncols, len(charts)), padding=4)
    save_image(add_caption(grid, caption) if caption else grid, path)


# ----------------------------------------------------------------------------------------------
# CLI: check the dataset and look at it

def main(argv=None):
    import runs   # the shared one-line errors; imported here because runs.py imports this file
    p = runs.OneLineParser(description="Check the CIFAR-10 data: per-class counts, md5, and a "
                                "grid of examples written to runs/data_examples.png.")
    p.add_argument("--data-dir", default="data", help="folder holding the archive (or its folders)")
    p.add_argument("--no-download", action="store_true", help="never download; fail with a message")
    p.add_argument("--out", default="runs/data_examples.png", help="example grid (.png or .ppm)")
    args = p.parse_args(argv)
    t0 = time.time()
    train_x, train_y = load_cifar10(args.data_dir, train=True, download=not args.no_download)
    test_x, test_y = load_cifar10(args.data_dir, train=False, download=False)
    kind, path = find_archive(args.data_dir)
    print(f"source: {path} ({kind} release), loaded in {time.time() - t0:.1f} s")
    if os.path.isfile(path):
        md5, official = archive_md5_note(path)
        print(f"md5: {md5} ({'official' if official else 'NOT the official archive'})")
    print(f"{'class':>12} {'train':>7} {'test':>7}")
    for c, name in enumerate(CLASSES):
        print(f"{name:>12} {(train_y == c).sum().item():7d} {(test_y == c).sum().item():7d}")
    print(f"{'total':>12} {len(train_y):7d} {len(test_y):7d}")
    picks = torch.cat([torch.nonzero(train_y == c).flatten()[:8] for c in range(10)])
    save_grid(train_x[picks], args.out, nrow=8, row_labels=CLASSES,   # one class per row
              caption="CIFAR-10 training images, the first 8 of each class")
    print(f"wrote {args.out} (rows: {', '.join(CLASSES)})")


if __name__ == "__main__":
    # runs.py imports this file as `data`: its main raises the DataError runs.cli_main catches
    import runs
    runs.cli_main(runs.data.main)
