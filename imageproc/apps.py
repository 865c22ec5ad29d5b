from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.apps import apps as django_apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_migrate


class ImageprocConfig(AppConfig):
    name = "imageproc"
    verbose_name = "Image processing"

    def ready(self) -> None:
        from imageproc.engine.compress import configure_pillow
        from imageproc.engine.http import parse_networks

        try:
            parse_networks(settings.FETCH_ALLOWED_NETWORKS)
        except ValueError as exc:
            raise ImproperlyConfigured(f"FETCH_ALLOWED_NETWORKS: {exc}") from None
        # Once per process: every worker compresses, and the web process may too (admin).
        configure_pillow(max_pixels=settings.IMAGE_MAX_PIXELS)
        # Django sends post_migrate only for apps that have models, which this one has not:
        # listen for django_q's, whose Schedule table the sweeper's schedule lives in.
        post_migrate.connect(
            ensure_sweeper_schedule,
            sender=django_apps.get_app_config("django_q"),
            dispatch_uid="imageproc-sweeper-schedule",
        )
        from django_q.signals import post_spawn

        # Every worker process sweeps in turn, every IMAGE_SWEEP_SECONDS (pipeline.background).
        post_spawn.connect(start_background_sweeper, dispatch_uid="imageproc-background-sweeper")


def start_background_sweeper(**kwargs: Any) -> None:
    from imageproc.pipeline.background import start_sweeping

    start_sweeping()


def ensure_sweeper_schedule(**kwargs: Any) -> None:
    """The sweeper runs every SWEEP_INTERVAL_MINUTES from django-q2's scheduler. Created
    after migrate (not in a migration) so that SQL and MongoDB set-ups share it."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="imageproc-sweep",
        defaults={
            "func": "imageproc.tasks.sweep",
            "schedule_type": Schedule.MINUTES,
            "minutes": settings.SWEEP_INTERVAL_MINUTES,
            "repeats": -1,
        },
    )
