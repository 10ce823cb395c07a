"""``Client``: the REST API from Python, over httpx. Answers are the API's JSON as dicts.

    from transferlab.client import Client

    with Client("http://127.0.0.1:8000", api_key="tl_...") as tl:
        dataset = tl.upload_dataset("pets.zip")
        job = tl.submit_job({"strategy": "finetune", "base_model": "timm:resnet18",
                             "dataset_id": dataset["id"]})
        job = tl.wait(job["id"])          # follows GET /v1/jobs/{id}/events
        tl.predict(job["model_id"], ["cat.jpg"])

Every error answer becomes an ``ApiError`` with the envelope's stable ``code``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from app import __version__
from app.client.config import ClientSettings
from app.client.sse import Event, parse_events

FINISHED = ("succeeded", "failed", "cancelled")
# Bytes sent so far, bytes in all.
ProgressCallback = Callable[[int, int], None]


class ApiError(Exception):
    """An error answer from the API: its HTTP status and its ``{"error": ...}`` envelope."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error["details"])
        except (ValueError, KeyError, TypeError):  # not our envelope: a proxy, a crash
            text = response.text[:200] or response.reason_phrase
            return cls(response.status_code, "http_error", f"HTTP {response.status_code}: {text}")


class _Reader:
    """A file that reports how much of it has been read (by httpx, while it uploads)."""

    def __init__(self, fh: IO[bytes], total: int, callback: ProgressCallback) -> None:
        self.fh, self.total, self.callback, self.sent = fh, total, callback, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.fh.read(size)
        self.sent += len(chunk)
        self.callback(self.sent, self.total)
        return chunk

    def fileno(self) -> int:  # httpx takes the length from it: a Content-Length, not chunks
        return self.fh.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if offset == 0 and whence == os.SEEK_SET:
            self.sent = 0
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()


class Client:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``url`` and ``api_key`` default to ``TRANSFERLAB_URL`` and ``TRANSFERLAB_API_KEY``."""
        settings = ClientSettings()
        self.url = (url or settings.url).rstrip("/")
        key = api_key or settings.api_key
        headers = {"User-Agent": f"transferlab-client/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # Datasets
    def upload_dataset(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        kind: str | None = None,
        dedupe: str | None = None,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Upload a .zip/.tar/.tar.gz of class folders (``kind="unlabeled"``: images in any
        layout, a domain-adaptation target); ``dedupe`` is none, exact or near. The dataset with
        its report."""
        path = Path(path)
        fields = {
            key: value
            for key, value in (("name", name), ("kind", kind), ("dedupe", dedupe))
            if value
        }
        total = path.stat().st_size
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as fh:
            body: Any = _Reader(fh, total, on_progress) if on_progress else fh
            return self._json(
                "POST",
                "/v1/datasets",
                files={"file": (path.name, body, "application/octet-stream")},
                data=fields,
                headers=headers,
                # An upload of gigabytes takes longer than any fixed read timeout; the server
                # answers once it has checked every image.
                timeout=httpx.Timeout(self._http.timeout.connect, read=None, write=None),
            )

    def list_datasets(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._json("GET", "/v1/datasets", params={"limit": limit, "offset": offset})

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # Jobs
    def submit_job(
        self, spec: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """POST /v1/jobs with a job spec (strategy, base_model, dataset_id, hyperparameters; and
        target_dataset_id, labeled_target_dataset_id, eval_dataset_id, options as the strategy
        takes them: ``strategies()`` says which)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=spec, headers=headers)

    def list_jobs(
        self, *, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._json("GET", "/v1/jobs", params=params)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def job_metrics(self, job_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/jobs/{job_id}/metrics")["epochs"]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's live events until its ``end`` event. A stream the server closed is resumed
        with ``Last-Event-ID`` at once, a dropped one after the server's retry delay, so no epoch
        is missed or repeated (``status`` and ``progress`` are sent again on each connect)."""
        retry_s = 2.0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                timeout = httpx.Timeout(self._http.timeout.connect, read=120.0)
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
                ) as response:
                    if response.is_error:
                        response.read()
                        raise ApiError.from_response(response)
                    for item in parse_events(response.iter_lines()):
                        if isinstance(item, int):
                            retry_s = item / 1000
                            continue
                        last_event_id = item.id
                        yield item
                        if item.event == "end":
                            return
                # The server closes long streams without `end` (TRANSFERLAB_EVENTS_MAX_S) so
                # that it can restart: resume at once.
                continue
            except httpx.TransportError:
                pass  # the connection dropped (a restart, a proxy): resume after a pause
            time.sleep(retry_s)

    def wait(
        self, job_id: str, *, on_event: Callable[[Event], None] | None = None
    ) -> dict[str, Any]:
        """Follow the job until it ends; the final job (check its ``status``)."""
        for event in self.events(job_id):
            if on_event:
                on_event(event)
            if event.event == "end":
                return event.data
        raise AssertionError("unreachable: events() returns only after an end event")

    # Models
    def list_models(
        self, *, name: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if name:
            params["name"] = name
        return self._json("GET", "/v1/models", params=params)

    def get_model(self, model_id: str) -> dict[str, Any]:
        """A version by id, ``name:version`` or ``name@alias``."""
        return self._json("GET", f"/v1/models/{model_id}")

    # Registry: aliases (name@alias) and tags
    def set_alias(
        self, name: str, alias: str, *, version: int | None = None, model_id: str | None = None
    ) -> dict[str, Any]:
        """Point ``name@alias`` at a version (by number or id); creates or moves the alias."""
        if (version is None) == (model_id is None):
            raise ValueError("give exactly one of version and model_id")
        target = {"version": version} if version is not None else {"model_id": model_id}
        return self._json("PUT", f"/v1/models/{name}/aliases/{alias}", json=target)

    def remove_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/v1/models/{name}/aliases/{alias}")

    def list_aliases(self, name: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/models/{name}/aliases")

    def tag_model(self, ref: str, tag: str) -> dict[str, Any]:
        """Tag a version (an id, name:version or name@alias); the version with its tags."""
        return self._json("PUT", f"/v1/models/{ref}/tags/{tag}")

    def untag_model(self, ref: str, tag: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/models/{ref}/tags/{tag}")

    def download_model(self, model_id: str, dest: str | Path | None = None) -> Path:
        """Save the model's zip (model.safetensors + model.json); to ``dest`` (a file or a
        folder), else under the server's file name in the current folder."""
        with self._http.stream("GET", f"/v1/models/{model_id}/download") as response:
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            target = Path(dest) if dest else Path(".")
            if target.is_dir():
                target = target / _filename(response, f"{model_id}.zip")
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
            partial.replace(target)
        return target

    def predict(
        self, model_id: str, images: Sequence[str | Path], *, top_k: int = 5
    ) -> dict[str, Any]:
        """Classify image files: for each, the top-k classes with probabilities."""
        files = [("files", (Path(p).name, Path(p).read_bytes())) for p in images]
        return self._json(
            "POST", f"/v1/models/{model_id}/predict", files=files, params={"top_k": top_k}
        )

    # Catalog
    def strategies(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/strategies")


def _filename(response: httpx.Response, default: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename" and value:
            # The server sends a slug (letters, digits, . _ -); never a path from a header.
            return Path(value.strip('"')).name or default
    return default
