"""Evaluation runs: resumable, shardable over processes, strict about bad input."""

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import robustwrap
from robustwrap.attacks import DiffHammerOptions, attack_loss, pgd_eot
from robustwrap.data import describe_subset, stratified_subset
from robustwrap.evaluation import EvalConfig, run_evaluation
from robustwrap.sanity import sanity_checks

from robustwrap import BareClassifier, RobustWrapper

from .tiny import tiny_classifier, tiny_unet, tiny_wrapper

CFG = EvalConfig(attack="pgd-eot", iters=2, eot=1, runs=2, batch_size=2, seed=3)


def _data(n: int = 7):
    generator = torch.Generator().manual_seed(11)
    return torch.rand(n, 3, 16, 16, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _comparable(report) -> dict:
    """The report (typed, or as report.json holds it) without wall-clock time (the only field allowed to differ)."""
    report = report if isinstance(report, dict) else report.to_json()
    return {k: v for k, v in report.items() if not k.startswith("seconds")}


def test_report_has_the_promised_fields(tmp_path):
    images, labels = _data()
    report = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10)
    assert isinstance(report, robustwrap.evaluation.Report) and report.n_samples == 7 and report.runs == 2
    worst = report.robust_accuracy
    assert len(worst.per_run) == len(report.clean_accuracy.per_run) == 2
    assert worst.all_runs <= worst.worst_run <= worst.mean and worst.interval[0] <= worst.mean <= worst.interval[1]
    assert report.settings["eval"]["iters"] == 2 and "torch" in report.versions
    written = json.loads((tmp_path / "report.json").read_text())
    assert written == json.loads(json.dumps(report.to_json()))  # report.json is the typed report, as JSON
    for key in ("mean", "std", "per_run", "interval"):
        assert key in written["robust_accuracy"] and key in written["clean_accuracy"]
    assert written["robust_accuracy_worst_run"] == worst.worst_run and written["robust_accuracy_all_runs"] == worst.all_runs
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 4  # header + ceil(7 / 2) batches


def test_resume_after_a_crash_gives_the_identical_report(tmp_path):
    images, labels = _data()
    straight = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "straight", num_classes=10).to_json()

    def crash_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt("injected crash")

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "crashed", num_classes=10, on_batch=crash_after_two)
    assert len((tmp_path / "crashed" / "results.jsonl").read_text().splitlines()) == 3  # header + 2 batches kept
    with pytest.raises(FileExistsError, match="resume"):
        run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "crashed", num_classes=10)
    resumed = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "crashed", num_classes=10, resume=True).to_json()
    assert _comparable(resumed) == _comparable(straight)


def test_corrupted_or_foreign_results_are_refused_not_overwritten(tmp_path):
    images, labels = _data()
    run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10, stop_after=2)
    results = tmp_path / "results.jsonl"
    header, first, second = results.read_text().splitlines()
    for bad, match in [
        ('{"batch": 1, "clean": [[tru', "line 2 is not valid JSON"),  # corrupt line that is not the last
        ("{}", "line 2 is not a batch record"),
        ("[1, 2]", "line 2 is not a batch record"),
        (first.replace('"batch": 0', '"batch": 99'), "line 2 has batch 99"),
    ]:
        results.write_text("\n".join([header, bad, second]) + "\n")
        before = results.read_text()
        with pytest.raises(ValueError, match=match) as caught:
            run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10, resume=True)
        assert str(results) in str(caught.value)
        assert results.read_text() == before
    results.write_text(header + "\n")
    other = EvalConfig(attack="bpda", iters=2, eot=1, batch_size=2)
    with pytest.raises(ValueError, match="other settings"):
        run_evaluation(tiny_wrapper(), images, labels, other, tmp_path, num_classes=10, resume=True)


def test_a_shortened_robust_list_is_refused_naming_the_line(tmp_path):
    images, labels = _data()
    run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10, stop_after=1)
    results = tmp_path / "results.jsonl"
    header, first = results.read_text().splitlines()
    record = json.loads(first)
    record["robust"]["pgd-eot"][0] = record["robust"]["pgd-eot"][0][:-1]
    results.write_text(header + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="line 2 .*robust\\[pgd-eot\\] must hold 2 true/false values"):
        run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10, resume=True)


def test_resume_survives_a_torn_last_line_a_blank_line_and_an_empty_file(tmp_path):
    images, labels = _data()
    straight = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "straight", num_classes=10).to_json()

    torn = tmp_path / "torn"
    run_evaluation(tiny_wrapper(), images, labels, CFG, torn, num_classes=10, stop_after=2)
    lines = (torn / "results.jsonl").read_text().splitlines()
    (torn / "results.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # crash mid-write
    calls = []
    resumed = run_evaluation(tiny_wrapper(), images, labels, CFG, torn, num_classes=10, resume=True,
                             on_batch=lambda done, total: calls.append(done)).to_json()
    assert calls == [2, 3, 4]  # batch 1 (the torn line) recomputed, batch 0 kept
    assert _comparable(resumed) == _comparable(straight)
    assert all(json.loads(line) for line in (torn / "results.jsonl").read_text().splitlines())

    blank = tmp_path / "blank"
    run_evaluation(tiny_wrapper(), images, labels, CFG, blank, num_classes=10, stop_after=2)
    with (blank / "results.jsonl").open("a") as file:
        file.write("\n")
    assert _comparable(run_evaluation(tiny_wrapper(), images, labels, CFG, blank, num_classes=10, resume=True)) == \
        _comparable(straight)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    assert _comparable(run_evaluation(tiny_wrapper(), images, labels, CFG, empty, num_classes=10, resume=True)) == \
        _comparable(straight)


def test_an_existing_file_as_the_results_folder_is_refused(tmp_path):
    images, labels = _data()
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ValueError, match="is a file"):
        run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "taken", num_classes=10)
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(attack="cw"), "attack must be one of"),
        (dict(norm="L1"), "norm must be"),
        (dict(eps=-0.1), "eps must be >= 0"),
        (dict(eps=float("nan")), "eps must be a finite number"),
        (dict(eps=float("inf")), "eps must be a finite number"),
        (dict(step_size=float("nan")), "step_size must be a finite number"),
        (dict(step_size=0.0), "step_size must be > 0"),
        (dict(options="fast"), "options must be attack options"),
        (dict(attack="bpda", options=DiffHammerOptions()), "none of \\['bpda'\\] takes it"),
        (dict(loss="hinge"), "loss must be one of"),
        (dict(attack="pgd-eot,cw"), "attack must be one of"),
        (dict(attack="bpda,bpda"), "twice"),
        (dict(runs=0), "runs must be >= 1"),
    ],
)
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        EvalConfig(**settings)


def test_data_model_mismatch_is_refused_before_any_attack(tmp_path):
    images, labels = _data()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        run_evaluation(tiny_wrapper(), images, labels + 10, CFG, tmp_path, num_classes=10)
    fixed_size = RobustWrapper(tiny_classifier(), tiny_unet(), tiny_wrapper().config, image_size=16)
    with pytest.raises(ValueError, match="the data is"):  # a wrapper declared for 16 x 16 inputs
        run_evaluation(fixed_size, torch.rand(2, 3, 32, 32), labels[:2], CFG, tmp_path, num_classes=10)
    with pytest.raises(ValueError, match="channels"):
        run_evaluation(tiny_wrapper(), torch.rand(2, 1, 16, 16), labels[:2], CFG, tmp_path, num_classes=10)
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, labels = _data()
    try:
        run_evaluation(tiny_wrapper(), images, labels, CFG, out, num_classes=10)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_evaluation_equals_single_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker: the same arithmetic everywhere
    images, labels = _data()
    try:
        single = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "single", num_classes=10).to_json()
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_distributed_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    shards = sorted(p.name for p in (tmp_path / "two").glob("results*.jsonl"))
    assert shards == ["results.rank0-of-2.jsonl", "results.rank1-of-2.jsonl"]
    merged = json.loads((tmp_path / "two" / "report.json").read_text())
    assert _comparable(merged) == _comparable(json.loads(json.dumps(single)))
    # each image's record is the same as in one process with one batch of 16 (per-image seeds)
    run_evaluation(tiny_wrapper(), images, labels, replace(CFG, batch_size=16), tmp_path / "whole", num_classes=10)
    assert _per_image(tmp_path / "two") == _per_image(tmp_path / "whole")


def test_stratified_subset_is_seeded_proportional_and_not_the_first_class():
    labels = torch.arange(10).repeat_interleave(100)  # ordered by class, like the held-out split
    indices = stratified_subset(labels, 64, seed=0)
    counts = torch.bincount(labels[indices], minlength=10)
    assert len(indices) == 64 and len(set(indices.tolist())) == 64
    assert counts.min() >= 6 and counts.max() <= 7  # every class, in proportion (the first 64 are all 0s)
    assert torch.equal(indices, stratified_subset(labels, 64, seed=0))
    assert not torch.equal(indices, stratified_subset(labels, 64, seed=1))
    assert torch.equal(stratified_subset(labels, 0, seed=0), torch.arange(1000))  # 0 = all
    uneven = torch.tensor([0] * 80 + [1] * 20)
    assert torch.bincount(uneven[stratified_subset(uneven, 10, seed=3)]).tolist() == [8, 2]
    state = torch.get_rng_state()
    stratified_subset(labels, 64, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="n must be"):
        stratified_subset(labels, -1, seed=0)


def test_report_records_the_subset_and_the_eps_and_step_actually_used(tmp_path):
    all_images, all_labels = _data(20)
    indices = stratified_subset(all_labels, 6, seed=4)
    subset = describe_subset(all_labels, indices, seed=4, requested=6, spec="tensors:x")
    cfg = EvalConfig(iters=4, eot=1, batch_size=3)
    report = run_evaluation(tiny_wrapper(), all_images[indices], all_labels[indices], cfg, tmp_path,
                            num_classes=10, subset=subset).to_json()
    assert report["subset"]["indices"] == indices.tolist() and report["subset"]["seed"] == 4
    assert sum(report["subset"]["per_class"].values()) == 6 and report["subset"]["rule"].startswith("stratified")
    assert report["threat"]["eps"] == pytest.approx(8 / 255)
    assert report["threat"]["step_size"] == pytest.approx(2.5 * (8 / 255) / 4)
    assert report["settings"]["eval"]["eps"] == pytest.approx(8 / 255)
    paper = run_evaluation(tiny_wrapper(), all_images[:3], all_labels[:3], replace(cfg, step_size=0.007),
                           tmp_path / "paper", num_classes=10).to_json()
    assert paper["threat"]["step_size"] == 0.007 and paper["subset"]["rule"] == "all"


@pytest.mark.parametrize("norm, eps", [("Linf", 0.3), ("L2", 2.0)])
def test_default_step_lets_the_attack_cross_the_ball(norm, eps):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    x, y = torch.full((2, 3, 16, 16), 0.5), torch.tensor([0, 1])
    x_adv = pgd_eot(model, x, y, eps=eps, norm=norm, steps=10, eot=1, random_start=False)
    delta = (x_adv - x).flatten(1)
    reached = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert reached.min() >= 0.99 * eps  # the old L-inf default (0.007) stopped at 0.07 of 0.3


def test_margin_and_dlr_losses():
    scores = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -4.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(attack_loss(scores, y, "margin"), torch.tensor([-2.0, 2.0]))
    torch.testing.assert_close(attack_loss(scores, y, "dlr"), torch.tensor([-2.0 / 3.0, 2.0 / 2.0]))
    torch.testing.assert_close(attack_loss(3 * scores + 7, y, "dlr"), attack_loss(scores, y, "dlr"))  # scale-free
    with pytest.raises(ValueError, match="loss must be"):
        attack_loss(scores, y, "hinge")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=generator)
    y = model(x).argmax(1)
    for loss in ("margin", "dlr"):
        x_adv = pgd_eot(model, x, y, eps=0.3, steps=10, eot=1, loss=loss, generator=generator)
        assert (model(x_adv).argmax(1) == y).float().mean() <= 0.1


def test_several_attacks_report_each_and_the_per_image_worst_case(tmp_path):
    images, labels = _data(4)
    cfg = replace(CFG, attack="none,pgd-eot", loss="margin", runs=2)
    report = run_evaluation(tiny_wrapper(), images, labels, cfg, tmp_path, num_classes=10).to_json()
    by_attack = report["robust_accuracy_by_attack"]
    assert list(by_attack) == ["none", "pgd-eot"] and report["attacks"] == ["none", "pgd-eot"]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()[1:]]
    every = [sum(all(r["robust"][a][run][i] for a in ("none", "pgd-eot")) for r in records for i in range(r["size"])) / 4
             for run in range(2)]
    assert report["robust_accuracy"]["per_run"] == every
    assert report["robust_accuracy"]["mean"] <= min(v["mean"] for v in by_attack.values())
    assert report["threat"]["loss"] == "margin"
    for stats in by_attack.values():
        assert {"mean", "interval", "all_runs", "all_runs_interval", "worst_run"} <= set(stats)


def test_evaluation_leaves_the_callers_random_state_alone_and_ignores_it(tmp_path):
    pytest.importorskip("pyautoattack")
    images, labels = _data(4)
    cfg = replace(CFG, attack="pgd-eot,bpda,mask-aware,autoattack", iters=1)
    wrapper = tiny_wrapper()  # (building the tiny models seeds the global RNG: do it first)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run_evaluation(wrapper, images, labels, cfg, tmp_path / "a", num_classes=10).to_json()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)
    second = run_evaluation(wrapper, images, labels, cfg, tmp_path / "b", num_classes=10).to_json()
    assert _comparable(first) == _comparable(second)  # the results come from cfg.seed, not the global RNG
    state = torch.get_rng_state()
    sanity_checks(wrapper, images, labels, EvalConfig(iters=1, eot=1))
    assert torch.equal(torch.get_rng_state(), state)


def test_no_global_seeding_in_the_library():
    root = Path(robustwrap.__file__).parent
    names = [str(p.relative_to(root)) for p in sorted((root / "evaluation").glob("*.py"))]
    for name in (*names, "sanity.py", "attacks/pgd.py", "attacks/autoattack.py", "data.py"):
        assert "manual_seed(" not in (root / name).read_text().replace("Generator().manual_seed(", "") \
            .replace("Generator(device=device).manual_seed(", ""), name


SANITY_NAMES = [
    "gradient finite and non-zero",
    "attack drives the undefended classifier to <= 5%",
    "robust accuracy <= 10% at a huge radius",
    "robust accuracy converged (4x iterations within the 2x interval)",
    "more iterations do not raise robust accuracy",
]


def test_sanity_checks_run_and_report():
    images, labels = _data(4)
    checks = sanity_checks(tiny_wrapper(), images, labels, EvalConfig(iters=2, eot=1))
    gradient = "gradient matches float64 finite differences (relative error <= 0.0001)"
    assert [c.name for c in checks] == SANITY_NAMES + ["BPDA not much stronger than the full gradient", gradient]
    assert checks[-1].passed, checks[-1].detail
    assert checks[0].passed
    assert "at 2, " in checks[3].detail and "at 4, " in checks[3].detail and "at 8 iterations" in checks[3].detail
    bare = sanity_checks(BareClassifier(tiny_wrapper()), images, labels, EvalConfig(iters=2, eot=1))
    assert [c.name for c in bare] == SANITY_NAMES + [gradient]


def test_sanity_flags_an_attack_that_does_nothing():
    wrapper = tiny_wrapper()
    images, _ = _data(6)
    labels = wrapper.classify(images).argmax(1)  # the bare classifier is right on every image
    weak = EvalConfig(iters=4, eot=1, eps=0.1, step_size=1e-6)  # moves nothing, like 4 iterations of a tiny step
    checks = {c.name: c for c in sanity_checks(wrapper, images, labels, weak)}
    assert not checks["attack drives the undefended classifier to <= 5%"].passed
    strong = EvalConfig(iters=4, eot=1, eps=0.5, loss="margin")
    checks = {c.name: c for c in sanity_checks(wrapper, images, labels, strong)}
    assert checks["attack drives the undefended classifier to <= 5%"].passed


def _per_image(folder: Path) -> dict:
    """Each image's clean and robust outcomes, in data-set order, from every results file in ``folder``."""
    records = []
    for path in sorted(folder.glob("results*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]
    records.sort(key=lambda r: r["batch"])
    flat = {"clean": [[v for r in records for v in r["clean"][run]] for run in range(CFG.runs)]}
    for attack in records[0]["robust"]:
        flat[attack] = [[v for r in records for v in r["robust"][attack][run]] for run in range(CFG.runs)]
    return flat


def test_an_images_record_does_not_depend_on_the_batch_size_or_on_the_other_images(tmp_path):
    """Batch 1 vs batch 16 vs a shuffled subset: identical per-image outcomes (per-image seeds)."""
    images, labels = _data(7)
    cfg = replace(CFG, attack="pgd-eot,bpda", runs=2)
    wrapper = tiny_wrapper(votes=3)
    run_evaluation(wrapper, images, labels, replace(cfg, batch_size=1), tmp_path / "one", num_classes=10)
    run_evaluation(wrapper, images, labels, replace(cfg, batch_size=16), tmp_path / "sixteen", num_classes=10)
    one, sixteen = _per_image(tmp_path / "one"), _per_image(tmp_path / "sixteen")
    assert one == sixteen
    # a subset holds the same images, identified by their data-set index: same outcomes
    picked = torch.tensor([5, 1, 6])
    subset = describe_subset(labels, picked, seed=None, requested=3)
    run_evaluation(wrapper, images[picked], labels[picked], replace(cfg, batch_size=2), tmp_path / "subset",
                   num_classes=10, subset=subset)
    part = _per_image(tmp_path / "subset")
    for key, table in part.items():
        assert table == [[row[i] for i in picked.tolist()] for row in one[key]], key
    header = json.loads((tmp_path / "one" / "results.jsonl").read_text().splitlines()[0])["header"]
    assert header["randomness"].startswith("per-image")


def test_attack_images_with_per_image_seeds_is_batch_independent():
    from robustwrap.evaluation import attack_images, image_seeds

    images, labels = _data(5)
    wrapper = tiny_wrapper(votes=2)
    cfg = EvalConfig(attack="pgd-eot", iters=2, eot=2)
    seeds = image_seeds(7, range(5))
    for attack in ("pgd-eot", "bpda", "mask-aware", "pgd-vote"):
        whole = attack_images(wrapper, images, labels, cfg, attack=attack, seeds=seeds)
        halves = torch.cat([attack_images(wrapper, images[:2], labels[:2], cfg, attack=attack, seeds=seeds[:2]),
                            attack_images(wrapper, images[2:], labels[2:], cfg, attack=attack, seeds=seeds[2:])])
        torch.testing.assert_close(whole, halves, rtol=0, atol=1e-6, msg=attack)
        assert not torch.equal(whole, images)
    with pytest.raises(ValueError, match="shape"):
        attack_images(wrapper, images, labels, cfg, seeds=seeds[:3])


def test_randomness_modules_only_seed_their_own_generators():
    """Every manual_seed( in the attacks, noise, evaluation and checks seeds a torch.Generator it made."""
    root = Path(robustwrap.__file__).parent
    paths = [*sorted((root / "attacks").glob("*.py")), *sorted((root / "evaluation").glob("*.py"))] + [
        root / name for name in ("noise.py", "sanity.py", "gradcheck.py", "statistics.py", "wrapper.py", "sampler.py")]
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "manual_seed(" in line:
                assert "Generator(" in line.split("manual_seed(")[0], f"{path.name}:{number}: {line.strip()}"


def test_batch_records_are_typed_and_read_back_as_written(tmp_path):
    from robustwrap.evaluation import BatchRecord, read_records

    images, labels = _data()
    run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10)
    path = tmp_path / "results.jsonl"
    header = json.loads(path.read_text().splitlines()[0])["header"]
    records, _, _ = read_records(path, header)
    first = records[0]
    assert isinstance(first, BatchRecord) and first.size == len(first.clean[0])
    assert json.loads(path.read_text().splitlines()[1]) == first.to_json()
    assert BatchRecord.from_json(first.to_json(), header) == first
    for broken, words in ((dict(first.to_json(), seconds="fast"), "seconds must be a number"),
                          (dict(first.to_json(), attack_seconds={"pgd-eot": True}), "attack_seconds must map"),
                          (dict(first.to_json(), own={}), "own must map")):
        with pytest.raises(ValueError, match=words):
            BatchRecord.from_json(broken, header)
