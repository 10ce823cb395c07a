"""Where the API is and which key to send: ``TRANSFERLAB_URL`` and ``TRANSFERLAB_API_KEY``.

Not in ``app.settings``: the client imports nothing of the server, so that it starts fast and
runs where only the API is reachable (``app.settings`` alone imports SQLAlchemy, about 0.5 s of
every CLI call), and the server's production checks never refuse to run a client.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSFERLAB_", env_file=None, extra="ignore")

    url: str = Field(default=DEFAULT_URL, description="the API's base URL")
    api_key: str | None = Field(default=None, description="sent as `Authorization: Bearer`")
