"""The benchmarks compare what they say: the bare loop of bench_train_loop is dkm.training.loop's
loop (same
weights, bit for bit), and bench_refresh times every refresh that training does."""

import copy
import dataclasses
import importlib.util
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from dkm.experiments.profiles import get_profile
from dkm.training.loop import TrainConfig, train
from dkm.training.models import small_cnn
from dkm.training.threads import torch_threads

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(n: int, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,)))


def test_bare_loop_gives_dkm_train_weights_bit_for_bit():
    bench = _bench("bench_train_loop")
    torch.manual_seed(0)
    net = small_cnn(width=4).to(memory_format=torch.channels_last)
    data = _data(100)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=32, log_every=2, device="cpu")
    ours, bare = copy.deepcopy(net), copy.deepcopy(net)
    with torch_threads(1):
        train(ours, data, config, progress=False)
        bench.bare_train(bare, *data.tensors, config)
    for (name, a), b in zip(ours.state_dict().items(), bare.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.conv1.weight, net.conv1.weight)  # it did train


def test_refresh_bench_times_every_refresh_of_a_run():
    bench = _bench("bench_refresh")
    profile = get_profile("smoke", refresh_every=2)
    config = dataclasses.replace(profile.retrain, device="cpu", batch_size=16)
    net = bench._net(profile)
    for mode in bench.MODES:
        with torch_threads(1):
            run = bench._run(net, profile, mode, _data(5 * 16), config)  # 5 steps: 2 refreshes
        assert len(run["inside"]) == 2 and all(t > 0 for t in run["inside"])
        shares = bench._cpu_shares(run)
        assert 0 < shares["share"] <= shares["share_run"] < 1
        assert shares["refresh_s"] == sum(run["inside"]) / 2
