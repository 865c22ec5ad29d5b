from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.services.clients import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (the 8 characters after 'ipk_')."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, prefix: str, **options: Any) -> None:
        prefix = prefix.removeprefix("ipk_")[:8]
        key = api_key_revoke(prefix=prefix)
        if key is None:
            raise CommandError(f"No API key with prefix {prefix}.")
        self.stdout.write(self.style.SUCCESS(f"Revoked key {key.prefix} of {key.client} at {key.revoked_at}."))
