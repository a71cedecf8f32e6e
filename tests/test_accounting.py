"""Compression-ratio accounting against hand computations, brute force and the authors'
reference."""

import copy
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dkm import accounting as acc
from dkm import plans as authors
from dkm.sharing import SharedLayer, ShareResult, share
from dkm.training.models import wide_resnet

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "wrn16_4_official_sharing.json"


# ---------------------------------------------------------------- index coding, hand computed
def test_index_bits_dyadic_counts():
    counts = [4, 2, 1, 1]  # N = 8, q = 1/2, 1/4, 1/8, 1/8
    # entropy: H = 1/2·1 + 1/4·2 + 2·(1/8·3) = 1.75 bits → 8·1.75 = 14
    assert acc.index_bits(counts, "entropy") == pytest.approx(14.0)
    # fixed: K = 4 → ⌈log2 4⌉ = 2 bits → 8·2 = 16
    assert acc.index_bits(counts, "fixed") == 16
    # huffman: lengths 1, 2, 3, 3 → 4·1 + 2·2 + 1·3 + 1·3 = 14 (dyadic: equals the entropy)
    assert acc.huffman_lengths(counts) == [1, 2, 3, 3]
    assert acc.index_bits(counts, "huffman") == 14


def test_index_bits_unused_cluster():
    counts = torch.tensor([3, 1, 0])  # K = 3, N = 4, one cluster unused
    # entropy: −(3/4·log2 3/4 + 1/4·log2 1/4) = 0.811278… → 4·0.811278 = 3.245112
    assert acc.index_bits(counts, "entropy") == pytest.approx(
        4 * (-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    )
    # fixed: ⌈log2 3⌉ = 2 bits, unused clusters still need a code → 4·2 = 8
    assert acc.index_bits(counts, "fixed") == 8
    # huffman: two used clusters → 1 bit each → 4
    assert acc.huffman_lengths(counts) == [1, 1, 0]
    assert acc.index_bits(counts, "huffman") == 4


def test_index_bits_uniform_five():
    counts = [1, 1, 1, 1, 1]
    # entropy: 5·log2 5 = 11.609640…; fixed: ⌈log2 5⌉ = 3 → 15; huffman: lengths 2,2,2,3,3 → 12
    assert acc.index_bits(counts, "entropy") == pytest.approx(5 * math.log2(5))
    assert acc.index_bits(counts, "fixed") == 15
    assert acc.index_bits(counts, "huffman") == 12


@pytest.mark.parametrize("counts", [[5], [0, 6, 0, 0]])
def test_single_used_cluster_costs_no_bits(counts):
    # one used cluster: entropy 0, Huffman 0 (documented choice); fixed pays ⌈log2 K⌉ per row
    assert acc.index_bits(counts, "entropy") == 0
    assert acc.index_bits(counts, "huffman") == 0
    assert acc.index_bits(counts, "fixed") == sum(counts) * math.ceil(math.log2(len(counts)))


def test_fixed_index_width():
    # ⌈log2 K⌉, K = 1 → 0
    assert [acc.fixed_index_width(k) for k in (1, 2, 3, 4, 5, 8, 9, 144, 256, 257)] == [
        0,
        1,
        2,
        2,
        3,
        3,
        4,
        8,
        8,
        9,
    ]


def _brute_force_prefix_code_cost(counts):
    """Cheapest Σ n_k·l_k over all length vectors satisfying Kraft's inequality Σ 2^−l_k ≤ 1."""
    used = [c for c in counts if c > 0]
    best = math.inf
    for lengths in itertools.product(range(1, len(used)), repeat=len(used)):
        if sum(2.0**-n for n in lengths) <= 1:
            best = min(best, sum(c * n for c, n in zip(used, lengths)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_huffman_is_an_optimal_prefix_code(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 50, (5,), generator=g).tolist()
    bits = acc.index_bits(counts, "huffman")
    assert bits == _brute_force_prefix_code_cost(counts)
    # and the source-coding bounds N·H ≤ L < N·(H + 1)
    n, h = sum(counts), acc.entropy(counts)
    assert n * h - 1e-9 <= bits < n * (h + 1)
    lengths = acc.huffman_lengths(counts)
    assert sum(2.0**-n for n in lengths) <= 1  # a real prefix code exists


def test_huffman_non_dyadic_by_hand():
    # merges: 1+1=2, 1+2=3, 2+3=5, 5+5=10; cost = sum of merged weights = 2+3+5+10 = 20
    assert acc.index_bits([5, 2, 1, 1, 1], "huffman") == 20


# ---------------------------------------------------------------- one layer, every convention
def test_layer_bits_every_convention():
    # conv 4 out, 2 in, 3×3, bias: N = 4·2·3 = 24 rows of s = 3; counts 12, 6, 3, 3 (K = 4)
    counts = [12, 6, 3, 3]
    # official: codebook 4·3·32 = 384, indexes 24·1.75 = 42, bias 4·32 = 128 → 554
    assert acc.layer_bits(24, 3, counts, 4, "official") == pytest.approx(554)
    # fixed: 384 + 24·2 + 128 = 560
    assert acc.layer_bits(24, 3, counts, 4, "fixed") == 560
    # huffman: lengths 1, 2, 3, 3 → 12 + 12 + 9 + 9 = 42 → 554
    assert acc.layer_bits(24, 3, counts, 4, "huffman") == 554
    # fp16 codebook: 4·3·16 = 192 + 42 + 128 = 362
    assert acc.layer_bits(24, 3, counts, 4, "official_fp16") == pytest.approx(362)
    # batch norm does not change one conv layer's bits
    assert acc.layer_bits(24, 3, counts, 4, "official_bn") == pytest.approx(554)


def test_custom_convention():
    c = acc.Convention("fixed_fp16", index_coding="fixed", codebook_bits=16)
    # 4·3·16 = 192 + 24·2 = 48 + 0 bias → 240
    assert acc.layer_bits(24, 3, [12, 6, 3, 3], 0, c) == 240


# ---------------------------------------------------------------- a real small net, by hand
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, bias=True)  # 72 + 4 = 76 params
        self.bn1 = nn.BatchNorm2d(4)  # 8 params
        self.conv2 = nn.Conv2d(4, 4, 3, groups=4, bias=False)  # depthwise: 4·1·3·3 = 36 params
        self.conv3 = nn.Conv2d(4, 6, 1, bias=True)  # 24 + 6 = 30 params (dense)
        self.fc = nn.Linear(6, 3)  # 18 + 3 = 21 params


def _net_and_shared():
    net = _Net()
    s1 = SharedLayer(
        "conv1",
        0,
        (4, 2, 3, 3),
        torch.zeros(4, 3),
        torch.tensor([0] * 12 + [1] * 6 + [2] * 3 + [3] * 3),
        p=0.5,
        bias_numel=4,
    )
    # depthwise conv2: N = 4·1·3 = 12 rows, K = 2 used 9/3
    s2 = SharedLayer("conv2", 1, (4, 1, 3, 3), torch.zeros(2, 3), torch.tensor([0] * 9 + [1] * 3))
    return net, ShareResult(layers={"conv1": s1, "conv2": s2}, skipped={"conv3": "1x1"})


def test_compression_table_by_hand():
    net, shared = _net_and_shared()
    rows = acc.compression_table(net, shared, "official")
    assert [r["name"] for r in rows] == ["conv1", "conv2", "conv3", "fc"]
    assert all(r["convention"] == "official" for r in rows)
    # original: (76 + 36 + 30 + 21)·32 = 163·32 = 5216
    assert sum(r["original_bits"] for r in rows) == 5216
    # conv1: 554 (above); conv2: codebook 2·3·32 = 192 + 12·H(3/4, 1/4) = 9.7353…, no bias;
    # conv3 and fc dense: 30·32 + 21·32 = 1632
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    compressed = 554 + 192 + 12 * h + 1632
    assert acc.compression_ratio(net, shared, "official") == pytest.approx(5216 / compressed)
    assert rows[0]["K"] == 4 and rows[0]["p"] == 0.5 and rows[0]["N"] == 24 and rows[0]["s"] == 3
    assert rows[0]["bits_index_per_row"] == pytest.approx(1.75)
    assert rows[2]["shared"] is False and rows[2]["cr"] == 1.0


def test_compression_table_batchnorm_and_fixed():
    net, shared = _net_and_shared()
    rows = acc.compression_table(net, shared.layers, "official_bn")  # a plain dict works too
    assert [r["kind"] for r in rows] == ["conv", "batchnorm", "conv", "conv", "linear"]
    # BN weight + bias = 8 params at 32 bits on both sides
    assert rows[1]["original_bits"] == rows[1]["compressed_bits"] == 256
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert acc.compression_ratio(net, shared, "official_bn") == pytest.approx(
        (5216 + 256) / (554 + 192 + 12 * h + 1632 + 256)
    )
    # fixed: conv1 560, conv2 192 + 12·1 = 204
    assert acc.compression_ratio(net, shared, "fixed") == pytest.approx(5216 / (560 + 204 + 1632))
    # nothing shared → CR 1
    assert acc.compression_ratio(net, None) == 1.0


def test_compression_table_rejects_mismatch():
    net, shared = _net_and_shared()
    bad = dict(shared.layers, fc=shared.layers["conv1"])
    with pytest.raises(ValueError, match="'fc'"):
        acc.compression_table(net, bad)
    wrong = SharedLayer(
        "conv1", 0, (4, 2, 3, 2), torch.zeros(4, 2), torch.zeros(16, dtype=torch.long), bias_numel=4
    )
    with pytest.raises(ValueError, match="conv1.*shape"):
        acc.compression_table(net, {"conv1": wrong})


# ---------------------------------------------------------------- bad arguments name the parameter
@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: acc.compression_ratio(_Net(), None, "zip"), "convention"),
        (lambda: acc.index_bits([1, 2], "arith"), "coding"),
        (lambda: acc.index_bits([1, -2]), "counts"),
        (lambda: acc.index_bits([]), "counts"),
        (lambda: acc.layer_bits(10, 3, [4, 4], 0), "num_rows"),
        (lambda: acc.Convention("x", index_coding="lz"), "index_coding"),
        (lambda: acc.Convention("x", codebook_bits=0), "codebook_bits"),
        (lambda: acc.analytic_counts(10, 3, 1.5), "p"),
        (lambda: acc.analytic_counts(10, 0, 0.5), "num_clusters"),
        (lambda: authors.setting("60x"), "official setting"),
        (lambda: acc.table_from_specs([{"in": 1, "out": 1, "k": 3}], {"K": [2, 2]}), "settings"),
    ],
)
def test_bad_arguments(call, word):
    with pytest.raises(ValueError, match=word):
        call()


# ---------------------------------------------------------------- the authors' reference check
def test_analytic_counts():
    # N = 100, K = 4, p = 0.37: int(37.0) = 37 dominant rows, 63 rows over 3 clusters → 21 each
    assert acc.analytic_counts(100, 4, 0.37) == [37, 21, 21, 21]
    # p = 0: no dominant cluster, uniform
    assert acc.analytic_counts(10, 4, 0) == [2.5] * 4


def _reference_specs():
    """Conv specs straight from the JSON's layer table, plus the final linear 256 → 10 with bias."""
    ref = json.loads(REF.read_text())
    convs = [
        {"in": layer["in"], "out": layer["out"], "k": layer["k"], "bias": True}
        for layer in ref["layers"]
    ]
    return ref, convs + [{"kind": "linear", "in": 256, "out": 10, "bias": True}]


def _independent_official_cr(ref, setting):
    """The official formula written out flat, to cross-check the library's table."""
    original = compressed = 32 * (256 * 10 + 10)  # the linear layer, uncompressed
    for layer, k, p in zip(
        ref["layers"], ref["settings"][setting]["K"], ref["settings"][setting]["p"]
    ):
        n, s, bias = layer["out"] * layer["in"] * layer["k"], layer["k"], layer["out"]
        dense = 32 * (n * s + bias)
        original += dense
        if k >= n:
            compressed += dense
            continue
        counts = [n / k] * k if p == 0 else [int(n * p)] + [(n - int(n * p)) / (k - 1)] * (k - 1)
        h = -sum(c / n * math.log2(c / n) for c in counts if c > 0)
        compressed += 32 * k * s + n * h + 32 * bias
    return original / compressed


@pytest.mark.parametrize("setting, expected", [("45x", 43.5), ("47x", 45.4), ("50x", 48.1)])
def test_reference_check(setting, expected):
    ref, specs = _reference_specs()
    rows = acc.table_from_specs(specs, authors.reference_plan(setting), "official")
    cr = acc.total_row(rows)["cr"]
    assert abs(cr - expected) < 0.1
    assert cr == pytest.approx(_independent_official_cr(ref, setting), rel=1e-12)
    # conv weights 432 + 9216 + 3·36864 + 1024 + 73728 + 3·147456 + 8192 + 294912 + 3·589824 + 32768
    # = 2,742,704; conv biases 16 + 5·64 + 5·128 + 5·256 = 2256;
    # linear 2560 + 10 → 2,747,530 (BN excluded)
    assert sum(r["params"] for r in rows) == 2747530
    assert rows[0]["shared"] is False and rows[0]["K"] == 144 == rows[0]["N"]  # layer 0 left as is
    assert all(r["convention"] == "official" for r in rows)


def test_reference_specs_match_the_layer_table():
    _, specs = _reference_specs()
    ours = authors.reference_specs()
    assert [(s["in"], s["out"], s["k"], s["bias"]) for s in ours[:16]] == [
        (s["in"], s["out"], s["k"], s["bias"]) for s in specs[:16]
    ]
    assert ours[16]["kind"] == "linear" and (ours[16]["in"], ours[16]["out"]) == (256, 10)


def test_reference_orderings_of_conventions():
    # huffman costs ≥ entropy (optimal code ≥ entropy bound); fixed ≥ huffman; fp16 codebook cheaper
    _, specs = _reference_specs()
    cr = {
        c: acc.total_row(acc.table_from_specs(specs, authors.reference_plan("45x"), c))["cr"]
        for c in acc.CONVENTIONS
    }
    assert cr["fixed"] < cr["huffman"] < cr["official"] < cr["official_fp16"]
    # specs have no BN entry, so counting BN changes nothing here
    assert cr["official_bn"] == cr["official"]


def test_packaged_reference_copy_is_identical():
    packaged = Path(authors.__file__).parent / "reference" / authors.REFERENCE_FILE
    assert json.loads(packaged.read_text()) == json.loads(REF.read_text())


def test_model_counts_match_the_layer_table():
    net = wide_resnet(
        depth=16, widen_factor=4, dropout=0.3, in_channels=3, num_classes=10, conv_bias=True
    )
    _, specs = _reference_specs()
    table = acc.table_from_specs(specs, {"K": [1] * 16, "p": [0] * 16}, "official")
    model = acc.compression_table(net, None, "official")
    key = lambda r: (r["kind"], r["params"], r["N"], r["s"])  # noqa: E731
    assert [key(r) for r in model] == [key(r) for r in table]


def test_a_float64_net_is_counted_at_64_bits():
    """Issue 14, item 14: original and compressed bits at the weights' own precision (its export
    stores float64 codebooks); official_fp16 still counts 16-bit codebooks."""
    torch.manual_seed(0)
    net32 = nn.Sequential(nn.Conv2d(4, 8, 3, bias=True), nn.Flatten(), nn.LazyLinear(2))
    net32(torch.zeros(1, 4, 6, 6))
    net64 = copy.deepcopy(net32).double()
    rows_by = {}
    for net in (net32, net64):
        shared = share(net, {"0": 6}, kmeans_seed=0)
        rows_by[net is net64] = {
            c: acc.compression_table(net, shared, c) for c in ("official", "official_fp16")
        }
    for c in ("official", "official_fp16"):
        r32, r64 = rows_by[False][c], rows_by[True][c]
        for a, b in zip(r32, r64):
            assert b["original_bits"] == 2 * a["original_bits"]
        for row, bits in ((r32[0], 32), (r64[0], 64)):
            index = row["bits_index_per_row"] * row["N"]
            codebook = 6 * 3 * (16 if c == "official_fp16" else bits)
            assert row["compressed_bits"] == pytest.approx(codebook + index + bits * 8)
        assert r64[1]["compressed_bits"] == 64 * r64[1]["params"]  # the linear layer


def test_a_net_without_conv_or_linear_has_no_compression_ratio():  # issue 37, D8
    import dkm

    with pytest.raises(ValueError, match="no Conv2d or Linear layer: a compression ratio needs"):
        dkm.compression_ratio(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm1d(3)))
