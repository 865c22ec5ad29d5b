from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.services import webhooks
from requests_app.services.clients import api_client_create, api_key_create


class Command(BaseCommand):
    help = "Create an API client (a user) if missing and print a new API key on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The client's name (its username).")
        parser.add_argument(
            "--webhook-url", default=None, help="Default webhook URL for its requests (an empty string clears it)."
        )

    def handle(self, *args: Any, name: str, webhook_url: str | None = None, **options: Any) -> None:
        if webhook_url:
            try:
                webhooks.webhook_url_check(webhook_url)  # before anything is created
            except webhooks.WebhookUrlInvalid as exc:
                raise CommandError(f"--webhook-url: {exc}") from None
        client, created = api_client_create(name=name)
        if webhook_url is not None:
            webhooks.api_client_set_default_webhook_url(client=client, url=webhook_url)
        raw = api_key_create(client=client)
        verb = "Created" if created else "Found"
        self.stdout.write(self.style.SUCCESS(f"{verb} API client {client}."))
        if client.default_webhook_url:
            self.stdout.write(f"default webhook URL: {client.default_webhook_url}")
        # Standard Webhooks signing secret: the client verifies our deliveries with it.
        self.stdout.write(f"webhook secret: {client.webhook_secret}")
        self.stdout.write("New API key (shown once; send it as 'Authorization: Bearer <key>'):")
        # Alone on the last line, so scripts can take it with `tail -n 1`.
        self.stdout.write(raw)
