"""Row-wise sharing: codebook[assignments] written back, per-layer K/p, skips with reasons, tied
fine-tuning."""

import pytest
import torch
from torch import nn

from dkm.plans import Plan, authors_plan, setting
from dkm.rows import conv_layers, to_rows
from dkm.sharing import share, shared_copy, sharing_seed, tie_centers, untie_centers
from dkm.training.models import small_cnn, wide_resnet


class MixedConvs(nn.Module):
    """3×3, strided, 1×1, grouped and depthwise convs, plus a Conv1d that cannot be row-shared."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(3, 8, 3, padding=1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.depthwise(self.grouped(self.pointwise(self.strided(self.c3(x)))))
        return self.fc(x.mean((2, 3)))


def _distinct_rows(conv):
    return torch.unique(to_rows(conv.weight.detach()), dim=0).shape[0]


def test_every_conv_kind_is_shared_and_written_back():
    torch.manual_seed(0)
    net = MixedConvs()
    result = share(net, num_clusters=4, kmeans_seed=0)
    assert (
        set(result.layers) == {"c3", "strided", "pointwise", "grouped", "depthwise"}
        and not result.skipped
    )
    for name, conv in conv_layers(net):
        layer = result.layers[name]
        assert torch.equal(
            conv.weight.detach(), layer.codebook[layer.assignments].reshape(conv.weight.shape)
        )
        assert _distinct_rows(conv) <= 4
        assert layer.row_length == conv.kernel_size[1]
        # N = C_out · C_in/groups · kh
        assert (
            layer.num_rows
            == conv.out_channels * conv.in_channels // conv.groups * conv.kernel_size[0]
        )
    assert result.layers["c3"].bias_numel == 8 and result.layers["strided"].bias_numel == 0
    net(torch.randn(2, 3, 16, 16))  # the shared net still runs


def test_sharing_is_exact_when_rows_take_few_values():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, bias=False)
    centers = torch.randn(3, 3)
    with torch.no_grad():
        conv.weight.copy_(centers[torch.randint(0, 3, (6 * 4 * 3,))].reshape(conv.weight.shape))
    before = conv.weight.detach().clone()
    net = nn.Sequential(conv)
    share(net, num_clusters=3)
    assert torch.allclose(conv.weight, before, atol=1e-6)


def test_per_layer_k_by_name_and_index_and_exclude():
    torch.manual_seed(0)
    net = small_cnn(width=8)
    result = share(net, num_clusters={"conv1": 2, 1: 3, "conv3": 5, 3: 6}, exclude=["conv3"])
    assert {n: layer.num_clusters for n, layer in result.layers.items()} == {
        "conv1": 2,
        "conv2": 3,
        "conv4": 6,
    }
    assert result.skipped == {"conv3": "excluded by the caller"}
    assert _distinct_rows(net.conv3) > 5


def test_missing_or_oversized_k_is_skipped_with_a_reason():
    net = small_cnn(width=8)  # conv1 has 8·1·3 = 24 rows
    result = share(net, num_clusters={"conv2": 4})
    assert result.skipped["conv1"] == "no K given for this layer"
    result = share(small_cnn(width=8), num_clusters=24)
    assert (
        result.skipped["conv1"] == "K=24 ≥ the number of rows N=24: left dense (the authors' rule)"
    )
    result = share(small_cnn(width=8), num_clusters=30)  # one K for all: capped layer by layer
    assert "K=30 ≥ the number of rows N=24: left dense" in result.skipped["conv1"]


def test_dominant_cluster_fraction():
    torch.manual_seed(0)
    net = small_cnn(width=8)
    result = share(net, num_clusters=5, p=[0.0, 0.5, 0.25, 0.0])
    layer = result.layers["conv2"]
    assert int((layer.assignments == 0).sum()) == int(layer.num_rows * 0.5)
    assert result.layers["conv3"].p == 0.25


def test_authors_settings_on_wrn16_4():
    torch.manual_seed(0)
    net = wide_resnet(16, 4, 0.3, 3, 10, True)
    by_role = setting("45x")
    result = share(net, authors_plan(net, "45x"), max_iter=3)
    assert "K=144 ≥ the number of rows N=144" in result.skipped["conv1"]  # 144 = 16·3·3
    for name, _ in conv_layers(net)[1:]:
        layer, (k, p) = result.layers[name], by_role[name]
        assert layer.num_clusters == k
        assert int((layer.assignments == 0).sum()) >= int(layer.num_rows * p)


def test_shared_copy_uses_the_sharing_seed_and_leaves_the_net():
    torch.manual_seed(0)
    net = small_cnn(width=8)
    before = [w.clone() for w in net.state_dict().values()]
    plan = Plan((3, 4, 4, 5), (0.0, 0.5, 0.0, 0.0))
    copy_, result = shared_copy(net, plan, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values()))
    assert sharing_seed(2) == 1200 and sharing_seed(0) == 1000
    torch.manual_seed(0)
    ref = small_cnn(width=8)
    by_hand = share(ref, plan, kmeans_seed=1000 + 100 * 2)  # layer i: 1000 + 100·seed + i
    for name, layer in result.layers.items():
        assert torch.equal(layer.assignments, by_hand.layers[name].assignments)
    assert all(
        torch.equal(a, b) for a, b in zip(copy_.state_dict().values(), ref.state_dict().values())
    )
    with pytest.raises(ValueError, match="seed=-1"):
        sharing_seed(-1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_clusters": {"nope": 3}}, "unknown layer name 'nope'"),
        ({"num_clusters": {"conv2": 10_000}}, r"num_clusters\[conv2\]=10000 is out of range"),
        ({"num_clusters": {"conv2": 0}}, r"num_clusters\[conv2\]=0"),
        ({"num_clusters": 3, "p": 1.0}, r"p\[conv1\]=1.0 is out of range"),
        ({"num_clusters": [3, 3]}, "num_clusters has 2 entries but the net has 4"),
        ({"num_clusters": 3, "exclude": [7]}, "exclude layer index=7"),
        (
            {"num_clusters": Plan((3, 3), (0.0, 0.0))},
            "num_clusters has 2 entries but the net has 4",
        ),
        ({"num_clusters": None}, "num_clusters is required"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        share(small_cnn(width=8), **kwargs)


def test_non_finite_weights_and_no_conv():
    net = small_cnn(width=8)
    with torch.no_grad():
        net.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        share(net, num_clusters=3)
    with pytest.raises(ValueError, match="no Conv2d"):
        share(nn.Sequential(nn.Linear(2, 2)), num_clusters=3)


def _shared_net_and_row_grads():
    """A shared small net, a batch, and each shared layer's weight gradient (as rows) before
    tying."""
    torch.manual_seed(0)
    net = small_cnn(width=8)
    result = share(net, num_clusters=4)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(net(x), y).backward()
    grads = {n: to_rows(dict(net.named_modules())[n].weight.grad) for n in result.layers}
    net.zero_grad()
    return net, result, (x, y), grads


def test_tied_centers_sum_gradients_per_cluster_and_stay_shared():
    net, result, (x, y), grads = _shared_net_and_row_grads()
    # reference: gradient w.r.t. the shared weight, summed over each cluster by hand
    # (Han et al. 2016, eq. 3)
    ref = {
        n: torch.zeros_like(layer.codebook).index_add_(0, layer.assignments, grads[n])
        for n, layer in result.layers.items()
    }
    codebooks = tie_centers(net, result)
    nn.functional.cross_entropy(net(x), y).backward()
    for (name, layer), cb in zip(result.layers.items(), codebooks):
        assert torch.allclose(cb.grad, ref[name], rtol=1e-4, atol=1e-6)
    torch.optim.SGD(codebooks, lr=0.1).step()
    untie_centers(net, result)
    for name, layer in result.layers.items():
        conv = dict(net.named_modules())[name]
        assert isinstance(conv.weight, nn.Parameter)
        assert torch.equal(conv.weight.detach(), layer.weight())
        assert _distinct_rows(conv) <= 4


def test_mean_center_gradient_is_the_cluster_sum_divided_by_its_size():
    net, result, (x, y), grads = _shared_net_and_row_grads()
    ref = {}
    # by hand: the mean of the weight gradient over each cluster's rows
    for n, layer in result.layers.items():
        ref[n] = torch.stack(
            [
                grads[n][layer.assignments == k].mean(0)
                if (layer.assignments == k).any()
                else torch.zeros(grads[n].shape[1])
                for k in range(len(layer.codebook))
            ]
        )
    weights = {n: dict(net.named_modules())[n].weight.detach().clone() for n in result.layers}
    codebooks = tie_centers(net, result, gradient="mean")
    for n in result.layers:  # the forward is unchanged: the shared weight itself
        assert torch.equal(dict(net.named_modules())[n].weight, weights[n])
    nn.functional.cross_entropy(net(x), y).backward()
    for name, cb in zip(result.layers, codebooks):
        torch.testing.assert_close(cb.grad, ref[name], rtol=1e-4, atol=1e-7)
    untie_centers(net, result)
    with pytest.raises(ValueError, match="gradient='max'.*'mean', 'sum'"):
        tie_centers(net, result, gradient="max")


def test_tied_codebook_gradient_is_reproducible_on_two_threads():
    # many rows in few clusters: an atomic accumulation (the backward of codebook[assignments])
    # gives run-to-run differences in the last bits here; the center fine-tuning must not
    from dkm.sharing import TiedWeight
    from dkm.training.threads import torch_threads

    g = torch.Generator().manual_seed(0)
    assignments, upstream = (
        torch.randint(0, 4, (300_000,), generator=g),
        torch.randn(100_000, 3, 3, generator=g),
    )
    tied = TiedWeight(assignments, (100_000, 3, 3))

    def grad():
        codebook = torch.zeros(4, 3, requires_grad=True)
        tied(codebook).backward(upstream)
        return codebook.grad

    with torch_threads(2):
        grads = [grad() for _ in range(5)]
    assert all(torch.equal(grads[0], other) for other in grads[1:])
    expected = torch.zeros(4, 3, dtype=torch.float64).index_add_(
        0, assignments, upstream.reshape(-1, 3).double()
    )
    assert torch.allclose(grads[0].double(), expected, rtol=1e-5, atol=1e-3)


def test_dominant_cluster_dropped_where_it_would_be_empty():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3)
    )  # N = 2·1·3 = 6 rows: int(6·0.1) = 0 rows would be dominant
    result = share(net, num_clusters=2, p=0.1)
    assert result.layers["0"].p == 0.0 and result.layers["0"].num_clusters == 2
