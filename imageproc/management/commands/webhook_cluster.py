"""`manage.py webhook_cluster`: the qcluster that sends webhooks, on their own queue
(settings.WEBHOOK_QUEUE; requests_app/services/webhook_delivery.py says why).

django-q2 reads the name of the cluster to run (env Q_CLUSTER_NAME) once, when it is imported,
which is before any command runs. So this command replaces itself with `manage.py qcluster`
under that name: the same process (signals reach qcluster's main process directly, for a
graceful stop), and the name always the one the settings give the queue.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the qcluster that sends webhooks (its own queue, settings.WEBHOOK_QUEUE)."

    def handle(self, *args: Any, **options: Any) -> None:
        name = settings.WEBHOOK_QUEUE
        env = {**os.environ, "Q_CLUSTER_NAME": name}
        argv = [sys.executable, os.path.abspath(sys.argv[0]), "qcluster", "--name", name]
        self.stdout.flush()
        os.execve(sys.executable, argv, env)  # noqa: S606 (our own argument list, no shell)
