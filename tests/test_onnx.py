"""Issue 36, item 2: the shared net as an ONNX graph (dkm.export.onnx), run in ONNX Runtime
against the PyTorch shared net, on the smoke and the default profile's nets."""

import math

import pytest
import torch
from torch import nn

from dkm import accounting as acc
from dkm.app.cli import main
from dkm.experiments import pipeline as pl
from dkm.experiments.profiles import get_profile
from dkm.plans import authors_plan, uniform_plan
from dkm.sharing import share

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
from dkm.export import onnx as ox  # noqa: E402

TYPES = {torch.uint8: onnx.TensorProto.UINT8, torch.uint16: onnx.TensorProto.UINT16}


def _profile_net(name: str, seed: int = 0):
    torch.manual_seed(seed)
    p = get_profile(name)
    return pl._build(pl.pretrain_config(p)).eval(), p


@pytest.mark.parametrize(
    "profile, plan",
    [
        ("smoke", lambda net: uniform_plan(net, 6, 0.5)),
        ("cpu", lambda net: authors_plan(net, "45x")),
    ],
)
def test_onnx_runtime_gives_the_shared_nets_logits(tmp_path, profile, plan):
    net, p = _profile_net(profile)
    result = share(net, plan(net), kmeans_seed=1000)
    x = torch.randn(4, *pl.dkm_data.INPUT_SHAPES[p.dataset])
    info = ox.save_onnx(net, result, tmp_path / "n.onnx", (1, *x.shape[1:]))
    with torch.no_grad():
        want = net(x)
    got = ox.run_onnx(tmp_path / "n.onnx", x)  # batch 4: the batch axis is dynamic
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()
    assert info["bytes"] == (tmp_path / "n.onnx").stat().st_size

    # every shared conv is a codebook and indexes of the smallest integer type, no dense weight
    model = onnx.load(tmp_path / "n.onnx")
    inits = {i.name: i for i in model.graph.initializer}
    dense = {tuple(i.dims) for i in inits.values()}
    for name, layer in result.layers.items():
        K, N = layer.num_clusters, layer.num_rows
        if ox.packs_smaller(K):  # ⌈log2 K⌉ bits per row, packed in bytes
            want = ([math.ceil(N * acc.fixed_index_width(K) / 8)], onnx.TensorProto.UINT8)
        else:
            want = ([N], TYPES[ox.index_dtype(K)])
        assert want in [(list(i.dims), i.data_type) for i in inits.values()], name
        assert [layer.num_clusters, layer.row_length] in [list(i.dims) for i in inits.values()]
        assert tuple(layer.shape) not in dense, f"{name} stored dense"
    assert {"Gather", "BitShift", "BitwiseAnd", "Reshape", "Conv"} <= {
        n.op_type for n in model.graph.node
    }
    # the file: the fixed count, the uncounted (batch-norm) state, and the graph's few kB
    assert info["bytes"] < info["fixed_bytes"] + 30_000 + 0.05 * info["fixed_bytes"]


def test_index_types_and_the_deployable_cr_by_hand():
    assert [ox.index_dtype(k) for k in (2, 256, 257, 65536, 65537)] == [
        torch.uint8, torch.uint8, torch.uint16, torch.uint16, torch.int32,
    ]  # fmt: skip
    # packed where ⌈log2 K⌉ is below the type's width: not K = 1, 129–256, 32769–65536
    assert [ox.packs_smaller(k) for k in (1, 2, 128, 129, 256, 257, 40000, 70000)] == [
        False, True, True, False, False, True, False, True,
    ]  # fmt: skip
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False))  # N = 96 rows of s = 3
    result = share(net, 7, kmeans_seed=0)
    # K = 7 rounded up to 8 centers of 3 fp32 values, ⌈log2 7⌉ = 3 bits per row
    want = (8 * 4 * 9 * 32) / (8 * 3 * 32 + 96 * 3)
    assert ox.deployable_cr(net, result) == pytest.approx(want)
    assert ox.deployable_cr(net, result) < acc.compression_ratio(net, result, "fixed")
    result8 = share(nn.Sequential(nn.Conv2d(4, 8, 3, bias=False)), 8, kmeans_seed=0)
    assert ox.deployable_cr(net, result8) == pytest.approx(want)  # K = 8 needs no rounding
    assert math.isfinite(want)


def test_a_net_changed_after_share_is_refused(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3))
    result = share(net, 4, kmeans_seed=0)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="changed after share"):
        ox.save_onnx(net, result, tmp_path / "n.onnx", (1, 4, 8, 8))
    assert not (tmp_path / "n.onnx").exists()


def test_cli_share_onnx_prints_the_size_and_the_crs(dirs, capsys, tmp_path):
    path = tmp_path / "smoke.onnx"
    assert main(["share", "--profile", "smoke", "--target-cr", "8", "--onnx", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: " in out and "deployable" in out and "fixed convention counts" in out
    onnx.checker.check_model(onnx.load(path))


def test_cli_onnx_without_the_extra_is_one_line(dirs, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["share", "--profile", "smoke", "--target-cr", "8", "--onnx", "x.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "deep-kmeans[onnx]" in err
    assert not (dirs / "runs").exists()
