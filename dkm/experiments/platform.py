"""The platform a results table was computed on, recorded beside it (`<table>.platform.json`).

CPU training is deterministic for one CPU type and torch build, not across them: ATen, oneDNN and
MKL each pick kernels by the CPU's instruction set, and the sums come out in another order. A
regeneration on a Zen 4 CPU with AVX-512 gave a pre-trained net of 93.075% instead of the
committed 92.45% on the same seed (docs/reproducibility.md). So every results table says where it
was made, and `dkm figures` says once when this machine differs from the recorded one.

Fields that decide the numbers (`KEY_FIELDS`): the numeric path (dkm._numerics), CPU vendor,
family and model, the ISA flags the libraries dispatch on, torch's CPU capability, torch and numpy
versions, oneDNN's version, threads and memory format. When both platforms ran pinned to AVX2
the CPU fields (`CPU_FIELDS`) are recorded but not compared: the pin is what makes them not
matter. The model name is recorded for people, not compared.
"""

from __future__ import annotations

import json
import platform as _platform
from pathlib import Path

import numpy as np
import torch

from dkm._numerics import numeric_path
from dkm.io import read_text, write_atomic

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
CPU_FIELDS = ("cpu_vendor", "cpu_family", "cpu_model", "isa", "torch_cpu_capability")
KEY_FIELDS = ("numerics",) + CPU_FIELDS + ("torch", "numpy", "onednn", "threads", "memory_format")
SUFFIX = ".platform.json"


def _cpuinfo(text: str) -> dict:
    """The first processor's fields of /proc/cpuinfo text."""
    info = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _onednn() -> str:
    """oneDNN's version in torch's build ("v3.12.0"), or "" when torch reports none."""
    for line in torch.__config__.show().splitlines():
        if "MKL-DNN" in line or "oneDNN" in line:
            return next((w for w in line.split() if w.startswith("v")), "")
    return ""


def current(threads=None, memory_format=None, cpuinfo_text: str | None = None) -> dict:
    """This process's platform (threads and memory format: the profile's)."""
    if cpuinfo_text is None:
        path = Path("/proc/cpuinfo")
        cpuinfo_text = path.read_text() if path.is_file() else ""
    info = _cpuinfo(cpuinfo_text)
    flags = set(info.get("flags", "").split())
    return {
        "cpu_name": info.get("model name", _platform.processor()),
        "cpu_vendor": info.get("vendor_id", ""),
        "cpu_family": info.get("cpu family", ""),
        "cpu_model": info.get("model", ""),
        "machine": _platform.machine(),
        "numerics": numeric_path(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onednn": _onednn(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "memory_format": memory_format or "contiguous",
    }


def of_profile(profile) -> dict:
    """This machine's platform with a profile's threads and memory format."""
    return current(profile.threads, profile.memory_format)


def sidecar(table: Path) -> Path:
    """`sweep_cpu.csv` → `sweep_cpu.platform.json`."""
    table = Path(table)
    return table.with_name(table.stem + SUFFIX)


def write(table: Path, info: dict) -> None:
    """Record `info` beside `table` (atomically)."""
    write_atomic(sidecar(table), json.dumps(info, indent=1, sort_keys=True) + "\n")


def recorded(table: Path) -> dict | None:
    """The platform recorded beside `table`, or None when there is none."""
    path = sidecar(table)
    return json.loads(read_text(path)) if path.exists() else None


def differences(a: dict, b: dict) -> list[str]:
    """The key fields where two platforms differ, as "field: a ≠ b" (CPU fields: unless both
    ran pinned to AVX2)."""
    pinned = a.get("numerics") == b.get("numerics") == "avx2"
    fields = [k for k in KEY_FIELDS if not (pinned and k in CPU_FIELDS)]
    return [f"{k}: {a.get(k)} ≠ {b.get(k)}" for k in fields if a.get(k) != b.get(k)]


def unrecorded(note: str) -> dict:
    """The sidecar of a table computed before platforms were recorded: every field "unrecorded"."""
    return {**dict.fromkeys(("cpu_name", "machine") + KEY_FIELDS, "unrecorded"), "note": note}


def describe(info: dict) -> str:
    """One line for people: CPU, ISA level, numeric path, torch, threads."""
    if info.get("cpu_name") == "unrecorded":
        return "an unrecorded platform"
    return (f"{info.get('cpu_name')} (family {info.get('cpu_family')} model "
            f"{info.get('cpu_model')}, {info.get('torch_cpu_capability')}; numeric path "
            f"{info.get('numerics', 'native')}), torch {info.get('torch')}, "
            f"{info.get('threads')} threads")  # fmt: skip


def mismatch(table: Path, profile) -> tuple[dict, dict, list] | None:
    """(the platform recorded beside `table`, this machine's with `profile`'s threads and memory
    format, their differences), or None when they agree or nothing is recorded."""
    before, here = recorded(table), of_profile(profile)
    if before is None:
        return None
    diffs = differences(before, here)
    return (before, here, diffs) if diffs else None


def elsewhere(table: Path, profile) -> str | None:
    """One line when `table` was computed on another platform than this machine (`mismatch`)."""
    found = mismatch(table, profile)
    if found is None:
        return None
    before, here, _ = found
    return (
        f"note: {Path(table).name} was computed on {describe(before)}, not on this machine "
        f"({describe(here)}): its numbers are that platform's "
        f"(docs/reproducibility.md, 'Across CPU types')"
    )
