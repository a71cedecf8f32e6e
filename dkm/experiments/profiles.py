"""Profiles: one place that sizes every experiment (`smoke` seconds, `cpu` minutes, `paper` hours).

`paper` (CIFAR-10, which needs torchvision's download) and `paper-fmnist` (the same WRN-16-4 and
schedules on Fashion-MNIST, fully offline) take GPU hours. The `cpu` profile is sized by
measurement (README, "Evidence"): the whole experiment behind the CR–accuracy figure —
pre-training once, every method at every CR target, both seeds — on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dkm._checks import check_choice, check_float, check_int
from dkm.plans import SETTINGS as OFFICIAL_SETTINGS
from dkm.sharing import CENTER_GRADIENTS
from dkm.training.loop import TrainConfig

DATASETS = ("fashion_mnist", "cifar10")
MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class Profile:
    """Everything an experiment depends on.

    Each stage's cache key holds every field that stage uses (dkm.experiments.pipeline).
    """

    name: str
    dataset: str  # "fashion_mnist" | "cifar10"
    n_train: int | None  # None: the whole training split
    n_test: int | None
    # images for re-training and center fine-tuning (a fixed subset; None: all)
    n_retrain: int | None
    model: str  # dkm.training.models registry name
    model_kwargs: dict
    pretrain: TrainConfig
    retrain: TrainConfig  # Deep k-Means and the plain control: same epochs, same lr
    finetune: TrainConfig  # Deep Compression style center fine-tuning
    lam: float  # λ of the k-means regularizer (sum-normalized, see dkm.regularizer)
    refresh_every: int  # T: optimizer steps between F updates
    modes: tuple = ("indicator", "spectral")
    # the sweep's default methods (dkm.experiments.sweep; empty: every method without +ft)
    methods: tuple = ()
    view: str = "rows"
    # targets of uniform-K plans (dkm.plans.plan_clusters): CRs, or "45x"/"47x"/"50x" for the CR the
    # authors' setting has on this net
    cr_targets: tuple = (8.0, 16.0, 32.0, 45.0)
    # the authors' per-layer K/p settings run as extra points (dkm.plans)
    official_settings: tuple = ()
    # targets (as cr_targets) of the rate–distortion planner's per-layer (K, p) plans (dkm.planner)
    rd_targets: tuple = ()
    seeds: tuple = (0, 1)
    p: float = 0.0  # dominant-cluster fraction used by the CR → K plan
    bn_batches: int = 20  # training batches used to re-estimate batch norm after sharing
    # torch threads for every stage (results on CPU depend on it); None: as is
    threads: int | None = None
    # of the nets' tensors: "channels_last" is faster for convs on CPU (other sums)
    memory_format: str = "contiguous"
    # Deep Compression fine-tuning: a center's gradient, "mean" or "sum" over its cluster
    center_gradient: str = "mean"
    description: str = ""

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("memory_format", self.memory_format, MEMORY_FORMATS)
        check_choice("center_gradient", self.center_gradient, CENTER_GRADIENTS)
        check_float("lam", self.lam, 0.0)
        check_int("refresh_every", self.refresh_every, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1, 1024)
        check_float("p", self.p, 0.0, 1.0, hi_open=True)
        for name in ("cr_targets", "rd_targets"):
            for target in getattr(self, name):
                _check_target(name, target)
        for setting in self.official_settings:
            check_choice("official_settings", setting, OFFICIAL_SETTINGS)

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


def _check_target(name: str, target) -> None:
    """A plan target: a CR > 1, or the name of an authors' setting (its CR on the profile's net)."""
    if isinstance(target, str):
        check_choice(name, target, OFFICIAL_SETTINGS)
    else:
        check_float(name, target, 1.0, lo_open=True)


def _wrn(depth: int, widen: int, dropout: float, in_channels: int, bias: bool) -> dict:
    """model_kwargs of a 10-class dkm.training.models wide_resnet (WRN-depth-widen)."""
    return {
        "depth": depth,
        "widen_factor": widen,
        "dropout": dropout,
        "in_channels": in_channels,
        "num_classes": 10,
        "conv_bias": bias,
    }


def _wrn_profile(pre: TrainConfig, re: TrainConfig, **fields) -> Profile:
    """A wide_resnet profile (whole splits unless given): pre-training `pre`, re-training and
    fine-tuning `re`."""
    whole = {"n_train": None, "n_test": None}
    return Profile(model="wide_resnet", pretrain=pre, retrain=re, finetune=re, **whole | fields)


def _smoke() -> Profile:
    base = TrainConfig(epochs=1, lr=0.01, batch_size=64, schedule="cosine", log_every=10)
    return Profile(
        name="smoke",
        dataset="fashion_mnist",
        n_train=2000,
        n_test=1000,
        n_retrain=None,
        model="small_cnn",
        model_kwargs={"in_channels": 1, "num_classes": 10, "width": 8},
        pretrain=dataclasses.replace(base, epochs=3, lr=0.1),
        retrain=base,
        finetune=base,
        lam=5.0,
        refresh_every=10,
        cr_targets=(8.0, 16.0),
        seeds=(0,),
        bn_batches=5,
        threads=1,
        description="tiny CNN, 2k Fashion-MNIST images, 3 + 1 epochs: seconds; for tests and nbval",
    )


def _cpu() -> Profile:
    pre = TrainConfig(epochs=4, lr=0.1, batch_size=128, schedule="cosine", log_every=50)
    re = TrainConfig(epochs=1, lr=0.01, batch_size=128, schedule="cosine", log_every=10)
    wrn = _wrn(depth=16, widen=1, dropout=0.0, in_channels=1, bias=False)
    return _wrn_profile(
        pre,
        re,
        name="cpu",
        dataset="fashion_mnist",
        n_test=4000,
        n_retrain=5000,
        model_kwargs=wrn | {"stage1_shortcut": True},  # the authors' 16 convs, by role
        lam=5.0,
        refresh_every=20,
        official_settings=OFFICIAL_SETTINGS,
        rd_targets=(15.0, "45x", "50x", 60.0),
        cr_targets=(15.0, "45x"),  # uniform K: the contrast
        seeds=(0, 1, 2),
        methods=("kmeans", "deep_compression", "plain", "dkm-indicator", "dkm-spectral"),
        bn_batches=10,
        threads=2,
        memory_format="channels_last",
        description=(
            "WRN-16-1 with the authors' 16 convs on Fashion-MNIST (re-training on 5k images), "
            "the authors' settings, the planner and uniform K: the default, minutes on a 2-core CPU"
        ),
    )


def _paper_schedules() -> tuple[TrainConfig, TrainConfig]:
    """The paper's pre-training (200 epochs, step lr) and re-training (30 epochs, cosine) (§5)."""
    pre = TrainConfig(
        epochs=200,
        lr=0.1,
        batch_size=128,
        schedule="step",
        milestones=(60, 120, 160),
        gamma=0.2,
        nesterov=True,
        log_every=100,
    )
    re = TrainConfig(epochs=30, lr=0.01, batch_size=128, schedule="cosine", log_every=100)
    return pre, re


def _paper_fields(in_channels: int) -> dict:
    """The paper's WRN-16-4 (the authors' 16 convs, dropout 0.3, conv bias), λ, T and grid."""
    return {
        "n_retrain": None,
        "model_kwargs": _wrn(depth=16, widen=4, dropout=0.3, in_channels=in_channels, bias=True),
        "lam": 0.5,
        "refresh_every": 200,
        "cr_targets": (20.0, 30.0, 45.0, 50.0),
        "official_settings": OFFICIAL_SETTINGS,
        "seeds": (0, 1),
    }


def _paper() -> Profile:
    return _wrn_profile(
        *_paper_schedules(),
        name="paper",
        dataset="cifar10",
        **_paper_fields(in_channels=3),
        description="WRN-16-4 on CIFAR-10 with the authors' settings: GPU hours",
    )


def _paper_fmnist() -> Profile:
    return _wrn_profile(
        *_paper_schedules(),
        name="paper-fmnist",
        dataset="fashion_mnist",
        **_paper_fields(in_channels=1),
        description=(
            "WRN-16-4 on Fashion-MNIST with the paper's schedules and the authors' settings: "
            "GPU hours, offline ($DKM_DATA_DIR)"
        ),
    )


PROFILES = {"smoke": _smoke, "cpu": _cpu, "paper": _paper, "paper-fmnist": _paper_fmnist}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile, optionally with some fields replaced (e.g. lam=5.0)."""
    check_choice("profile", name, PROFILES)
    return dataclasses.replace(PROFILES[name](), **overrides) if overrides else PROFILES[name]()


def summary_line(name: str) -> str:
    """One line for people: the profile's data, net, convs and the official CR of the authors'
    45x on that net (their settings were made for WRN-16-4: on a narrower net the codebooks weigh
    more)."""
    import torch

    from dkm.plans import authors_plan
    from dkm.rows import conv_layers
    from dkm.training.models import build_model

    p = get_profile(name)
    with torch.device("meta"):  # shapes only: no weights allocated
        net = build_model(p.model, **p.model_kwargs)
    kw = p.model_kwargs
    arch = f"WRN-{kw['depth']}-{kw['widen_factor']}" if p.model == "wide_resnet" else p.model
    images = "all" if p.n_train is None else f"{p.n_train:,}"
    line = f"{name}: {p.dataset}, {images} training images, {arch}, {len(conv_layers(net))} convs"
    if set(OFFICIAL_SETTINGS) <= set(p.official_settings):
        line += (
            f"; the authors' 45x is official CR {authors_plan(net, '45x').estimated_cr:.2f} here"
        )
    return line
