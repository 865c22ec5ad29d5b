"""`manage.py sweep`: run the sweeper now, once or every few seconds.

The qclusters already run it every SWEEP_INTERVAL_MINUTES from django-q2's scheduler, whose
granularity is a minute (and whose guard checks schedules about every 30 s). `--every`
runs the same service in a loop, for an operator who wants crashed work picked up sooner,
and for the crash tests, which compress minutes into seconds.
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
            report = sweep()
            if report or not every:
                self.stdout.write(f"sweep: {report}")
            if not every or stop.wait(every):
                break
            # A long-running process: drop connections the database may have closed.
            close_old_connections()
