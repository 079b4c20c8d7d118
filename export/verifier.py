"""Robustness parity: does a deployed engine, at its precision, still decide as the fp32 eager defense does?

:func:`verify` runs the eager wrapper and the engine-backed one (``load_bundle``) side by side on
the same held-out images with the same per-image seeds, and measures what a reduced precision
could change: the configured vote's decisions (agreement), clean accuracy (paired: McNemar's
exact test), the largest and mean gaps in probabilities and purified pixels, the mask's pixels
(a flipped mask pixel gets the other noise level), and robust accuracy on adversarial examples
crafted against the eager defense (the engines give no gradient), judged on seeds the attack
never used. The verdict checks the figures against :class:`~robustwrap.export.verification.Thresholds`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor

import robustwrap
from robustwrap.cpus import cpu_features
from robustwrap.evaluation import EvalConfig, attack_images, check_inputs, image_seeds
from robustwrap.fingerprint import tensor_digest
from robustwrap.noise import Noise, derive_seeds
from robustwrap.statistics import paired_sign_test
from robustwrap.vote import vote_labels
from robustwrap.wrapper import RobustWrapper

from .bundle import load_bundle
from .engines import ENGINE_SPECS, PrecisionArg, describe_precision, resolve_precision
from .format import VERIFIED, BundleInfo
from .verification import Check, Thresholds, VerifyReport, format_rate, graph_digests, rate_record

# The attack of a default verification: PGD+EOT against the eager defense, 10 iterations of 4 copies.
VERIFY_ATTACK = EvalConfig(attack="pgd-eot", iters=10, eot=4, loss="ce", batch_size=16)


def _paired(eager: list[bool], engine: list[bool], max_drop: float, alpha: float, what: str) -> tuple[dict, Check]:
    """Both accuracies, their paired change, McNemar's p and the check that the engine is not worse."""
    n = len(eager)
    gained = sum(g and not e for e, g in zip(eager, engine))
    lost = sum(e and not g for e, g in zip(eager, engine))
    p = paired_sign_test(gained, lost)
    figures = {"eager": rate_record(sum(eager), n), "engine": rate_record(sum(engine), n), "gained": gained, "lost": lost,
               "mcnemar_p": round(p, 6)}
    drop = (lost - gained) / n if n else 0.0
    significant = lost > gained and p < alpha
    passed = drop <= max_drop + 1e-12 and not significant
    line = (f"{what} accuracy: engine {format_rate(figures['engine'])} vs eager {format_rate(figures['eager'])}, "
            f"{lost} images lost and {gained} gained (McNemar p = {p:.3g}); needs a drop of at most "
            f"{100 * max_drop:g} points and none significant at {alpha:g}")
    return figures, Check(f"{what}_accuracy", passed, line)


def verify(
    eager: RobustWrapper,
    bundle: str | os.PathLike,
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    engine: str,
    precision: PrecisionArg = None,
    n_attack: int | None = 64,
    attack: EvalConfig = VERIFY_ATTACK,
    thresholds: Thresholds = Thresholds(),
    seed: int = 0,
    batch_size: int = 32,
    threads: int | None = None,
    description: Mapping | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    adversarial: Tensor | None = None,
) -> VerifyReport:
    """The robustness-parity certificate of ``engine`` at ``precision`` against the fp32 eager defense.

    Args:
        eager: the fp32 eager defense the bundle was exported from (same networks; its config
            must equal the bundle's saved one).
        bundle: the bundle folder.
        images: (N, C, H, W) held-out images in [0, 1].
        labels: (N,) in [0, num_classes).
        engine: the engine verified (``load_bundle``'s argument).
        precision: its precision (``load_bundle``'s argument).
        n_attack: the first this many images are also attacked (None or 0: none; all when larger than N).
        attack: the attack crafted against ``eager`` (its iterations, EOT, loss, eps; its seed is ignored).
        thresholds: what the verdict requires.
        seed: every image's randomness derives from ``(seed, its index)`` (:func:`robustwrap.evaluation.image_seeds`):
            both defenses get the same seeds; the attack's verdicts use seeds it never saw.
        batch_size: images per side-by-side call.
        threads: the engine's threads.
        description: JSON-able facts recorded in the settings (the data spec, the subset).
        on_progress: called with (images done, images in all).
        adversarial: the first ``n_attack`` images' adversarial examples, already crafted against
            ``eager`` (:func:`craft_adversarial`, to verify several engines against one attack); None
            to craft them here.

    Returns:
        A :class:`~robustwrap.export.verification.VerifyReport` (write it with
        :func:`~robustwrap.export.verification.write_record`).

    Raises:
        ValueError: bad data, a config that differs from the bundle's, an unknown engine or precision.
    """
    precisions = resolve_precision(engine, precision)
    if adversarial is not None and (n_attack is None or tuple(adversarial.shape) != (min(n_attack, len(images)),
                                                                                       *images.shape[1:])):
        raise ValueError(f"adversarial must hold the first n_attack images' examples, shape "
                         f"{(min(n_attack or 0, len(images)), *images.shape[1:])}, got {tuple(adversarial.shape)}")
    deployed = load_bundle(bundle, engine, precision=precision if ENGINE_SPECS[engine].precisions else None,
                           threads=threads)
    if deployed.config != eager.config:
        raise ValueError(f"the eager defense runs {eager.config} but the bundle saves {deployed.config}: verify "
                         "against the defense the bundle was exported from")
    check_inputs(eager, images, labels, num_classes)
    n = int(images.shape[0])
    attacked = n if n_attack is None else min(max(int(n_attack), 0), n)
    seeds = image_seeds(seed, range(n))
    rule = eager.config.vote
    decisions, clean_eager, clean_engine = [], [], []
    robust_eager, robust_engine, robust_agree = [], [], []
    prob_max = prob_sum = pixel_max = pixel_sum = 0.0
    mask_same = mask_total = pixel_total = prob_total = 0
    for start in range(0, n, batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        base = seeds[start:start + batch_size]
        with torch.no_grad():
            sides = [wrapper.purify_and_classify(x, noise=Noise.seeded(derive_seeds(base, 1))) for wrapper in (eager, deployed)]
            (pure_e, probs_e), (pure_g, probs_g) = sides
            label_e, label_g = vote_labels(probs_e, rule), vote_labels(probs_g, rule)
            masks = [wrapper.mask(x) for wrapper in (eager, deployed)]
        decisions += (label_e == label_g).tolist()
        clean_eager += (label_e == y).tolist()
        clean_engine += (label_g == y).tolist()
        gap = (probs_e.mean(0) - probs_g.mean(0)).abs()
        prob_max, prob_sum, prob_total = max(prob_max, float(gap.max())), prob_sum + float(gap.sum()), prob_total + gap.numel()
        pixels = (pure_e - pure_g).abs()
        pixel_max, pixel_sum, pixel_total = max(pixel_max, float(pixels.max())), pixel_sum + float(pixels.sum()), \
            pixel_total + pixels.numel()
        mask_same, mask_total = mask_same + int((masks[0] == masks[1]).sum()), mask_total + masks[0].numel()
        hit = max(0, min(attacked - start, x.shape[0]))
        if hit:
            x_adv = (adversarial[start:start + hit] if adversarial is not None
                     else craft_adversarial(eager, x[:hit], y[:hit], attack, base[:hit]))
            with torch.no_grad():
                judged = [wrapper.predict(x_adv, noise=Noise.seeded(derive_seeds(base[:hit], 2))) for wrapper in (eager, deployed)]
            robust_eager += (judged[0] == y[:hit]).tolist()
            robust_engine += (judged[1] == y[:hit]).tolist()
            robust_agree += (judged[0] == judged[1]).tolist()
        if on_progress is not None:
            on_progress(min(start + batch_size, n), n)

    agreement = rate_record(sum(decisions), n)
    figures = {"decision_agreement": agreement,
               "probability_gap": {"max": _significant(prob_max), "mean": _significant(prob_sum / prob_total)},
               "purified_pixel_gap": {"max": _significant(pixel_max), "mean": _significant(pixel_sum / pixel_total)},
               "mask_pixel_agreement": {"value": round(mask_same / mask_total, 8), "same": mask_same,
                                        "pixels": mask_total, "flipped": mask_total - mask_same}}
    checks = [Check("decision_agreement", agreement["value"] >= thresholds.min_agreement,
                    f"decisions agree on {format_rate(agreement)} of the clean images (same seeds); needs "
                    f"at least {100 * thresholds.min_agreement:g}%")]
    figures["clean"], check = _paired(clean_eager, clean_engine, thresholds.max_clean_drop, thresholds.alpha, "clean")
    checks.append(check)
    if attacked:
        figures["robust"], check = _paired(robust_eager, robust_engine, thresholds.max_robust_drop, thresholds.alpha,
                                           "robust")
        figures["robust"]["decision_agreement"] = rate_record(sum(robust_agree), attacked)
        checks.append(check)
    settings = {"n_images": n, "n_attack": attacked, "seed": seed, "randomness": "per-image: mix_seed(seed, index)",
                "attack": attack.resolved() if attacked else None,
                "adversarial_examples": None if not attacked else "crafted by this verify" if adversarial is None
                else "given (crafted against the eager defense beforehand)", "thresholds": dataclasses.asdict(thresholds),
                "config": eager.config.to_dict(), "bundle": str(Path(bundle)),
                "data_fingerprint": {"images": tensor_digest(images), "labels": tensor_digest(labels)},
                **dict(description or {})}
    return VerifyReport(engine, precisions, figures, tuple(checks), settings, graph_digests(bundle),
                        _versions(engine))


def craft_adversarial(eager: RobustWrapper, images: Tensor, labels: Tensor, attack: EvalConfig = VERIFY_ATTACK,
                      seeds: Tensor | None = None) -> Tensor:
    """The adversarial examples :func:`verify` judges: ``attack`` against the eager defense, image i's randomness
    from ``derive_seeds(seeds, 0)`` (``seeds``: :func:`robustwrap.evaluation.image_seeds` of the images' positions
    by default, as :func:`verify` uses with seed 0)."""
    seeds = image_seeds(0, range(images.shape[0])) if seeds is None else seeds
    return attack_images(eager, images, labels, attack, seeds=derive_seeds(seeds, 0))


def _significant(value: float) -> float:
    """``value`` to 4 significant digits (a tiny gap stays tiny instead of rounding to a fixed decimal)."""
    return float(f"{value:.4g}")


def _versions(engine: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "robustwrap": robustwrap.__version__,
                "cpu": cpu_features()}  # reduced-precision kernels differ between CPUs
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}.get(engine)
    if module:
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return versions


def describe(report: VerifyReport) -> str:
    """One line: 'openvino bf16: passed (3 checks)'."""
    return f"{report.engine} {describe_precision(report.precisions)}: {report.verdict_line}"


def eager_from_specs(bundle: str | os.PathLike) -> RobustWrapper:
    """The fp32 eager defense a bundle was exported from, rebuilt from the specs ``robustwrap export`` records.

    Raises:
        ValueError: the bundle records no specs (it was exported by the library: pass the wrapper to
            :func:`verify` instead), or they do not build.
    """
    from robustwrap.specs import build_classifier, build_diffusion  # noqa: PLC0415

    info = BundleInfo.read(bundle)
    specs = info.specs
    if not specs.get("classifier") or not specs.get("diffusion"):
        raise ValueError(f"{bundle} does not record how its networks were built (it was exported by the library): "
                         "call robustwrap.export.verify(eager_wrapper, bundle, ...) with the wrapper it was exported "
                         "from")
    classifier = build_classifier(specs["classifier"], num_classes=int(specs.get("num_classes") or info.num_classes),
                                  channels=info.channels, weights=specs.get("classifier_weights"))
    diffusion = build_diffusion(specs["diffusion"], channels=info.channels, image_size=info.image_size[0],
                                weights=specs.get("diffusion_weights"))
    return RobustWrapper(classifier, diffusion, info.config, image_size=info.image_size)


def verify_bundle(
    bundle: str | os.PathLike,
    *,
    engine: str,
    precision: PrecisionArg = None,
    data: str = "mnist5k:heldout",
    n: int = 1000,
    n_attack: int = 64,
    attack: EvalConfig | None = None,
    thresholds: Thresholds = Thresholds(),
    seed: int = 0,
    batch_size: int = 32,
    threads: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[VerifyReport, Path]:
    """What ``robustwrap verify`` does: :func:`verify` a bundle recorded by ``robustwrap export`` on a data spec,
    and write the record.

    The eager defense is rebuilt from the bundle's specs (:func:`eager_from_specs`); the images are a
    seeded stratified subset of ``n`` images of ``data``; the attack defaults to :data:`VERIFY_ATTACK`
    at the data's customary radius (0.3 L-inf for MNIST). The record and its figure go to
    ``BUNDLE/verified/<engine>-<precision>.json/.png``, or to ``out`` (``verify.json``, ``verify.png``:
    a new or empty folder, or an earlier verify's with ``overwrite``), checked before any work.

    Returns:
        The report and the path of the JSON record written.
    """
    from robustwrap.data import draw_subset, load_dataset, resolve_eps  # noqa: PLC0415
    from robustwrap.outputs import check_output, replace_folder, temporary_beside  # noqa: PLC0415

    from .verification import VERIFY_LAYOUT, plot_record, record_name, write_record  # noqa: PLC0415

    resolve_precision(engine, precision)
    replacing = check_output(out, overwrite=overwrite, layout=VERIFY_LAYOUT) if out is not None else False
    attack = attack or dataclasses.replace(VERIFY_ATTACK, eps=resolve_eps(None, data, VERIFY_ATTACK.norm))
    eager = eager_from_specs(bundle)
    images, labels = load_dataset(data)
    indices, subset = draw_subset(labels, n, seed, spec=data)
    report = verify(eager, bundle, images[indices], labels[indices], num_classes=BundleInfo.read(bundle).num_classes,
                    engine=engine, precision=precision, n_attack=n_attack, attack=attack, thresholds=thresholds,
                    seed=seed, batch_size=batch_size, threads=threads, on_progress=on_progress,
                    description={"data": data, "subset": {k: v for k, v in subset.items() if k != "indices"}})
    if out is None:
        written = write_record(report, Path(bundle) / VERIFIED, record_name(report.engine, report.precisions))
        plot_record(report, written.with_suffix(".png"))
        return report, written
    work = temporary_beside(out)
    try:
        write_record(report, work)
        plot_record(report, work / "verify.png")
        replace_folder(work, out, replacing=replacing, layout=VERIFY_LAYOUT)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report, Path(out) / "verify.json"
