"""The MongoDB switch: the settings that `DATABASE_URL=mongodb://…` (or `mongodb+srv://…`) adds.

settings/base.py merges what `mongo_settings()` returns. Everything else stays one codebase:
our own apps keep their shared migrations (UUID primary keys, no AutoField); only the
contrib apps and django-q2 get MongoDB AppConfigs and migrations (settings/mongo_apps.py,
mongo_migrations/). The facts behind each choice are in docs/mongodb.md.

django-q2 uses the Redis broker here, so REDIS_URL is required:
- its ORM broker would hand one task to several workers: it locks with
  `select_for_update`, a no-op on MongoDB;
- a shared, non-database cache is needed anyway (MongoDB has no database cache; upload
  throttling and the workers' stats in /health/ and qinfo are read across processes and
  machines), and Redis is that cache;
- Redis is the broker we already run and test at scale; it loses in-flight tasks on a
  crash, which the sweeper repairs (imageproc.services.sweep). django-q2's Mongo broker
  would add a second connection pool outside Django's and a polling loop on the client's
  database, for no gain once Redis is there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

DEFAULT_DATABASE_NAME = "imageproc"
OBJECT_ID_AUTO_FIELD = "django_mongodb_backend.fields.ObjectIdAutoField"

# The apps whose AppConfig hard-codes an AutoField, and their MongoDB replacements.
MONGO_APP_CONFIGS = {
    "django.contrib.admin": "settings.mongo_apps.MongoAdminConfig",
    "django.contrib.auth": "settings.mongo_apps.MongoAuthConfig",
    "django.contrib.contenttypes": "settings.mongo_apps.MongoContentTypesConfig",
    "django_q": "settings.mongo_apps.MongoDjangoQConfig",
}
# Their migrations, generated under these settings (`makemigrations admin auth contenttypes
# django_q`; no server needed) and committed.
MONGO_MIGRATION_MODULES = {
    "admin": "mongo_migrations.admin",
    "auth": "mongo_migrations.auth",
    "contenttypes": "mongo_migrations.contenttypes",
    "django_q": "mongo_migrations.django_q",
}

# MongoDB forbids these in database names.
_BAD_NAME = re.compile(r'[/\\. "$*<>:|?\x00]')


def is_mongodb_url(url: str) -> bool:
    return url.startswith(("mongodb://", "mongodb+srv://"))


def database_name(database_url: str) -> str:
    """The database named in the URL's path, or DEFAULT_DATABASE_NAME.

    Parsed here rather than by pymongo: for `mongodb+srv://` pymongo's parser makes a DNS
    query, which settings must not do at import time."""
    if not is_mongodb_url(database_url):
        raise ImproperlyConfigured("DATABASE_URL must start with mongodb:// or mongodb+srv:// for MongoDB")
    parts = urlsplit(database_url)
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts or hosts.startswith((",", ":")):
        raise ImproperlyConfigured("DATABASE_URL has no MongoDB host")
    name = unquote(parts.path.lstrip("/"))
    if not name:
        return DEFAULT_DATABASE_NAME
    if _BAD_NAME.search(name) or len(name.encode()) > 63:
        raise ImproperlyConfigured(f"DATABASE_URL names an invalid MongoDB database: {name!r}")
    return name


def mongo_installed_apps(installed_apps: Sequence[str]) -> list[str]:
    """INSTALLED_APPS with the MongoDB AppConfigs in place of the apps they replace."""
    apps = [MONGO_APP_CONFIGS.get(app, app) for app in installed_apps]
    missing = set(MONGO_APP_CONFIGS.values()) - set(apps)
    if missing:
        raise ImproperlyConfigured(f"INSTALLED_APPS lacks apps that MongoDB needs replaced: {sorted(missing)}")
    return apps


def mongo_settings(database_url: str, *, installed_apps: Sequence[str]) -> dict[str, Any]:
    """The settings to merge into settings.base when DATABASE_URL is a MongoDB URL.

    Raises ImproperlyConfigured, naming the variable, when REDIS_URL is unset (the Redis
    broker and cache are required with MongoDB, see the module docstring) or when the URL
    is unusable. Nothing here connects to MongoDB or Redis.
    """
    name = database_name(database_url)
    if not os.environ.get("REDIS_URL", "").strip():
        raise ImproperlyConfigured(
            "REDIS_URL must be set when DATABASE_URL is a MongoDB URL: django-q2 needs the Redis "
            "broker and a shared non-database cache on MongoDB (settings/mongo.py)."
        )
    return {
        "DATABASES": {
            "default": {
                "ENGINE": "django_mongodb_backend",
                # The whole URL: hosts, credentials, replicaSet, TLS and timeouts stay the operator's.
                "HOST": database_url,
                "NAME": name,
            }
        },
        "DEFAULT_AUTO_FIELD": OBJECT_ID_AUTO_FIELD,
        "INSTALLED_APPS": mongo_installed_apps(installed_apps),
        "MIGRATION_MODULES": dict(MONGO_MIGRATION_MODULES),
    }
