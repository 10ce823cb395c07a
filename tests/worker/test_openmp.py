"""The worker and the CLI make torch's OpenMP threads wait passively: OMP_WAIT_POLICY must be in
the environment when torch is first imported (libgomp reads it once, as it loads)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Records OMP_WAIT_POLICY at the moment anything first imports torch.
SPY = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Spy())
"""


def policy_when_torch_loads(code: str, tmp_path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    clean |= {"TRANSFERLAB_DATA_DIR": str(tmp_path / "data"), **env}
    out = subprocess.run(
        [sys.executable, "-c", SPY + code + "\nassert seen, 'torch was never imported'\n"
         "print(seen[0])"],
        env=clean, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "code",
    [
        "import worker.celery_app, worker.tasks",  # what `celery -A worker.celery_app` loads
        "from app.cli import main; main(['migrate']); import app.main",  # `transferlab api`
    ],
    ids=["celery-worker", "cli"],
)
def test_openmp_threads_wait_passively(code, tmp_path):
    assert policy_when_torch_loads(code, tmp_path) == "PASSIVE"


def test_a_users_choice_is_kept(tmp_path):
    code = "import worker.celery_app, worker.tasks"
    assert policy_when_torch_loads(code, tmp_path, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
