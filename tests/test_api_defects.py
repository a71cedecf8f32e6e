"""Issue 37's API defects (D1–D7, D9, D10) and the `.dkm` loader's size caps (S4).

Each test reproduces the defect as the audit described it; on the code before the fix it fails.
References are hand computations (bits, parameter counts) and the untied equivalent net."""

import json
import time
import tracemalloc
import zlib

import pytest
import torch
from torch import nn

from dkm import accounting as acc
from dkm.clustering import assign
from dkm.energy import layer_inventory, net_energy
from dkm.energy.shares import make_shares, plan_shares
from dkm.export.dkmfile import ExportFormatError, load_shared, save_shared
from dkm.plans import layer_specs, plan_clusters, uniform_plan
from dkm.regularizer import KMeansRegularizer
from dkm.sharing import ShareResult, SharedLayer, share


def _tied(bias=True):
    """conv 0 and conv 2 use one weight (one nn.Parameter); each has its own bias."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, bias=bias), nn.ReLU(), nn.Conv2d(4, 4, 3, bias=bias))
    net[2].weight = net[0].weight
    return net


# ---------------------------------------------------------------- D1 tied weights
@pytest.mark.parametrize("convention", ["official", "fixed"])
def test_d1_a_tied_weight_is_counted_once(convention):
    net = _tied()
    result = share(net, 4, kmeans_seed=0)
    layer = result.layers["0"]
    # by hand: the weight (144) and the two biases (4 + 4) once, at 32 bits
    original = 32 * (144 + 4 + 4)
    compressed = acc.layer_bits(48, 3, layer.counts().tolist(), 4, convention) + 32 * 4
    assert acc.compression_ratio(net, result, convention) == pytest.approx(original / compressed)
    assert acc.compression_ratio(net, None, convention) == pytest.approx(1.0)
    assert sum(r["params"] for r in acc.compression_table(net)) == 152


def test_d1_a_tied_weight_is_counted_once_from_specs():
    specs = layer_specs(_tied())
    assert specs[1]["tied_to"] == "0"
    rows = acc.table_from_specs(specs, {"K": [4, 4], "p": [0.0, 0.0]})
    assert rows[1]["original_bits"] == rows[1]["compressed_bits"] == 0
    assert uniform_plan(_tied(), 4).estimated_cr == pytest.approx(acc.total_row(rows)["cr"])


def test_d1_a_tied_weight_is_stored_once_and_reloads_tied(tmp_path):
    net = _tied()
    result = share(net, 4, kmeans_seed=0)
    save_shared(net, result, tmp_path / "n.dkm", coding="rans")
    data = (tmp_path / "n.dkm").read_bytes()
    from dkm.export.dkmfile import _PREFIX

    meta_len = _PREFIX.unpack_from(data)[2]
    meta = json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + meta_len]))
    assert {"key": "2.weight", "same_as": "0.weight"} in meta["state"]
    assert not any(e["key"] == "0.weight" for e in meta["state"])  # the codebook holds it
    fresh = _tied()
    load_shared(tmp_path / "n.dkm", fresh)
    assert fresh[2].weight is fresh[0].weight
    assert torch.equal(fresh[0].weight, net[0].weight)
    assert torch.equal(fresh[2].bias, net[2].bias)


def test_d1_a_tied_conv_is_costed_with_its_sharing():
    net = _tied()
    result = share(net, 4, kmeans_seed=0)
    layers = layer_inventory(net, (4, 12, 12)).layers
    assert [(layer.name, layer.owner) for layer in layers] == [("0", "0"), ("2", "0")]
    rows = net_energy(layers, shares=make_shares(layers, result))
    assert rows[0]["K"] == rows[1]["K"] == 4
    dense = net_energy(layers)
    assert rows[1]["total"] < dense[1]["total"]
    assert layer_inventory(net, (4, 12, 12)).totals()["params"] == 152


def test_d1_fine_tuning_the_centers_of_a_tied_weight_is_one_clear_error():
    from dkm.sharing import tie_centers

    net = _tied()
    result = share(net, 4, kmeans_seed=0)
    with pytest.raises(ValueError, match="conv '2' uses the weight of shared conv '0'"):
        tie_centers(net, result)
    assert not nn.utils.parametrize.is_parametrized(net[0])


def test_d1_a_tied_weight_gets_one_regularizer_term():
    net = _tied()
    reg = KMeansRegularizer(net, 2.0, 4)
    assert reg.layer_names == ["0"] and reg.tied == {"2": "0"}
    alone = nn.Sequential(nn.Conv2d(4, 4, 3))
    alone[0].weight = net[0].weight
    ref = KMeansRegularizer(alone, 2.0, 4)
    assert torch.equal(reg.penalty(), ref.penalty())
    # the penalty is λ/2 × the k-means error, once
    assert float(reg.penalty().detach()) == pytest.approx(reg.layer_errors()["0"], rel=1e-6)


# ---------------------------------------------------------------- D2 a module called twice
class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.c(x)))


def test_d2_a_module_called_twice_is_costed_per_call_with_its_sharing():
    torch.manual_seed(0)
    net = _Twice()
    result = share(net, 4, kmeans_seed=0)
    inv = layer_inventory(net, (4, 8, 8))
    assert [layer.name for layer in inv.layers] == ["c", "c#2"]
    assert inv.totals()["params"] == 4 * 4 * 9 + 4  # the weight once
    rows = net_energy(inv.layers, shares=make_shares(inv.layers, result))
    assert rows[0]["K"] == rows[1]["K"] == 4
    assert rows[0]["total"] == pytest.approx(rows[1]["total"])
    planned = net_energy(inv.layers, shares=plan_shares(inv.layers, uniform_plan(net, 4)))
    assert planned[1]["K"] == 4


# ---------------------------------------------------------------- D3, D4, D5
def test_d3_regularizer_on_a_meta_net_is_one_clear_error():
    with torch.device("meta"):
        net = _tied()
    with pytest.raises(ValueError, match="KMeansRegularizer: the net is on the meta device"):
        KMeansRegularizer(net, 1.0, 4)


def test_d4_save_shared_refuses_a_net_that_is_not_its_share_result(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3))
    result = share(net, 4, kmeans_seed=0)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1.0
    with pytest.raises(ValueError, match="changed after share"):
        save_shared(net, result, tmp_path / "n.dkm")
    net2 = nn.Sequential(nn.Conv2d(4, 4, 3))
    result2 = share(net2, 4, kmeans_seed=0)
    result2.layers["0"].codebook[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite codebook"):
        save_shared(net2, result2, tmp_path / "n.dkm")
    assert not (tmp_path / "n.dkm").exists()


def test_d5_a_parametrized_weight_is_one_clear_error():
    net = nn.Sequential(nn.Conv2d(4, 4, 3))
    nn.utils.parametrizations.weight_norm(net[0])
    before = net[0].weight.detach().clone()
    with pytest.raises(ValueError, match="conv '0' has a parametrized weight"):
        share(net, 4)
    assert torch.equal(net[0].weight, before)


# ---------------------------------------------------------------- D6 non-square kernels
def test_d6_plans_take_non_square_kernels():
    net = nn.Sequential(nn.Conv2d(4, 8, (1, 7)), nn.Conv2d(8, 8, (3, 1)))
    specs = layer_specs(net)
    rows = acc.table_from_specs(specs, {"K": [4, 4], "p": [0, 0]})
    real = acc.compression_table(net)
    # N = C_out·C_in·kh rows of length s = kw, as the real net's table
    assert [(r["N"], r["s"], r["params"]) for r in rows] == [(32, 7, 232), (192, 1, 200)]
    assert [(r["N"], r["s"], r["params"]) for r in real] == [(32, 7, 232), (192, 1, 200)]
    assert list(uniform_plan(net, 4).K) == [4, 4]
    assert plan_clusters(net, 4.0).estimated_cr >= 4.0


# ---------------------------------------------------------------- D7 dtype
def test_d7_a_float64_file_never_loads_into_a_float32_net(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2)).double()
    save_shared(net, share(net, 4, kmeans_seed=0), tmp_path / "n.dkm")
    with pytest.raises(ExportFormatError, match="float64 weights in the file, float32 in the net"):
        load_shared(tmp_path / "n.dkm", nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(),
                                                       nn.Linear(4, 2)))  # fmt: skip
    plain = nn.Sequential(nn.Linear(4, 2)).double()
    save_shared(plain, ShareResult(), tmp_path / "p.dkm")
    with pytest.raises(ExportFormatError, match="'0.weight' is float64"):
        load_shared(tmp_path / "p.dkm", nn.Sequential(nn.Linear(4, 2)))


# ---------------------------------------------------------------- D9, D10
@pytest.mark.parametrize("s", [1, 2])
def test_d9_assign_with_a_float64_codebook_returns_its_nearest_center(s):
    X = torch.ones(1, s, dtype=torch.float32)
    # both centers round to 1.0 in float32 (a tie: index 0); in float64 center 1 is nearer
    codebook = torch.tensor([[1.0 - 1e-9] * s, [1.0 + 1e-10] * s], dtype=torch.float64)
    assignments, sq = assign(X, codebook)
    assert int(assignments[0]) == 1
    assert float(sq[0]) == pytest.approx(s * 1e-20, rel=1e-3)


def test_d10_rans_with_too_many_clusters_names_the_layer_and_the_coding(tmp_path):
    net = nn.Sequential(nn.Conv2d(200, 128, 3, bias=False))
    K, N = 70_000, 200 * 128 * 3
    codebook = torch.randn(K, 3)
    layer = SharedLayer("0", 0, tuple(net[0].weight.shape), codebook, torch.arange(N) % K)
    with torch.no_grad():
        net[0].weight.copy_(layer.weight())
    result = ShareResult(layers={"0": layer})
    with pytest.raises(ValueError, match=r"shared layer '0', coding='rans': .*65536"):
        save_shared(net, result, tmp_path / "n.dkm", coding="rans")
    assert not (tmp_path / "n.dkm").exists()


# ---------------------------------------------------------------- S4 size caps
def _shared_file(tmp_path, coding="fixed"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8))
    save_shared(net, share(net, 4, kmeans_seed=0), tmp_path / "n.dkm", coding=coding)
    return tmp_path / "n.dkm", lambda: nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8))


def _rewrite(path, edit, level=9):
    from dkm.export.dkmfile import _PREFIX, MAGIC

    data = path.read_bytes()
    _, version, meta_len, payload_len, _ = _PREFIX.unpack_from(data)
    body = data[_PREFIX.size :]
    meta_bytes = zlib.compress(edit(json.loads(zlib.decompress(body[:meta_len]))), level)
    payload = body[meta_len:]
    crc = zlib.crc32(payload, zlib.crc32(meta_bytes))
    path.write_bytes(_PREFIX.pack(MAGIC, version, len(meta_bytes), payload_len, crc)
                     + meta_bytes + payload)  # fmt: skip


def _refused_cheaply(path, make_net, match):
    net = make_net()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ExportFormatError, match=match):
            load_shared(path, net)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MB allocated to refuse a crafted file"


def test_s4_a_zlib_bomb_in_the_metadata_is_refused_within_a_few_mb(tmp_path):
    path, make_net = _shared_file(tmp_path)
    # 100 MB of metadata compressed to about 100 kB
    _rewrite(path, lambda m: json.dumps({**m, "pad": "0" * 100_000_000}).encode())
    assert path.stat().st_size < 200_000
    _refused_cheaply(path, make_net, "decompresses to more than")


@pytest.mark.parametrize(
    "coding,field,values,match",
    [
        ("huffman", "lengths", list(range(1, 300)), "K=4"),
        ("huffman", "lengths", [1, 2, 3, 10**7], r"0\.\.3"),
        ("rans", "freqs", [0] * 2_000_000 + [2**16], "decompresses to more than"),
        ("rans", "freqs", [2**16, 0, 0, 0, 0], "K=4"),
    ],
)
def test_s4_crafted_coder_parameters_are_refused_before_they_size_anything(
    tmp_path, coding, field, values, match
):
    path, make_net = _shared_file(tmp_path, coding)

    def edit(m):
        m["layers"][0][field] = values
        return json.dumps(m).encode()

    _rewrite(path, edit)
    _refused_cheaply(path, make_net, match)


def test_s4_an_inconsistent_layer_entry_is_a_format_error(tmp_path):
    path, make_net = _shared_file(tmp_path)
    for field, value in (("index", 3), ("p", 1.5), ("bias_numel", 99), ("K", 10**9)):

        def edit(m, field=field, value=value):
            m["layers"][0][field] = value
            return json.dumps(m).encode()

        original = path.read_bytes()
        _rewrite(path, edit)
        with pytest.raises(ExportFormatError):
            load_shared(path, make_net())
        path.write_bytes(original)
    load_shared(path, make_net())  # the untouched file loads
