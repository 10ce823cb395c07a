"""`transferlab serve | api | worker | migrate | keys` and the client's `datasets | jobs | models`.

`serve` is the embedded default: migrations, one worker process and the API, all from one command,
on SQLite and a folder broker unless TRANSFERLAB_DATABASE_URL / TRANSFERLAB_BROKER_URL say
otherwise. The other server commands are what docker-compose runs, one per service. `datasets`,
`jobs` and `models` call a running API (app/client/cli.py); they import none of the server, whose
modules load only for the server commands (about 2 s of imports a client call does not pay).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from app.client import cli as client_cli
from app.cpu import prefer_passive_openmp

if TYPE_CHECKING:
    from app.settings import Settings


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


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    """`keys create|list|revoke`, straight on the database (the API need not run)."""
    from app.db.migrate import upgrade
    from app.db.session import Database
    from app.errors import ServiceError
    from app.services import keys as key_service

    settings.layout.ensure()
    # The key is what the user asked for: alembic's progress lines would only bury it (a
    # migration that fails still raises).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        with db.session_scope() as session:
            if args.keys_command == "create":
                row, secret = key_service.create_key(
                    session, name=args.name, scopes=args.scopes.split(",")
                )
                # The key alone on stdout, so that KEY=$(transferlab keys create ...) works.
                print(secret)
                print(
                    f"created key {row.prefix} ({row.name}: {', '.join(row.scopes)}); it is "
                    "shown only now",
                    file=sys.stderr,
                )
            elif args.keys_command == "list":
                print(f"{'prefix':<14}{'name':<20}{'scopes':<28}{'last used':<27}revoked")
                for k in key_service.list_keys(session):
                    used = k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "-"
                    revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
                    print(f"{k.prefix:<14}{k.name:<20}{','.join(k.scopes):<28}{used:<27}{revoked}")
            else:
                row = key_service.revoke_key(session, args.key)
                print(f"revoked key {row.prefix} ({row.name})", file=sys.stderr)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    return 0


def export_onnx_command(settings: Settings, ref: str) -> int:
    """`transferlab models export-onnx REF`: prints the export's report (JSON) on stdout."""
    import json

    from app.db.session import Database
    from app.engine import EngineError
    from app.errors import ServiceError
    from app.services import models as model_service
    from app.serving.resolver import ModelResolver

    db = Database(settings.resolved_database_url)
    try:
        with db.session_scope() as session:
            model = ModelResolver(ttl_s=0).resolve(session, ref)
            report = model_service.export_onnx_of(session, settings.artifacts, model.id)
    except (ServiceError, EngineError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(json.dumps(report))
    return 0


def bootstrap_admin_key(settings: Settings) -> str | None:
    """The embedded default's first start: make an admin key so the API is usable at once."""
    from app.db.session import Database
    from app.services import keys as key_service

    db = Database(settings.resolved_database_url)
    try:
        with db.session_scope() as session:
            if key_service.count_active(session):
                return None
            _, secret = key_service.create_key(session, name="admin", scopes=["admin"])
            return secret
    finally:
        db.dispose()


def worker_command(loglevel: str = "INFO") -> list[str]:
    # solo pool: one job at a time in the worker's own process. A GPU worker runs one job per
    # device anyway, and no fork happens after CUDA is initialised.
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--pool", "solo", "--concurrency", "1", "--loglevel", loglevel,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def run_api(
    settings: Settings, host: str, port: int, workers: int = 1, sock: socket.socket | None = None
) -> None:
    """Serve the API; on ``sock`` when given (already bound, one process), else on host:port."""
    import uvicorn

    from app.observability import logging_config

    # Starlette spools multipart uploads to temporary files before our handler runs: keep them
    # under the data folder too (the system /tmp may be small or in RAM), for this process and
    # the uvicorn workers it starts. Set here, after serve started its Celery worker, whose
    # liveness file stays in the system temp folder where its health check looks.
    settings.layout.ensure()
    os.environ["TMPDIR"] = str(settings.layout.tmp)
    tempfile.tempdir = None  # re-read TMPDIR
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each uvicorn process writes its counters here and /metrics sums them; fresh per start.
        settings.layout.ensure()
        metrics_dir = tempfile.mkdtemp(prefix="prometheus-", dir=settings.layout.tmp)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by uvicorn's workers
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "log_config": logging_config(settings, "api"),
        "access_log": False,  # the observability middleware logs one line per request
    }
    try:
        if sock is None:
            uvicorn.run("app.main:create_app", workers=workers, **options)
            return
        # What uvicorn.run does for one process, on the socket the caller bound.
        server = uvicorn.Server(uvicorn.Config("app.main:create_app", **options))
        server.run(sockets=[sock])
        if not server.started:
            sys.exit(3)  # uvicorn's exit status for a failed startup
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, bound as uvicorn binds one (IPv6 when the host has
    a colon, else IPv4); OSError when it cannot be."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:
    """In serve's worker process: die with serve, even when serve dies by SIGKILL.

    Without it a `kill -9` of serve left the worker running (re-parented to init) and taking
    jobs with the old code; each restart added one. SIGKILL, not SIGTERM: Celery's warm shutdown
    would finish the running job first, however long; killed, the job resumes from its last
    checkpoint when serve starts again. Linux only (prctl PR_SET_PDEATHSIG)."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def serve(settings: Settings, host: str, port: int) -> int:
    # Bound before the worker starts: a second serve on a taken port must not start a worker
    # that takes this data folder's jobs for the seconds before its API fails to bind.
    try:
        sock = listen(host, port)
    except socket.gaierror as exc:
        print(f"transferlab serve: cannot resolve the host {host!r}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"transferlab serve: cannot listen on {host}:{port}: {exc.strerror or exc}. Is "
            "another serve running there? Stop it, or choose another port with --port "
            "(or TRANSFERLAB_PORT).",
            file=sys.stderr,
        )
        return 2
    migrate(settings)
    first_key = bootstrap_admin_key(settings)
    if first_key:
        print(
            "\nNo API key existed, so an admin key was created. It is shown only this once:\n\n"
            f"  {first_key}\n\n"
            "Send it as `Authorization: Bearer <key>`. Make more (or narrower) keys with\n"
            "  transferlab keys create --scopes read,train,predict --name <who>\n",
            flush=True,
        )
    worker = subprocess.Popen(worker_command(), env=os.environ.copy(), preexec_fn=_die_with_parent)
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
        run_api(settings, host, port, sock=sock)
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
    k = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    kc = k.add_parser("create", help="create a key; prints it (only) on stdout")
    kc.add_argument("--scopes", required=True, help="comma-separated: read,train,predict,admin")
    kc.add_argument("--name", required=True, help="who or what uses the key")
    k.add_parser("list", help="list keys (never their secrets)")
    kr = k.add_parser("revoke", help="revoke a key")
    kr.add_argument("key", help="the key's id or prefix")
    client_cli.add_commands(sub)
    args = parser.parse_args(argv)
    server_side = (args.command, getattr(args, "action", None)) in client_cli.SERVER_ACTIONS
    if args.command in client_cli.COMMANDS and not server_side:
        return client_cli.run(args)

    from app.observability import configure_logging
    from app.settings import get_settings

    settings = get_settings()
    configure_logging(settings, service="worker" if args.command == "worker" else "api")
    host = getattr(args, "host", None) or settings.host
    port = getattr(args, "port", None) or settings.port
    if args.command == "migrate":
        migrate(settings)
        return 0
    if args.command == "keys":
        return keys_command(settings, args)
    if args.command == "models":
        return export_onnx_command(settings, args.ref)
    if args.command == "serve":
        return serve(settings, host, port)
    if args.command == "api":
        run_api(settings, host, port, workers=args.workers)
        return 0
    os.execv(sys.executable, worker_command(args.loglevel))  # replaces this process
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
