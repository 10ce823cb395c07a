"""The Python client of the TransferLab API (httpx), also importable as ``transferlab.client``.

It imports nothing of the server (an import-linter contract keeps it so): it is what a notebook
or a CI script needs, and what the CLI's datasets/jobs/models commands use.
"""

from app.client.core import ApiError, Client
from app.client.sse import Event

__all__ = ["ApiError", "Client", "Event"]
