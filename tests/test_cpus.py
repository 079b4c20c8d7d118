"""The default thread count: affinity and the container's CPU quota, not the machine's cores."""

import os

from robustwrap.cpus import _cgroup_quota, available_cpus


def test_available_cpus_is_within_the_affinity():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_a_cgroup_v2_quota_is_read(tmp_path):
    (tmp_path / "cgroup").write_text("0::/box\n")
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path, tmp_path / "cgroup") == 1.5
    (tmp_path / "box" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path, tmp_path / "cgroup") is None


def test_a_cgroup_v1_quota_is_read(tmp_path):
    (tmp_path / "cgroup").write_text("4:memory:/x\n1:cpu,cpuacct:/box\n")
    folder = tmp_path / "cpu,cpuacct" / "box"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(tmp_path, tmp_path / "cgroup") == 3.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(tmp_path, tmp_path / "cgroup") is None


def test_the_command_line_sets_torch_threads(monkeypatch):
    import torch
    from typer.testing import CliRunner

    from robustwrap.cli.app import app

    before = torch.get_num_threads()
    try:
        assert CliRunner().invoke(app, ["--threads", "1", "version"]).exit_code == 0
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert CliRunner().invoke(app, ["version"]).exit_code == 0
        assert torch.get_num_threads() == available_cpus()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(available_cpus() + 1)  # a count the command would never choose
        assert CliRunner().invoke(app, ["version"]).exit_code == 0
        assert torch.get_num_threads() == available_cpus() + 1  # OMP_NUM_THREADS: left to the user
    finally:
        torch.set_num_threads(before)


def test_the_smallest_quota_above_the_cgroup_counts(tmp_path):
    (tmp_path / "cgroup").write_text("0::/slice/box\n")
    (tmp_path / "slice" / "box").mkdir(parents=True)
    (tmp_path / "slice" / "cpu.max").write_text("200000 100000\n")  # the slice: 2 CPUs
    (tmp_path / "slice" / "box" / "cpu.max").write_text("max 100000\n")  # the box itself: no limit
    assert _cgroup_quota(tmp_path, tmp_path / "cgroup") == 2.0
    (tmp_path / "slice" / "cpu.max").write_text("100000 0\n")  # a zero period is unreadable, not a crash
    assert _cgroup_quota(tmp_path, tmp_path / "cgroup") is None


def test_cpu_flags_and_bf16_units_are_read_from_cpuinfo(tmp_path):
    from robustwrap.cpus import cpu_flags, native_bf16

    zen3, genoa = tmp_path / "zen3", tmp_path / "genoa"
    zen3.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n")
    genoa.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_flags(zen3) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert native_bf16(zen3) is False and native_bf16(genoa) is True
    assert cpu_flags(tmp_path / "missing") is None and native_bf16(tmp_path / "missing") is None
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(tmp_path / "arm") is None and native_bf16(tmp_path / "arm") is None  # unknown, not "none"


def test_emulated_bf16_is_said_for_bf16_on_the_cpu_only(monkeypatch, caplog):
    import logging

    from robustwrap import cpus

    monkeypatch.setattr(cpus, "native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="robustwrap.cpus"):
        cpus.warn_if_emulated("bf16", "cpu")
        cpus.warn_if_emulated("fp32", "cpu")
        cpus.warn_if_emulated("bf16", "cuda")
    assert [r.getMessage()[:32] for r in caplog.records] == ["this CPU has no bf16 units (no a"]
