"""The app's operations as the OpenAPI schema lists them, for middleware that runs before routing.

The schema is FastAPI's public, flattened view of every route (prefixes of included routers and
router-level dependencies applied). The API-key check reads each operation's scope from it and
the access log its path template; both match requests here, so they cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # /v1/jobs/{job_id}
    pattern: re.Pattern[str]
    scopes: frozenset[str]  # from the operation's security requirements


class OperationTable:
    """Read from ``app.openapi()`` once, at the first request (every route exists by then)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._operations: list[Operation] | None = None

    @property
    def operations(self) -> list[Operation]:
        if self._operations is None:
            found = []
            for template, operations in self.app.openapi().get("paths", {}).items():
                # /v1/jobs/{job_id} -> ^/v1/jobs/[^/]+$ (path parameters never span a '/').
                escaped = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
                pattern = re.compile(f"^{escaped}$")
                for method, operation in operations.items():
                    scopes = frozenset(
                        s
                        for req in operation.get("security") or []
                        for v in req.values()
                        for s in v
                    )
                    found.append(Operation(method.upper(), template, pattern, scopes))
            self._operations = found
        return self._operations

    def match(self, method: str, path: str) -> Operation | None:
        """The operation for this method and path; else one on the same path with another method
        (the router answers 405 for it); else None."""
        method = "GET" if method == "HEAD" else method
        same_path = None
        for op in self.operations:
            if op.pattern.match(path):
                if op.method == method:
                    return op
                same_path = same_path or op
        return same_path
