"""GET /health/: the state of the database, the storage, the task broker and the workers."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django_q.brokers import get_broker
from django_q.status import Stat

from imageproc.storage import storage_ping


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
    if settings.MONGODB:
        # ensure_connection() alone proves nothing after the first call: the backend keeps
        # one lazy MongoClient per process. A ping asks the server every time.
        connection.ensure_connection()
        connection.connection.admin.command("ping")
    else:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")


def _broker() -> dict[str, Any]:
    broker = get_broker()
    # The ORM broker's ping is always True (it is the database); Redis's raises when down.
    broker.ping()
    return {"type": broker.info(), "queued": broker.queue_size()}


def _workers() -> dict[str, Any]:
    """The qclusters that reported in the last few seconds (each saves its stats every
    guard cycle with a 3 s expiry, in Redis or in the shared cache), on every machine."""
    broker = get_broker()
    clusters = Stat.get_all(broker=broker)
    return {
        "broker": type(broker).__name__,
        "queued": broker.queue_size(),
        "clusters": len(clusters),
        "workers": sum(len(c.workers) for c in clusters),
        "hosts": sorted({str(c.host) for c in clusters}),
        "details": [
            {
                "host": c.host,
                "pid": c.pid,
                "status": str(c.status),
                "workers": len(c.workers),
                "uptime": round(c.uptime()),
            }
            for c in sorted(clusters, key=lambda c: (str(c.host), c.pid))
        ],
    }


def workers_check() -> dict[str, Any]:
    """The workers' part of /health/, also shown above the admin's requests list."""
    return _check(_workers)


def health(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": _check(_database),
        "storage": _check(storage_ping),
        "broker": _check(_broker),
        "workers": workers_check(),
    }
    # Without the broker nothing is queued or processed (uploads would answer 500).
    ok = checks["database"]["ok"] and checks["storage"]["ok"] and checks["broker"]["ok"]
    if checks["workers"]["ok"] and not checks["workers"].get("clusters"):
        # Uploads are still accepted and queued; nothing processes them yet.
        checks["workers"]["warning"] = "no running qcluster"
    return JsonResponse({"status": "ok" if ok else "error", "checks": checks}, status=200 if ok else 503)
