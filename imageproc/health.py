"""GET /health/: the state of the database, the storage and the workers."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django_q.brokers import get_broker
from django_q.status import Stat


def _check(fn: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        detail = fn()
    except Exception as exc:  # a health check reports every failure, whatever its kind
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result = {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1)}
    if detail:
        result.update(detail)
    return result


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _database_any() -> None:
    if settings.MONGODB:
        connection.ensure_connection()
    else:
        _database()


def _storage() -> dict[str, Any]:
    default_storage.exists("health-check")
    return {"backend": type(default_storage).__name__}


def _workers() -> dict[str, Any]:
    broker = get_broker()
    clusters = Stat.get_all(broker=broker)
    return {
        "broker": type(broker).__name__,
        "queued": broker.queue_size(),
        "clusters": len(clusters),
        "workers": sum(len(c.workers) for c in clusters),
    }


def health(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check(_database_any), "storage": _check(_storage), "workers": _check(_workers)}
    ok = checks["database"]["ok"] and checks["storage"]["ok"]
    if checks["workers"]["ok"] and not checks["workers"].get("clusters"):
        # Uploads are still accepted and queued; nothing processes them yet.
        checks["workers"]["warning"] = "no running qcluster"
    return JsonResponse({"status": "ok" if ok else "error", "checks": checks}, status=200 if ok else 503)
