"""What a log line is about: the request or the job being handled, as context variables.

Context variables follow the work: an ASGI request's task, the threads FastAPI runs sync
endpoints in (anyio copies the context), and the worker's job. Logging reads them in
``app.observability.logs.ContextFilter``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)

# A client's X-Request-ID is echoed and logged, so it is held to a short, inert alphabet: no
# spaces, quotes or newlines that could forge a log line or a header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def accept_request_id(value: str | None) -> str:
    """The client's request id if it is 1-64 characters of [A-Za-z0-9._-], else a new one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


@contextmanager
def job_context(job_id: uuid.UUID | str) -> Iterator[None]:
    """Tag every log line in this block with ``job_id``."""
    token = job_id_var.set(str(job_id))
    try:
        yield
    finally:
        job_id_var.reset(token)
