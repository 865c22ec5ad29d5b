"""`manage.py serve`: the web server and the task workers together, for one machine: the
image qcluster, and the webhooks' own qcluster (`manage.py webhook_cluster`).

All run as children in their own sessions, so that Ctrl-C reaches only this process.
It then asks each child to stop the graceful way: SIGTERM to each qcluster's main process
only (its workers finish their tasks first; a signal to the whole process group would
kill them mid-task, docs/django-q2.md) and SIGTERM to gunicorn, and waits for all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

STOP_TIMEOUT = 120


class Command(BaseCommand):
    help = "Run the web server and the task workers together until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HOST, help="Default: HOST, else 127.0.0.1.")
        parser.add_argument("--port", type=int, default=settings.PORT, help="Default: PORT, else 8000.")
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--no-workers", action="store_true", help="Start the web server only (no qcluster).")

    def handle(self, *args: Any, host: str, port: int, web_workers: int, no_workers: bool, **options: Any) -> None:
        python = sys.executable
        manage = os.path.abspath(sys.argv[0])
        children: dict[str, subprocess.Popen[bytes]] = {}
        # The children read HOST and PORT for the links they hand out (settings/base.py).
        env = {**os.environ, "HOST": host, "PORT": str(port)}
        stop_deadline: float | None = None

        def request_stop(signum: int, frame: Any) -> None:
            nonlocal stop_deadline
            if stop_deadline is not None:
                return
            stop_deadline = time.monotonic() + STOP_TIMEOUT
            self.stdout.write("\nStopping: waiting for running tasks to finish (Ctrl-C again does not hurry them)...")
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        web_cmd = [
            python, "-m", "gunicorn", "settings.wsgi:application",
            "--bind", f"{host}:{port}",
            "--workers", str(web_workers),
            "--threads", "4",
            "--timeout", "120",
            # A browser tab keeps a connection open: Ctrl-C should not wait 30 s for it.
            "--graceful-timeout", "10",
            "--access-logfile", "-",
        ]  # fmt: skip
        children["web"] = subprocess.Popen(web_cmd, start_new_session=True, env=env)
        if not no_workers:
            children["qcluster"] = subprocess.Popen([python, manage, "qcluster"], start_new_session=True, env=env)
            children["webhooks"] = subprocess.Popen(
                [python, manage, "webhook_cluster"], start_new_session=True, env=env
            )
        self.stdout.write(
            self.style.SUCCESS(f"Serving on http://{host}:{port}/ (admin: /admin/, API docs: /api/docs/)")
        )

        status = 0
        while children:
            for name, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                del children[name]
                if stop_deadline is None:
                    self.stderr.write(f"{name} exited with status {code}; stopping the rest.")
                    status = code or 1
                    request_stop(signal.SIGTERM, None)
            time.sleep(0.2)
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                for child in children.values():
                    child.kill()
        if status:
            raise SystemExit(status)
        self.stdout.write("Stopped.")
