"""How many CPUs the serving lanes take: the affinity mask and a container's CPU quota."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.cpu import cgroup_cpu_quota, usable_cpus


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # v2, docker --cpus 2
        ({"cpu.max": "150000 100000\n"}, 2),  # --cpus 1.5: rounded up
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),  # no cgroup files (not Linux, or not mounted)
    ],
    ids=["v2-2", "v2-1.5", "v2-0.5", "v2-max", "v1-3", "v1-none", "v2-garbage", "none"],
)
def test_the_cgroup_quota_in_cpus(tmp_path, files, cpus):
    assert cgroup_cpu_quota(cgroup(tmp_path, files)) == cpus


def test_a_quota_below_the_cpus_bounds_them(tmp_path):
    assert usable_cpus(cgroup(tmp_path, {"cpu.max": "100000 100000\n"})) == 1
    assert usable_cpus(cgroup(tmp_path, {"cpu.max": "max 100000\n"})) >= 1
    many = cgroup(tmp_path / "many", {"cpu.max": "6400000 100000\n"})  # 64 CPUs: the mask rules
    assert usable_cpus(many) == usable_cpus(cgroup(tmp_path / "no", {}))


def test_the_lanes_follow_the_affinity_mask():
    """A process allowed one CPU takes one lane of one thread, and a wide session of one."""
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from app.cpu import usable_cpus\n"
        "from app.settings import Settings\n"
        "print(usable_cpus(), Settings().predict_lanes)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, check=True
    )
    assert done.stdout.split() == ["1", "1"]
