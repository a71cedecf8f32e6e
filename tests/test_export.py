"""Compact export: bit-exact round trip, size against the `fixed` convention, clear errors."""

import math
import os
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import dkm.io as dkm_io
from dkm.accounting import compression_table, fixed_index_width
from dkm.export import dkmfile as export
from dkm.export.dkmfile import ExportFormatError, load_shared, save_shared
from dkm.sharing import SharedLayer, ShareResult


class _Net(nn.Module):
    """Plain, grouped, depthwise and 1×1 convs, batch norm, a linear layer."""

    def __init__(self, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=4, bias=False)  # grouped
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, groups=width)  # depthwise
        self.bn3 = nn.BatchNorm2d(width)
        self.conv4 = nn.Conv2d(width, 2 * width, 1)  # 1×1
        self.conv5 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)  # left dense
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn3(self.conv3(self.conv2(x))))
        x = torch.relu(self.conv5(self.conv4(x)))
        return self.fc(x.mean(dim=(2, 3)))


# K per shared conv: 5 (3 bits, not a power of 2), 2 (1 bit), 1 (0 bits), 16 (4 bits)
_KS = {"conv1": 5, "conv2": 2, "conv3": 1, "conv4": 16}


def _shared_net(seed=0, width=16):
    """A net whose convs 1–4 are shared by hand: random codebook, random assignments,
    W = codebook[a]."""
    torch.manual_seed(seed)
    net = _Net(width)
    g = torch.Generator().manual_seed(seed)
    result = ShareResult(skipped={"conv5": "kept dense for the test"})
    for i, (name, conv) in enumerate(
        (n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)
    ):
        if name not in _KS:
            continue
        c_out, c_in, kh, kw = shape = tuple(conv.weight.shape)
        codebook = torch.randn(_KS[name], kw, generator=g)
        assignments = torch.randint(0, _KS[name], (c_out * c_in * kh,), generator=g)
        layer = SharedLayer(
            name,
            i,
            shape,
            codebook,
            assignments,
            p=0.25 * i,
            bias_numel=0 if conv.bias is None else conv.bias.numel(),
        )
        with torch.no_grad():
            conv.weight.copy_(layer.weight())
        result.layers[name] = layer
    # give the batch norms non-trivial running statistics, so that losing them would show
    net.train()
    net(torch.randn(8, 3, 6, 6, generator=g))
    return net.eval(), result


def _x():
    return torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("coding", export.CODINGS)
def test_round_trip_is_bit_exact(tmp_path, coding):
    net, shared = _shared_net(seed=0)
    path = tmp_path / "net.dkm"
    save_shared(net, shared, path, coding=coding)
    fresh = _Net().eval()  # a different random init
    assert not torch.equal(fresh(_x()), net(_x()))
    loaded = load_shared(path, fresh)
    assert torch.equal(fresh(_x()), net(_x()))
    assert loaded.skipped == shared.skipped
    assert list(loaded.layers) == list(shared.layers)
    for name, layer in shared.layers.items():
        back = loaded.layers[name]
        assert torch.equal(back.codebook, layer.codebook) and torch.equal(
            back.assignments, layer.assignments
        )
        fields = lambda x: (x.index, x.shape, x.p, x.bias_numel)  # noqa: E731
        assert fields(back) == fields(layer)
        assert back.assignments.dtype == torch.int64
    for key, t in net.state_dict().items():  # every buffer too (running stats, num_batches_tracked)
        assert torch.equal(fresh.state_dict()[key], t), key


@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8, 9])
def test_pack_indexes_against_a_bit_string(bits):
    g = torch.Generator().manual_seed(bits)
    a = torch.randint(0, 2**bits, (37,), generator=g)
    data = export.pack_indexes(a, bits)
    # reference: concatenate each index as a `bits`-digit binary string, pad with 0 to whole bytes
    s = "".join(format(int(v), f"0{bits}b") for v in a)
    s += "0" * (-len(s) % 8)
    assert data == bytes(int(s[i : i + 8], 2) for i in range(0, len(s), 8))
    assert len(data) == math.ceil(37 * bits / 8)
    assert torch.equal(export.unpack_indexes(data, 37, bits), a)


def test_file_size_against_the_fixed_convention(tmp_path):
    net, shared = _shared_net(seed=1, width=32)
    info = save_shared(net, shared, tmp_path / "net.dkm")
    assert info["bytes"] == os.path.getsize(tmp_path / "net.dkm")
    # exact accounting: codebooks (K·s·4 bytes) + packed indexes (⌈N·b/8⌉) + raw state + header
    layers = shared.layers.values()
    payload = sum(
        4 * layer.num_clusters * layer.row_length
        + math.ceil(layer.num_rows * fixed_index_width(layer.num_clusters) / 8)
        for layer in layers
    )
    state = sum(
        t.numel() * t.element_size()
        for k, t in net.state_dict().items()
        if k not in {f"{n}.weight" for n in shared.layers}
    )
    assert info["bytes"] == info["header_bytes"] + payload + state
    # the fixed convention: same bits, indexes not padded to whole bytes; BN state is not in it
    fixed = sum(r["compressed_bits"] for r in compression_table(net, shared, "fixed")) / 8
    assert info["convention_bytes"] == fixed and info["convention"] == "fixed"
    bn = sum(
        t.numel() * t.element_size() for k, t in net.state_dict().items() if k.startswith("bn")
    )
    assert info["uncounted_state_bytes"] == bn
    expected = fixed + bn
    # padding: less than one byte per shared layer; header within the declared allowance
    assert 0 <= info["bytes"] - info["header_bytes"] - expected < len(shared.layers)
    # one metadata entry per shared layer and per stored state tensor
    # = one per state_dict entry here
    allowance = export.header_allowance(len(net.state_dict()))
    assert info["header_bytes"] <= allowance == info["header_allowance_bytes"]
    # the brief's criterion: within 5% of the fixed-convention size (+ BN state)
    # plus the header allowance
    assert expected <= info["bytes"] <= 1.05 * expected + allowance
    assert "the fixed convention counts" in export.size_report(info)


def _dominant(seed=0, width=32, p=0.9):
    """A shared net whose layers have one dominant cluster (p of the rows), as the authors'."""
    net, shared = _shared_net(seed=seed, width=width)
    g = torch.Generator().manual_seed(seed + 7)
    for layer in shared.layers.values():
        k, n = layer.num_clusters, layer.num_rows
        others = torch.randint(1, max(k, 2), (n,), generator=g) if k > 1 else torch.zeros(n)
        layer.assignments = torch.where(torch.rand(n, generator=g) < p, 0, others).long()
        with torch.no_grad():
            dict(net.named_modules())[layer.name].weight.copy_(layer.weight())
    return net, shared


@pytest.mark.parametrize("coding", export.CODINGS)
def test_file_size_matches_the_codings_convention(tmp_path, coding):
    """The file spends what its coding's convention counts (fixed → fixed, huffman → huffman,
    rans → official, the entropy), plus the uncounted state and header, within the allowance."""
    net, shared = _dominant()
    info = save_shared(net, shared, tmp_path / "net.dkm", coding=coding)
    convention = export.CONVENTION_OF[coding]
    counted = sum(r["compressed_bits"] for r in compression_table(net, shared, convention)) / 8
    assert info["convention"] == convention and info["convention_bytes"] == pytest.approx(counted)
    extra = info["bytes"] - info["convention_bytes"] - info["uncounted_state_bytes"]
    assert info["header_bytes"] <= extra <= export.size_allowance(info) - info[
        "uncounted_state_bytes"]  # fmt: skip
    fresh = _Net(32).eval()
    load_shared(tmp_path / "net.dkm", fresh)
    assert all(torch.equal(fresh.state_dict()[k], t) for k, t in net.state_dict().items())


def test_entropy_coding_makes_the_file_smaller_with_a_dominant_cluster(tmp_path):
    net, shared = _dominant()
    sizes = {c: save_shared(net, shared, tmp_path / f"{c}.dkm", coding=c)["bytes"]
             for c in export.CODINGS}  # fmt: skip
    assert sizes["rans"] < sizes["huffman"] < sizes["fixed"]


def test_version_1_files_still_load():
    """tests/data/export_v1.dkm was written by format version 1 (fixed coding only) from
    `_shared_net(seed=0, width=8)`."""
    path = Path(__file__).parent / "data" / "export_v1.dkm"
    assert struct.unpack_from("<H", path.read_bytes(), 8) == (1,)
    net, shared = _shared_net(seed=0, width=8)
    fresh = _Net(8).eval()
    loaded = load_shared(path, fresh)
    assert all(torch.equal(loaded.layers[n].assignments, layer.assignments)
               and torch.equal(loaded.layers[n].codebook, layer.codebook)
               for n, layer in shared.layers.items())  # fmt: skip
    for k, t in net.state_dict().items():
        if "running_" in k:  # batch-norm statistics of a forward pass: float sums of this CPU
            assert torch.allclose(fresh.state_dict()[k], t, rtol=1e-5, atol=1e-7), k
        else:  # weights: W = codebook[a] and the seeded initialization, bit for bit
            assert torch.equal(fresh.state_dict()[k], t), k


@pytest.mark.parametrize("coding", ["huffman", "rans"])
def test_corrupt_entropy_coded_indexes_are_caught(tmp_path, coding):
    net, shared = _dominant(width=16)
    path = tmp_path / "net.dkm"
    save_shared(net, shared, path, coding=coding)
    data = bytearray(path.read_bytes())
    data[-300] ^= 0x10  # inside the payload: the CRC catches it
    path.write_bytes(bytes(data))
    _expect_error(path, _Net(16), ["checksum"])


def test_save_rejects_an_unknown_coding(tmp_path):
    net, shared = _shared_net()
    with pytest.raises(ValueError, match="coding='zip' is not allowed: allowed fixed, huffman"):
        save_shared(net, shared, tmp_path / "x.dkm", coding="zip")
    assert not (tmp_path / "x.dkm").exists()


def test_save_is_atomic(tmp_path, monkeypatch):
    net, shared = _shared_net()
    path = tmp_path / "net.dkm"
    path.write_bytes(b"old content")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(
        dkm_io.os, "replace", broken_replace
    )  # the one atomic writer (dkm/io/__init__.py)
    with pytest.raises(OSError, match="disk full"):
        save_shared(net, shared, path)
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["net.dkm"]  # no temp file left behind


# ----------------------------------------------- bad files: ExportFormatError naming file + problem
@pytest.fixture
def saved(tmp_path):
    net, shared = _shared_net()
    path = tmp_path / "net.dkm"
    save_shared(net, shared, path)
    return path


def _expect_error(path, net, words):
    with pytest.raises(ExportFormatError) as err:
        load_shared(path, net)
    message = str(err.value)
    assert str(path) in message
    for w in words:
        assert w in message, message


def test_corrupted_payload(saved):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0x40
    saved.write_bytes(bytes(data))
    _expect_error(saved, _Net(), ["checksum", "corrupted"])


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:-100])
    _expect_error(saved, _Net(), ["truncated"])
    saved.write_bytes(data[:10])
    _expect_error(saved, _Net(), ["truncated"])


def test_trailing_bytes(saved):
    saved.write_bytes(saved.read_bytes() + b"\0")
    _expect_error(saved, _Net(), ["trailing bytes"])


def test_wrong_magic(saved):
    saved.write_bytes(b"NOTADKMF" + saved.read_bytes()[8:])
    _expect_error(saved, _Net(), ["magic", "NOTADKMF"])


def test_wrong_version(saved):
    data = bytearray(saved.read_bytes())
    struct.pack_into("<H", data, 8, max(export.READABLE_VERSIONS) + 1)
    saved.write_bytes(bytes(data))
    _expect_error(saved, _Net(), ["version", str(max(export.READABLE_VERSIONS) + 1)])


def test_architecture_mismatch_shape(saved):
    _expect_error(saved, _Net(width=8), ["architecture mismatch", "conv1"])


def test_architecture_mismatch_unknown_layer(saved):
    class Renamed(_Net):
        def __init__(self):
            super().__init__()
            self.conv_one = self.conv1
            del self.conv1

    _expect_error(saved, Renamed(), ["architecture mismatch", "'conv1'"])


def test_architecture_mismatch_state(saved):
    class Extra(_Net):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(10, 2)

    _expect_error(saved, Extra(), ["architecture mismatch", "head.weight"])


def test_save_rejects_a_layer_that_does_not_fit(tmp_path):
    net, shared = _shared_net()
    shared.layers["fc"] = shared.layers.pop("conv1")
    with pytest.raises(ValueError, match="'fc'"):
        save_shared(net, shared, tmp_path / "x.dkm")
    net, shared = _shared_net()
    shared.layers["conv1"].assignments[0] = 7  # K = 5
    with pytest.raises(ValueError, match="assignments"):
        save_shared(net, shared, tmp_path / "x.dkm")
    assert not (tmp_path / "x.dkm").exists()
