"""`manage.py process_csv FILE`: start a request from a product CSV, as POST /csv/upload does.

With --wait (or --output) it follows the request to its end with a progress bar, writes the
output CSV and prints a summary. The images are processed by the running qcluster, not by
this command.

Exit status, so that scripts can tell:
  0  the request was created (without --wait), or it finished with every image processed;
  1  it could not be created (invalid CSV, unknown owner, ...);
  2  it finished, and some images failed (the summary lists them; the output CSV has empty slots);
  3  --timeout passed first (the request goes on in the background).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db.models import Count
from django.template.defaultfilters import filesizeformat
from django.urls import reverse

from imageproc.engine import csv_io
from imageproc.storage import absolute_url
from products.models import ImageStatus, ProductImage
from requests_app.models import OutputFormat, ProcessingRequest
from requests_app.selectors import request_output_rows
from requests_app.services.clients import api_client_create
from requests_app.services.errors import ServiceError
from requests_app.services.requests import RequestOptions, request_create

EXIT_FAILED_IMAGES = 2
EXIT_TIMEOUT = 3
DEFAULT_OWNER = "cli"
BAR_WIDTH = 30
FAILURES_SHOWN = 20
# Without a terminal (a log, a CI job), one progress line at most this often.
PLAIN_LINE_EVERY = 5.0

COUNTER_FIELDS = ("status", "images_total", "images_done", "images_failed", "bytes_in", "bytes_out", "completed_at")


def human_bytes(n: int) -> str:
    return str(filesizeformat(n)).replace("\xa0", " ")


def clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(obj: ProcessingRequest, rate: float | None) -> str:
    """`[#########.....]  45/100  42 done, 3 failed  12.3 img/s  ETA 0:04`"""
    total = obj.images_total or 1
    filled = round(BAR_WIDTH * obj.images_finished / total)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    line = (
        f"[{bar}] {obj.images_finished}/{obj.images_total}  "
        f"{obj.images_done} done, {obj.images_failed} failed  {obj.get_status_display().lower()}"
    )
    remaining = obj.images_total - obj.images_finished
    if rate:
        line += f"  {rate:.1f} img/s"
        if remaining > 0:
            line += f"  ETA {clock(remaining / rate)}"
    return line


def is_terminal(stream: OutputWrapper | TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def watch(
    obj: ProcessingRequest, *, out: OutputWrapper, interval: float = 0.5, timeout: float | None = None
) -> ProcessingRequest:
    """Redraw a progress bar until the request has finished; one query per tick. The rate is
    what this command saw (images finished since it started watching, per second)."""
    tty = is_terminal(out)
    started = time.monotonic()
    first = obj.images_finished
    last_line, last_time = "", 0.0
    while True:
        obj.refresh_from_db(fields=COUNTER_FIELDS)
        elapsed = time.monotonic() - started
        seen = obj.images_finished - first
        rate = seen / elapsed if seen and elapsed > 0 else None
        line = progress_line(obj, rate)
        if tty:
            out.write("\r" + line.ljust(len(last_line)), ending="")
            out.flush()
        elif line != last_line and (obj.is_finished or time.monotonic() - last_time >= PLAIN_LINE_EVERY):
            out.write(line)
            last_time = time.monotonic()
        last_line = line
        if obj.is_finished:
            if tty:
                out.write("")
            return obj
        if timeout is not None and elapsed >= timeout:
            if tty:
                out.write("")
            raise CommandError(
                f"Still {obj.status} after {timeout:g} s; it goes on in the background: {admin_url(obj)}",
                returncode=EXIT_TIMEOUT,
            )
        time.sleep(interval)


def admin_url(obj: ProcessingRequest) -> str:
    return absolute_url(reverse("admin:requests_app_processingrequest_change", args=[obj.pk]))


def write_output(obj: ProcessingRequest, path: Path) -> int:
    """The output CSV, as GET /csv/output serves it; returns the rows written."""
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        for chunk in csv_io.render_output(request_output_rows(request=obj), min_chunk=64 * 1024):
            handle.write(chunk)
            rows += chunk.count("\r\n")
    return rows - 1  # the header


def summary(obj: ProcessingRequest, out: OutputWrapper, style: Any) -> None:
    """Counts, bytes saved, and the failures with their reasons (the first FAILURES_SHOWN)."""
    duration = f" in {obj.duration:.1f} s" if obj.duration is not None else ""
    status_style = style.SUCCESS if obj.images_failed == 0 else style.WARNING
    out.write(status_style(f"Request {obj.pk} {obj.get_status_display().lower()}{duration}"))
    out.write(
        f"  products: {obj.products_total}   images: {obj.images_total} "
        f"({obj.images_done} done, {obj.images_failed} failed)"
    )
    if obj.bytes_in:
        saved = 100 * obj.bytes_saved / obj.bytes_in
        out.write(
            f"  bytes: {human_bytes(obj.bytes_in)} in → {human_bytes(obj.bytes_out)} out, "
            f"saved {human_bytes(obj.bytes_saved)} ({saved:.1f}%)"
        )
    if not obj.images_failed:
        return
    failed = ProductImage.objects.filter(request_id=obj.pk, status=ImageStatus.FAILED)
    codes = Counter(
        dict(failed.order_by().values_list("error_code").annotate(n=Count("id")).values_list("error_code", "n"))
    )
    out.write(
        style.WARNING(f"Failures ({obj.images_failed}): " + ", ".join(f"{c}: {n}" for c, n in codes.most_common()))
    )
    shown = (
        failed.select_related("product")
        .order_by("product__position", "position")
        .only("source_url", "error_code", "error_message", "product__position", "product__serial_number")[
            :FAILURES_SHOWN
        ]
    )
    for image in shown:
        out.write(
            f"  row {image.product.position + 2} (S. No. {image.product.serial_number}): {image.error_code}: "
            f"{image.error_message}\n      {image.source_url}"
        )
    if obj.images_failed > FAILURES_SHOWN:
        out.write(f"  … and {obj.images_failed - FAILURES_SHOWN} more: {admin_url(obj)}?show=failed")


def finish(
    command: BaseCommand, obj: ProcessingRequest, *, output: Path | None, timeout: float | None, interval: float
) -> None:
    """Follow the request to its end, write the output CSV, print the summary, and exit 2 when
    images failed. Shared by process_csv and reprocess."""
    try:
        watch(obj, out=command.stdout, interval=interval, timeout=timeout)
    except KeyboardInterrupt:
        raise CommandError(
            f"Stopped waiting; the request goes on in the background: {admin_url(obj)}", returncode=130
        ) from None
    if output is not None:
        rows = write_output(obj, output)
        command.stdout.write(f"Wrote {output} ({rows} products).")
    summary(obj, command.stdout, command.style)
    if obj.images_failed:
        raise CommandError(f"{obj.images_failed} of {obj.images_total} images failed.", returncode=EXIT_FAILED_IMAGES)


def warn_without_workers(command: BaseCommand) -> None:
    if settings.Q_CLUSTER.get("sync"):
        return
    from django_q.brokers import get_broker
    from django_q.status import Stat

    try:
        running = Stat.get_all(broker=get_broker())
    except Exception:  # a status read must never stop the command
        return
    if not running:
        command.stderr.write(
            "No qcluster is running: the images wait in the queue until one starts "
            "(`manage.py qcluster`, or `make run`)."
        )


class Command(BaseCommand):
    help = (
        "Start processing a product CSV (as POST /csv/upload does). With --wait, follow it with a progress bar, "
        "write the output CSV and print a summary. Exit status: 0 all done, 1 error, 2 some images failed, 3 timeout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="The CSV (S. No., Product Name, Input Image Urls); '-' reads stdin.")
        parser.add_argument(
            "--owner",
            default=None,
            help=f"Username that owns the request (default: an API client called {DEFAULT_OWNER!r}, made if missing).",
        )
        parser.add_argument("--quality", type=int, default=None, help="1 to 95 (default: IMAGE_DEFAULT_QUALITY).")
        parser.add_argument("--format", dest="output_format", choices=OutputFormat.values, default=OutputFormat.JPEG)
        parser.add_argument("--webhook-url", default="", help="Receives the completion webhook.")
        parser.add_argument("--wait", action="store_true", help="Follow the request to its end.")
        parser.add_argument(
            "--output",
            type=Path,
            default=None,
            help="Write the output CSV here (implies --wait; default with --wait: "
            "FILE's name with -output.csv, next to it).",
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="Stop waiting after this many seconds (exit 3)."
        )
        parser.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        quality = options["quality"] if options["quality"] is not None else settings.IMAGE_DEFAULT_QUALITY
        if not 1 <= quality <= 95:
            raise CommandError("--quality must be between 1 and 95.")
        owner = self.owner(options["owner"])
        webhook_url = options["webhook_url"].strip()
        if webhook_url:
            from requests_app.services import webhooks

            try:
                webhooks.webhook_url_check(webhook_url)
            except ServiceError as exc:
                raise CommandError(f"--webhook-url: {exc}") from None

        source: str = options["file"]
        wait = options["wait"] or options["output"] is not None
        output: Path | None = options["output"]
        if wait and output is None:
            if source == "-":
                raise CommandError("Reading stdin: say where the output CSV goes with --output.")
            output = Path(source).with_name(f"{Path(source).stem}-output.csv")

        request_options = RequestOptions(
            quality=quality, output_format=options["output_format"], webhook_url=webhook_url
        )
        try:
            if source == "-":
                obj, _ = request_create(
                    owner=owner, csv_file=sys.stdin.buffer, filename="stdin.csv", options=request_options
                )
            else:
                path = Path(source)
                if not path.is_file():
                    raise CommandError(f"No such file: {source}")
                with path.open("rb") as handle:
                    obj, _ = request_create(owner=owner, csv_file=handle, filename=path.name, options=request_options)
        except csv_io.CsvInvalid as exc:
            for error in exc.errors:
                where = ", ".join(p for p in (f"row {error.row}" if error.row else "", error.column or "") if p)
                self.stderr.write(f"  {where or 'file'}: {error.message}")
            raise CommandError(exc.detail) from None
        except (csv_io.CsvTooLarge, ServiceError) as exc:
            raise CommandError(str(exc)) from None

        self.stdout.write(
            self.style.SUCCESS(
                f"Created request {obj.pk}: {obj.products_total} products, {obj.images_total} images (owner {owner})."
            )
        )
        self.stdout.write(f"  admin: {admin_url(obj)}")
        self.stdout.write(f"  status: {absolute_url(obj.get_status_path())}")
        if not wait:
            return
        warn_without_workers(self)
        finish(self, obj, output=output, timeout=options["timeout"], interval=options["interval"])

    def owner(self, name: str | None) -> User:
        if name is None:
            client, _ = api_client_create(name=DEFAULT_OWNER)
            return client.user
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise CommandError(f"No user called {name!r}. Create one with `manage.py create_api_client {name}`.")
        return user
