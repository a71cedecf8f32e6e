"""Index codings of the export: bit-exact round trips, sizes against the accounting's counts
(fixed width, Huffman code lengths, the entropy), and corrupt data refused."""

import math

import numpy as np
import pytest

from dkm.accounting import entropy, huffman_lengths, index_bits
from dkm.export import coding

CASES = [  # (K, probability of cluster 0, N)
    (7, 0.9, 50_000), (7, 0.75, 20_000), (2, 0.5, 1000), (144, 0.3, 768), (5, 0.0, 3),
    (1, 1.0, 50), (3, 1.0, 40), (16, 0.0, 4096), (4, 0.999, 10_000),
]  # fmt: skip


def _rows(k, p, n, seed=0):
    rng = np.random.default_rng(seed)
    probs = np.full(k, 1 / k) if p == 0 else np.r_[p, np.full(k - 1, (1 - p) / max(k - 1, 1))]
    return rng.choice(k, size=n, p=probs[:k] / probs[:k].sum())


@pytest.mark.parametrize("k,p,n", CASES)
@pytest.mark.parametrize("name", coding.CODINGS)
def test_round_trip_and_size(name, k, p, n):
    a = _rows(k, p, n)
    counts = np.bincount(a, minlength=k).tolist()
    data, params = coding.encode(a, k, name)
    assert np.array_equal(coding.decode(data, n, name, params, k), a)
    if name == "fixed":
        assert len(data) == math.ceil(index_bits(counts, "fixed") / 8)
    elif name == "huffman":  # exactly Σ n_k·len_k bits, padded to a byte
        assert len(data) == math.ceil(index_bits(counts, "huffman") / 8)
    else:  # the entropy, within the 4-byte state and the frequency quantization
        assert n * entropy(counts) / 8 <= len(data) <= n * entropy(counts) / 8 + 4 + 0.001 * n


def test_canonical_codes_are_prefix_free_with_the_huffman_lengths():
    counts = [500, 30, 30, 20, 10, 5, 5]
    lengths = huffman_lengths(counts)
    codes = coding.canonical_codes(lengths)
    words = [format(c, f"0{n}b") for c, n in codes.values()]
    assert sorted(len(w) for w in words) == sorted(n for n in lengths if n)
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert sum(2.0**-n for n in lengths if n) <= 1  # Kraft


def test_quantized_frequencies():
    f = coding.quantize([10**6, 1, 0, 3])
    assert sum(f) == 2**16 and f[2] == 0 and min(f[1], f[3]) >= 1
    with pytest.raises(ValueError, match="cannot quantize"):
        coding.quantize([0, 0])


@pytest.mark.parametrize("name", ["huffman", "rans"])
def test_corrupt_or_truncated_data_is_refused(name):
    a = _rows(7, 0.9, 5000)
    data, params = coding.encode(a, 7, name)
    with pytest.raises(coding.CodingError):
        coding.decode(data[: len(data) // 2], 5000, name, params, 7)
    with pytest.raises(coding.CodingError):
        coding.decode(data + b"\x00\x00", 5000, name, params, 7)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("huffman", {"lengths": [1, 2]}, "K=3"),  # not K numbers
        ("huffman", {"lengths": [1, 1, 1]}, "Kraft"),
        ("huffman", {"lengths": [1, 2, 10**6]}, r"0\.\.2"),  # a crafted length: never built
        ("huffman", {"lengths": [1, 2, "2"]}, "integers"),
        ("rans", {"freqs": [2**16, 0], "scale_bits": 16}, "K=3"),
        ("rans", {"freqs": [2**17, -(2**16), 0], "scale_bits": 16}, "integers"),
        ("fixed", {"bits": 40}, "K=3 needs 2"),
    ],
)
def test_coding_parameters_are_checked_against_k_before_they_size_anything(name, params, match):
    with pytest.raises(coding.CodingError, match=match):
        coding.decode(b"\x00" * 8, 4, name, params, 3)


def test_unknown_coding():
    with pytest.raises(ValueError, match="allowed fixed, huffman, rans"):
        coding.encode(np.zeros(3, dtype=np.int64), 2, "zip")
    with pytest.raises(coding.CodingError, match="unknown index coding"):
        coding.decode(b"", 3, "zip", {}, 2)


@pytest.fixture(scope="module")
def default_net_shared():
    """The default profile's net (WRN-16-1, the authors' 16 convs) from a seeded init, shared at
    the authors' 45x: decoding depends on the rows and the cluster usage, not on training."""
    import torch

    from dkm.experiments.profiles import get_profile
    from dkm.plans import authors_plan
    from dkm.sharing import share
    from dkm.training.models import build_model

    profile = get_profile("cpu")
    torch.manual_seed(0)
    net = build_model(profile.model, **profile.model_kwargs).eval()
    return net, share(net, authors_plan(net, "45x"), kmeans_seed=1000), profile


@pytest.mark.parametrize("name", coding.CODINGS)
def test_default_profile_net_round_trip_at_its_conventions_size(tmp_path, default_net_shared, name):
    import torch

    from dkm.accounting import compression_table
    from dkm.export.dkmfile import CONVENTION_OF, load_shared, save_shared, size_allowance
    from dkm.training.models import build_model

    net, shared, profile = default_net_shared
    info = save_shared(net, shared, tmp_path / "net.dkm", coding=name)
    counted = compression_table(net, shared, CONVENTION_OF[name])
    assert info["convention_bytes"] == pytest.approx(sum(r["compressed_bits"] for r in counted) / 8)
    assert 0 < info["bytes"] - info["convention_bytes"] <= size_allowance(info)
    torch.manual_seed(1)  # another init: everything must come from the file
    fresh = build_model(profile.model, **profile.model_kwargs).eval()
    loaded = load_shared(tmp_path / "net.dkm", fresh)
    assert all(torch.equal(fresh.state_dict()[k], t) for k, t in net.state_dict().items())
    assert all(torch.equal(loaded.layers[n].assignments, layer.assignments)
               for n, layer in shared.layers.items())  # fmt: skip
