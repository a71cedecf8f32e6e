"""dkm.training.loop: learning, determinism, resume after SIGKILL (bit-exact), checkpoint safety,
the
regularizer term, batch-norm recalibration and evaluation, each against a reference (an
uninterrupted run, autograd-free hand computations, manual counts)."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F_
from torch import nn
from torch.utils.data import TensorDataset

from dkm import regularizer as spectral
from dkm.training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from dkm.training.data import epoch_order
from dkm.training.evaluation import evaluate, recalibrate_batchnorm
from dkm.training.loop import History, TrainConfig, show_progress, train
from dkm.training.models import small_cnn, wide_resnet

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent


def toy_data(n=256, seed=0, noise=0.6):
    """4 classes of 1×8×8 images: class k has its k-th quadrant bright, plus Gaussian noise
    (learnable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    X = noise * torch.randn(n, 1, 8, 8, generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        X[y == k, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
    return TensorDataset(X, y)


def tiny_wrn(seed=0):
    """WRN-10-1 with dropout (so resuming must also restore the torch RNG)."""
    torch.manual_seed(seed)
    return wide_resnet(depth=10, widen_factor=1, dropout=0.3, in_channels=1, num_classes=4)


class FakeRegularizer:
    """lam/2·Σ‖W − c‖² over conv weights, c = mean of W refreshed every T steps: stateful like
    KMeansRegularizer."""

    def __init__(self, net, lam=0.05, refresh_every=3, delay=0.0):
        self.weights = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
        self.lam, self.refresh_every, self.delay, self.step, self.calls = (
            lam,
            refresh_every,
            delay,
            0,
            0,
        )
        self.refresh()

    def refresh(self):
        self.centers = [w.detach().mean().clone() for w in self.weights]

    def penalty(self):
        self.calls += 1
        return self.lam / 2 * sum(((w - c) ** 2).sum() for w, c in zip(self.weights, self.centers))

    def after_step(self):
        time.sleep(self.delay)
        self.step += 1
        if self.step % self.refresh_every == 0:
            self.refresh()

    def layer_errors(self):
        return {
            i: float(((w.detach() - c) ** 2).sum())
            for i, (w, c) in enumerate(zip(self.weights, self.centers))
        }

    def state_dict(self):
        return {"step": self.step, "centers": [c.clone() for c in self.centers]}

    def load_state_dict(self, state):
        self.step, self.centers = state["step"], [c.clone() for c in state["centers"]]


N = 128  # images of the resume runs: 8 steps per epoch
RESUME_CFG = TrainConfig(
    epochs=3,
    lr=0.05,
    batch_size=16,
    seed=3,
    device="cpu",
    log_every=2,
    checkpoint_every=2,
    threads=1,
)


def resume_child(ckpt_dir):
    """Run by the SIGKILL test in a subprocess: the same run as `run_reference`, slowed down,
    checkpointed."""
    net = tiny_wrn()
    train(
        net,
        toy_data(N),
        RESUME_CFG,
        FakeRegularizer(net, delay=0.04),
        checkpoint_dir=ckpt_dir,
        progress=False,
    )


def params(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def strip_seconds(history):
    d = history.to_dict()
    for r in d["epochs"]:
        r.pop("seconds")
    return d


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run every resume test compares against."""
    net = tiny_wrn()
    history = train(net, toy_data(N), RESUME_CFG, FakeRegularizer(net), progress=False)
    return params(net), history


# ---------------------------------------------------------------- learning and determinism
def test_loss_decreases_and_net_learns():
    torch.manual_seed(0)
    net = small_cnn(in_channels=1, num_classes=4, width=8)
    cfg = TrainConfig(epochs=3, lr=0.2, batch_size=32, seed=0, device="cpu", log_every=4)
    history = train(net, toy_data(256), cfg, eval_set=toy_data(256, seed=1), progress=False)
    losses = [r["loss"] for r in history.steps]  # means over 4 steps; chance level is ln 4 ≈ 1.39
    assert losses[0] > 1.2 and losses[-1] < 0.2 * losses[0]
    assert history.epochs[-1]["eval_accuracy"] >= 0.95
    assert (
        history.epochs[-1]["eval_accuracy"]
        == evaluate(net, toy_data(256, seed=1), device="cpu")["accuracy"]
    )
    assert net.training  # modes restored


def test_same_seed_same_weights_other_seed_differs():
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=16, seed=1, device="cpu")
    nets = [tiny_wrn() for _ in range(3)]
    for net, seed in zip(nets, (1, 1, 2)):
        train(net, toy_data(128), dataclass_replace(cfg, seed=seed), progress=False)
    assert_same_weights(params(nets[0]), params(nets[1]))
    assert not torch.equal(nets[0].fc.weight, nets[2].fc.weight)


def dataclass_replace(cfg, **kw):
    return TrainConfig.from_dict({**cfg.to_dict(), **kw})


def test_data_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(100, 5, 2)
    assert torch.equal(a, epoch_order(100, 5, 2)) and torch.equal(
        a.sort().values, torch.arange(100)
    )
    assert not torch.equal(a, epoch_order(100, 5, 3)) and not torch.equal(a, epoch_order(100, 6, 2))


@pytest.mark.parametrize(
    "schedule,extra",
    [
        ("cosine", {"min_lr": 0.01}),
        ("step", {"milestones": [1, 2], "gamma": 0.5}),
        ("constant", {}),
    ],
)
def test_learning_rate_schedule_per_step(schedule, extra):
    torch.manual_seed(0)
    net = small_cnn(in_channels=1, num_classes=4, width=2)
    cfg = TrainConfig(
        epochs=3, lr=0.1, batch_size=32, schedule=schedule, device="cpu", log_every=1, **extra
    )
    lrs = [
        r["lr"] for r in train(net, toy_data(96), cfg, progress=False).steps
    ]  # 3 steps per epoch
    T_total = 9
    expected = {
        "cosine": [
            0.01 + 0.09 * (1 + torch.cos(torch.tensor(torch.pi * t / T_total)).item()) / 2
            for t in range(9)
        ],
        "step": [0.1] * 3 + [0.05] * 3 + [0.025] * 3,
        "constant": [0.1] * 9,
    }[schedule]
    assert lrs == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- the regularizer term
class QuadraticPenalty:
    """penalty = c/2·Σ‖θ‖² over every parameter: its gradient is c·θ."""

    def __init__(self, net, c):
        self.net, self.c, self.steps = net, c, 0

    def penalty(self):
        return self.c / 2 * sum((p**2).sum() for p in self.net.parameters())

    def after_step(self):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_penalty_enters_the_gradient():
    torch.manual_seed(0)
    base = small_cnn(in_channels=1, num_classes=4, width=4)
    theta0 = [p.detach().clone() for p in base.parameters()]
    plain, regularized = copy.deepcopy(base), copy.deepcopy(base)
    cfg = TrainConfig(
        epochs=2,
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
        batch_size=64,
        schedule="constant",
        device="cpu",
        log_every=1,
    )
    data = toy_data(64)  # one step per epoch
    train(plain, data, dataclass_replace(cfg, epochs=1), progress=False)
    reg = QuadraticPenalty(regularized, c=0.3)
    history = train(
        regularized, data, dataclass_replace(cfg, epochs=1), regularizer=reg, progress=False
    )
    # SGD: θ1 = θ0 − lr·(∇CE + c·θ0), so the two runs differ by exactly −lr·c·θ0
    for p0, pp, pr in zip(theta0, plain.parameters(), regularized.parameters()):
        torch.testing.assert_close(pr - pp, -0.1 * 0.3 * p0, atol=1e-6, rtol=1e-4)
    assert reg.steps == 1
    expected = 0.3 / 2 * sum(float((p**2).sum()) for p in theta0)
    assert history.steps[0]["penalty"] == pytest.approx(expected, rel=1e-5)
    assert history.steps[0]["loss"] == pytest.approx(
        history.steps[0]["task_loss"] + expected, rel=1e-5
    )


def test_layer_errors_recorded_per_epoch():
    net = tiny_wrn()
    reg = FakeRegularizer(net)
    history = train(
        net,
        toy_data(64),
        dataclass_replace(RESUME_CFG, epochs=2, checkpoint_every=0),
        reg,
        progress=False,
    )
    assert [r["epoch"] for r in history.epochs] == [0, 1]
    assert history.epochs[-1]["layer_errors"] == {str(k): v for k, v in reg.layer_errors().items()}
    assert reg.calls == reg.step == 2 * 4


def test_history_json_round_trip(reference):
    _, history = reference
    again = History.from_json(json.dumps(json.loads(history.to_json())))
    assert again == history and len(history.steps) > 0 and len(history.epochs) == 3
    with pytest.raises(ValueError, match="format_version"):
        History.from_dict({"format_version": 99, "steps": [], "epochs": []})


# ---------------------------------------------------------------- resume
def test_resume_after_sigkill_is_bit_exact(tmp_path, reference):
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        f"import test_train; test_train.resume_child({str(tmp_path)!r})"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    ckpt_path, deadline, ckpt = (
        tmp_path / CHECKPOINT_NAME,
        time.time() + 300,
        None,
    )  # generous: a loaded machine
    try:
        while time.time() < deadline and child.poll() is None:
            if ckpt_path.exists():
                ckpt = load_checkpoint(ckpt_path)  # always loadable while being rewritten
                if ckpt["epoch"] >= 1 and ckpt["batch"] > 0:
                    break
            time.sleep(0.005)
        assert child.poll() is None, (
            f"the child ended before a mid-epoch checkpoint: {child.stderr.read().decode()}"
        )
        assert ckpt is not None and ckpt["epoch"] >= 1, (
            "no mid-epoch checkpoint of epoch 1 within 300 s"
        )
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    last = load_checkpoint(ckpt_path)
    assert last["step"] < RESUME_CFG.epochs * 8  # killed before the end
    net = tiny_wrn(seed=99)  # the weights come from the checkpoint
    history = train(
        net, toy_data(N), RESUME_CFG, FakeRegularizer(net), checkpoint_dir=tmp_path, progress=False
    )
    assert_same_weights(params(net), reference[0])
    assert strip_seconds(history) == strip_seconds(reference[1])


class Interrupt(Exception):
    pass


def test_resume_in_process_with_real_regularizer(tmp_path):
    cfg = dataclass_replace(RESUME_CFG, epochs=2)

    def make(stop_at=None):
        torch.manual_seed(0)
        net = small_cnn(in_channels=1, num_classes=4, width=4)
        reg = spectral.KMeansRegularizer(
            net, lam=0.01, num_clusters=4, mode="indicator", refresh_every=5
        )
        if stop_at is not None:
            original = reg.after_step

            def after_step():
                original()
                if reg.step == stop_at:
                    raise Interrupt

            reg.after_step = after_step
        return net, reg

    ref_net, ref_reg = make()
    train(ref_net, toy_data(N), cfg, ref_reg, progress=False)
    net, reg = make(stop_at=11)  # mid-epoch 1, one step after the checkpoint of step 10
    with pytest.raises(Interrupt):
        train(net, toy_data(N), cfg, reg, checkpoint_dir=tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 10
    net, reg = make()
    train(net, toy_data(N), cfg, reg, checkpoint_dir=tmp_path, progress=False)
    assert_same_weights(params(net), params(ref_net))
    assert reg.step == ref_reg.step == 16


def test_failed_write_keeps_the_last_checkpoint_and_stale_temps_are_harmless(
    tmp_path, monkeypatch, reference
):
    real_save, calls = torch.save, []

    def flaky_save(obj, f):
        calls.append(1)
        if len(calls) == 5:  # the 5th checkpoint: write half a file, then fail like a full disk
            f.write(b"PK\x03\x04 half a zip")
            raise OSError("No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", flaky_save)
    net = tiny_wrn()
    with pytest.raises(OSError, match="No space"):
        train(
            net,
            toy_data(N),
            RESUME_CFG,
            FakeRegularizer(net),
            checkpoint_dir=tmp_path,
            progress=False,
        )
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 8  # the 4th write: end of epoch 0
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    (tmp_path / f".{CHECKPOINT_NAME}.stale.tmp").write_bytes(b"garbage from a killed write")
    net = tiny_wrn(seed=7)
    train(
        net, toy_data(N), RESUME_CFG, FakeRegularizer(net), checkpoint_dir=tmp_path, progress=False
    )
    assert_same_weights(params(net), reference[0])
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_finished_run_returns_at_once(tmp_path):
    cfg = dataclass_replace(RESUME_CFG, epochs=1, checkpoint_every=0)
    net = tiny_wrn()
    history = train(net, toy_data(64), cfg, checkpoint_dir=tmp_path, progress=False)
    again_net = tiny_wrn(seed=5)
    again = train(again_net, toy_data(64), cfg, checkpoint_dir=tmp_path, progress=False)
    assert again == history
    assert_same_weights(params(again_net), params(net))


# ---------------------------------------------------------------- bad checkpoints
def _one_epoch_checkpoint(tmp_path):
    cfg = dataclass_replace(RESUME_CFG, epochs=1, checkpoint_every=0)
    train(tiny_wrn(), toy_data(32), cfg, checkpoint_dir=tmp_path, progress=False)
    return cfg, tmp_path / CHECKPOINT_NAME


def _assert_refused(tmp_path, cfg, path, match, regularizer=False):
    before = path.read_bytes()
    net = tiny_wrn()
    with pytest.raises(CheckpointError, match=match) as err:
        train(
            net,
            toy_data(32),
            cfg,
            FakeRegularizer(net) if regularizer else None,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert str(path) in str(err.value)
    assert path.read_bytes() == before  # nothing overwritten


def test_corrupted_checkpoint(tmp_path):
    cfg, path = _one_epoch_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    _assert_refused(tmp_path, cfg, path, "cannot be read")


@pytest.mark.parametrize("with_digest", [True, False])
def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, with_digest):
    from dkm.training.checkpoint import digest

    cfg, path = _one_epoch_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = state["model"][name].clone().fill_(float("nan"))
    state.pop("digest")
    torch.save({**state, "digest": digest(state)} if with_digest else state, path)
    _assert_refused(tmp_path, cfg, path, f"holds non-finite weights \\({name}")


def test_foreign_checkpoint(tmp_path):
    cfg, path = _one_epoch_checkpoint(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    _assert_refused(tmp_path, cfg, path, "not a dkm.train.checkpoint")


def test_wrong_format_version(tmp_path):
    cfg, path = _one_epoch_checkpoint(tmp_path)
    torch.save({**torch.load(path, weights_only=True), "format_version": 0}, path)
    _assert_refused(tmp_path, cfg, path, "format_version=0")


def test_checkpoint_missing_a_part(tmp_path):
    cfg, path = _one_epoch_checkpoint(tmp_path)
    torch.save(
        {k: v for k, v in torch.load(path, weights_only=True).items() if k != "optimizer"}, path
    )
    _assert_refused(tmp_path, cfg, path, r"lacks \['optimizer'\]")


def test_config_mismatch(tmp_path):
    cfg, path = _one_epoch_checkpoint(tmp_path)
    _assert_refused(
        tmp_path, dataclass_replace(cfg, lr=0.2), path, r"lr=0.05 in the checkpoint, 0.2 now"
    )
    _assert_refused(tmp_path, cfg, path, "without a regularizer", regularizer=True)


def test_checkpoint_of_another_net(tmp_path):
    cfg, path = _one_epoch_checkpoint(tmp_path)
    before = path.read_bytes()
    net = small_cnn(in_channels=1, num_classes=4, width=2)
    weights = params(net)
    with pytest.raises(CheckpointError, match="does not fit"):
        train(net, toy_data(32), cfg, checkpoint_dir=tmp_path, progress=False)
    assert path.read_bytes() == before
    assert_same_weights(params(net), weights)


# ---------------------------------------------------------------- evaluate and batch norm
def test_evaluate_against_manual_count():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 4))
    data = toy_data(103)
    net.train()
    net[1].eval()  # a mixed mode, to be restored exactly
    result = evaluate(net, data, batch_size=10, device="cpu")
    with torch.no_grad():
        logits = net[2](data.tensors[0].flatten(1))  # eval mode: dropout is the identity
    correct = sum(int(logits[i].argmax()) == int(data.tensors[1][i]) for i in range(103))
    assert result["accuracy"] == correct / 103
    assert result["loss"] == pytest.approx(
        float(F_.cross_entropy(logits, data.tensors[1])), rel=1e-6
    )
    assert net.training and net[2].training and not net[1].training


def _bn_net():
    """conv → BN (momentum 0.3, random affine) → ReLU → dropout → conv → BN, in eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3, momentum=0.3),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(3, 2, 3),
        nn.BatchNorm2d(2),
    )
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2)
        net[1].bias.uniform_(-1, 1)
        for bn in (net[1], net[5]):
            bn.running_mean.fill_(5.0)
            bn.running_var.fill_(7.0)
    return net.eval()


def _per_channel(x, unbiased):
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=unbiased)


def test_recalibrate_batchnorm_matches_hand_computed_statistics():
    net, data = _bn_net(), toy_data(50)
    bn1, bn2 = net[1], net[5]
    recalibrate_batchnorm(net, data, num_batches=3, batch_size=8, seed=4, device="cpu")
    # by hand: the first 24 images of epoch_order(50, 4, 0) in 3 batches; BN1 normalizes with the
    # biased batch variance, dropout is off;
    # running stats = average of batch means / unbiased variances
    stats = {1: [], 2: []}
    for idx in epoch_order(50, 4, 0)[:24].split(8):
        with torch.no_grad():
            h1 = net[0](data.tensors[0][idx])
            m, v = (t[None, :, None, None] for t in _per_channel(h1, unbiased=False))
            w, b = bn1.weight[None, :, None, None], bn1.bias[None, :, None, None]
            h2 = net[4](torch.relu((h1 - m) / torch.sqrt(v + bn1.eps) * w + b))
        stats[1].append(_per_channel(h1, unbiased=True))
        stats[2].append(_per_channel(h2, unbiased=True))
    for bn, key in ((bn1, 1), (bn2, 2)):
        torch.testing.assert_close(
            bn.running_mean, torch.stack([s[0] for s in stats[key]]).mean(0), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            bn.running_var, torch.stack([s[1] for s in stats[key]]).mean(0), atol=1e-5, rtol=1e-5
        )
    assert (
        bn1.momentum == 0.3 and bn2.momentum == 0.1 and not any(m.training for m in net.modules())
    )


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "field,value",
    [
        ("epochs", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("nesterov", "yes"),
        ("batch_size", 0),
        ("schedule", "linear"),
        ("min_lr", 1.0),
        ("milestones", [3, 2]),
        ("milestones", 2),
        ("gamma", 0.0),
        ("seed", -1),
        ("device", "tpu"),
        ("log_every", 0),
        ("checkpoint_every", -1),
        ("threads", 0),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        TrainConfig(**{field: value})


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown field.*'epoch'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="nesterov"):
        TrainConfig(momentum=0.0, nesterov=True)
    with pytest.raises(TypeError, match="regularizer"):
        train(
            tiny_wrn(), toy_data(8), TrainConfig(device="cpu"), regularizer=object(), progress=False
        )
    with pytest.raises(TypeError, match="progress"):
        train(tiny_wrn(), toy_data(8), TrainConfig(device="cpu"), progress="no")
    with pytest.raises(ValueError, match="train_set"):
        train(
            tiny_wrn(),
            TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)),
            TrainConfig(device="cpu"),
            progress=False,
        )
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(tiny_wrn(), toy_data(8), batch_size=0)
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_batchnorm(tiny_wrn(), toy_data(8), num_batches=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device='cuda' is not available"):
        train(tiny_wrn(), toy_data(8), TrainConfig(device="cuda"), progress=False)


def test_progress_is_quiet_when_not_interactive(monkeypatch, capsys):
    monkeypatch.delenv("DKM_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "1")
    assert show_progress() is False and show_progress(True) is True
    monkeypatch.delenv("CI")
    monkeypatch.setenv("DKM_PROGRESS", "1")
    assert show_progress() is True
    monkeypatch.setenv("DKM_PROGRESS", "0")
    train(tiny_wrn(), toy_data(32), TrainConfig(device="cpu", batch_size=16), progress=None)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_any_dataset_gives_the_same_batches_as_a_tensor_dataset():
    data = toy_data(40)
    subset = torch.utils.data.Subset(data, range(40))  # no .tensors: goes through default_collate
    cfg = TrainConfig(epochs=2, batch_size=16, device="cpu", seed=2)
    a, b = tiny_wrn(), tiny_wrn()
    train(a, data, cfg, progress=False)
    train(b, subset, cfg, progress=False)
    assert_same_weights(params(a), params(b))
    assert evaluate(a, subset, batch_size=7, device="cpu") == evaluate(
        a, data, batch_size=7, device="cpu"
    )


def test_threads_are_set_for_the_run_and_restored():
    from dkm.training.threads import torch_threads

    before = torch.get_num_threads()
    seen = []
    net = tiny_wrn()
    train(
        net,
        toy_data(32),
        dataclass_replace(RESUME_CFG, epochs=1, checkpoint_every=0, threads=2),
        progress=False,
        on_epoch_end=lambda record: seen.append(torch.get_num_threads()),
    )
    assert seen == [2] and torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(3):
        assert torch.get_num_threads() == 3
        raise RuntimeError("the block fails")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads=0"), torch_threads(0):
        pass
