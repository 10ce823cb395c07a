from tests.api.conftest import client, db, settings  # noqa: F401  (same real SQLite app)
