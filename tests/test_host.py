"""What every run records about its host (repro.track.host), and the contention verdict from it."""
from __future__ import annotations

import time

import pytest

from repro.track import host


def test_host_info_names_the_cpu_and_versions_and_the_load_at_start():
    info = host.host_info()
    time.sleep(0.05)  # some wall time for other_cpu to average over
    assert info["cpu_model"] and info["cpu_model"].lower() != "cpu"
    assert info["cpu_count"] >= 1 and info["cpu_threads"] >= 1
    assert info["torch"] and "triton" in info and "gpu" in info
    assert info["device"] == (info["gpu"] or info["cpu_model"])
    assert len(info["loadavg_start"]) == 3 and "loadavg_end" not in info
    assert info["git_sha"] is None or len(info["git_sha"]) == 40  # the checkout's commit when there is one
    finished = host.finish_host_info(info)
    assert len(finished["loadavg_end"]) == 3 and finished["loadavg_start"] == info["loadavg_start"]
    assert finished["contended"] is (not host.is_uncontended(finished))  # what the tables read
    if info["cpu_times_start"] is not None:  # Linux: other processes' CPU use while it ran, in cores
        assert finished["other_cpu"] >= 0.0


def _info(start, end, cores=2, threads=2):
    return {"cpu_count": cores, "cpu_threads": threads, "loadavg_start": [start, 0, 0],
            "loadavg_end": None if end is None else [end, 0, 0]}


@pytest.mark.parametrize("start, end, cores, threads, expected", [
    (0.1, 2.1, 2, 2, True),    # the run's own 2 threads at the end are not contention
    (0.2, 2.4, 2, 2, True),    # within the tolerance
    (1.3, 2.1, 2, 2, False),   # someone was busy when it started
    (0.1, 3.2, 2, 2, False),   # a neighbour joined while it ran
    (0.1, 3.2, 8, 2, True),    # ... which 8 cores absorb
    (6.9, 9.0, 8, 2, False),   # more than the 6 idle cores could take
])
def test_contention_is_other_load_beyond_the_idle_cores(start, end, cores, threads, expected):
    assert host.is_uncontended(_info(start, end, cores, threads)) is expected


def test_runs_without_a_complete_load_record_are_not_known_to_be_uncontended():
    assert host.is_uncontended(None) is None
    assert host.is_uncontended({"device": "cpu", "torch": "2.4"}) is None  # a summary from before host records
    assert host.is_uncontended(_info(0.1, None)) is None                   # a run that never finished
    assert host.finish_host_info(None)["contended"] is None


def test_table_notes_name_mixed_commits_and_contended_or_unrecorded_runs():
    quiet = {**_info(0.1, 2.0), "git_sha": "a" * 40}
    busy = {**_info(0.1, 4.0), "git_sha": "a" * 40}
    other_commit = {**_info(0.1, 2.0), "git_sha": "b" * 40, "contended": False}
    assert host.host_notes({"ln-1": quiet, "rms-1": quiet}) == []
    notes = host.host_notes({"ln-1": quiet, "rms-1": busy, "rms-2": other_commit, "old": {"device": "cpu"}})
    assert any("different commits" in n and "aaaaaaaaaa: ln-1, rms-1" in n and "bbbbbbbbbb: rms-2" in n for n in notes)
    assert any("contended" in n and n.endswith("rms-1") for n in notes)
    assert any("no load average" in n and n.endswith("old") for n in notes)
    edited = {**quiet, "git_dirty": True}
    (note,) = host.host_notes({"ln-1": quiet, "rms-1": edited})
    assert note.startswith("runs started from a checkout with uncommitted changes") and note.endswith(": rms-1")


def _times(busy, own, wall, pid=1):
    return {"host_busy_s": busy, "own_s": own, "wall_s": wall, "pid": pid}


def test_other_cpu_is_host_busy_time_minus_own_over_the_wall_time():
    # 100 s of wall time: the host was busy 250 CPU-s, 190 of them this run's own -> 0.6 cores of others
    assert host.other_cpu(_times(1000.0, 5.0, 50.0), _times(1250.0, 195.0, 150.0)) == pytest.approx(0.6)
    assert host.other_cpu(_times(1000.0, 5.0, 50.0), _times(1190.0, 195.0, 150.0)) == 0.0  # clock skew: never < 0
    assert host.other_cpu(_times(1000.0, 5.0, 50.0), _times(1250.0, 195.0, 150.0, pid=2)) is None  # resumed elsewhere
    assert host.other_cpu(None, _times(1250.0, 195.0, 150.0)) is None


@pytest.mark.parametrize("other_cpu, cores, expected", [
    (0.03, 2, True),    # a shell and a short test beside a 2-thread run on 2 cores
    (0.6, 2, False),    # a neighbour held a core for much of the run
    (0.6, 8, True),     # ... which 6 idle cores absorb
])
def test_measured_cpu_use_decides_over_the_load_average(other_cpu, cores, expected):
    # the start's 1-minute load still holds the previous queued run (1.9): only other_cpu saw the run itself
    info = {**_info(1.9, 2.0, cores, 2), "other_cpu": other_cpu}
    assert host.is_uncontended(info) is expected
    assert host.is_uncontended(_info(1.9, 2.0, 2, 2)) is False  # without it, the load average's reading


def test_a_finished_child_process_counts_as_own_cpu_time():
    """A script that measures in worker processes (scripts/cpu_kernel_ratios.py) must not read its
    own workers as other processes competing for the CPU."""
    import subprocess
    import sys

    before = host.cpu_times()
    if before is None:
        pytest.skip("no /proc/stat here")
    # the child burns 0.5 s of CPU; the check asks for 0.3, clear of the clock-tick rounding of os.times
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                    "while time.process_time() < end: pass"], check=True)
    after = host.cpu_times()
    assert after["own_s"] - before["own_s"] >= 0.3  # counted once the child exited


def test_native_bf16_is_what_the_cpu_flags_say():
    """cpu_has_native_bf16 tells CPU bf16 autocast whether it will be fast: on x86 Linux it must
    agree with the kernel's flags (avx512_bf16, or AMX tiles), which differ between the hosts this
    project runs on (AVX-512 with BF16 on one session, AVX2 only on another)."""
    import platform
    from pathlib import Path

    verdict = host.cpu_has_native_bf16()
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine().lower() not in ("x86_64", "amd64") or not cpuinfo.exists():
        pytest.skip("the flags are read from /proc/cpuinfo on x86 Linux")
    flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split()
    assert verdict is ("avx512_bf16" in flags or "amx_tile" in flags)
    assert host.host_info()["cpu_bf16"] is verdict


def test_runs_on_different_kinds_of_machine_are_named_even_under_one_cpu_model():
    """The same "AMD EPYC" VM came with AVX-512 in one session and AVX2 only in another: a table
    mixing them says so, by capability, and a GPU run is known by its GPU."""
    zen4 = {**_info(0.1, 2.0), "cpu_model": "AMD EPYC", "cpu_capability": "AVX512", "git_sha": "a" * 40}
    avx2 = {**zen4, "cpu_capability": "AVX2"}
    assert host.host_label(zen4) == "AMD EPYC (AVX512, 2 CPUs)"
    assert host.host_label({**zen4, "gpu": "NVIDIA H100"}) == "NVIDIA H100"
    assert host.host_label({"device": "cpu"}) == "cpu"  # a summary from before host records
    assert host.host_notes({"ln-1": zen4, "rms-1": zen4}) == []
    (note,) = host.host_notes({"ln-1": zen4, "rms-1": zen4, "ln-2": avx2})
    assert note == ("runs on different kinds of machine (their time columns mix them): "
                    "AMD EPYC (AVX2, 2 CPUs): ln-2; AMD EPYC (AVX512, 2 CPUs): ln-1, rms-1")


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\n"
     "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 9\n", "family 25 model 1"),
    ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0c\n",
     "implementer 0x41 part 0xd0c"),
    ("processor\t: 0\nmodel name\t: something\n", None),
])
def test_the_cpu_generation_comes_from_the_first_cpus_block(monkeypatch, tmp_path, cpuinfo, expected):
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k))
    assert host.cpu_id() == expected


def test_two_generations_under_one_model_name_and_capability_are_told_apart():
    """Two "AMD EPYC" AVX2 VMs whose 2-thread steps differed by 19-24 %: with the generation
    recorded, a table mixing them names both; records from before it keep their old label."""
    zen3 = {**_info(0.1, 2.0), "cpu_model": "AMD EPYC", "cpu_id": "family 25 model 1", "cpu_capability": "AVX2"}
    other = {**zen3, "cpu_id": "family 23 model 49"}
    assert host.host_label(zen3) == "AMD EPYC (family 25 model 1, AVX2, 2 CPUs)"
    assert host.host_label({**zen3, "cpu_id": None}) == "AMD EPYC (AVX2, 2 CPUs)"
    (note,) = host.host_notes({"ln-1": zen3, "ln-2": other})
    assert "family 23 model 49, AVX2, 2 CPUs): ln-2" in note and "family 25 model 1, AVX2, 2 CPUs): ln-1" in note
