"""Test settings: a file-based SQLite test database and synchronous tasks in-process.

End-to-end tests start a real web server and a real qcluster as subprocesses with their
own environment (tests/conftest.py); this module is for the in-process suite.
"""

from __future__ import annotations

import os

from settings.base import *  # noqa: F403
from settings.base import DATABASES, MIDDLEWARE, Q_CLUSTER, VAR_DIR

# Read at import by django-q2: override_settings cannot change it (docs/django-q2.md).
Q_CLUSTER["sync"] = os.environ.get("Q_SYNC", "1") == "1"

# One database and media folder per test process: several runs (xdist workers, or people
# on one machine) must never share a SQLite file.
_worker = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{_worker}.sqlite3")}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / f"test-media-{_worker}"), "base_url": "/media/", "allow_overwrite": True},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
MEDIA_ROOT = VAR_DIR / f"test-media-{_worker}"
# Test image servers listen on loopback; production never exempts it.
FETCH_ALLOWED_NETWORKS = os.environ.get("FETCH_ALLOWED_NETWORKS", "127.0.0.2/32")
FETCH_TOTAL_TIMEOUT = 5.0
# An origin's transient error fails the image at once in the in-process suite (its tests of
# each error code expect it); tests/test_pipeline.py and tests/test_outages.py turn retries on.
FETCH_RETRY_MAX = 0
STORAGE_RETRY_SECONDS = 0
IMAGE_DB_RETRY_SECONDS = 0
LOGGING = {"version": 1, "disable_existing_loggers": False}

# No collected static files in tests.
MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("whitenoise")]
