"""How many CPUs this process may use: its affinity and its container's CPU quota, not the machine's cores.

torch, ONNX Runtime and OpenVINO size their thread pools by the machine's cores by default. In a
container limited to 2 CPUs on a 64-core host, or on a machine shared with other work, that many
spinning threads cost several times the CPU time of the same work at the right count (measured in
issue 27: ``robustwrap eval`` took 50 minutes instead of 2). :func:`available_cpus` is the default
thread count of what robustwrap starts. :func:`cpu_flags` and :func:`native_bf16` say what the CPU's
instruction set offers the reduced precisions: bf16 without bf16 units is emulated and slower than fp32.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (>= 1).

    Reads ``sched_getaffinity`` (where the OS has it, else ``os.cpu_count()``) and the cgroup v2
    ``cpu.max`` (or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) of this process: a quota of
    150000 / 100000 allows 1.5 CPUs and gives 1 (rounded down, at least 1).
    """
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(affinity, math.floor(quota)) if quota is not None else affinity)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by this process's cgroup and the ones above it: the smallest quota (None: none, or unreadable)."""
    quotas: list[float] = []
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            hierarchy, controllers, path = line.split(":", 2)
        except ValueError:
            continue
        if hierarchy == "0" and controllers == "":  # cgroup v2: cpu.max = "<quota> <period>" or "max <period>"
            base, files = root, ("cpu.max",)
        elif "cpu" in controllers.split(","):  # cgroup v1: cpu.cfs_quota_us (-1: none) / cpu.cfs_period_us
            base, files = root / controllers, ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        folder = base / path.lstrip("/")
        while True:  # this cgroup, then each one above it up to the hierarchy's root
            quota = _read_quota(folder, files)
            if quota is not None:
                quotas.append(quota)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(quotas) if quotas else None


def _read_quota(folder: Path, files: tuple[str, ...]) -> float | None:
    try:
        if len(files) == 1:
            quota, period = (folder / files[0]).read_text().split()[:2]
            return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
        quota, period = (int((folder / name).read_text()) for name in files)
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic units


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's instruction-set flags as Linux reports them (``avx2``, ``avx512f``, ``amx_bf16``, ...);
    None where ``cpuinfo`` cannot be read (not Linux)."""
    try:
        lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")]
    except OSError:
        return None
    if not lines:  # e.g. aarch64, whose cpuinfo names "Features": not read here
        return None
    return frozenset(" ".join(line.split(":", 1)[-1] for line in lines).split())


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """True when the CPU has bf16 units (AVX-512 bf16 or AMX), False when it has none, None when unknown."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else any(flag in flags for flag in BF16_FLAGS)


def cpu_features() -> str:
    """The flags reduced precision depends on, as a phrase: "avx512f, avx512_bf16", "none of note" (AVX2 only),
    or "unknown" (no /proc/cpuinfo). Recorded with every verify and every benchmark's machine line."""
    flags = cpu_flags()
    if flags is None:
        return "unknown"
    return ", ".join(f for f in ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
                                  "amx_int8") if f in flags) or "none of note"


def warn_if_emulated(precision: str, device_type: str = "cpu") -> None:
    """Log a warning when ``precision`` is bf16 on a CPU without bf16 units: torch then emulates it, exactly but
    several times slower than fp32 (about 0.15x eager on the shipped pair: benchmarks/RESULTS.md)."""
    if precision == "bf16" and device_type == "cpu" and native_bf16() is False:
        logger.warning("this CPU has no bf16 units (no avx512_bf16 or amx_bf16 flag): bf16 runs emulated here, "
                       "several times slower than fp32 (a machine with bf16 units runs it at full speed)")
