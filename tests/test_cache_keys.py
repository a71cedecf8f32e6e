"""Cache keys: every key of every profile's authors' and uniform plans (pre-training, re-training
plain and with each F, sharing by each method, every seed) is the key 0.3.0 wrote
(tests/data/cache_keys_0.3.0.json), so code moves never orphan a run cache; and the one change
since 0.1.1 (tests/data/cache_keys_0.1.1.json, the flat layout) is the numeric path in the root."""

import json
from pathlib import Path

import pytest
import torch

from dkm.experiments import pipeline as pl
from dkm.experiments.cache import config_key
from dkm.experiments.profiles import PROFILES, get_profile
from dkm.plans import authors_plan, uniform_plan
from dkm.training.models import build_model

DATA = Path(__file__).parent / "data"


def _sources(p, plan, seed) -> dict:
    """The source configurations a sweep shares at `plan` and `seed`."""
    sources = {"pretrained": pl.pretrain_config(p), "plain": pl.retrain_config(p, "plain", seed)}
    for mode in p.modes:
        sources[f"dkm-{mode}"] = pl.retrain_config(p, "dkm", seed, plan, mode)
    return sources


def _configs(name: str) -> dict:
    p = get_profile(name)
    torch.manual_seed(0)
    net = build_model(p.model, **p.model_kwargs)
    configs = {f"{name}/pretrain": pl.pretrain_config(p)}
    plans = [authors_plan(net, s) for s in p.official_settings]
    for plan in plans + [uniform_plan(net, k) for k in (2, 4, 16)]:
        for seed in p.seeds:
            for source, config in _sources(p, plan, seed).items():
                configs[f"{name}/{source}/{plan.K}/{seed}"] = config
                for m in ("kmeans", "density", "deep_compression"):
                    ev = pl.evaluation_config(p, config, m, plan, seed)
                    configs[f"{name}/{source}/{m}/{plan.K}/{seed}"] = ev
    return configs


@pytest.fixture(scope="module")
def configs():
    with pytest.MonkeyPatch.context() as mp:  # the keys of a pinned run, on any machine
        mp.setattr(pl, "numeric_path", lambda: "avx2")
        return {k: v for name in PROFILES for k, v in _configs(name).items()}


def _without_numerics(config):
    if isinstance(config, dict):
        return {k: _without_numerics(v) for k, v in config.items() if k != "numerics"}
    return config


def test_every_cache_key_is_0_3_0s(configs):
    reference = json.loads((DATA / "cache_keys_0.3.0.json").read_text())
    keys = {k: config_key(c) for k, c in configs.items()}
    assert len(keys) == len(reference) == 612
    assert [k for k in reference if keys.get(k) != reference[k]] == []


def test_the_numeric_path_is_the_one_change_since_the_flat_layout(configs):
    reference = json.loads((DATA / "cache_keys_0.1.1.json").read_text())
    assert all(c["numerics"] == "avx2" for k, c in configs.items() if k.endswith("/pretrain"))
    keys = {k: config_key(_without_numerics(c)) for k, c in configs.items()}
    assert [k for k in reference if keys.get(k) != reference[k]] == []
    assert not set(reference.values()) & {config_key(c) for c in configs.values()}
