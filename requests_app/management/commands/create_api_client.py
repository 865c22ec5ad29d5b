from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from requests_app import services


class Command(BaseCommand):
    help = "Create an API client (a user) if missing and print a new API key on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The client's name (its username).")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        client, created = services.api_client_create(name=name)
        raw = services.api_key_create(client=client)
        verb = "Created" if created else "Found"
        self.stdout.write(self.style.SUCCESS(f"{verb} API client {client}."))
        self.stdout.write("New API key (shown once; send it as 'Authorization: Bearer <key>'):")
        # Alone on the last line, so scripts can take it with `tail -n 1`.
        self.stdout.write(raw)
