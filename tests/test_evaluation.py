"""Evaluation runs: resumable, shardable over processes, strict about bad input."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from robustwrap.evaluation import EvalConfig, run_evaluation
from robustwrap.sanity import sanity_checks

from .tiny import tiny_wrapper

CFG = EvalConfig(attack="pgd-eot", iters=2, eot=1, runs=2, batch_size=2, seed=3)


def _data(n: int = 7):
    generator = torch.Generator().manual_seed(11)
    return torch.rand(n, 3, 16, 16, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _comparable(report: dict) -> dict:
    """The report without wall-clock time (the only field allowed to differ between runs)."""
    return {k: v for k, v in report.items() if k != "seconds"}


def test_report_has_the_promised_fields(tmp_path):
    images, labels = _data()
    report = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10)
    assert report["n_samples"] == 7 and report["runs"] == 2
    for key in ("mean", "std", "per_run", "stderr"):
        assert key in report["robust_accuracy"] and key in report["clean_accuracy"]
    assert report["robust_accuracy_all_runs"] <= report["robust_accuracy_worst_run"] <= report["robust_accuracy"]["mean"]
    assert report["settings"]["eval"]["iters"] == 2 and "torch" in report["versions"]
    assert json.loads((tmp_path / "report.json").read_text())["n_samples"] == 7
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 4  # header + ceil(7 / 2) batches


def test_resume_after_a_crash_gives_the_identical_report(tmp_path):
    images, labels = _data()
    straight = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "straight", num_classes=10)

    def crash_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt("injected crash")

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "crashed", num_classes=10, on_batch=crash_after_two)
    assert len((tmp_path / "crashed" / "results.jsonl").read_text().splitlines()) == 3  # header + 2 batches kept
    with pytest.raises(FileExistsError, match="resume"):
        run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "crashed", num_classes=10)
    resumed = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "crashed", num_classes=10, resume=True)
    assert _comparable(resumed) == _comparable(straight)


def test_corrupted_or_foreign_results_are_refused_not_overwritten(tmp_path):
    images, labels = _data()
    run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10, stop_after=1)
    results = tmp_path / "results.jsonl"
    results.write_text(results.read_text() + '{"batch": 1, "clean": [[tru\n')
    before = results.read_text()
    with pytest.raises(ValueError, match="corrupted"):
        run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path, num_classes=10, resume=True)
    assert results.read_text() == before
    results.write_text(before.splitlines()[0] + "\n")
    other = EvalConfig(attack="bpda", iters=2, eot=1, batch_size=2)
    with pytest.raises(ValueError, match="other settings"):
        run_evaluation(tiny_wrapper(), images, labels, other, tmp_path, num_classes=10, resume=True)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(attack="cw"), "attack must be one of"),
        (dict(norm="L1"), "norm must be"),
        (dict(eps=-0.1), "eps must be >= 0"),
        (dict(runs=0), "runs >= 1"),
    ],
)
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        EvalConfig(**settings)


def test_data_model_mismatch_is_refused_before_any_attack(tmp_path):
    images, labels = _data()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        run_evaluation(tiny_wrapper(), images, labels + 10, CFG, tmp_path, num_classes=10)
    with pytest.raises(ValueError, match="the data is"):
        run_evaluation(tiny_wrapper(), torch.rand(2, 3, 32, 32), labels[:2], CFG, tmp_path, num_classes=10)
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
        single = run_evaluation(tiny_wrapper(), images, labels, CFG, tmp_path / "single", num_classes=10)
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_distributed_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    shards = sorted(p.name for p in (tmp_path / "two").glob("results*.jsonl"))
    assert shards == ["results.rank0-of-2.jsonl", "results.rank1-of-2.jsonl"]
    merged = json.loads((tmp_path / "two" / "report.json").read_text())
    assert _comparable(merged) == _comparable(json.loads(json.dumps(single)))


def test_sanity_checks_run_and_report():
    images, labels = _data(4)
    checks = sanity_checks(tiny_wrapper(), images, labels, EvalConfig(iters=2, eot=1))
    assert [c.name for c in checks] == [
        "gradient finite and non-zero",
        "robust accuracy ~0 at a huge radius",
        "more iterations do not raise robust accuracy",
        "BPDA not much stronger than the full gradient",
    ]
    assert checks[0].passed
