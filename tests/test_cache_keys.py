"""Cache keys survive code moves: every key of every profile's authors' and uniform plans
(pre-training, re-training plain and with each F, sharing by each method, every seed) equals the
key that 0.1.1 (the flat layout) computed, so a run cache of that layout is found whole
(tests/data/cache_keys_0.1.1.json, written by the same loop on 0.1.1)."""

import json
from pathlib import Path

import torch

from dkm.experiments import pipeline as pl
from dkm.experiments.cache import config_key
from dkm.experiments.profiles import PROFILES, get_profile
from dkm.plans import authors_plan, uniform_plan
from dkm.training.models import build_model

REFERENCE = Path(__file__).parent / "data" / "cache_keys_0.1.1.json"


def _sources(p, plan, seed) -> dict:
    """The source configurations a sweep shares at `plan` and `seed`."""
    sources = {"pretrained": pl.pretrain_config(p), "plain": pl.retrain_config(p, "plain", seed)}
    for mode in p.modes:
        sources[f"dkm-{mode}"] = pl.retrain_config(p, "dkm", seed, plan, mode)
    return sources


def _keys(name: str) -> dict:
    p = get_profile(name)
    torch.manual_seed(0)
    net = build_model(p.model, **p.model_kwargs)
    keys = {f"{name}/pretrain": config_key(pl.pretrain_config(p))}
    plans = [authors_plan(net, s) for s in p.official_settings]
    for plan in plans + [uniform_plan(net, k) for k in (2, 4, 16)]:
        for seed in p.seeds:
            for source, config in _sources(p, plan, seed).items():
                keys[f"{name}/{source}/{plan.K}/{seed}"] = config_key(config)
                for m in ("kmeans", "density", "deep_compression"):
                    ev = pl.evaluation_config(p, config, m, plan, seed)
                    keys[f"{name}/{source}/{m}/{plan.K}/{seed}"] = config_key(ev)
    return keys


def test_every_cache_key_is_the_flat_layouts():
    reference = json.loads(REFERENCE.read_text())
    keys = {k: v for name in PROFILES for k, v in _keys(name).items()}
    assert len(keys) == len(reference) == 612
    assert [k for k in reference if keys.get(k) != reference[k]] == []
