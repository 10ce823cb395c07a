"""Process-wide CPU settings that must be made before torch is imported."""

from __future__ import annotations

import os


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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not all the machine's.

    NOTE a cgroup CPU quota (docker --cpus) is not seen here; set TRANSFERLAB_PREDICT_LANES there.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
