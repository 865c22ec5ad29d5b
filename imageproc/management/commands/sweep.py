"""`manage.py sweep`: run the sweeper now, once or every few seconds.

The qclusters already run it: one worker process of the deployment every IMAGE_SWEEP_SECONDS
(imageproc.pipeline.background), and every SWEEP_INTERVAL_MINUTES from django-q2's
scheduler. `--every` runs the same service in a loop, for an operator who wants it from a
process of its own, and for the crash tests, which compress seconds further.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from imageproc.pipeline.sweep import sweep


class Command(BaseCommand):
    help = "Re-queue stale or lost images and finish stuck requests (the sweeper), once or in a loop."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every",
            type=float,
            default=0,
            metavar="SECONDS",
            help="Sweep again every SECONDS until interrupted (SIGINT or SIGTERM).",
        )

    def handle(self, *args: Any, every: float, **options: Any) -> None:
        if every < 0:
            self.stderr.write("--every must be positive")
            raise SystemExit(2)
        stop = threading.Event()
        if every:

            def request_stop(signum: int, frame: Any) -> None:
                stop.set()

            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)
        while True:
            try:
                report = sweep()
            except Exception as exc:
                # sweep() contains the failures of its parts; a loop must outlive anything else
                # too (the database restarting, say): it sweeps again next time.
                if not every:
                    raise
                self.stderr.write(f"sweep failed: {type(exc).__name__}: {exc}")
            else:
                if report or not every:
                    self.stdout.write(f"sweep: {report}")
            if not every or stop.wait(every):
                break
            # A long-running process: drop connections the database may have closed.
            close_old_connections()
