from tests.api.conftest import admin_key, client, db, settings  # noqa: F401  (same real SQLite app)
