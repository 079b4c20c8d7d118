"""Robust vs clean accuracy frontiers on held-out MNIST: uniform DiffPure vs heterogeneous noise.

    python benchmarks/frontier.py            # about 1.5 hours on 2 cores; resumable
    python benchmarks/frontier.py --quick    # smoke run (3 configs, 16 images) under out/.../quick, no report

Protocol (fixed before any number was seen; see the RESULTS.md section for the outcome):
- Models: the shipped MNIST SmallResNet classifier and SmallUNet DDPM (models/mnist/).
- Data: the 1,000 held-out images of ``mnist5k`` for clean accuracy; a random subset of
  ``--n-attack`` of them (seed 0) for attacks. Threat model L-inf, eps 0.3.
- Uniform DiffPure at t* is the same sampler with an all-ones mask, t_l = t* and the same
  re-noising (single-step resampling while above t_s = t* / 2).
- Every defense spends about 10 denoiser calls per image (steps chosen so that steps * t_l is
  10, or 12 where the DDIM stride forces it), one vote.
- Sweep attack: full-gradient PGD (random start, EOT ``--eot``), ``--iters`` iterations of
  step ``--step``; robust accuracy is measured on the iterates at 0, 5, 10, ... so each curve
  shows whether it has stopped falling. The best defense of each family (highest final robust
  accuracy, ties to higher clean accuracy) is then attacked ``--extend`` iterations more at
  step ``--extend-step`` (convergence check) and with AutoAttack rand (APGD-CE + APGD-DLR with
  EOT, reduced iterations: ``--aa-iters``, ``--aa-eot``).
- Cost frontier: the best heterogeneous setting at about 10, 40, 200 and 2,000 denoiser calls per
  image (steps x votes), scored on the adversarial images crafted against its 10-call version
  (a transfer attack for the longer samplers: an upper bound on their robust accuracy).

Records go to ``--out`` (one JSON line per finished unit, adversarial images as .pt) so a crash
loses at most the unit in flight; a rerun skips what is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.attacks import DefenseLogits, Undefended, autoattack, eot_gradient, project
from robustwrap.data import mnist5k
from robustwrap.specs import build_classifier, build_diffusion

from common import write_section



@dataclass(frozen=True)
class Defense:
    """One point of a sweep: a family, its noise levels and the DDIM grid giving ~10 calls."""

    name: str
    family: str               # "none", "uniform" or "heterogeneous"
    t_l: float = 0.2
    t_s: float = 0.1
    tau: float = 0.9
    steps: int = 50

    def config(self) -> PurifyConfig:
        mode = "uniform" if self.family == "uniform" else "heterogeneous"
        return PurifyConfig(t_l=self.t_l, t_s=self.t_s, tau=self.tau, steps=self.steps, mode=mode)


def sweep() -> list[Defense]:
    """The defenses compared: steps give 10 calls (12 where 1000 // steps forces a coarser grid)."""
    steps_for = {0.1: 100, 0.2: 50, 0.3: 40, 0.4: 25, 0.5: 20, 0.6: 20}
    defenses = [Defense("none", "none")]
    defenses += [Defense(f"uniform t*={t}", "uniform", t_l=t, t_s=round(t / 2, 2), steps=steps_for[t]) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    for t_l, t_s in ((0.2, 0.1), (0.3, 0.1), (0.4, 0.2), (0.5, 0.2), (0.6, 0.3)):
        defenses.append(Defense(f"hetero t_l={t_l} t_s={t_s} tau=0.9", "heterogeneous", t_l, t_s, 0.9, steps_for[t_l]))
    for tau in (0.7, 0.8):
        defenses.append(Defense(f"hetero t_l=0.4 t_s=0.2 tau={tau}", "heterogeneous", 0.4, 0.2, tau, steps_for[0.4]))
    return defenses


class Records:
    """Append-only JSON lines keyed by (phase, name); reruns skip what is recorded.

    The folder's ``settings.json`` pins the attack settings: a rerun with other settings is
    refused instead of mixing numbers. A half-written last line (a crash mid-write) is dropped.
    """

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        self.entries: dict[tuple[str, str], dict] = {}
        pinned = path.with_name("settings.json")
        if pinned.exists() and json.loads(pinned.read_text()) != settings:
            raise SystemExit(f"{path.parent} holds a run with other settings ({pinned}); use another --out")
        pinned.write_text(json.dumps(settings, indent=1))
        if path.exists():
            lines = path.read_text().splitlines()
            for number, line in enumerate(lines):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines) - 1:
                        break  # the unit in flight when the last run stopped
                    raise
                self.entries[(entry["phase"], entry["name"])] = entry

    def get(self, phase: str, name: str) -> dict | None:
        return self.entries.get((phase, name))

    def add(self, entry: dict) -> None:
        self.entries[(entry["phase"], entry["name"])] = entry
        with self.path.open("a") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()


def standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def build_wrapper(defense: Defense, classifier: torch.nn.Module, diffusion: torch.nn.Module) -> RobustWrapper:
    return RobustWrapper(classifier, diffusion, defense.config())


def predict(wrapper: RobustWrapper, defense: Defense, x: torch.Tensor, seed: int, batch: int = 250) -> torch.Tensor:
    """Labels (N,) of the defense (or the bare classifier) with a fixed seed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        parts = [wrapper.classify(x[i:i + batch]).argmax(1) if defense.family == "none" else wrapper.predict(x[i:i + batch])
                 for i in range(0, len(x), batch)]
    return torch.cat(parts)


def pgd_curve(model, wrapper, defense, x, y, x_start, iters, step, eot, every, seed) -> tuple[torch.Tensor, list]:
    """L-inf PGD+EOT from ``x_start``; robust accuracy of the iterate every ``every`` iterations.

    Gradient noise comes from the global RNG seeded once here; each scoring pass reseeds it
    (``seed + 1000 + i``), so scoring never replays a draw the attack used."""
    torch.manual_seed(seed)
    x_adv = x_start.clone()
    curve = []
    for i in range(iters + 1):
        if i % every == 0 or i == iters:
            accuracy = (predict(wrapper, defense, x_adv, seed + 1000 + i) == y).float().mean().item()
            curve.append([i, accuracy])
        if i == iters:
            break
        grad = eot_gradient(model, x_adv, y, eot)
        x_adv = project(x_adv + step * grad.sign(), x, EPS, "Linf").detach()
    return x_adv, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/frontier"))
    parser.add_argument("--eps", type=float, default=0.3, help="L-inf radius (0.3: the standard MNIST threat model)")
    parser.add_argument("--n-attack", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--step", type=float, default=0.03)
    parser.add_argument("--eot", type=int, default=1)
    parser.add_argument("--extend", type=int, default=60)
    parser.add_argument("--extend-step", type=float, default=0.01)
    parser.add_argument("--aa-iters", type=int, default=20)
    parser.add_argument("--aa-eot", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    global EPS  # noqa: PLW0603 - the script's one setting read by its helpers
    EPS = args.eps
    args.out = args.out / f"eps{args.eps}"

    defenses = sweep()
    images, labels = mnist5k("heldout")
    if args.quick:
        defenses = [defenses[0], defenses[2], defenses[8]]
        images, labels = images[:64], labels[:64]
        args.n_attack, args.iters, args.extend, args.aa_iters = 16, 2, 2, 2
        args.out = args.out / "quick"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adv").mkdir(exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quick")}
    records = Records(args.out / "records.jsonl", settings)
    subset = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.n_attack].sort().values
    x, y = images[subset], labels[subset]
    classifier, diffusion = build_classifier("mnist"), build_diffusion("mnist")
    wrappers = {d.name: build_wrapper(d, classifier, diffusion) for d in defenses}

    def log(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    def attack_model(defense: Defense):
        wrapper = wrappers[defense.name]
        return Undefended(wrapper) if defense.family == "none" else DefenseLogits(wrapper)

    # 1. Clean accuracy on all held-out images; 2. PGD sweep on the subset.
    for defense in defenses:
        wrapper = wrappers[defense.name]
        if records.get("clean", defense.name) is None:
            start = time.perf_counter()
            correct = (predict(wrapper, defense, images, seed=1) == labels).float().mean().item()
            calls = 0 if defense.family == "none" else wrapper.plan.denoiser_calls
            records.add({"phase": "clean", "name": defense.name, "defense": asdict(defense), "accuracy": correct,
                         "n": len(images), "calls": calls, "seconds": round(time.perf_counter() - start, 1)})
            log(f"clean {defense.name}: {correct:.3f}")
        if records.get("pgd", defense.name) is None:
            start = time.perf_counter()
            torch.manual_seed(2)
            x_start = project(x + EPS * (torch.rand_like(x) * 2 - 1), x, EPS, "Linf")
            x_adv, curve = pgd_curve(attack_model(defense), wrapper, defense, x, y, x_start, args.iters, args.step,
                                     1 if defense.family == "none" else args.eot, 5, seed=3)
            torch.save(x_adv, args.out / "adv" / f"{defense.name}.pt")
            records.add({"phase": "pgd", "name": defense.name, "curve": curve, "n": len(x), "iters": args.iters,
                         "step": args.step, "eot": 1 if defense.family == "none" else args.eot,
                         "seconds": round(time.perf_counter() - start, 1)})
            log(f"pgd {defense.name}: {curve}")

    def final(name: str, phase: str = "pgd") -> float:
        return records.get(phase, name)["curve"][-1][1]

    best = {}
    for family in ("uniform", "heterogeneous"):
        members = [d for d in defenses if d.family == family]
        best[family] = max(members, key=lambda d: (final(d.name), records.get("clean", d.name)["accuracy"]))
    log(f"best: {[d.name for d in best.values()]}")

    # 3. Convergence: continue the best defenses' attacks at a smaller step.
    for defense in best.values():
        if records.get("extend", defense.name) is None:
            start = time.perf_counter()
            x_prev = torch.load(args.out / "adv" / f"{defense.name}.pt", weights_only=True)
            x_adv, curve = pgd_curve(attack_model(defense), wrappers[defense.name], defense, x, y, x_prev, args.extend,
                                     args.extend_step, args.eot, 10, seed=4)
            torch.save(x_adv, args.out / "adv" / f"{defense.name} extended.pt")
            curve = [[args.iters + i, a] for i, a in curve]
            records.add({"phase": "extend", "name": defense.name, "curve": curve, "step": args.extend_step,
                         "seconds": round(time.perf_counter() - start, 1)})
            log(f"extend {defense.name}: {curve}")

    # 4. AutoAttack: rand (EOT) on the best defenses, standard on the bare classifier.
    for defense in [defenses[0], *best.values()]:
        if records.get("autoattack", defense.name) is None:
            start = time.perf_counter()
            torch.manual_seed(5)
            undefended = defense.family == "none"
            x_adv = autoattack(attack_model(defense), x, y, eps=EPS, norm="Linf", version="standard" if undefended else "rand",
                               iterations=100 if undefended else args.aa_iters, eot=args.aa_eot, seed=0,
                               batch_size=len(x))
            accuracy = (predict(wrappers[defense.name], defense, x_adv, seed=6) == y).float().mean().item()
            records.add({"phase": "autoattack", "name": defense.name, "accuracy": accuracy,
                         "version": "standard" if undefended else "rand", "iters": 100 if undefended else args.aa_iters,
                         "eot": 1 if undefended else args.aa_eot, "seconds": round(time.perf_counter() - start, 1)})
            log(f"autoattack {defense.name}: {accuracy:.3f}")

    # 5. Cost frontier of the best heterogeneous setting (adversarial images from its 10-call attack).
    base = best["heterogeneous"]
    x_adv = torch.load(args.out / "adv" / f"{base.name}.pt", weights_only=True)
    budgets = {"~10": (1, 1), "~40": (1, 4), "~200": (5, 4), "~2000": (10, 20)}
    if args.quick:
        budgets = {"~10": (1, 1), "~40": (1, 4)}
    for label, (steps_factor, votes) in budgets.items():
        recorded = records.get("cost", label)
        if recorded is None or recorded["setting"] != base.name:
            start = time.perf_counter()
            wrapper = RobustWrapper(classifier, diffusion, replace(base.config(), steps=base.steps * steps_factor, votes=votes))
            clean = (predict(wrapper, base, x, seed=7, batch=32) == y).float().mean().item()
            robust = (predict(wrapper, base, x_adv, seed=8, batch=32) == y).float().mean().item()
            calls = wrapper.plan.denoiser_calls * votes
            records.add({"phase": "cost", "name": label, "setting": base.name, "steps": base.steps * steps_factor,
                         "votes": votes, "calls": calls, "clean": clean, "robust": robust,
                         "seconds": round(time.perf_counter() - start, 1)})
            log(f"cost {label}: {calls} calls, clean {clean:.3f}, robust {robust:.3f}")

    if not args.quick:
        report(records, defenses, best, args)


def report(records: Records, defenses: list[Defense], best: dict, args: argparse.Namespace) -> None:
    """The table, the plot and the RESULTS.md section."""
    n = args.n_attack  # every attack record holds this many images (the settings are pinned)
    rows = ["| defense | denoiser calls | clean (1,000) | robust, PGD curve (iters: acc) | robust, final ± s.e. |",
            "|---|---|---|---|---|"]
    points = []
    for d in defenses:
        clean = records.get("clean", d.name)
        curve = records.get("pgd", d.name)["curve"]
        robust = curve[-1][1]
        points.append((d, clean["accuracy"], robust))
        shown = ", ".join(f"{i}: {100 * a:.1f}" for i, a in curve)
        rows.append(f"| {d.name} | {clean['calls']} | {100 * clean['accuracy']:.1f} ± {100 * standard_error(clean['accuracy'], clean['n']):.1f} "
                    f"| {shown} | {100 * robust:.1f} ± {100 * standard_error(robust, n):.1f} |")
    extra = ["| defense | PGD, continued (iters: acc) | AutoAttack | AutoAttack acc ± s.e. |", "|---|---|---|---|"]
    for d in [defenses[0], *best.values()]:
        extended = records.get("extend", d.name)
        shown = ", ".join(f"{i}: {100 * a:.1f}" for i, a in extended["curve"]) if extended else "n/a"
        aa = records.get("autoattack", d.name)
        extra.append(f"| {d.name} | {shown} | {aa['version']}, {aa['iters']} iters, EOT {aa['eot']} "
                     f"| {100 * aa['accuracy']:.1f} ± {100 * standard_error(aa['accuracy'], n):.1f} |")
    cost = ["| budget | steps x votes | denoiser calls / image | clean (subset) | robust (transfer from 10 calls) |", "|---|---|---|---|---|"]
    for label in ("~10", "~40", "~200", "~2000"):
        entry = records.get("cost", label)
        if entry:
            cost.append(f"| {label} | {entry['steps']} x {entry['votes']} | {entry['calls']} | {100 * entry['clean']:.1f} "
                        f"| {100 * entry['robust']:.1f} ± {100 * standard_error(entry['robust'], n):.1f} |")
    plot(points, Path(__file__).with_name(f"frontier-eps{EPS}.png"))
    body = "\n".join([
        f"Held-out MNIST, L-inf eps {EPS}. Clean accuracy on all 1,000 held-out images; attacks on {n} of them "
        f"(random, seed 0). PGD: {args.iters} iterations, step {args.step}, EOT {args.eot}, random start.",
        "", *rows, "", "Convergence check and AutoAttack on the best defense of each family:", "", *extra,
        "", f"Cost frontier of `{best['heterogeneous'].name}`:", "", *cost, "",
        f"Plot: `benchmarks/frontier-eps{EPS}.png` (robust vs clean accuracy; one curve per family).",
    ])
    write_section(f"Frontier: uniform vs heterogeneous noise (MNIST, L-inf {EPS})", body)


def plot(points: list, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for family, marker in (("uniform", "o"), ("heterogeneous", "s"), ("none", "x")):
        chosen = sorted([(c, r, d) for d, c, r in points if d.family == family], key=lambda p: p[0])
        axes.plot([100 * c for c, _, _ in chosen], [100 * r for _, r, _ in chosen], marker=marker,
                  linestyle="-" if family != "none" else "", label=family)
        for c, r, d in chosen:
            tag = {"uniform": f"{d.t_l}", "heterogeneous": f"{d.t_l}/{d.t_s}/{d.tau}", "none": "none"}[family]
            axes.annotate(tag, (100 * c, 100 * r), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.set_xlabel("clean accuracy (%)")
    axes.set_ylabel("robust accuracy under PGD+EOT (%)")
    axes.set_title(f"MNIST held-out, L-inf {EPS}, ~10 denoiser calls")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
