"""Standard Webhooks 1.0 signing, from plain values: the event id, the secrets that sign, and
the headers of one attempt.

* ``webhook-id``: the same for every attempt of an event, so receivers can deduplicate. It is
  derived from what the event is about (``event_id_for``), so whoever computes it twice (the
  finaliser, then the sweeper's recovery) gets the same id.
* ``webhook-timestamp``: the time of this attempt, in unix seconds. Receivers refuse one older
  than a few minutes, so every attempt is signed afresh.
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per
  secret, space-separated: during a key rotation the old and the new secret both sign.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from standardwebhooks import Webhook

# Fixed forever: event ids are uuid5(namespace, subject + type + completion time).
_EVENT_NAMESPACE = uuid.UUID("5079c7f6-eac2-4f12-9079-1faa6c5fbe05")


def event_id_for(*, request_id: object, event_type: str, completed_at: datetime) -> str:
    """The webhook-id of one completion of one request: the same whoever computes it."""
    key = f"{uuid.UUID(str(request_id))}:{event_type}:{completed_at.astimezone(UTC).isoformat()}"
    return "msg_" + uuid.uuid5(_EVENT_NAMESPACE, key).hex


def signing_secrets(
    *, current: str, previous: str, rotated_at: datetime | None, window: timedelta, now: datetime
) -> list[str]:
    """The current secret, and the previous one while its rotation window lasts."""
    secrets = [current]
    if previous and (rotated_at is None or now < rotated_at + window):
        secrets.append(previous)
    return secrets


def webhook_headers(*, event_id: str, body: str, secrets: Iterable[str], timestamp: datetime) -> dict[str, str]:
    """Standard Webhooks headers; one `v1,` signature per secret, space-separated (rotation)."""
    timestamp = timestamp.astimezone(UTC)
    signatures = " ".join(Webhook(secret).sign(event_id, timestamp, body) for secret in secrets)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(math.floor(timestamp.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }
