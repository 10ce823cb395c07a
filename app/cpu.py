"""How many CPUs this process may use, and process-wide CPU settings that must be made before
torch is imported."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def prefer_passive_openmp() -> None:
    """Let torch's idle OpenMP threads sleep instead of spin-waiting (unless the user chose).

    NOTE libgomp reads OMP_WAIT_POLICY once, when torch loads it. Its default spins, and a
    spinning thread holds a core the job's DataLoader workers need for decoding images, so on a
    busy CPU torch's threads and the loader stall each other. bench/cpu_settings.py measured, on
    2 cores with 2 loader workers and torch's default 2 threads (images/s, default -> PASSIVE):
    test_resnet forward 975 -> 1,331 at 32 px and 510 -> 641 at 64 px, training 369 -> 508 at
    32 px; resnet10t at 64 px, whose loader workers mostly wait, 251 -> 244 forward and 82 -> 77
    training (noise). One thread instead was as fast for test_resnet but lost a third on
    resnet10t (179 forward, 54 training).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity mask, and its cgroup's CPU quota (``docker
    --cpus``, a Kubernetes CPU limit) rounded up, whichever is less; not all the machine's. The
    lanes default, their threads and the wide session's threads follow it: a container given 2
    CPUs of a 64-core host runs 2 lanes on one thread each, not 4 lanes of 16 threads."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return min(cpus, quota) if quota is not None else cpus


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> int | None:
    """The CPUs the cgroup's bandwidth limit allows, rounded up, or None without a limit (or
    without cgroups). cgroup v2's ``cpu.max`` ("<quota> <period>" or "max <period>"), else v1's
    ``cpu/cpu.cfs_quota_us`` (-1: none) over ``cpu/cpu.cfs_period_us``, at the mount root: in
    a container that is the container's own cgroup.

    NOTE joblib.cpu_count() reads the same files, but importing joblib takes about 0.13 s,
    which every CLI command would pay (the settings' defaults call this).
    """
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup files, or ones this does not understand
        return None
