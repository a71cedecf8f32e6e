"""Tests of dkm.training.data: idx decoding, the offline search order, subsets, loaders, CIFAR-10's
format."""

import gzip
import hashlib
import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.datasets

from dkm.training import data

REAL = data.SYSTEM_DATA_DIR
needs_real = pytest.mark.skipif(
    not all(
        (REAL / (s + ".gz")).is_file()
        for s in data.FASHION_MNIST_FILES[True] + data.FASHION_MNIST_FILES[False]
    ),
    reason=f"real Fashion-MNIST absent from {REAL} (sudo apt-get install dataset-fashion-mnist)",
)
IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


# ---------------------------------------------------------------- helpers writing data files
def write_idx(path, arr, gz=False):
    """Write `arr` as an idx file (the format written by hand from its spec), gzipped if asked."""
    arr = np.asarray(arr)
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(
        f">{arr.ndim}I", *arr.shape
    )
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fashion(directory, n_train=12, n_test=7, seed=0, gz=True):
    """Four small Fashion-MNIST-shaped idx files in `directory`;
    returns {train: (images, labels)}."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for stem, arr in zip(data.FASHION_MNIST_FILES[train], (images, labels)):
            write_idx(directory / stem, arr, gz)
        out[train] = images, labels
    return out


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Isolate the search: env unset, repo and system dirs redirected into tmp_path."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "repo")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path


# ---------------------------------------------------------------- idx decoding
def test_read_idx_hand_written_bytes(tmp_path):
    # magic 00 00 08 02, dims 2×3, then six bytes
    (tmp_path / "a").write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255]))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), [[1, 2, 3], [4, 5, 255]])


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251,
        np.array([[-5, 70000], [3, 0]], dtype=np.int32),
        np.array([1.5, -2.25, 1e30], dtype=np.float32),
    ],
)
def test_read_idx_round_trip(tmp_path, gz, arr):
    out = data.read_idx(write_idx(tmp_path / "x-idx", arr, gz))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_read_idx_corrupt_files_name_the_file(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((3, 4), np.uint8)).read_bytes()
    cases = {
        "short": (good[:-1], "expected 24"),
        "long": (good + b"\0", "expected 24"),
        "magic": (b"\x08\x03" + good[2:], "bad magic"),
        "empty": (b"", "bad magic"),
        "header": (good[:6], "header"),
    }
    for name, (raw, words) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(data.IdxFormatError, match=words) as e:
            data.read_idx(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)
    gz = gzip.compress(good)
    for name, raw in {"cut.gz": gz[: len(gz) // 2], "notgz.gz": good}.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(data.IdxFormatError, match="cannot decompress") as e:
            data.read_idx(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)


def test_wrong_image_shape_is_reported(places):
    d = places / "odd"
    write_fashion(d)
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((7, 27, 28), np.uint8))  # plain wins over .gz
    with pytest.raises(data.IdxFormatError, match=r"\(7, 27, 28\)"):
        data.fashion_mnist(train=False, root=d)


# ---------------------------------------------------------------- loading and normalizing
@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_values_from_small_files(places, gz):
    arrays = write_fashion(places / "d", gz=gz)
    for train in (True, False):
        images, labels = arrays[train]
        X, y = data.fashion_mnist(train=train, root=places / "d").tensors
        assert X.dtype == torch.float32 and X.shape == (len(labels), 1, 28, 28)
        assert y.dtype == torch.int64
        ref = (images.astype(np.float64) / 255 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
        np.testing.assert_allclose(X[:, 0].numpy(), ref, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), labels)


def test_torchvision_layout_is_accepted(places):
    arrays = write_fashion(places / "d" / "FashionMNIST" / "raw", gz=False)
    assert data.find_fashion_mnist(places / "d") == places / "d" / "FashionMNIST" / "raw"
    np.testing.assert_array_equal(
        data.fashion_mnist(False, root=places / "d").tensors[1], arrays[False][1]
    )


def test_cache_reads_each_file_once_and_sees_changes(places):
    arrays = write_fashion(places / "d", gz=False)
    data._read_idx_cached.cache_clear()
    data.fashion_mnist(root=places / "d")
    data.fashion_mnist(root=places / "d", n=3)
    assert (
        data._read_idx_cached.cache_info().misses == 2
        and data._read_idx_cached.cache_info().hits == 2
    )
    labels = (arrays[True][1] + 1) % 10
    write_idx(places / "d" / "train-labels-idx1-ubyte", labels)  # new size/mtime → decoded again
    np.testing.assert_array_equal(data.fashion_mnist(root=places / "d").tensors[1], labels)


# ---------------------------------------------------------------- search order and errors
def test_search_order(places, monkeypatch):
    for name in ("env", "repo", "system", "root"):
        write_fashion(places / name)
    monkeypatch.setenv(data.ENV_VAR, str(places / "env"))
    assert data.find_fashion_mnist() == places / "env"
    assert data.find_fashion_mnist(root=places / "root") == places / "root"
    monkeypatch.delenv(data.ENV_VAR)
    assert data.find_fashion_mnist() == places / "repo"
    monkeypatch.setenv(data.ENV_VAR, str(places / "nowhere"))  # set but unusable: no fallback
    with pytest.raises(data.DatasetNotFoundError, match="holds no Fashion-MNIST: directory does"):
        data.find_fashion_mnist()
    monkeypatch.delenv(data.ENV_VAR)
    for f in (places / "repo").iterdir():
        f.unlink()
    assert data.find_fashion_mnist() == places / "system"


def test_not_found_lists_every_place(places, monkeypatch):
    (places / "repo").mkdir()
    write_idx(places / "repo" / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.fashion_mnist()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert f"${data.ENV_VAR}: not set" in msg
    assert f"{places / 'repo'}: missing train-labels-idx1-ubyte[.gz]" in msg
    assert "missing train-images" not in msg
    assert f"{places / 'system'}: directory does not exist" in msg
    assert "not attempted (download=False)" in msg
    for fix in (
        "sudo apt-get install dataset-fashion-mnist",
        "make setup",
        data.ENV_VAR,
        "download=True",
    ):
        assert fix in msg
    monkeypatch.setenv(data.ENV_VAR, str(places / "nowhere"))  # set but unusable: named alone
    with pytest.raises(data.DatasetNotFoundError, match=rf"\${data.ENV_VAR}=.*nowhere holds no"):
        data.find_fashion_mnist()


class FakeFashionMNIST:
    """Stands in for torchvision.datasets.FashionMNIST: 'downloads' by writing small files."""

    calls = []

    def __init__(self, root, train=True, download=False):
        FakeFashionMNIST.calls.append((root, download))
        write_fashion(data.Path(root) / "FashionMNIST" / "raw", seed=5, gz=False)


def test_download_path_without_network(places, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    FakeFashionMNIST.calls = []
    with pytest.raises(data.DatasetNotFoundError):
        data.find_fashion_mnist(root=places / "r")
    assert FakeFashionMNIST.calls == []  # download=False never calls torchvision
    assert data.find_fashion_mnist(download=True) == places / "repo" / "FashionMNIST" / "raw"
    assert FakeFashionMNIST.calls == [(str(places / "repo"), True)]
    labels = write_fashion(places / "x", seed=5)[True][1]
    np.testing.assert_array_equal(
        data.fashion_mnist(root=places / "r", download=True).tensors[1], labels
    )


def test_failed_download_is_listed(places, monkeypatch):
    def offline(root, train=True, download=False):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(
        data.DatasetNotFoundError, match=r"download into .*: failed \(URLError: .*no network"
    ):
        data.find_fashion_mnist(download=True)


# ---------------------------------------------------------------- subsets and loaders
def test_subset_indices_deterministic_nested_and_independent_of_global_rng():
    torch.manual_seed(1)
    a = data.subset_indices(1000, 50, seed=3)
    torch.manual_seed(2)
    assert torch.equal(a, data.subset_indices(1000, 50, seed=3))
    assert (
        torch.equal(a, a.sort().values)
        and len(a.unique()) == 50
        and 0 <= a.min()
        and a.max() < 1000
    )
    assert not torch.equal(a, data.subset_indices(1000, 50, seed=4))
    assert set(data.subset_indices(1000, 20, seed=3).tolist()) <= set(a.tolist())
    assert torch.equal(data.subset_indices(7, None, 0), torch.arange(7))
    assert torch.equal(data.subset_indices(7, 7, 9), torch.arange(7))


def test_subset_indices_are_uniform():
    # over 2000 seeds each of 10 indices is picked with probability 3/10: count ≈ 600 ± 20.5
    counts = np.bincount(
        np.concatenate([data.subset_indices(10, 3, s).numpy() for s in range(2000)]), minlength=10
    )
    assert np.all(np.abs(counts - 600) < 5 * 20.5), counts


def test_train_and_test_subsets_are_independent(places):
    arrays = write_fashion(places / "d", n_train=40, n_test=30)
    X_test = data.fashion_mnist(False, n=9, seed=2, root=places / "d").tensors[0]
    data.fashion_mnist(True, n=17, seed=2, root=places / "d")
    again = data.fashion_mnist(False, n=9, seed=2, root=places / "d").tensors[0]
    assert torch.equal(X_test, again)
    idx = data.subset_indices(30, 9, 2).numpy()
    ref = (arrays[False][0][idx] / 255 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    np.testing.assert_allclose(X_test[:, 0].numpy(), ref, atol=1e-5)


def test_bad_arguments_name_the_parameter(places):
    write_fashion(places / "d")
    for n in (0, -1, 13):
        with pytest.raises(ValueError, match=rf"n={n} is out of range: allowed 1 ≤ n ≤ 12"):
            data.fashion_mnist(n=n, root=places / "d")
    with pytest.raises(TypeError, match="n must be an integer"):
        data.fashion_mnist(n=2.5, root=places / "d")
    with pytest.raises(TypeError, match="seed must be an integer"):
        data.subset_indices(10, 2, seed="0")
    with pytest.raises(ValueError, match="seed=-1"):
        data.subset_indices(10, 2, seed=-1)
    with pytest.raises(TypeError, match="train must be True or False"):
        data.fashion_mnist(train=1, root=places / "d")
    with pytest.raises(ValueError, match="batch_size=0"):
        data.loaders(data.fashion_mnist(root=places / "d"), 0, True, 0)


def test_loaders_are_deterministic():
    ds = torch.utils.data.TensorDataset(torch.arange(20.0), torch.arange(20))

    def order(loader):
        return torch.cat([y for _, y in loader]).tolist()

    a, b = data.loaders(ds, 6, True, seed=1), data.loaders(ds, 6, True, seed=1)
    assert a.num_workers == 0
    first = order(a)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert first == order(b) and order(a) == order(b)  # epoch 2 agrees too
    assert first != order(data.loaders(ds, 6, True, seed=2))
    assert order(data.loaders(ds, 6, False, seed=1)) == list(range(20))


# ---------------------------------------------------------------- the real Fashion-MNIST
@needs_real
def test_real_fashion_mnist_shapes_labels_balance_and_constants():
    images, labels = data.fashion_mnist_arrays(True, root=REAL)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels, minlength=10), [6000] * 10)
    x = images.astype(np.float64) / 255
    assert (
        abs(x.mean() - data.FASHION_MNIST_MEAN) < 1e-4
        and abs(x.std() - data.FASHION_MNIST_STD) < 1e-4
    )
    X, y = data.fashion_mnist(False, root=REAL).tensors
    assert X.shape == (10000, 1, 28, 28) and y.min() == 0 and y.max() == 9
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 1000))


@needs_real
def test_real_fashion_mnist_normalized_train_has_zero_mean_unit_std():
    X = data.fashion_mnist(True, root=REAL).tensors[0].double()
    assert abs(X.mean().item()) < 1e-4 and abs(X.std().item() - 1) < 1e-4


# ---------------------------------------------------------------- CIFAR-10 in its own format
class Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str` (BINSTRING), as the original CIFAR-10 batches do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        op = (
            pickle.SHORT_BINSTRING + bytes([len(obj)])
            if len(obj) < 256
            else pickle.BINSTRING + struct.pack("<i", len(obj))
        )
        self.write(op + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar(root, per_batch=2, n_test=3, seed=0):
    """cifar-10-batches-py/ with five train batches, a test batch and batches.meta; returns the
    arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    out = {}
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"filenames": [b"x.png"] * n,
        }
        with open(folder / name, "wb") as f:
            Py2Pickler(f, protocol=2).dump(batch)
        out[name] = batch
    meta = {
        b"label_names": [c.encode() for c in data.CIFAR10_CLASSES],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        Py2Pickler(f, protocol=2).dump(meta)
    return out


@pytest.fixture
def cifar_md5(monkeypatch):
    """Point torchvision's md5 table at the test's files, so its real integrity check runs on
    them."""

    def set_md5(root):
        def md5(name):
            return hashlib.md5((root / "cifar-10-batches-py" / name).read_bytes()).hexdigest()

        C = torchvision.datasets.CIFAR10
        monkeypatch.setattr(C, "train_list", [[name, md5(name)] for name, _ in C.train_list])
        monkeypatch.setattr(C, "test_list", [[name, md5(name)] for name, _ in C.test_list])
        monkeypatch.setattr(C, "meta", {**C.meta, "md5": md5("batches.meta")})

    return set_md5


def cifar_reference(batches):
    """(X, y) normalized by hand in float64 from the raw batch dicts."""
    X = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32) / 255
    X = (X - np.array(data.CIFAR10_MEAN)[:, None, None]) / np.array(data.CIFAR10_STD)[:, None, None]
    return X, np.concatenate([b[b"labels"] for b in batches])


def test_cifar10_round_trip(tmp_path, cifar_md5):
    batches = write_cifar(tmp_path)
    cifar_md5(tmp_path)
    for train, names in ((True, [f"data_batch_{i}" for i in range(1, 6)]), (False, ["test_batch"])):
        X, y = data.cifar10(train, root=tmp_path).tensors
        X_ref, y_ref = cifar_reference([batches[n] for n in names])
        assert X.dtype == torch.float32 and X.shape == X_ref.shape and y.dtype == torch.int64
        np.testing.assert_allclose(X.numpy(), X_ref, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), y_ref)
    X_all, y_all = data.cifar10(True, root=tmp_path).tensors
    X4, y4 = data.cifar10(True, n=4, seed=1, root=tmp_path).tensors
    idx = data.subset_indices(10, 4, 1)
    assert len(X4) == 4 and torch.equal(X4, X_all[idx]) and torch.equal(y4, y_all[idx])


def test_cifar10_corrupt_file_fails_torchvision_md5(tmp_path, cifar_md5):
    write_cifar(tmp_path)
    cifar_md5(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DatasetNotFoundError, match="corrupted"):
        data.cifar10(root=tmp_path)


def test_cifar10_not_found_names_root_and_download(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.cifar10(root=tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and "download=True" in str(e.value)


def test_cifar10_download_path_without_network(tmp_path, monkeypatch, cifar_md5):
    calls = []

    def fake_download(self):
        calls.append(self.root)
        batches.update(write_cifar(data.Path(self.root)))
        cifar_md5(data.Path(self.root))

    batches = {}
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fake_download)
    X, y = data.cifar10(False, root=tmp_path, download=True).tensors
    assert calls == [str(tmp_path)]
    np.testing.assert_array_equal(y.numpy(), batches["test_batch"][b"labels"])
