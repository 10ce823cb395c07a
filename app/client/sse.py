"""A Server-Sent Events parser for the client (the format is five lines of spec; no library)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    event: str  # status, progress, metrics, end
    id: str | None
    data: dict[str, Any]


def parse_events(lines: Iterable[str]) -> Iterator[Event | int]:
    """Events from the stream's lines; an ``int`` where the server sets its ``retry`` (ms).
    Comments (heartbeats) are skipped."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(event, event_id, json.loads("\n".join(data)))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
        elif name == "retry" and value.isdigit():
            yield int(value)
