"""Process-wide CPU settings that must be made before torch is imported."""

from __future__ import annotations

import os


def prefer_passive_openmp() -> None:
    """Let torch's idle OpenMP threads sleep instead of spin-waiting (unless the user chose).

    NOTE libgomp reads OMP_WAIT_POLICY once, when torch loads it. Its default spins, and a
    spinning thread holds a core the job's DataLoader workers need for decoding images, so on a
    busy CPU torch's threads and the loader stall each other. Measured on 2 cores, 2 loader
    workers, torch's default 2 threads (images/s, default -> PASSIVE): test_resnet forward
    847 -> 1317 at 32 px and 462 -> 571 at 64 px, training 358 -> 540 at 32 px; resnet10t at
    64 px, whose workers mostly wait, unchanged (79 -> 80 training, 246 forward). One thread
    instead was as fast for test_resnet but lost a third on resnet10t (53 and 177).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
