"""The real service, started as `make run` starts it (`manage.py serve`: gunicorn and a
qcluster with the default worker settings), on a temporary SQLite database, with S3 (moto)
for outputs. As tests/conftest.py's start_stack, without pytest."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.servers import IMAGE_HOST, free_port

ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("completed", "completed_with_errors", "failed")


@dataclass
class Stack:
    base_url: str
    api_key: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    folder: Path
    _db: sqlite3.Connection | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def db_path(self) -> Path:
        return self.folder / "db.sqlite3"

    def upload(
        self, csv_data: bytes, name: str = "catalogue.csv", fields: dict[str, str] | None = None
    ) -> dict[str, Any]:
        response = requests.post(
            self.base_url + "/csv/upload",
            headers=self.headers,
            files={"file": (name, csv_data, "text/csv")},
            data=fields or {},
            timeout=600,
        )
        if response.status_code != 202:
            raise RuntimeError(f"upload answered {response.status_code}: {response.text[:500]}")
        body: dict[str, Any] = response.json()
        return body

    def status(self, request_id: str, session: requests.Session | None = None) -> dict[str, Any]:
        response = (session or requests).get(
            f"{self.base_url}/csv/status/{request_id}", headers=self.headers, timeout=60
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_finished(self, request_id: str, *, timeout: float = 900, interval: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with requests.Session() as session:
            while time.monotonic() < deadline:
                body = self.status(request_id, session)
                if body["status"] in FINISHED:
                    return body
                time.sleep(interval)
        raise RuntimeError(f"request {request_id} did not finish in {timeout} s: {self.log_tail()}")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        # One read-only connection, kept: the benchmark polls through it every few ms.
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
        return self._db.execute(sql, params).fetchall()

    def log_tail(self) -> str:
        log = self.folder / "serve.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def _children(self) -> dict[str, int]:
        """serve's three children: the gunicorn master, the image qcluster's main process and
        the webhooks' (`webhook_cluster` runs `qcluster --name <queue>`)."""
        found = {}
        for pid in _descendants(self.process.pid):
            if _parent(pid) == self.process.pid:
                line = _cmdline(pid)
                webhooks = "webhook_cluster" in line or "--name" in line
                found["web" if "gunicorn" in line else "webhooks" if webhooks else "qcluster"] = pid
        return found

    def gunicorn_master(self) -> int:
        return self._children()["web"]

    def gunicorn_workers(self) -> list[int]:
        master = self._children()["web"]
        return [pid for pid in _descendants(master) if _parent(pid) == master]

    def qcluster_processes(self) -> list[int]:
        main = self._children()["qcluster"]
        return [main, *_descendants(main)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start(
    folder: Path,
    *,
    extra_env: dict[str, str] | None = None,
    workers: bool = True,
    on_start: Callable[[int], object] | None = None,
) -> Stack:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.base",
        "VAR_DIR": str(folder),
        "DATABASE_URL": f"sqlite:///{folder}/db.sqlite3",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "FETCH_ALLOWED_NETWORKS": f"{IMAGE_HOST}/32",
        "UPLOAD_THROTTLE_RATE": "1000/min",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }

    def manage(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        ).stdout

    manage("migrate", "--noinput")
    key = manage("create_api_client", "bench").strip().splitlines()[-1]
    command = [sys.executable, "manage.py", "serve", "--port", str(port)]
    if not workers:
        command.append("--no-workers")
    with (folder / "serve.log").open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    stack = Stack(f"http://127.0.0.1:{port}", key, env, process, folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            health = requests.get(stack.base_url + "/health/", timeout=2).json()
            if not workers or health["checks"]["workers"].get("clusters"):
                if on_start is not None:
                    for pid in [process.pid, *_descendants(process.pid)]:
                        on_start(pid)
                return stack
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.3)
    stop(stack)
    raise RuntimeError(f"the service did not start:\n{stack.log_tail()}")


def stop(stack: Stack) -> None:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)  # as Ctrl-C would
        try:
            stack.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stack.process.kill()
