"""The numeric path (dkm._numerics): importing dkm pins ATen, oneDNN and MKL to AVX2 on x86-64,
the pin is in every cache key, the user can opt out or override it, and it decides the bits.

Each case runs a fresh process (the libraries read their variables once, on first use): a conv
forward and backward (oneDNN), a matrix product (MKL) and an elementwise exp and sum (ATen)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dkm._numerics import PINS

PROBE = """
import hashlib, json, os, warnings
warnings.simplefilter("always")
import dkm, torch
from dkm._numerics import numeric_path
from dkm.experiments.pipeline import pretrain_config
from dkm.experiments.profiles import get_profile
torch.manual_seed(0)
conv = torch.nn.Conv2d(32, 32, 3).to(memory_format=torch.channels_last)
x = torch.randn(8, 32, 16, 16).contiguous(memory_format=torch.channels_last)
lin = torch.nn.Linear(512, 64)
y = conv(x).sum() + lin(torch.randn(16, 512)).pow(2).sum() + torch.randn(4096).exp().sum()
y.backward()
h = hashlib.sha256()
for t in (conv.weight.grad, lin.weight.grad, y.detach()):
    h.update(t.numpy().tobytes())
print(json.dumps({"path": numeric_path(), "bits": h.hexdigest(),
                  "key_path": pretrain_config(get_profile("smoke"))["numerics"],
                  "env": {k: os.environ.get(k) for k in dkm._numerics.PINS}}))
"""
X86_AVX2 = platform.machine() == "x86_64" and " avx2" in (
    Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
)
needs_avx2 = pytest.mark.skipif(not X86_AVX2, reason="an x86-64 CPU with AVX2")


def _probe(**env) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in PINS and k != "DKM_NUMERICS"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean | env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@needs_avx2
def test_importing_dkm_pins_the_three_libraries_and_the_key_says_so():
    pinned, warned = _probe()
    assert pinned["env"] == PINS and pinned["path"] == pinned["key_path"] == "avx2"
    assert "RuntimeWarning" not in warned
    assert _probe()[0]["bits"] == pinned["bits"]  # deterministic
    native, warned = _probe(DKM_NUMERICS="native")  # opted out: the libraries' own choice
    assert native["env"] == dict.fromkeys(PINS) and native["path"].startswith("native-")
    assert "RuntimeWarning" not in warned and native["key_path"] == native["path"]


@needs_avx2
def test_the_pin_decides_the_bits_and_a_user_setting_wins_with_a_warning():
    pinned, _ = _probe()
    lower, warned = _probe(ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41",
                           MKL_CBWR="SSE4_2")  # fmt: skip
    assert lower["env"]["ONEDNN_MAX_CPU_ISA"] == "SSE41"  # the user's value is kept
    assert lower["path"] == lower["key_path"] == "native-default"  # another key
    assert lower["bits"] != pinned["bits"]  # another instruction set: other sums
    assert "numeric path native-default, not AVX2" in warned
    onednn_only, _ = _probe(ONEDNN_MAX_CPU_ISA="SSE41")  # one library off the pin is enough
    assert onednn_only["path"] == "native-avx2" and onednn_only["bits"] != pinned["bits"]


def test_a_bad_setting_is_one_clear_error():
    clean = {k: v for k, v in os.environ.items() if k not in PINS}
    out = subprocess.run([sys.executable, "-c", "import dkm"], capture_output=True, text=True,
                         env=clean | {"DKM_NUMERICS": "avx512"})  # fmt: skip
    assert out.returncode != 0
    assert "DKM_NUMERICS='avx512' is not allowed: choose one of 'avx2', 'native'" in out.stderr
