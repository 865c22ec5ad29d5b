"""Run a management command under the MongoDB settings with no MongoDB server.

    python -m settings.mongo_offline check
    python -m settings.mongo_offline makemigrations --check --dry-run
    python -m settings.mongo_offline makemigrations admin auth contenttypes django_q   # regenerate

The URL points at a port where nothing listens, with a 100 ms server-selection timeout: a
command that needs the server fails at once and says so, it cannot hang or touch a real
database. The one server access that makemigrations makes for no good reason offline, the
consistency check of the applied-migrations history, is skipped: Django only tolerates its
failure for SQL databases (it catches OperationalError; pymongo raises its own errors).
"""

from __future__ import annotations

import os
import sys

OFFLINE_DATABASE_URL = "mongodb://127.0.0.1:1/imageproc?serverSelectionTimeoutMS=100"
OFFLINE_REDIS_URL = "redis://127.0.0.1:1/0"


def main(argv: list[str]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "settings.base"
    os.environ["DATABASE_URL"] = OFFLINE_DATABASE_URL
    # Required with MongoDB (settings/mongo.py); nothing here talks to it.
    os.environ["REDIS_URL"] = OFFLINE_REDIS_URL

    import django
    from django.core.management import execute_from_command_line
    from django.db.migrations.loader import MigrationLoader

    django.setup()
    MigrationLoader.check_consistent_history = lambda self, connection: None  # type: ignore[method-assign]
    execute_from_command_line(["manage.py", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
