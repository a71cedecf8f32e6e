"""Datasets, offline first: Fashion-MNIST from its idx files, CIFAR-10 via torchvision (paper §5).

Fashion-MNIST is searched, in this order, for the four idx files (each gzipped or not):
  1. `root=` when given (it replaces 2–4);
  2. `$DKM_DATA_DIR` (when set, a path that does not hold the files is an error, not skipped);
  3. `<repo>/data/fashion-mnist/`;
  4. `/usr/share/datasets/fashion-mnist/` (Debian's package `dataset-fashion-mnist`).
In each directory the files may also sit under `FashionMNIST/raw/` (torchvision's layout).
Only when `download=True` is passed does torchvision fetch the data (into `root`, else into
`<repo>/data/fashion-mnist/`); the network is never probed, so a run is offline unless asked.
When nothing works, one `DatasetNotFoundError` lists every place tried and how to fix it.

Subsets are uniform (not stratified): both datasets are exactly balanced, so n images hold
about n/10 per class; the subset of n is a prefix of one seeded permutation, so a smaller n
with the same seed is contained in a larger one.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from dkm._checks import check_int

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_DIR = Path(__file__).resolve().parents[2] / "data" / "cifar10"
ENV_VAR = "DKM_DATA_DIR"

# Mean and population std (ddof=0) of all 60000·28·28 pixels of the Fashion-MNIST training
# images scaled to [0, 1]: x = np.frombuffer(train-images, uint8, offset=16) / 255;
# x.mean(), x.std() in float64 (tests/test_data.py recomputes them from the real files).
FASHION_MNIST_MEAN = 0.2860405969887955
FASHION_MNIST_STD = 0.35302424451492254
# Per channel (R, G, B) over the 50000 CIFAR-10 training images scaled to [0, 1], population
# std over all 50000·32·32 pixels of each channel, rounded to 4 digits; independent
# recomputations agree to 1e-6 (mean 0.491400 0.482158 0.446531, std 0.247032 0.243485
# 0.261588: kuangliu/pytorch-cifar issue #129, facebookarchive/fb.resnet.torch issue #180).
# Not the often copied std (0.2023, 0.1994, 0.2010): that is the mean of per-image stds.
# Not recomputed here: CIFAR-10 cannot be fetched offline.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
INPUT_SHAPES = {"fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # one image, C × H × W
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FASHION_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FIX_HINT = (
    "To fix: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs "
    f"{SYSTEM_DATA_DIR}/), or `make setup`, or set {ENV_VAR} to a directory holding the four "
    "idx files (gzipped or not), or pass download=True where a network is reachable."
)


class DatasetNotFoundError(FileNotFoundError):
    """No place holds the dataset; the message lists every place tried and the fix."""


class IdxFormatError(ValueError):
    """An idx file is truncated or corrupt; the message names the file."""


def _check_bool(name: str, value) -> bool:
    """Raise TypeError naming `name` unless `value` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


# ---------------------------------------------------------------- idx files
# idx layout: magic 0x00 0x00 <dtype code> <ndim>, ndim big-endian uint32 sizes, then the data.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """The bytes of `path`, decompressed when it ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise IdxFormatError(
            f"{path}: cannot decompress ({e}); the file is truncated or corrupt"
        ) from e


def read_idx(path) -> np.ndarray:
    """Decode one idx file (gzipped or not), checking magic number, dims and size."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise IdxFormatError(
            f"{path}: bad magic number {raw[:4].hex() or '(empty file)'}: not an idx file"
        )
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise IdxFormatError(
            f"{path}: {len(raw)} bytes, shorter than its {header}-byte header: truncated"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    # size check: header + Π dims · itemsize bytes, exactly
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise IdxFormatError(
            f"{path}: {len(raw)} bytes, expected {expected} for dims {dims}: "
            "the file is truncated or corrupt (re-install or re-download it)"
        )
    return (
        np.frombuffer(raw, dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="), copy=False)
    )


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """`read_idx` memoized on (path, mtime, size): a changed file is decoded again."""
    return read_idx(path)


def _load_idx(path: Path) -> np.ndarray:
    """Read-only decoded array of `path`, from the in-process cache when unchanged."""
    st = path.stat()
    return _read_idx_cached(str(path), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------- finding Fashion-MNIST
def _idx_file(directory: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in `directory` (the uncompressed one first), else None."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _check_dir(directory: Path) -> tuple[Path | None, str]:
    """(the folder holding all four idx files, "") or (None, why not) for `directory`."""
    if not directory.is_dir():
        return None, "not a directory" if directory.exists() else "directory does not exist"
    stems = FASHION_MNIST_FILES[True] + FASHION_MNIST_FILES[False]
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        if all(_idx_file(folder, s) for s in stems):
            return folder, ""
    missing = [s + "[.gz]" for s in stems if not _idx_file(directory, s)]
    return None, f"missing {', '.join(missing)} (also not under FashionMNIST/raw/)"


def _candidates(root) -> list[tuple[str, Path | None]]:
    """(label, directory) in search order; directory None when the place is not configured."""
    if root is not None:
        return [("root=", Path(root))]
    env = os.environ.get(ENV_VAR)
    return [
        (f"${ENV_VAR}", Path(env) if env else None),
        ("repo data dir", REPO_DATA_DIR),
        ("Debian dataset-fashion-mnist", SYSTEM_DATA_DIR),
    ]


def _download(target: Path) -> Path:
    """Fetch Fashion-MNIST with torchvision into target/FashionMNIST/raw/ (needs a network)."""
    import torchvision.datasets

    torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
    return target / "FashionMNIST" / "raw"


def find_fashion_mnist(root=None, download: bool = False) -> Path:
    """The directory of the four Fashion-MNIST idx files, searched as in the module docstring."""
    _check_bool("download", download)
    tried = []
    for label, directory in _candidates(root):
        if directory is None:
            tried.append(f"{label}: not set")
            continue
        found, why = _check_dir(directory)
        if found is not None:
            return found
        if label == f"${ENV_VAR}":  # set: meant, so an unusable one is an error, no fallback
            raise DatasetNotFoundError(
                f"${ENV_VAR}={directory} holds no Fashion-MNIST: {why}. Point it at a directory "
                f"of the four idx files (gzipped or not), or unset it"
            )
        tried.append(f"{label} {directory}: {why}")
    target = Path(root) if root is not None else REPO_DATA_DIR
    if download:
        try:
            found, why = _check_dir(_download(target))
            if found is not None:
                return found
        except Exception as e:  # any failure of the fetch is reported with the rest
            why = f"{type(e).__name__}: {e}"
        tried.append(f"torchvision download into {target}: failed ({why})")
    else:
        tried.append(f"torchvision download into {target}: not attempted (download=False)")
    lines = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
    raise DatasetNotFoundError(f"Fashion-MNIST not found. Tried, in order:\n{lines}\n{FIX_HINT}")


def fashion_mnist_arrays(train: bool = True, root=None, download: bool = False):
    """(images uint8 (n, 28, 28), labels uint8 (n,)) of one split, read-only and cached."""
    _check_bool("train", train)
    directory = find_fashion_mnist(root, download)
    stems = FASHION_MNIST_FILES[train]
    images, labels = (_load_idx(_idx_file(directory, s)) for s in stems)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise IdxFormatError(
            f"{directory}: images {images.shape} and labels {labels.shape} "
            "are not Fashion-MNIST's (n, 28, 28) and (n,)"
        )
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{directory / stems[1]}: label {labels.max()} outside 0..9")
    return images, labels


# ---------------------------------------------------------------- subsets and loaders
def subset_indices(total: int, n=None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a uniform random subset of n of range(total); n=None → all, in order."""
    total = check_int("total", total, 1)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    if n is None:
        return torch.arange(total)
    n = check_int("n", n, 1, total)
    # the first n of one seeded permutation: same (total, n, seed) → same subset, nested in n
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return perm[:n].sort().values


def loaders(dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A single-process DataLoader whose shuffling follows its own seeded generator."""
    batch_size = check_int("batch_size", batch_size, 1)
    _check_bool("shuffle", shuffle)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0
    )


# ---------------------------------------------------------------- datasets
def _normalize(X: torch.Tensor, mean, std) -> torch.Tensor:
    """(X/255 − mean)/std per channel, for uint8 X of shape (n, C, H, W)."""
    mean = torch.tensor(mean, dtype=torch.float64).reshape(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).reshape(1, -1, 1, 1)
    # (X/255 − mean)/std = X·a − b with a = 1/(255·std), b = mean/std: two passes over X
    return X.float().mul_((1 / (255 * std)).float()).sub_((mean / std).float())


def fashion_mnist(
    train: bool = True, n=None, seed: int = 0, root=None, download: bool = False
) -> TensorDataset:
    """Fashion-MNIST: X float32 (n, 1, 28, 28) normalized by the training mean/std, y int64 (n,)."""
    images, labels = fashion_mnist_arrays(train, root, download)
    idx = subset_indices(len(labels), n, seed).numpy()
    X = _normalize(
        torch.from_numpy(images[idx]).unsqueeze(1), (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,)
    )
    return TensorDataset(X, torch.from_numpy(labels[idx].astype(np.int64)))


def _torchvision_cifar10(root: Path, train: bool, download: bool):
    """torchvision's CIFAR10 dataset, with a not-found error that names `root` and the fix."""
    import torchvision.datasets

    try:
        return torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except RuntimeError as e:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found or corrupted under {root / 'cifar-10-batches-py'} "
            f"(torchvision: {e}). "
            f"To get it: cifar10(..., root={str(root)!r}, download=True) "
            "where a network is reachable, "
            "or unpack cifar-10-python.tar.gz there."
        ) from e


def cifar10(
    train: bool = True, n=None, seed: int = 0, root=None, download: bool = False
) -> TensorDataset:
    """CIFAR-10 as X float32 (n, 3, 32, 32) normalized per channel, y int64 (n,).

    Downloads only if asked.
    """
    _check_bool("train", train)
    _check_bool("download", download)
    root = Path(root) if root is not None else CIFAR10_DIR
    ds = _torchvision_cifar10(root, train, download)
    idx = subset_indices(len(ds.targets), n, seed).numpy()
    # torchvision keeps HWC uint8; the net wants CHW
    X = torch.from_numpy(ds.data[idx]).permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64)[idx])
    return TensorDataset(_normalize(X, CIFAR10_MEAN, CIFAR10_STD), y)


# ---------------------------------------------------------------- data order and batches
# The order is a function of (seed, epoch) only: a resumed run skips the batches it has seen,
# exactly.
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of range(n) used in epoch `epoch`: a function of (seed, epoch) only."""
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(mixed))


def batches(dataset, indices: torch.Tensor, batch_size: int):
    """(X, y) for consecutive chunks of `indices`; a TensorDataset is indexed directly."""
    tensors = getattr(dataset, "tensors", None)
    for chunk in indices.split(batch_size):
        if tensors is not None:
            yield tensors[0][chunk], tensors[1][chunk]
        else:
            yield tuple(default_collate([dataset[i] for i in chunk.tolist()])[:2])


def check_dataset(name: str, dataset) -> int:
    """len(dataset), or a ValueError naming `name` when it is empty or has no length."""
    n = len(dataset) if hasattr(dataset, "__len__") else 0
    if n < 1:
        raise ValueError(f"{name} has {n} examples: allowed a dataset of at least 1 (X, y) pair")
    return n
