"""app.engine is a library: no service frameworks, no other app packages (but app.pixels and
app.onnxrt, the torch-free image steps and onnxruntime sessions it shares with serving's lane
processes), no environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import app.engine

ENGINE_DIR = Path(app.engine.__file__).parent


def test_importing_the_engine_pulls_in_no_service_code():
    code = (
        "import sys, app.engine\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'celery', 'sqlalchemy', 'worker', 'pydantic_settings'} "
        "or (m.startswith('app.') and not m.startswith('app.engine') "
        "and m not in ('app.pixels', 'app.onnxrt')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    root = ENGINE_DIR.parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_engine_source_reads_no_environment_variables():
    offenders = [
        str(path.relative_to(ENGINE_DIR))
        for path in ENGINE_DIR.rglob("*.py")
        if any(token in path.read_text() for token in ("os.environ", "getenv", "environ["))
    ]
    assert offenders == []
