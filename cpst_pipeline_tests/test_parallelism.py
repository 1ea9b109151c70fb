"""How many steps run side by side: bounded by the cores and by the memory, threads shared out."""

import pytest

from cpst_pipeline.pipeline.parallelism import GIB, available_memory_bytes, plan_step_parallelism, usable_cores


def test_memory_bounds_the_steps_when_it_is_scarcer_than_cores() -> None:
    plan = plan_step_parallelism(cores=16, available_bytes=20 * GIB, step_bytes=6 * GIB)
    assert (plan.max_concurrent, plan.threads_per_step) == (3, 5)


def test_cores_bound_the_steps_when_memory_is_plentiful() -> None:
    plan = plan_step_parallelism(cores=4, available_bytes=512 * GIB, step_bytes=6 * GIB)
    assert (plan.max_concurrent, plan.threads_per_step) == (4, 1)


def test_one_step_runs_even_when_the_estimate_exceeds_what_is_free() -> None:
    plan = plan_step_parallelism(cores=2, available_bytes=1 * GIB, step_bytes=6 * GIB)
    assert (plan.max_concurrent, plan.threads_per_step) == (1, 2)


def test_a_nonpositive_step_estimate_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_step_parallelism(cores=2, available_bytes=GIB, step_bytes=0)


def test_the_estimate_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("CPST_STEP_MEMORY_GIB", "2")
    assert plan_step_parallelism(cores=8, available_bytes=9 * GIB).max_concurrent == 4


def test_memory_is_the_smaller_of_meminfo_and_the_cgroup_limit(tmp_path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\n")  # 16 GiB available
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_memory_bytes(meminfo, cgroup) == 16 * GIB  # no cgroup files: meminfo alone
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(str(1 * GIB))
    assert available_memory_bytes(meminfo, cgroup) == 16 * GIB  # unlimited group
    (cgroup / "memory.max").write_text(str(8 * GIB))
    assert available_memory_bytes(meminfo, cgroup) == 7 * GIB


def test_this_machine_is_planned_from_its_own_affinity_and_memory() -> None:
    plan = plan_step_parallelism()
    assert plan.cores == usable_cores() >= 1
    assert 1 <= plan.max_concurrent <= plan.cores
    assert plan.max_concurrent * plan.threads_per_step <= plan.cores
