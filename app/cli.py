"""`transferlab serve | api | worker | migrate`.

`serve` is the embedded default: migrations, one worker process and the API, all from one command,
on SQLite and a folder broker unless TRANSFERLAB_DATABASE_URL / TRANSFERLAB_BROKER_URL say
otherwise. The other commands are what docker-compose runs, one per service.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from app.cpu import prefer_passive_openmp
from app.observability import configure_logging
from app.settings import Settings, get_settings


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def migrate(settings: Settings) -> None:
    from app.db.migrate import upgrade

    settings.layout.ensure()
    upgrade(settings.resolved_database_url)
    print(f"database is at the latest schema: {_redact(settings.resolved_database_url)}")


def worker_command(loglevel: str = "INFO") -> list[str]:
    # solo pool: one job at a time in the worker's own process. A GPU worker runs one job per
    # device anyway, and no fork happens after CUDA is initialised.
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--pool", "solo", "--concurrency", "1", "--loglevel", loglevel,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def run_api(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    uvicorn.run(
        "app.main:create_app", factory=True, host=host, port=port, workers=workers,
        log_level="info",
    )  # fmt: skip


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def serve(settings: Settings, host: str, port: int) -> int:
    migrate(settings)
    worker = subprocess.Popen(worker_command(), env=os.environ.copy())
    print(
        "TransferLab (embedded)\n"
        f"  API:      http://{host}:{port}  (docs: http://{host}:{port}/docs)\n"
        f"  data:     {settings.layout.root}\n"
        f"  database: {_redact(settings.resolved_database_url)}\n"
        f"  broker:   {settings.broker_url}"
        f"{' (folder ' + str(settings.layout.broker) + ')' if settings.embedded_broker else ''}\n"
        f"  worker:   pid {worker.pid}",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, restores the previous handlers and then
    # re-raises the signal. With the default handler that would kill this process before the
    # `finally` below could stop the worker; this handler turns it into a clean exit instead.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_cleanly)
    try:
        run_api(settings, host, port)
    finally:
        # Celery's warm shutdown waits for the running job; after 20 s we stop waiting.
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    prefer_passive_openmp()  # before anything imports torch; inherited by the worker process
    parser = argparse.ArgumentParser(prog="transferlab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("serve", "embedded: migrate, then run the API and one worker together"),
        ("api", "run the API server only"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", default=None, help="default: TRANSFERLAB_HOST or 127.0.0.1")
        p.add_argument("--port", type=int, default=None, help="default: TRANSFERLAB_PORT or 8000")
        if name == "api":
            p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    w = sub.add_parser("worker", help="run one Celery training worker")
    w.add_argument("--loglevel", default="INFO")
    sub.add_parser("migrate", help="apply database migrations")
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings, service="worker" if args.command == "worker" else "api")
    host = getattr(args, "host", None) or settings.host
    port = getattr(args, "port", None) or settings.port
    if args.command == "migrate":
        migrate(settings)
        return 0
    if args.command == "serve":
        return serve(settings, host, port)
    if args.command == "api":
        run_api(settings, host, port, workers=args.workers)
        return 0
    os.execv(sys.executable, worker_command(args.loglevel))  # replaces this process
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
