"""Settings for every environment, read from environment variables.

The defaults are the embedded, single-machine setup that `make run` starts: SQLite under
var/, the django-q2 ORM broker, a file cache and local file storage. Setting DATABASE_URL,
REDIS_URL and S3_BUCKET moves the same code onto PostgreSQL (or MongoDB), Redis and S3.
A bad value stops start-up with the variable's name (ImproperlyConfigured).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))


def _env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        value = int(env.int(name, default=default))
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{name} must be an integer: {exc}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _env_float(name: str, default: float) -> float:
    try:
        value = float(env.float(name, default=default))
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{name} must be a number: {exc}") from None
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be positive, got {value}")
    return value


# --- Core ---------------------------------------------------------------------------------

DEBUG = env.bool("DEBUG", default=False)
# A development key for local runs only; settings.production has no default.
SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-key-for-local-runs-only-never-in-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Where `manage.py serve` (`make run`) listens. Unless PUBLIC_BASE_URL says otherwise, they
# are also the origin of every link the service hands out, so `PORT=8100 make run` gives
# links to port 8100 (serve passes its --host/--port on to its children the same way).
HOST = env.str("HOST", default="127.0.0.1")
PORT = env.int("PORT", default=8000)
if not 0 < PORT < 65536:
    raise ImproperlyConfigured(f"PORT must be a TCP port (1-65535), got {PORT}")


def _link_host(host: str) -> str:
    """The host of a link to a server bound to `host`: a wildcard address is reachable on
    this machine's loopback; an IPv6 literal goes in brackets."""
    try:
        wildcard = not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name
        wildcard = False
    if wildcard:
        return "[::1]" if ":" in host else "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# The origin that absolute URLs handed to clients start with (status, output CSV, webhooks):
# the public one behind a proxy or a domain. Empty or unset: this server's own HOST and PORT.
PUBLIC_BASE_URL = (env.str("PUBLIC_BASE_URL", default="") or f"http://{_link_host(HOST)}:{PORT}").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "storages",
    "requests_app",
    "products",
    "imageproc",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The database or Redis down: 503 with a clear message (imageproc/outage.py).
    "imageproc.outage.DependencyOutageMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"
ASGI_APPLICATION = "settings.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))

# --- Database -----------------------------------------------------------------------------

DATABASE_URL = env.str("DATABASE_URL", default="")
MONGODB = DATABASE_URL.startswith(("mongodb://", "mongodb+srv://"))

if MONGODB:
    from settings.mongo import mongo_settings

    globals().update(mongo_settings(DATABASE_URL, installed_apps=INSTALLED_APPS))
else:
    if DATABASE_URL:
        try:
            _db: dict[str, Any] = env.db_url_config(DATABASE_URL)
        except Exception as exc:  # django-environ raises several kinds for a bad URL
            raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    else:
        _db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "db.sqlite3")}
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        # Concurrent workers read then write: with Django's DEFERRED transactions SQLite
        # answers "database is locked"; IMMEDIATE + WAL does not (docs/django-q2.md).
        _db["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    else:
        _db.setdefault("CONN_MAX_AGE", 60)
        _db.setdefault("CONN_HEALTH_CHECKS", True)
    DATABASES = {"default": _db}
    DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and queue ----------------------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")

# Every key this deployment writes to Redis (django-q2's queue and cluster stats, the cache)
# starts with this, so that several deployments, or test runs, can share one Redis server.
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="imageproc")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_KEY_PREFIX,
        }
    }
else:
    # A file cache, not LocMem: qinfo and /health/ read cluster stats that the workers
    # write from other processes.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

Q_WORKERS = _env_int("Q_WORKERS", os.cpu_count() or 2, minimum=1)
# A batch task must finish within Q_TIMEOUT; the ORM broker re-delivers a task after
# Q_RETRY seconds, which must exceed the timeout plus the time a task can wait in the
# cluster's prefetch queue (docs/django-q2.md).
Q_TIMEOUT = _env_int("Q_TIMEOUT", 300, minimum=10)
Q_CLUSTER: dict[str, Any] = {
    "name": "imageproc",
    "workers": Q_WORKERS,
    "queue_limit": Q_WORKERS,
    "bulk": 1,
    "timeout": Q_TIMEOUT,
    "retry": Q_TIMEOUT + 120,
    "max_attempts": 3,
    "ack_failures": False,
    "save_limit": 1000,
    "recycle": 200,
    # A worker that grows past this (kB) is replaced after its current task.
    "max_rss": 512_000,
    # How often the cluster asks the ORM broker for tasks when it has none: a request waits
    # for one poll, half of this on average (its dispatch task then processes the first
    # batch, and the task that ends the request finalises it), and an idle cluster pays one
    # indexed query per poll. (Redis blocks instead of polling.)
    "poll": 0.05,
    "catch_up": False,
    "label": "Task queue",
    # django-q2's scheduler locks due schedules with select_for_update, a no-op on MongoDB:
    # there, run it in one qcluster only (Q_SCHEDULER=0 on the others; README, MongoDB).
    "scheduler": env.bool("Q_SCHEDULER", default=True),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    # django-q2's "name" prefixes its Redis keys (django_q:<name>:q, django_q:<name>:cluster:*).
    Q_CLUSTER["name"] = REDIS_KEY_PREFIX
else:
    Q_CLUSTER["orm"] = "default"

# --- Storage ------------------------------------------------------------------------------

S3_BUCKET = env.str("S3_BUCKET", default="")
STORAGES: dict[str, dict[str, Any]] = {
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# A CDN or public bucket in front of S3: output URLs are permanent. Without it they are
# presigned and expire after S3_URL_EXPIRES seconds (the status API says which).
S3_PUBLIC_BASE_URL = env.str("S3_PUBLIC_BASE_URL", default="").rstrip("/")
if S3_PUBLIC_BASE_URL and not S3_PUBLIC_BASE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"S3_PUBLIC_BASE_URL must start with http:// or https://, got {S3_PUBLIC_BASE_URL!r}")
if S3_BUCKET:
    from boto3.s3.transfer import TransferConfig

    # Credentials: the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    # AWS_SESSION_TOKEN, AWS_PROFILE) or the instance role, read by boto3 itself.
    _s3: dict[str, Any] = {
        "bucket_name": S3_BUCKET,
        "endpoint_url": env.str("S3_ENDPOINT_URL", default="") or None,
        "region_name": env.str("S3_REGION", default="") or None,
        # botocore presigns with the deprecated SigV2 unless told: new AWS regions, R2 and
        # recent MinIO accept only SigV4 (which also caps presigned URLs at 7 days).
        "signature_version": "s3v4",
        # Outputs are written under deterministic keys: a task that runs twice overwrites.
        "file_overwrite": True,
        # Each upload is one small object sent from a pipeline thread already: s3transfer's
        # own thread pool per upload cost 40% more CPU per image (bench/).
        "transfer_config": TransferConfig(use_threads=False),
    }
    if S3_PUBLIC_BASE_URL:
        _s3["custom_domain"] = S3_PUBLIC_BASE_URL.split("://", 1)[-1]
        _s3["url_protocol"] = S3_PUBLIC_BASE_URL.split("://", 1)[0] + ":"
        _s3["querystring_auth"] = False
    else:
        _s3["querystring_auth"] = True
        _s3["querystring_expire"] = _env_int("S3_URL_EXPIRES", 7 * 24 * 3600, minimum=60, maximum=7 * 24 * 3600)
    # Sets Content-Type and Cache-Control per object (imageproc/s3.py).
    STORAGES["default"] = {"BACKEND": "imageproc.s3.OutputS3Storage", "OPTIONS": _s3}
else:
    STORAGES["default"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": MEDIA_URL, "allow_overwrite": True},
    }

# --- API ----------------------------------------------------------------------------------

# Uploads per API key (requests_app.api.throttling.UploadThrottle), e.g. "60/min", "1000/hour"; empty = off.
UPLOAD_THROTTLE_RATE = env.str("UPLOAD_THROTTLE_RATE", default="60/min").strip()
if UPLOAD_THROTTLE_RATE and not re.fullmatch(r"[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)", UPLOAD_THROTTLE_RATE):
    raise ImproperlyConfigured(f"UPLOAD_THROTTLE_RATE must look like 60/min or 1000/hour, got {UPLOAD_THROTTLE_RATE!r}")
# Requests of one client still pending or processing; one more upload answers 429.
MAX_ACTIVE_REQUESTS_PER_CLIENT = _env_int("MAX_ACTIVE_REQUESTS_PER_CLIENT", 10, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "requests_app.api.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "requests_app.api.errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"uploads": UPLOAD_THROTTLE_RATE or None},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Image processing service",
    "DESCRIPTION": "Upload a product CSV, follow its progress, download the output CSV.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The client API only: the admin's staff views (session, staff only) are not part of it.
    "PREPROCESSING_HOOKS": ["requests_app.api.schema.schema_client_endpoints"],
    # GET /health/ (a plain Django view) documented beside the client API.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "requests_app.api.schema.schema_health",
    ],
    # One enum component per set of statuses, whichever answer carries it.
    "ENUM_NAME_OVERRIDES": {
        "RequestStatusEnum": "requests_app.models.RequestStatus",
        "WebhookStatusEnum": "requests_app.models.WebhookStatus",
        "ProductStatusEnum": "requests_app.api.serializers.PRODUCT_STATUSES",
    },
}

# --- The service --------------------------------------------------------------------------

CSV_MAX_BYTES = _env_int("CSV_MAX_BYTES", 20 * 1024 * 1024, minimum=1024)
CSV_MAX_ROWS = _env_int("CSV_MAX_ROWS", 50_000, minimum=1)
CSV_MAX_URLS_PER_ROW = _env_int("CSV_MAX_URLS_PER_ROW", 50, minimum=1)
# Django spools uploads above this to a temporary file; the CSV limit is ours.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

IMAGE_DEFAULT_QUALITY = _env_int("IMAGE_DEFAULT_QUALITY", 50, minimum=1, maximum=95)
IMAGE_MAX_PIXELS = _env_int("IMAGE_MAX_PIXELS", 50_000_000, minimum=1)
IMAGE_MAX_BYTES = _env_int("IMAGE_MAX_BYTES", 25 * 1024 * 1024, minimum=1024)
# Our own cap: an image whose processing crashed or timed out this many times is failed.
IMAGE_MAX_ATTEMPTS = _env_int("IMAGE_MAX_ATTEMPTS", 3, minimum=1)
# Distinct URLs per task, and download/upload threads per worker process.
IMAGE_BATCH_SIZE = _env_int("IMAGE_BATCH_SIZE", 16, minimum=1)
IMAGE_IO_THREADS = _env_int("IMAGE_IO_THREADS", 16, minimum=1)
# Inputs a worker holds downloaded ahead of its compressor (bytes): bounds its memory
# whatever the image sizes, and covers ~0.5 s of compression, enough to hide 100 ms of
# latency per download (bench/: throughput at 100 ms, worker RSS on 12 MP images).
IMAGE_PREFETCH_BYTES = _env_int("IMAGE_PREFETCH_BYTES", 16 * 1024 * 1024, minimum=0)
# A task whose own batch is under way claims more pending images of its request for this
# long, so that workers never wait at batch boundaries (0: never).
IMAGE_STEAL_SECONDS = _env_int("IMAGE_STEAL_SECONDS", Q_TIMEOUT // 4, minimum=0)
# Fair share of the workers between clients (imageproc.pipeline.fairness, docs/sharing.md):
# each claim goes to the client furthest below its share (ApiClient.weight), whatever order
# the queue holds the tasks in. Off: every task serves its own request, first come first
# served, as before (for comparison in bench/).
IMAGE_FAIR_SHARE = env.bool("IMAGE_FAIR_SHARE", default=True)
# A claim carries a lease of this many seconds, which the worker holding it renews every
# quarter of it while it works (slow or not): the sweeper takes back an image whose lease
# ran out, so a dead worker's images are back in the queue within about this plus one
# IMAGE_SWEEP_SECONDS. A stall longer than the lease (a paused machine) costs a duplicate run.
IMAGE_LEASE_SECONDS = _env_int("IMAGE_LEASE_SECONDS", 30, minimum=2)
# Every worker process takes its turn at the sweeper: one of them sweeps every this many
# seconds (a cache lock elects it), besides the scheduled sweep every SWEEP_INTERVAL_MINUTES.
IMAGE_SWEEP_SECONDS = _env_float("IMAGE_SWEEP_SECONDS", 10.0)
# A claim without a lease (made by a worker of an earlier version) is stale after this long.
IMAGE_STALE_AFTER = _env_int("IMAGE_STALE_AFTER", Q_TIMEOUT + 60, minimum=1)
# Pending images this old whose task the broker no longer holds are re-queued by the sweeper.
IMAGE_ORPHAN_AFTER = _env_int("IMAGE_ORPHAN_AFTER", 60, minimum=1)
SWEEP_INTERVAL_MINUTES = _env_int("SWEEP_INTERVAL_MINUTES", 1, minimum=1)
# The database unreachable in the middle of a task (a restart, a fail-over): its reads and
# writes are tried again for this long before the task gives up (then the lease runs out
# and the sweeper takes the images back).
IMAGE_DB_RETRY_SECONDS = _env_int("IMAGE_DB_RETRY_SECONDS", 60, minimum=0)
# Storage down (5xx, throttling, refused or reset connections, timeouts): an upload is tried
# again with backoff for this long in its task; then the image is set aside and queued
# again later, its attempts untouched. Storage trouble never fails an image for good.
STORAGE_RETRY_SECONDS = _env_int("STORAGE_RETRY_SECONDS", 60, minimum=0)
STORAGE_RETRY_LATER = _env_float("STORAGE_RETRY_LATER", 30.0)

FETCH_ALLOWED_NETWORKS = env.str("FETCH_ALLOWED_NETWORKS", default="")
FETCH_CONNECT_TIMEOUT = _env_float("FETCH_CONNECT_TIMEOUT", 5.0)
FETCH_TOTAL_TIMEOUT = _env_float("FETCH_TOTAL_TIMEOUT", 30.0)
FETCH_MAX_REDIRECTS = _env_int("FETCH_MAX_REDIRECTS", 3, minimum=0, maximum=10)
FETCH_USER_AGENT = env.str("FETCH_USER_AGENT", default="imageproc/1.0 (+image-processing-service)")
# An origin's transient errors (timeouts, refused or reset connections, DNS, HTTP 5xx, 408,
# 429): the image is set aside and fetched again after FETCH_RETRY_BASE, then twice as long
# each time (at most FETCH_RETRY_MAX_DELAY, or the origin's Retry-After up to that), at most
# FETCH_RETRY_MAX times; the next one fails it. While an origin is failing, its other images
# wait for the same delay without trying it. Permanent errors (404, not an image) are final.
FETCH_RETRY_MAX = _env_int("FETCH_RETRY_MAX", 5, minimum=0)
FETCH_RETRY_BASE = _env_float("FETCH_RETRY_BASE", 2.0)
FETCH_RETRY_MAX_DELAY = _env_float("FETCH_RETRY_MAX_DELAY", 60.0)
# Downloads from one host at once, over every worker (a cache counter): a slow origin holds
# at most this many download threads; a worker that finds its host full sets those images
# aside for a moment and goes on with the others.
FETCH_PER_HOST = _env_int("FETCH_PER_HOST", 16, minimum=1)

# --- Webhooks (Standard Webhooks 1.0; requests_app/services/webhooks.py) -----------------------------

# Per attempt: DNS, connect, send and the receiver's answer. The issue asks for 10-15 s.
WEBHOOK_TIMEOUT = _env_float("WEBHOOK_TIMEOUT", 15.0)
if WEBHOOK_TIMEOUT > 30:
    raise ImproperlyConfigured(f"WEBHOOK_TIMEOUT must be at most 30 seconds, got {WEBHOOK_TIMEOUT}")
# Seconds to wait before each retry after a 429, a 5xx, a timeout or a connection error.
_schedule = env.str("WEBHOOK_RETRY_SCHEDULE", default="5,300,1800,7200,18000,36000,50400,72000,86400")
try:
    WEBHOOK_RETRY_SCHEDULE = tuple(float(s) for s in _schedule.split(",") if s.strip())
except ValueError as exc:
    raise ImproperlyConfigured(f"WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds: {exc}") from None
if any(s <= 0 for s in WEBHOOK_RETRY_SCHEDULE):
    raise ImproperlyConfigured("WEBHOOK_RETRY_SCHEDULE must hold positive numbers of seconds")
# Each delay is multiplied by 1 ± this fraction at random, so that retries to one receiver spread out.
WEBHOOK_RETRY_JITTER = 0.1
# A Retry-After above this is capped (a receiver cannot park a delivery for ever).
WEBHOOK_RETRY_AFTER_MAX = 24 * 3600
# Multiplies every wait (schedule and Retry-After). Tests set 0.001 to run the whole schedule fast.
WEBHOOK_TIME_SCALE = _env_float("WEBHOOK_TIME_SCALE", 1.0)
# After a rotation, deliveries carry both signatures for this long; then the old secret is dropped.
WEBHOOK_SECRET_ROTATION_HOURS = _env_int("WEBHOOK_SECRET_ROTATION_HOURS", 24, minimum=0)
WEBHOOK_USER_AGENT = env.str("WEBHOOK_USER_AGENT", default="imageproc-webhooks/1.0 (+image-processing-service)")
# Webhooks are sent by a qcluster of their own on a queue of their own (`manage.py
# webhook_cluster`, which `manage.py serve` starts too), so that a completion webhook never
# waits behind image batches (requests_app/services/webhook_delivery.py). Its name carries
# the deployment's prefix, as the image queue's does (Redis keys django_q:<name>:q).
WEBHOOK_QUEUE = f"{Q_CLUSTER['name']}-webhooks"
WEBHOOK_WORKERS = _env_int("WEBHOOK_WORKERS", 2, minimum=1)
# A retry due within this many seconds (the schedule's first, 5 s) is waited for by the
# webhooks worker whose attempt failed; a later one is queued by the sweeper once due.
WEBHOOK_HOLD_SECONDS = 10.0
# One webhook task: an attempt (two timeouts at most: a plain-http URL is resolved for its
# check, then sent) and the retries it holds.
WEBHOOK_TASK_TIMEOUT = int(4 * WEBHOOK_TIMEOUT + 2 * WEBHOOK_HOLD_SECONDS) + 10
Q_CLUSTER["ALT_CLUSTERS"] = {
    WEBHOOK_QUEUE: {
        "workers": WEBHOOK_WORKERS,
        "queue_limit": WEBHOOK_WORKERS,
        "timeout": WEBHOOK_TASK_TIMEOUT,
        # A task waits in the prefetch queue behind at most one task per worker.
        "retry": 2 * WEBHOOK_TASK_TIMEOUT + 30,
        "recycle": 500,
        "label": "Webhooks",
        # The sweeper's schedule belongs to the image cluster: one scheduler is enough.
        "scheduler": False,
    }
}

ADMIN_CREDENTIALS_FILE = VAR_DIR / "admin-credentials.txt"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
