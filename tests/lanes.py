"""The scale-out lane of the end-to-end tests, and helpers to look at a running stack.

- `ScaleServices`: a throwaway PostgreSQL database, a Redis key namespace and an S3 bucket
  on a moto server (a real HTTP endpoint, spoken to by boto3 and django-storages), made for
  one stack folder and removed when the tests end. Nothing else on the shared PostgreSQL and
  Redis is touched.
- `/proc` helpers: the processes of a qcluster and the worker ones among them (django-q2
  titles them with setproctitle: `qcluster Process-… idle` / `… processing <task> …`).
- `db_rows`: read the stack's database directly (SQLite or PostgreSQL), without Django.
"""

from __future__ import annotations

import atexit
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
PG_URL = "postgres://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/0"
S3_REGION = "us-east-1"
# moto accepts any credentials; the standard variables are how boto3 gets them in production too.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": S3_REGION}


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN):
            return True
    except Exception:
        return False


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


# --- S3 on moto's server mode -----------------------------------------------------------------

_moto_lock = threading.Lock()
_moto_endpoint: str | None = None


def moto_endpoint() -> str:
    """One moto server per test process, started on first use. Its state is global to the
    process, so each stack gets its own bucket rather than its own server."""
    global _moto_endpoint
    with _moto_lock:
        if _moto_endpoint is None:
            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            _moto_endpoint = f"http://{host}:{port}"
        return _moto_endpoint


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@dataclass
class S3Bucket:
    endpoint: str
    name: str
    client: Any = field(repr=False)

    @classmethod
    def create(cls, *, public: bool = False) -> S3Bucket:
        endpoint = moto_endpoint()
        bucket = cls(endpoint, f"imageproc-test-{secrets.token_hex(6)}", s3_client(endpoint))
        bucket.client.create_bucket(Bucket=bucket.name)
        if public:
            # What S3_PUBLIC_BASE_URL stands for: anyone may read objects, nobody may list.
            policy = (
                '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", '
                f'"Action": "s3:GetObject", "Resource": "arn:aws:s3:::{bucket.name}/*"}}]}}'
            )
            bucket.client.put_bucket_policy(Bucket=bucket.name, Policy=policy)
        return bucket

    @property
    def public_base_url(self) -> str:
        return f"{self.endpoint}/{self.name}"

    def keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            found.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(found)

    def head(self, key: str) -> dict[str, Any]:
        return dict(self.client.head_object(Bucket=self.name, Key=key))

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """OPTIONS for imageproc.s3.OutputS3Storage, as settings/base.py builds them."""
        return {
            "bucket_name": self.name,
            "endpoint_url": self.endpoint,
            "region_name": S3_REGION,
            "access_key": AWS_ENV["AWS_ACCESS_KEY_ID"],
            "secret_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            "signature_version": "s3v4",
            "file_overwrite": True,
            "querystring_auth": True,
            **extra,
        }


# --- The whole lane -----------------------------------------------------------------------------


_by_folder: dict[str, ScaleServices] = {}
_by_folder_lock = threading.Lock()


def scale_services_for(folder: Path, *, public_s3: bool = False) -> ScaleServices:
    """The services of the stack whose files live in `folder`: made on first use, the same
    ones again for a stack restarted on that folder (as a SQLite file would be found again),
    removed when the test process exits."""
    with _by_folder_lock:
        services = _by_folder.get(str(folder))
        if services is None:
            if not _by_folder:
                atexit.register(_close_all)
            services = _by_folder[str(folder)] = ScaleServices.create(public_s3=public_s3)
        return services


def _close_all() -> None:
    for services in _by_folder.values():
        try:
            services.close()
        except Exception as exc:  # one failure must not keep the others
            print(f"could not remove {services.database} / {services.redis_prefix}: {exc}")


@dataclass
class ScaleServices:
    """PostgreSQL + Redis + S3 for one stack; `env` is what its processes need."""

    database: str
    redis_prefix: str
    bucket: S3Bucket
    env: dict[str, str]

    @classmethod
    def create(cls, *, public_s3: bool = False) -> ScaleServices:
        import psycopg

        token = secrets.token_hex(5)
        database = f"imageproc_test_{token}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        prefix = f"imageproc-test-{token}"
        bucket = S3Bucket.create(public=public_s3)
        env = {
            **AWS_ENV,
            "DATABASE_URL": PG_URL.format(name=database),
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "S3_BUCKET": bucket.name,
            "S3_ENDPOINT_URL": bucket.endpoint,
            "S3_REGION": S3_REGION,
        }
        if public_s3:
            env["S3_PUBLIC_BASE_URL"] = bucket.public_base_url
        return cls(database, prefix, bucket, env)

    def redis_keys(self) -> list[bytes]:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        return list(client.scan_iter(match=f"*{self.redis_prefix}*", count=1000))

    def close(self) -> None:
        """Drop the database (FORCE: a killed worker's connection may linger) and delete
        this run's Redis keys, and only those. The bucket dies with the moto server."""
        import psycopg
        import redis

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        keys = self.redis_keys()
        if keys:
            redis.Redis.from_url(REDIS_URL).delete(*keys)


# --- Reading the stack's database -------------------------------------------------------------


def db_rows(database_url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one query on SQLite (`sqlite:///path`) or PostgreSQL; placeholders are `%s`.
    UUID parameters are passed as Django stores them: 32 hex digits on SQLite, uuid on PostgreSQL."""
    if database_url.startswith("sqlite:"):
        path = "/" + urlsplit(database_url).path.lstrip("/")
        values = tuple(v.hex if isinstance(v, uuid.UUID) else v for v in params)
        conn = sqlite3.connect(path, timeout=20)
        try:
            return list(conn.execute(sql.replace("%s", "?"), values).fetchall())
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as pg:
        return list(pg.execute(sql, tuple(params)).fetchall())  # type: ignore[arg-type]


# --- Processes, from /proc (no psutil) -----------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running, not a zombie: a killed process stays in /proc until its parent (or init) reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def descendants(root: int) -> list[int]:
    """Every live process below `root`, found by walking the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cluster_workers(main_pid: int, *, busy: bool = False) -> list[int]:
    """The worker processes of the qcluster whose main process is `main_pid` (not its
    sentinel, monitor or pusher); with busy=True, those running a task right now."""
    workers = []
    for pid in descendants(main_pid):
        if not alive(pid):
            continue
        title = cmdline(pid)
        if not title.startswith("qcluster "):
            continue
        if " processing " in title or (not busy and title.endswith(" idle")):
            workers.append(pid)
    return workers
