"""`manage.py reprocess REQUEST_ID`: process a finished request's images again, through the
same services as the admin's actions and POST /csv/requests/<id>/retry.

Exit status: 0 done (or nothing to do); 1 error (unknown request, not finished); with
--wait, 2 when images failed again and 3 on --timeout, as in process_csv.
"""

from __future__ import annotations

import argparse
import functools
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.management.commands.process_csv import (
    add_compression_arguments,
    admin_url,
    finish,
    options_error,
)
from requests_app.models import ProcessingRequest
from requests_app.services.errors import InvalidOptions, RequestNotFinished, ServiceError
from requests_app.services.requests import (
    RequestOptions,
    reprocess_options,
    request_reprocess,
    request_retry_failed,
)


class Command(BaseCommand):
    help = (
        "Reprocess a finished request from scratch, with its own settings or new ones (--quality, --format, "
        "--keep-copyright/--no-keep-copyright, --sizes), or retry only its failed images (--failed-only)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("request_id", help="The request id (the whole UUID).")
        parser.add_argument("--failed-only", action="store_true", help="Retry only the images that failed.")
        add_compression_arguments(parser)
        parser.add_argument("--dry-run", action="store_true", help="Say what would be re-queued; change nothing.")
        parser.add_argument("--wait", action="store_true", help="Follow the request to its end, as process_csv does.")
        parser.add_argument(
            "--sizes",
            default=None,
            help="Renditions from now on, e.g. 1600,800,200 ('' for none); default: the request's own. "
            "Not with --failed-only.",
        )
        parser.add_argument("--timeout", type=float, default=None, help="Stop waiting after this many seconds.")
        parser.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)

    def handle(self, *args: Any, request_id: str, failed_only: bool, dry_run: bool, **options: Any) -> None:
        try:
            pk = uuid.UUID(request_id.strip())
        except ValueError:
            raise CommandError(f"{request_id!r} is not a request id (a UUID).") from None
        obj = ProcessingRequest.objects.filter(pk=pk).first()
        if obj is None:
            raise CommandError(f"No request {pk}.")
        what = "failed images" if failed_only else "images"
        sizes = options["sizes"]
        if failed_only and sizes is not None:
            raise CommandError("--sizes makes every image again: leave out --failed-only.")
        changes = {
            name: options[name] for name in ("quality", "output_format", "keep_copyright") if options[name] is not None
        }
        new_options: RequestOptions | None = None
        if changes:
            if failed_only:
                # A retry keeps the images already done: new settings would leave a request
                # made with two kinds of settings.
                raise CommandError("New settings make every image again: leave out --failed-only.")
            try:
                new_options = reprocess_options(obj, **changes)
            except InvalidOptions as exc:
                raise options_error(exc) from None
            what = f"images (now {_describe(new_options)})"
        service: Any = request_retry_failed if failed_only else request_reprocess
        if sizes is not None or new_options is not None:
            service = functools.partial(request_reprocess, sizes=sizes, options=new_options)

        if dry_run:
            # The service's own checks and count, without the change.
            try:
                count = service(request=obj, dry_run=True)
            except InvalidOptions as exc:
                raise CommandError(f"--sizes: {' '.join(exc.errors.get('sizes', [str(exc)]))}") from None
            except RequestNotFinished as exc:
                self.stdout.write(
                    self.style.WARNING(f"Request {obj.pk} is {obj.status}: it would be refused until it has finished.")
                )
                self.stdout.write(f"  {exc}  Nothing changed (--dry-run).")
                return
            self.stdout.write(
                f"Would re-queue {count} {what} of request {obj.pk} ({obj.get_status_display().lower()}, "
                f"{obj.images_done} done, {obj.images_failed} failed). Nothing changed (--dry-run)."
            )
            return

        try:
            count = service(request=obj)
        except InvalidOptions as exc:
            raise CommandError(f"--sizes: {' '.join(exc.errors.get('sizes', [str(exc)]))}") from None
        except ServiceError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Re-queued {count} {what} of request {obj.pk}."))
        self.stdout.write(f"  admin: {admin_url(obj)}")
        if options["wait"] and count:
            finish(self, obj, output=None, timeout=options["timeout"], interval=options["interval"])


def _describe(options: RequestOptions) -> str:
    copyright = "kept" if options.keep_copyright else "dropped"
    return f"{options.output_format}, quality {options.quality}, copyright {copyright}"
