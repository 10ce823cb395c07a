from tests.api.conftest import admin_key, client, db  # noqa: F401  (same real SQLite app)
