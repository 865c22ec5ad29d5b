"""Onboarding an API client: the one use case behind `manage.py create_api_client` and the
admin's "Add API client" page.

Apart from services.clients because it applies the webhook URL rule of services.webhooks,
which itself imports services.clients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from requests_app.models import ApiClient
from requests_app.services.clients import api_client_create, api_key_create
from requests_app.services.errors import ApiClientExists, InvalidOptions
from requests_app.services.webhook_urls import webhook_url_check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Onboarded:
    client: ApiClient
    # Shown once (the database keeps only its hash).
    raw_key: str
    # The Standard Webhooks signing secret the client verifies our deliveries with.
    webhook_secret: str
    # False when a client of that name existed: it got one more key.
    created: bool


def api_client_onboard(*, name: str, default_webhook_url: str | None = None, must_be_new: bool = False) -> Onboarded:
    """The client called `name`, created if missing, with a new API key.

    `default_webhook_url`: None leaves an existing client's URL as it is, "" clears it, a URL
    sets it once the webhook URL check (the SSRF guard) has passed: WebhookUrlInvalid
    otherwise, raised before anything is created. With `must_be_new`, a name already taken
    raises ApiClientExists and nothing changes (the admin's "add" page); without it, an
    existing client gets one more key (the command).
    """
    name = name.strip()
    if not name:
        raise InvalidOptions({"name": ["A client needs a name."]})
    url = default_webhook_url.strip() if default_webhook_url is not None else None
    if url:
        webhook_url_check(url)
    if must_be_new and ApiClient.objects.filter(user__username=name).exists():
        raise ApiClientExists(f"A client called {name!r} exists already: open it to create a new key.")
    with transaction.atomic():
        client, created = api_client_create(name=name)
        if url is not None and url != client.default_webhook_url:
            ApiClient.objects.filter(pk=client.pk).update(default_webhook_url=url)
            client.default_webhook_url = url
        raw_key = api_key_create(client=client)
    logger.info("API client %s %s with key %s", client, "created" if created else "given a new key", raw_key[4:12])
    return Onboarded(client=client, raw_key=raw_key, webhook_secret=client.webhook_secret, created=created)
