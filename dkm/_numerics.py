"""One numeric path on x86 CPUs: ATen, oneDNN and MKL pinned to AVX2 when dkm is imported.

Each picks kernels by the CPU's instruction set: on another CPU type the sums come out in another
order. Pinned (MKL's bitwise-reproducible AVX2 mode, oneDNN's ISA cap, ATen's capability), the ISA
is not the CPU's choice, nor the native path (docs/reproducibility.md). Each library reads its
variable on first use: the pin holds when dkm is imported before any torch operation runs.
`DKM_NUMERICS=native` leaves the libraries their own choice (and other keys)."""

from __future__ import annotations

import functools
import os
import platform
import warnings

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def requested() -> str:
    """$DKM_NUMERICS: "avx2" (the default) or "native"."""
    value = os.environ.get("DKM_NUMERICS", "avx2")
    if value not in ("avx2", "native"):
        raise ValueError(f"DKM_NUMERICS={value!r} is not allowed: choose one of 'avx2', 'native'")
    return value


def pin() -> None:
    """On x86-64, set the three variables to AVX2 (those the user has not set) unless native."""
    if requested() == "avx2" and platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in PINS.items():
            os.environ.setdefault(name, value)


def numeric_path() -> str:
    """The numeric path: avx2 when all three libraries run pinned to it, else native-<capability>.

    Part of every cache key (the pre-training configuration is the root of them all). ATen's
    capability is read back; oneDNN and MKL follow their variables unless they ran before."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    pinned = all(os.environ.get(k, "").lower() == v.lower() for k, v in PINS.items())
    path = "avx2" if pinned and capability == "AVX2" else f"native-{capability.lower()}"
    if path != "avx2" and requested() == "avx2":
        _not_pinned(path)
    return path


@functools.cache
def _not_pinned(path: str) -> None:
    why = f"this CPU lacks AVX2, torch ran before `import dkm`, or {', '.join(PINS)} differ"
    warnings.warn(f"dkm: numeric path {path}, not AVX2 ({why}): this CPU type's numbers, and "
                  "cache keys that say so", RuntimeWarning, stacklevel=3)  # fmt: skip


pin()  # at import of dkm (its first import): before any torch operation
