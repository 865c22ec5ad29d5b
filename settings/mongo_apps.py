"""AppConfigs for the contrib apps and django-q2 on MongoDB, and a check of the settings
that MongoDB cannot live with.

Django's contrib apps and django-q2 hard-code `default_auto_field = AutoField` in their
AppConfigs. MongoDB has no integer sequences: their models need ObjectIdAutoField, which
only an AppConfig subclass can give them (docs/mongodb.md). Their migrations then differ
from the SQL ones and live in mongo_migrations/ (MIGRATION_MODULES). Our own apps need
none of this: UUID primary keys, no AutoField anywhere.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.apps import AdminConfig
from django.contrib.auth.apps import AuthConfig
from django.contrib.contenttypes.apps import ContentTypesConfig
from django.core import checks
from django_q.apps import DjangoQConfig

OBJECT_ID_AUTO_FIELD = "django_mongodb_backend.fields.ObjectIdAutoField"


class MongoAdminConfig(AdminConfig):
    default_auto_field = OBJECT_ID_AUTO_FIELD


class MongoAuthConfig(AuthConfig):
    default_auto_field = OBJECT_ID_AUTO_FIELD


class MongoContentTypesConfig(ContentTypesConfig):
    default_auto_field = OBJECT_ID_AUTO_FIELD


class MongoDjangoQConfig(DjangoQConfig):  # type: ignore[misc]  # django-q2 ships no types
    default_auto_field = OBJECT_ID_AUTO_FIELD

    def ready(self) -> None:
        super().ready()
        checks.register(check_mongo_settings)


def check_mongo_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """What settings.mongo sets up must survive every settings module layered on top of it
    (test, production): a database cache cannot work on MongoDB, and django-q2's ORM broker
    would hand one task to several workers (its `select_for_update` is a no-op there)."""
    from django.conf import settings

    errors: list[checks.CheckMessage] = []
    for alias, cache in settings.CACHES.items():
        if cache.get("BACKEND", "").endswith("DatabaseCache"):
            errors.append(
                checks.Error(
                    f"CACHES[{alias!r}] uses the database cache, which MongoDB does not support.",
                    hint="Set REDIS_URL: the Redis cache is used with MongoDB.",
                    id="imageproc.mongo.E001",
                )
            )
    q_cluster = getattr(settings, "Q_CLUSTER", {})
    if "orm" in q_cluster or not ({"redis", "mongo"} & set(q_cluster)):
        errors.append(
            checks.Error(
                "django-q2 must use the Redis broker (or its Mongo broker) with MongoDB, not the ORM broker.",
                hint="Set REDIS_URL.",
                id="imageproc.mongo.E002",
            )
        )
    return errors
