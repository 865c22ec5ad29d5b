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
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.urls import reverse
from tqdm import tqdm

from imageproc.engine import csv_io
from imageproc.storage import absolute_url
from requests_app.formatting import human_bytes
from requests_app.models import OutputFormat, ProcessingRequest
from requests_app.selectors import (
    DIALECT_ORIGINAL,
    OUTPUT_DIALECTS,
    Progress,
    failed_images,
    failure_counts,
    request_output_csv,
    request_progress,
)
from requests_app.services.clients import api_client_create
from requests_app.services.errors import InvalidOptions, ServiceError
from requests_app.services.requests import QUALITY_LEVELS, QUALITY_MAX, QUALITY_MIN, RequestOptions, request_create

EXIT_FAILED_IMAGES = 2
EXIT_TIMEOUT = 3
DEFAULT_OWNER = "cli"
FAILURES_SHOWN = 20
# Without a terminal (a log, a CI job), one progress line at most this often.
PLAIN_LINE_EVERY = 5.0
# The command-line flag of each RequestOptions field, to name it in an error.
OPTION_FLAGS = {
    "quality": "--quality",
    "output_format": "--format",
    "keep_copyright": "--keep-copyright/--no-keep-copyright",
    "webhook_url": "--webhook-url",
    "sizes": "--sizes",
}
QUALITY_HELP = f"{QUALITY_MIN} to {QUALITY_MAX}, or {', '.join(QUALITY_LEVELS)}"

# What a progress tick reads: the counters, and the times request_progress derives the rate from.
COUNTER_FIELDS = (
    "status",
    "images_total",
    "images_done",
    "images_failed",
    "bytes_in",
    "bytes_out",
    "started_at",
    "completed_at",
)


def quality_arg(text: str) -> int | str:
    """--quality: digits are a number, anything else a level; RequestOptions checks both."""
    text = text.strip()
    return int(text) if text.isdecimal() else text


def options_error(exc: InvalidOptions) -> CommandError:
    """InvalidOptions as a command error naming each refused flag."""
    return CommandError(
        "; ".join(f"{OPTION_FLAGS.get(name, name)}: {' '.join(msgs)}" for name, msgs in exc.errors.items())
    )


def add_compression_arguments(parser: CommandParser) -> None:
    """The compression options, the same flags in process_csv and reprocess (default None:
    not given)."""
    parser.add_argument(
        "--quality",
        type=quality_arg,
        default=None,
        help=f"{QUALITY_HELP} (default: IMAGE_DEFAULT_QUALITY; auto:good with --format auto).",
    )
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=OutputFormat.values,
        default=None,
        help="auto: per image the smallest of jpeg, webp and avif at an automatic quality. Default: jpeg.",
    )
    parser.add_argument(
        "--keep-copyright",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Keep the EXIF Artist/Copyright and XMP rights in the outputs (default: kept).",
    )


def clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_figures(progress: Progress, status: str) -> str:
    """`42 done, 3 failed  processing  12.3 img/s  ETA 0:04`: the request's own rate and ETA
    (request_progress: images finished since it started), as the admin shows them."""
    text = f"{progress.images_done} done, {progress.images_failed} failed  {status}"
    if progress.rate:
        text += f"  {progress.rate:.1f} img/s"
    if progress.eta_seconds is not None:
        text += f"  ETA {clock(progress.eta_seconds)}"
    return text


def progress_line(progress: Progress, status: str) -> str:
    """`45/100  42 done, 3 failed  processing  12.3 img/s  ETA 0:04`: the line written without
    a terminal."""
    finished = progress.images_done + progress.images_failed
    return f"{finished}/{progress.images_total}  {progress_figures(progress, status)}"


def is_terminal(stream: OutputWrapper | TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class _Raw:
    """The command's stdout for tqdm: OutputWrapper ends every write with a newline, and a
    bar redraws its line with a carriage return."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text, ending="")

    def flush(self) -> None:
        self.out.flush()


class ProgressDisplay:
    """A tqdm bar on a terminal (images finished of the total, done and failed, the request's
    rate and ETA); elsewhere a plain line when the figures changed, at most every
    PLAIN_LINE_EVERY seconds, and always the last one."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.tty = is_terminal(out)
        self.bar: Any = None  # tqdm ships no type hints
        self.last_line, self.last_time = "", 0.0

    def show(self, obj: ProcessingRequest) -> None:
        progress = request_progress(request=obj)
        status = obj.get_status_display().lower()
        if not self.tty:
            line = progress_line(progress, status)
            if line != self.last_line and (obj.is_finished or time.monotonic() - self.last_time >= PLAIN_LINE_EVERY):
                self.out.write(line)
                self.last_line, self.last_time = line, time.monotonic()
            return
        figures = progress_figures(progress, status)
        if self.bar is None:
            # Made at the first tick, so that its first drawing already has the figures.
            self.bar = tqdm(
                total=obj.images_total,
                initial=obj.images_finished,
                postfix=figures,
                file=_Raw(self.out),
                ncols=min(shutil.get_terminal_size().columns, 120),
                unit="img",
                bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}",
                ascii=" #",
                # Redrawn at each tick of watch(), not on tqdm's own clock.
                mininterval=0,
                miniters=0,
            )
            return
        self.bar.n = obj.images_finished
        self.bar.set_postfix_str(figures, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # leaves the last state on its own line


def watch(
    obj: ProcessingRequest, *, out: OutputWrapper, interval: float = 0.5, timeout: float | None = None
) -> ProcessingRequest:
    """Show the progress until the request has finished; one query per tick."""
    started = time.monotonic()
    display = ProgressDisplay(out)
    try:
        while True:
            obj.refresh_from_db(fields=COUNTER_FIELDS)
            display.show(obj)
            if obj.is_finished:
                return obj
            if timeout is not None and time.monotonic() - started >= timeout:
                raise CommandError(
                    f"Still {obj.status} after {timeout:g} s; it goes on in the background: {admin_url(obj)}",
                    returncode=EXIT_TIMEOUT,
                )
            time.sleep(interval)
    finally:
        display.close()


def admin_url(obj: ProcessingRequest) -> str:
    return absolute_url(reverse("admin:requests_app_processingrequest_change", args=[obj.pk]))


def write_output(obj: ProcessingRequest, path: Path, dialect: str = DIALECT_ORIGINAL) -> int:
    """The output CSV, byte for byte as GET /csv/output serves it; returns the rows written."""
    rows = 0
    with path.open("wb") as handle:
        for chunk in request_output_csv(request=obj, dialect=dialect, min_chunk=64 * 1024).chunks:
            handle.write(chunk)
            rows += chunk.count(b"\r\n")
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
    codes = failure_counts(request=obj)
    out.write(
        style.WARNING(f"Failures ({obj.images_failed}): " + ", ".join(f"{c}: {n}" for c, n in codes.most_common()))
    )
    for image in failed_images(request=obj, page=1, per_page=FAILURES_SHOWN).object_list:
        out.write(
            f"  row {image.product.position + 2} (S. No. {image.product.serial_number}): {image.error_code}: "
            f"{image.error_message}\n      {image.source_url}"
        )
    if obj.images_failed > FAILURES_SHOWN:
        out.write(f"  … and {obj.images_failed - FAILURES_SHOWN} more: {admin_url(obj)}?show=failed")


def finish(
    command: BaseCommand,
    obj: ProcessingRequest,
    *,
    output: Path | None,
    timeout: float | None,
    interval: float,
    dialect: str = DIALECT_ORIGINAL,
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
        rows = write_output(obj, output, dialect)
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
        add_compression_arguments(parser)
        parser.add_argument("--webhook-url", default="", help="Receives the completion webhook.")
        parser.add_argument(
            "--sizes",
            default="",
            help="Renditions: bounding-box edges in pixels, e.g. 1600,800,200 (each image stored once per size; "
            "the output CSV gets a column per further size). Default: one output per image at its own size.",
        )
        parser.add_argument("--wait", action="store_true", help="Follow the request to its end.")
        parser.add_argument(
            "--output",
            type=Path,
            default=None,
            help="Write the output CSV here (implies --wait; default with --wait: "
            "FILE's name with -output.csv, next to it).",
        )
        parser.add_argument(
            "--dialect",
            choices=OUTPUT_DIALECTS,
            default=DIALECT_ORIGINAL,
            help="The output CSV's encoding and delimiter: the upload's (original, the default), or UTF-8 "
            "with commas (standard), as GET /csv/output?dialect= offers them.",
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="Stop waiting after this many seconds (exit 3)."
        )
        parser.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        given = {
            "quality": options["quality"],
            "output_format": options["output_format"],
            "keep_copyright": options["keep_copyright"],
        }
        try:
            request_options = RequestOptions(
                **{name: value for name, value in given.items() if value is not None},
                webhook_url=options["webhook_url"],
                sizes=options["sizes"],
            )
        except InvalidOptions as exc:
            raise options_error(exc) from None
        owner = self.owner(options["owner"])

        source: str = options["file"]
        wait = options["wait"] or options["output"] is not None
        output: Path | None = options["output"]
        if wait and output is None:
            if source == "-":
                raise CommandError("Reading stdin: say where the output CSV goes with --output.")
            output = Path(source).with_name(f"{Path(source).stem}-output.csv")

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
        finish(
            self,
            obj,
            output=output,
            timeout=options["timeout"],
            interval=options["interval"],
            dialect=options["dialect"],
        )

    def owner(self, name: str | None) -> User:
        if name is None:
            client, _ = api_client_create(name=DEFAULT_OWNER)
            return client.user
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise CommandError(f"No user called {name!r}. Create one with `manage.py create_api_client {name}`.")
        return user
