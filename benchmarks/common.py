"""Shared tools of the benchmark scripts: timing side by side, peak memory, the results file.

Benchmarks are not tests: they measure, write a section of ``benchmarks/RESULTS.md`` (with the
machine, the versions and the command) and never assert.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def interleaved_times(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Every wall time (s) of each variant, run in turn within each repeat so drift hits all alike."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time (s) of each variant (:func:`interleaved_times`)."""
    return {name: statistics.median(values) for name, values in interleaved_times(variants, repeats, warmup).items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_child(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run ``python script *args`` in a fresh process with extra environment variables ``env``;
    the child prints one JSON object as its last line, which is returned."""
    result = subprocess.run(
        [sys.executable, script, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_isolated(script: str, *args: str) -> dict:
    """:func:`run_child` with glibc serving blocks >= 64 KiB by mmap, so that freed tensors leave
    the resident set at once and the peak-RSS mark follows live tensors."""
    return run_child(script, *args, env=MMAP_ENV)


def peak_rss_increase_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory above the starting point while ``fn`` runs, in MiB (Linux only).

    Resets the kernel's high-water mark through /proc/self/clear_refs; run it under
    :func:`run_isolated` so that the mark follows live tensors.
    """
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    start = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - start) / 1024


def saved_for_backward_mib(fn: Callable[[], object]) -> float:
    """MiB of distinct tensor storage autograd saves for backward while ``fn`` builds the graph."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


def machine_line() -> str:
    from robustwrap.cpus import cpu_features

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    return (
        f"{cpu} (CPU features: {cpu_features()}), {torch.get_num_threads()} threads; Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md, stamped with command and machine."""
    command = "python " + " ".join(shlex.quote(arg) for arg in sys.argv)
    stamp = time.strftime("%Y-%m-%d")
    section = (
        f"<!-- {name}:start -->\n## {name}\n\n"
        f"Command: `{command}`  \nMachine: {machine_line()}  \nDate: {stamp}\n\n{body.strip()}\n"
        f"<!-- {name}:end -->"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in this folder; each section says how it was made.\n"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
