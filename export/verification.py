"""The record of a verification: does an engine, at its precision, still decide as the fp32 eager defense does?

:func:`robustwrap.export.verify` measures it and returns a :class:`VerifyReport`; this module
holds the report, its thresholds (:class:`Thresholds`), and where it lives: ``verify.json`` in a
folder the user names, or one file per engine and precision in the bundle's ``verified/``
folder, where :func:`find_verification` (and so ``load_bundle`` and ``robustwrap serve``) finds
it. A record applies only to the graphs it was measured on: it keeps their SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from robustwrap.outputs import Layout, dumps_strict, loads_strict, write_text_atomic
from robustwrap.statistics import format_accuracy, interval_record

from .engines import describe_precision
from .format import CLASSIFIER, DENOISER, VERIFIED, BundleInfo

RECORD_FORMAT = "robustwrap-verify"


@dataclass(frozen=True)
class Thresholds:
    """What a verified engine must meet (the defaults of ``robustwrap verify``).

    Attributes:
        min_agreement: the fraction of images whose configured vote equals the eager defense's (same seeds).
        max_clean_drop: how far the engine's clean accuracy may fall below eager's (a fraction: 0.005 = 0.5 points).
        max_robust_drop: the same for robust accuracy under the attack.
        alpha: significance of McNemar's exact test: an engine significantly *less* accurate fails.
    """

    min_agreement: float = 0.995
    max_clean_drop: float = 0.005
    max_robust_drop: float = 0.01
    alpha: float = 0.05

    def __post_init__(self) -> None:
        for name in ("min_agreement", "max_clean_drop", "max_robust_drop", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1 \
                    or math.isnan(value):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class Check:
    """One line of the verdict: what was required, what was measured, and whether it held."""

    name: str
    passed: bool
    line: str


@dataclass(frozen=True)
class VerifyReport:
    """A verification of one engine at one precision against the fp32 eager defense.

    Attributes:
        engine: the engine's registry name; precisions: per network ("classifier", "denoiser").
        figures: every measured figure (rates come with their Wilson 95% interval and counts).
        checks: the verdict's lines, in order.
        settings: the data, subsets, seeds, attack, thresholds and config the figures come from.
        graphs: SHA-256 of the bundle's classifier and denoiser graphs it was measured on.
        versions: python, torch, robustwrap and the engine's package.
    """

    engine: str
    precisions: Mapping[str, str]
    figures: Mapping[str, Any]
    checks: tuple[Check, ...]
    settings: Mapping[str, Any]
    graphs: Mapping[str, str]
    versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def verdict_line(self) -> str:
        """'passed (4 checks)' or 'failed: <the first line that failed>'."""
        failed = [c for c in self.checks if not c.passed]
        return f"failed: {failed[0].line}" if failed else f"passed ({len(self.checks)} checks)"

    def to_dict(self) -> dict:
        return {"format": RECORD_FORMAT, "engine": self.engine, "precisions": dict(self.precisions),
                "passed": self.passed, "checks": [dataclasses.asdict(c) for c in self.checks],
                "figures": dict(self.figures), "settings": dict(self.settings), "graphs": dict(self.graphs),
                "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> "VerifyReport":
        """The report a ``verify.json`` holds.

        Raises:
            ValueError: naming ``source`` when it is not a verification record.
        """
        try:
            if raw["format"] != RECORD_FORMAT:
                raise ValueError(f"format {raw['format']!r}")
            checks = tuple(Check(str(c["name"]), bool(c["passed"]), str(c["line"])) for c in raw["checks"])
            return cls(str(raw["engine"]), dict(raw["precisions"]), dict(raw["figures"]), checks,
                       dict(raw["settings"]), dict(raw["graphs"]), dict(raw.get("versions", {})))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source} is not a robustwrap verification record ({error})") from None


def _has_record(folder: Path) -> bool:
    try:
        return loads_strict((folder / "verify.json").read_text()).get("format") == RECORD_FORMAT
    except (OSError, ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        return False


VERIFY_LAYOUT = Layout("verify folder", marker=_has_record,
                       owns=lambda folder, entry: entry.is_file() and entry.name in ("verify.json", "verify.png"),
                       record="verify.json")  # what `robustwrap verify --out` writes


def rate_record(hits: int, n: int) -> dict:
    """A rate as a report keeps it: value, counts and Wilson 95% interval (rounded to 6 digits)."""
    p = hits / n if n else 0.0
    return {"value": round(p, 6), "hits": hits, "n": n, "interval": interval_record(p, n)}


def format_rate(rate: Mapping) -> str:
    """'99.60% [98.98, 99.84] (996/1000)': a rate of :func:`rate_record` with two decimals (agreement needs them)."""
    return f"{format_accuracy(rate['value'], rate['n'], decimals=2)} ({rate['hits']}/{rate['n']})"


def describe_settings(settings: Mapping[str, Any]) -> str:
    """What a report's figures rest on, in words: the images, and the attack with its budget."""
    data = settings.get("data", "the given images")
    subset = settings.get("subset") or {}
    images = (f"{settings['n_images']} images of {data}" + (f" (stratified, seed {subset['seed']})"
                                                            if subset.get("seed") is not None else ""))
    attack = settings.get("attack")
    if not attack:
        return f"{images}; no attack; same per-image seeds on both sides"
    return (f"{images}; robust: the first {settings['n_attack']} under {attack['attack']} against fp32 eager "
            f"({attack['norm']} eps {attack['eps']:.3g}, {attack['iters']} iterations x {attack['eot']} copies), "
            "judged on held-out seeds")


def record_name(engine: str, precisions: Mapping[str, str]) -> str:
    """The file name of a verification in ``verified/``: 'openvino-bf16.json', 'openvino-classifier-fp32-denoiser-bf16.json'."""
    values = [precisions[CLASSIFIER], precisions[DENOISER]]
    tail = values[0] if values[0] == values[1] else f"classifier-{values[0]}-denoiser-{values[1]}"
    return f"{engine}-{tail.replace(' ', '-')}.json"


def graph_digests(bundle: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of each network's graph file (with its external data) in the bundle."""
    info = BundleInfo.read(bundle)
    digests = {}
    for component in (CLASSIFIER, DENOISER):
        digest = hashlib.sha256()
        graph = info.file(bundle, component)
        for path in (graph, graph.with_name(graph.name + ".data")):
            if path.is_file():
                with path.open("rb") as file:
                    for block in iter(lambda: file.read(1 << 20), b""):
                        digest.update(block)
        digests[component] = digest.hexdigest()
    return digests


def write_record(report: VerifyReport, folder: str | os.PathLike, name: str = "verify.json") -> Path:
    """Write ``report`` as strict JSON into ``folder`` (created if missing); the path written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    write_text_atomic(path, dumps_strict(report.to_dict(), indent=2) + "\n")
    return path


def find_verification(bundle: str | os.PathLike, engine: str, precisions: Mapping[str, str]) -> VerifyReport | None:
    """The bundle's record for this engine and these precisions, if one was made on these very graphs; else None.

    An unreadable record, or one measured on other graphs (a bundle exported again), counts as none.
    """
    path = Path(bundle) / VERIFIED / record_name(engine, precisions)
    try:
        report = VerifyReport.from_dict(loads_strict(path.read_text()), str(path))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return report if report.graphs == graph_digests(bundle) else None


def plot_record(report: VerifyReport, path: str | os.PathLike) -> None:
    """Clean and robust accuracy of the eager defense and the engine side by side, with Wilson 95% bars; the
    decision and mask-pixel agreement in the title. Written as a PNG to ``path``."""
    from robustwrap.figures import interval_bars, pyplot  # noqa: PLC0415

    plt = pyplot("robustwrap verify")
    groups = [g for g in ("clean", "robust") if g in report.figures]
    figure, axes = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    for j, side in enumerate(("eager", "engine")):
        rates = [(r["value"], *r["interval"]) for r in (report.figures[g][side] for g in groups)]
        label = "fp32 eager" if side == "eager" else f"{report.engine} {describe_precision(report.precisions)}"
        interval_bars(axes, [i + (j - 0.5) * 0.38 for i in range(len(groups))], rates, 0.36, label=label,
                      color="lightgrey" if side == "eager" else "tab:blue")
    settings = report.settings
    axes.set_xticks(range(len(groups)), [f"clean ({settings['n_images']})", f"robust ({settings['n_attack']})"]
                    [:len(groups)])
    axes.set_ylim(0, 115)
    axes.set_ylabel("accuracy, % (Wilson 95% interval)")
    agreement = report.figures["decision_agreement"]["value"]
    mask = report.figures["mask_pixel_agreement"]
    axes.set_title(f"{'passed' if report.passed else 'FAILED'}: decisions agree on {100 * agreement:.2f}%, "
                   f"{mask['flipped']} of {mask['pixels']:,} mask pixels flip", fontsize=8)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over one
    axes.set_xlabel(describe_settings(settings), fontsize=6, wrap=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)

