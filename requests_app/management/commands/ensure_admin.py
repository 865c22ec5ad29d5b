from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Make sure a local admin account exists; print its credentials the first time."

    def handle(self, *args: Any, **options: Any) -> None:
        path = settings.ADMIN_CREDENTIALS_FILE
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            where = f" (credentials in {path})" if path.exists() else ""
            self.stdout.write(f"Admin account present{where}.")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"username: admin\npassword: {password}\n")
        path.chmod(0o600)
        self.stdout.write(self.style.SUCCESS("Created the local admin account:"))
        self.stdout.write(f"  username: admin\n  password: {password}\n  (kept in {path})")
