"""The worker's container healthcheck: ``python -m worker.healthcheck``.

``celery inspect ping`` cannot be used: the solo pool answers control messages only between
jobs, so a worker training for an hour would look dead. Instead a daemon thread in the worker
(``worker.liveness``) touches ``ALIVE_FILE`` every ``BEAT_S`` seconds while it can reach the
broker, and this check passes while the file is fresher than ``MAX_AGE_S``.

The file lives in the container's own temporary folder, not on the data volume: several worker
containers share the data volume, and one live worker must not vouch for a dead one.

Standard library only, so the check starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ALIVE_FILE = Path(tempfile.gettempdir()) / "transferlab-worker.alive"
BEAT_S = 10.0
MAX_AGE_S = 60.0


def check(path: Path, max_age_s: float, now: float | None = None) -> tuple[bool, str]:
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False, f"{path} does not exist: the worker has not started or reached the broker"
    age = (time.time() if now is None else now) - mtime
    if age > max_age_s:
        return False, (
            f"{path} is {age:.0f} s old (limit {max_age_s:.0f} s): the worker cannot reach the "
            "broker, or its whole process is frozen (a hung training step alone keeps beating)"
        )
    return True, f"ok: last beat {age:.0f} s ago"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.healthcheck", description=__doc__)
    parser.add_argument("--file", type=Path, default=ALIVE_FILE)
    parser.add_argument("--max-age", type=float, default=MAX_AGE_S, help="seconds")
    args = parser.parse_args(argv)
    ok, why = check(args.file, args.max_age)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
