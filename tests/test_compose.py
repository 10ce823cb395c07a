"""docker-compose.yml is safe to start on a networked machine as written (no Docker needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PASSWD", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?)([-?+])([^}]*))?\}")


def _text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _resolve(value: str) -> str:
    """Interpolate as compose does with none of the variables set."""

    def sub(m: re.Match[str]) -> str:
        name, _, op, arg = m.groups()
        if op == "?":
            return f"<{name} required>"
        return arg if op == "-" else ""

    return INTERPOLATION.sub(sub, value)


def _is_worker(service: dict[str, Any]) -> bool:
    return "worker" in (service.get("command") or [])


def _one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def test_no_port_is_published_on_all_interfaces_by_default() -> None:
    published = []
    for name, service in _services().items():
        for port in service.get("ports", []):
            spec = _resolve(port if isinstance(port, str) else str(port.get("host_ip", "")))
            parts = spec.split(":")
            # "8000:8000" and "8000" bind every interface; "ip:host:container" names one.
            assert len(parts) == 3, f"{name}: {port!r} publishes on all interfaces"
            assert parts[0] not in ("0.0.0.0", "::", "[::]", ""), f"{name}: {port!r}"
            published.append((name, spec))
    assert ("api", "127.0.0.1:8000:8000") in published
    assert "${TRANSFERLAB_API_BIND:-127.0.0.1}:8000:8000" in _services()["api"]["ports"]
    for name in ("postgres", "redis"):
        assert not _services()[name].get("ports"), f"{name} must not be published"


def test_no_secret_has_a_default_value() -> None:
    for m in INTERPOLATION.finditer(_text()):
        name, _, op, arg = m.groups()
        if SECRET_NAME.search(name):
            assert op == "?", f"${{{name}}} must be required (:?), not defaulted: {m.group(0)}"
            assert arg, f"${{{name}}} needs a message saying where to set it"


def test_secrets_in_the_environment_come_from_the_operator() -> None:
    services = _services()
    assert "${POSTGRES_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    for name, service in services.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert "${" in str(value), f"{name}.{key} is a literal secret"
        url = env.get("TRANSFERLAB_DATABASE_URL")
        if url:
            assert "${POSTGRES_PASSWORD:?" in url, f"{name}: the DB password must be required"


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = _services()
    assert _one_shot(services["migrate"]), "migrate stays a one-shot service"
    for name, service in services.items():
        if _one_shot(service):
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"


def test_redis_keeps_its_append_only_file_on_a_named_volume() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    assert mounts.get("/data") in compose["volumes"]


def test_every_worker_is_pinned_to_explicit_gpus() -> None:
    workers = {n: s for n, s in _services().items() if _is_worker(s)}
    assert workers, "no worker service"
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices, name
        for device in devices:
            # count: N gives every replica of a scaled service the same first GPUs.
            assert "count" not in device, f"{name}: use device_ids, not count"
            ids = device.get("device_ids")
            assert isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids), name
            assert "gpu" in device["capabilities"]
        env = service["environment"]
        assert env["TRANSFERLAB_DEVICE"] == "cuda"
        assert str(env["TRANSFERLAB_WORKER_METRICS_PORT"]) == "9100"
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.healthcheck"]
    all_ids = [
        i
        for s in workers.values()
        for d in s["deploy"]["resources"]["reservations"]["devices"]
        for i in d["device_ids"]
    ]
    assert len(all_ids) == len(set(all_ids)), "two workers share a GPU"


def test_the_app_services_run_in_production_with_json_logs() -> None:
    for name, service in _services().items():
        if service.get("image") == "transferlab:latest":
            env = service["environment"]
            assert env["TRANSFERLAB_ENVIRONMENT"] == "production", name
            assert env["TRANSFERLAB_LOG_FORMAT"] == "json", name


def test_the_first_api_key_command_is_documented() -> None:
    assert "docker compose run --rm api transferlab keys create --scopes admin --name ops" in (
        _text()
    )


def test_the_build_context_leaves_out_secrets_and_data() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".git", ".venv", "data", "bench/results", "*.egg-info"} <= ignored
    assert "**/__pycache__" in ignored
