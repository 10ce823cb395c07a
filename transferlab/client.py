"""``from transferlab.client import Client``: see ``app.client``."""

from app.client import ApiError, Client, Event

__all__ = ["ApiError", "Client", "Event"]
