from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.services.clients import api_client_set_weight
from requests_app.services.errors import ServiceError
from requests_app.services.onboarding import api_client_onboard
from requests_app.services.webhook_urls import WebhookUrlInvalid


class Command(BaseCommand):
    help = "Create an API client (a user) if missing and print a new API key on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The client's name (its username).")
        parser.add_argument(
            "--webhook-url", default=None, help="Default webhook URL for its requests (an empty string clears it)."
        )
        parser.add_argument(
            "--weight",
            type=float,
            default=None,
            help="Its share of the workers against other clients with work at once (default 1; docs/sharing.md).",
        )
        parser.add_argument(
            "--show-webhook-secret",
            action="store_true",
            help="Print the client's webhook signing secret (printed anyway when the client is created).",
        )

    def handle(
        self,
        *args: Any,
        name: str,
        webhook_url: str | None = None,
        weight: float | None = None,
        show_webhook_secret: bool = False,
        **options: Any,
    ) -> None:
        try:
            onboarded = api_client_onboard(name=name, default_webhook_url=webhook_url)
        except WebhookUrlInvalid as exc:
            raise CommandError(f"--webhook-url: {exc}") from None
        except ServiceError as exc:
            raise CommandError(str(exc)) from None
        client = onboarded.client
        if weight is not None:
            try:
                api_client_set_weight(client=client, weight=weight)
            except ValidationError as exc:
                raise CommandError(f"--weight: {' '.join(exc.messages)}") from None
        verb = "Created" if onboarded.created else "Found"
        self.stdout.write(self.style.SUCCESS(f"{verb} API client {client}."))
        if client.default_webhook_url:
            self.stdout.write(f"default webhook URL: {client.default_webhook_url}")
        # The Standard Webhooks signing secret the client verifies our deliveries with. The
        # service keeps it (HMAC signing needs it), so it can be shown again; it is printed
        # only when the client is new or it is asked for, not with every new key.
        if onboarded.created or show_webhook_secret:
            self.stdout.write(f"webhook secret: {onboarded.webhook_secret}")
        self.stdout.write("New API key (shown once; send it as 'Authorization: Bearer <key>'):")
        # Alone on the last line, so scripts can take it with `tail -n 1`.
        self.stdout.write(onboarded.raw_key)
