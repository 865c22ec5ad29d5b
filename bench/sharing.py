"""Sharing the workers between clients (docs/sharing.md), measured: `python -m bench.run --only
sharing` (part of `make bench` too). It writes the "Sharing" section of bench/results.md and the
"sharing" figures of bench/results.json, whatever else the run measured.

In one run, on one machine, at 100 ms on every image response and every S3 request:
1. a 5-image request alone (best of 3), and beside another client's 2,000-image request, on the
   embedded default (SQLite, the ORM broker, `manage.py serve`) with fair share on and off (off:
   first come first served, as before), and on PostgreSQL + Redis with two qclusters (when both
   run on this machine: tests/lanes.py's addresses);
2. two 1,000-image requests of two clients uploaded together: each one's share of the images
   done in every 10 s window while both have work;
3. one client with 10 requests of 100 images against one with 1 of 1,000: the same shares;
4. the corpus as one request alone (the end-to-end figure of the bench, MP/s), fair share on
   against off, the best of the plan's runs at 0 and at 100 ms.
1-3 use the corpus's images of 1 MP or less, each request under URLs of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench import corpus as corpus_mod
from bench import stack as stack_mod
from bench.servers import Servers
from tests.lanes import PG_ADMIN_DSN, PG_URL, REDIS_URL, db_rows, postgres_available, redis_available

MARK_START = "<!-- sharing: written by bench/sharing.py -->"
MARK_END = "<!-- /sharing -->"
WINDOW = 10.0
LATENCY = 0.1
BIG, SMALL, EACH, MANY, MANY_EACH = 2000, 5, 1000, 10, 100
SMALL_MEGAPIXELS = 1.1  # the corpus's 0.3, 0.6 and 1 MP images

Log = Callable[[str], None]


# --- The shares of a window, shared with tests/test_sharing.py -----------------------------------


def window_shares(done: dict[str, list[datetime]], start: datetime, end: datetime) -> list[dict[str, float]]:
    """Each group's share of the images done (their finish times) in each WINDOW-second window
    from `start` to `end`, while every group had work; a last, shorter stretch counts if it
    lasts half a window."""
    windows = []
    left = start
    while (end - left).total_seconds() >= WINDOW / 2:
        right = min(end, left + timedelta(seconds=WINDOW))
        counts = {name: sum(1 for t in times if left <= t < right) for name, times in done.items()}
        total = sum(counts.values())
        if total:
            windows.append({name: count / total for name, count in counts.items()})
        left = right
    return windows


def when(value: Any) -> datetime:
    """A timestamp read from SQLite (text) or PostgreSQL (datetime), as naive UTC."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)


# --- A running service and its clients -----------------------------------------------------------


@dataclass
class Service:
    label: str
    stack: stack_mod.Stack
    clusters: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return db_rows(self.stack.env["DATABASE_URL"], sql, params)

    def client(self, name: str) -> str:
        out = subprocess.run(
            [sys.executable, "manage.py", "create_api_client", name],
            cwd=stack_mod.ROOT,
            env=self.stack.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip().splitlines()[-1]

    def upload(self, key: str, urls: list[str]) -> str:
        lines = ["S. No.,Product Name,Input Image Urls"] + [f'{n},P{n},"{u}"' for n, u in enumerate(urls, 1)]
        response = requests.post(
            self.stack.base_url + "/csv/upload",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": ("c.csv", ("\n".join(lines) + "\n").encode(), "text/csv")},
            timeout=300,
        )
        if response.status_code != 202:
            raise RuntimeError(f"upload answered {response.status_code}: {response.text[:300]}")
        return str(response.json()["request_id"])

    def times(self, request_id: str) -> tuple[datetime, datetime | None, int]:
        ((created, completed, done),) = self.rows(
            "SELECT created_at, completed_at, images_done FROM requests_app_processingrequest WHERE id = %s",
            uuid.UUID(request_id),
        )
        return when(created), when(completed) if completed else None, int(done)

    def seconds(self, request_id: str) -> float:
        created, completed, _ = self.times(request_id)
        assert completed is not None
        return (completed - created).total_seconds()

    def wait(self, request_ids: list[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        left = set(request_ids)
        while left and time.monotonic() < deadline:
            left = {r for r in left if self.times(r)[1] is None}
            time.sleep(0.05)
        if left:
            raise RuntimeError(f"{self.label}: {len(left)} requests did not finish in {timeout} s")

    def finishes(self, request_ids: list[str]) -> list[datetime]:
        marks = ", ".join(["%s"] * len(request_ids))
        rows = self.rows(
            f"SELECT finished_at FROM products_productimage WHERE status = 'done' AND request_id IN ({marks})",
            *[uuid.UUID(r) for r in request_ids],
        )
        return sorted(when(row[0]) for row in rows)


@contextmanager
def embedded(folder: Path, servers: Servers, *, fair: bool, on_start: Callable[[int], object]) -> Iterator[Service]:
    env = {**servers.s3_env(), "IMAGE_FAIR_SHARE": "1" if fair else "0"}
    stack = stack_mod.start(folder, extra_env=env, on_start=on_start)
    try:
        yield Service("embedded" + ("" if fair else ", fair share off"), stack)
    finally:
        stack_mod.stop(stack)


@contextmanager
def scale_out(folder: Path, servers: Servers, *, on_start: Callable[[int], object]) -> Iterator[Service]:
    """PostgreSQL + Redis (broker and cache) + S3, `serve --no-workers` and two qclusters,
    as tests/conftest.py's scale lane: a database and a Redis prefix of its own, removed after."""
    import psycopg
    import redis

    token = secrets.token_hex(5)
    database, prefix = f"imageproc_bench_{token}", f"imageproc-bench-{token}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    env = {
        **servers.s3_env(),
        "DATABASE_URL": PG_URL.format(name=database),
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "Q_WORKERS": "2",
    }
    stack = stack_mod.start(folder, extra_env=env, workers=False, on_start=on_start)
    service = Service("PostgreSQL + Redis, two qclusters", stack)
    try:
        for n in range(2):
            with (folder / f"qcluster-{n}.log").open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "manage.py", "qcluster"],
                    cwd=stack_mod.ROOT,
                    env=stack.env,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            service.clusters.append(process)
            on_start(process.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                health = requests.get(stack.base_url + "/health/", timeout=5).json()
                if health["checks"]["workers"].get("clusters", 0) >= 2:
                    break
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("the two qclusters did not start")
        yield service
    finally:
        for process in service.clusters:
            process.send_signal(signal.SIGTERM)  # the main process only: it drains its workers
        for process in service.clusters:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        stack_mod.stop(stack)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


# --- The measures ------------------------------------------------------------------------------


class Images:
    """Distinct URLs of the corpus's small images: each request gets URLs of its own."""

    def __init__(self, corpus: corpus_mod.Corpus, servers: Servers) -> None:
        self.names = [i.name for i in corpus.images if i.pixels <= SMALL_MEGAPIXELS * 1e6]
        self.megapixels = statistics.fmean(i.pixels for i in corpus.images if i.name in set(self.names)) / 1e6
        self.base = servers.image_base

    def urls(self, tag: str, count: int) -> list[str]:
        return [f"{self.base}/{tag}-{n // len(self.names)}/{self.names[n % len(self.names)]}" for n in range(count)]


def _together(service: Service, uploads: list[tuple[str, list[str]]]) -> list[str]:
    with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
        return list(pool.map(lambda upload: service.upload(*upload), uploads))


def small_beside_big(service: Service, images: Images, log: Log) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    small, big = service.client(f"small-{tag}"), service.client(f"big-{tag}")
    alone = []
    for n in range(3):
        request_id = service.upload(small, images.urls(f"alone{n}-{tag}", SMALL))
        service.wait([request_id])
        alone.append(service.seconds(request_id))
    catalogue = service.upload(big, images.urls(f"catalogue-{tag}", BIG))
    while service.times(catalogue)[2] < BIG // 20:  # under way: every worker on it
        time.sleep(0.05)
    beside = service.upload(small, images.urls(f"beside-{tag}", SMALL))
    service.wait([beside])
    left = BIG - service.times(catalogue)[2]
    service.wait([catalogue])
    best = min(alone)
    result = {
        "alone_seconds": best,
        "alone_runs": alone,
        "beside_seconds": service.seconds(beside),
        "goal_seconds": max(3 * best, best + 5),
        "catalogue_seconds": service.seconds(catalogue),
        "catalogue_left_when_small_finished": left,
    }
    log(
        f"  {service.label}: 5 images alone {best:.2f} s, beside 2,000 {result['beside_seconds']:.2f} s "
        f"(goal {result['goal_seconds']:.2f} s; {left} of the 2,000 still to do then)"
    )
    return result


def _shares(service: Service, groups: dict[str, list[str]]) -> dict[str, Any]:
    service.wait([r for ids in groups.values() for r in ids])
    created = [service.times(r)[0] for ids in groups.values() for r in ids]
    done = {name: service.finishes(ids) for name, ids in groups.items()}
    start, end = max(created), min(times[-1] for times in done.values())
    ends = {name: (times[-1] - min(created)).total_seconds() for name, times in done.items()}
    return {"windows": window_shares(done, start, end), "overlap_seconds": (end - start).total_seconds(), "ends": ends}


def two_clients(service: Service, images: Images, log: Log) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    a, b = service.client(f"a-{tag}"), service.client(f"b-{tag}")
    # b the moment a's upload has answered: a's batches are queued first.
    first = service.upload(a, images.urls(f"a-{tag}", EACH))
    second = service.upload(b, images.urls(f"b-{tag}", EACH))
    result = _shares(service, {"a": [first], "b": [second]})
    log(f"  {service.label}: shares of a per window {[round(w['a'], 2) for w in result['windows']]}")
    return result


def ten_against_one(service: Service, images: Images, log: Log) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    many, one = service.client(f"many-{tag}"), service.client(f"one-{tag}")
    # All eleven uploaded at the same moment.
    *ten, single = _together(
        service,
        [(many, images.urls(f"many{n}-{tag}", MANY_EACH)) for n in range(MANY)]
        + [(one, images.urls(f"one-{tag}", EACH))],
    )
    result = _shares(service, {"ten requests": ten, "one request": [single]})
    log(f"  {service.label}: shares of the ten per window {[round(w['ten requests'], 2) for w in result['windows']]}")
    return result


def throughput_alone(
    service: Service, corpus: corpus_mod.Corpus, servers: Servers, repeat: int, log: Log
) -> dict[str, float]:
    from bench.run import _e2e_once  # the end-to-end figure of the bench, measured as it measures it

    names = [i.name for i in corpus.images]
    _e2e_once(service.stack, [f"{servers.image_base}/warm-{secrets.token_hex(3)}/{n}" for n in names[:8]])
    figures = {}
    for latency in (0.0, LATENCY):
        servers.set_latency(images=latency, s3=latency)
        runs = [
            _e2e_once(service.stack, [f"{servers.image_base}/alone-{secrets.token_hex(4)}/{n}" for n in names])
            for _ in range(repeat)
        ]
        figures[str(int(latency * 1000))] = corpus.megapixels / min(run.seconds for run in runs)
    servers.set_latency(images=LATENCY, s3=LATENCY)
    log(f"  {service.label}: the corpus alone {figures['0']:.0f} MP/s at 0 ms, {figures['100']:.0f} at 100 ms")
    return figures


def run(
    corpus: corpus_mod.Corpus,
    servers: Servers,
    work: Path,
    *,
    repeat: int,
    log: Log,
    on_start: Callable[[int], object],
) -> dict[str, Any]:
    started = time.perf_counter()
    images = Images(corpus, servers)
    out: dict[str, Any] = {
        "images": f"{len(images.names)} images of about 1 MP or less ({images.megapixels:.2f} MP on average)",
        "latency_ms": LATENCY * 1000,
    }
    for fair in (True, False):
        name = "fair" if fair else "off"
        log(f"sharing: embedded default, fair share {'on' if fair else 'off'}")
        with embedded(work / f"sharing-{name}", servers, fair=fair, on_start=on_start) as service:
            out[f"throughput_{name}"] = throughput_alone(service, corpus, servers, repeat, log)
            out[f"small_{name}"] = small_beside_big(service, images, log)
            out[f"two_{name}"] = two_clients(service, images, log)
            out[f"ten_{name}"] = ten_against_one(service, images, log)
    if postgres_available() and redis_available():
        log("sharing: PostgreSQL + Redis, two qclusters")
        servers.set_latency(images=LATENCY, s3=LATENCY)
        with scale_out(work / "sharing-scale", servers, on_start=on_start) as service:
            out["small_scale"] = small_beside_big(service, images, log)
            out["two_scale"] = two_clients(service, images, log)
    servers.set_latency(images=0, s3=0)
    out["seconds"] = time.perf_counter() - started
    return out


# --- The report --------------------------------------------------------------------------------


def goals(s: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    rows = []
    for key, label in (("small_fair", "embedded default"), ("small_scale", "PostgreSQL + Redis, two qclusters")):
        if key in s:
            r = s[key]
            rows.append(
                (
                    f"5 images beside another client's 2,000 ({label})",
                    f"{r['beside_seconds']:.2f} s (alone {r['alone_seconds']:.2f} s)",
                    f"≤ {r['goal_seconds']:.2f} s",
                    r["beside_seconds"] <= r["goal_seconds"],
                )
            )
    for key, label in (("two_fair", "embedded default"), ("two_scale", "PostgreSQL + Redis, two qclusters")):
        if key in s:
            shares = [w["a"] for w in s[key]["windows"]]
            rows.append(
                (
                    f"Two clients, 1,000 images each: a's share per 10 s window ({label})",
                    ", ".join(f"{x:.0%}" for x in shares),
                    "50% ± 10% each",
                    all(0.4 <= x <= 0.6 for x in shares),
                )
            )
    if "ten_fair" in s:
        shares = [w["ten requests"] for w in s["ten_fair"]["windows"]]
        rows.append(
            (
                "A client with 10 requests against one with 1: its share per 10 s window",
                ", ".join(f"{x:.0%}" for x in shares),
                "no more than the other's (≤ 60%)",
                all(x <= 0.6 for x in shares),
            )
        )
    if "throughput_fair" in s:
        on, off = s["throughput_fair"], s["throughput_off"]
        ratio = min(on[k] / off[k] for k in on)
        rows.append(
            (
                "One big request alone against first come first served (the bench's system MP/s)",
                ", ".join(f"{on[k] / off[k]:.2f}x at {k} ms ({on[k]:.0f} vs {off[k]:.0f} MP/s)" for k in on),
                "≥ 0.95x",
                ratio >= 0.95,
            )
        )
    return rows


def section(s: dict[str, Any], *, date: str, machine: str) -> str:
    lines = [
        MARK_START,
        "## Sharing the workers between clients",
        "",
        f"Measured {date} by `python -m bench.run --only sharing` (bench/sharing.py) in {s['seconds']:.0f} s, "
        f"on {machine}; {s['latency_ms']:.0f} ms on every image response and S3 request; {s['images']} under "
        "URLs of each request's own. How the workers are shared: docs/sharing.md. Times are the service's own "
        "(created_at → completed_at; finished_at of each image).",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {measured} | {target} | {'yes' if met else '**no**'} |" for name, measured, target, met in goals(s)
    ]
    lines += ["", "The same measures with fair share off (IMAGE_FAIR_SHARE=0: first come first served, as before):", ""]
    lines += ["| measure | fair share on | off |", "|---|---|---|"]
    on, off = s.get("small_fair"), s.get("small_off")
    if on and off:
        small = (on["beside_seconds"], off["beside_seconds"])
        lines.append(f"| 5 images beside 2,000 of another client | {small[0]:.2f} s | {small[1]:.2f} s |")
        big = (on["catalogue_seconds"], off["catalogue_seconds"])
        lines.append(f"| the 2,000 images of the other client | {big[0]:.1f} s | {big[1]:.1f} s |")
    for key, group, label in (
        ("two", "a", "two clients: a's share per window"),
        ("ten", "ten requests", "10 requests against 1: their share per window"),
    ):
        if f"{key}_fair" in s and f"{key}_off" in s:
            shares = [
                ", ".join(f"{w[group]:.0%}" for w in s[f"{key}_{mode}"]["windows"]) or "—" for mode in ("fair", "off")
            ]
            lines.append(f"| {label} | {shares[0]} | {shares[1]} |")
    if "throughput_fair" in s:
        for k in s["throughput_fair"]:
            lines.append(
                f"| the corpus alone at {k} ms, MP/s | {s['throughput_fair'][k]:.0f} | {s['throughput_off'][k]:.0f} |"
            )
    lines += ["", MARK_END]
    return "\n".join(lines)


def publish(s: dict[str, Any], folder: Path, *, machine: dict[str, Any]) -> Path:
    """Write the section into folder/results.md (replacing an earlier one) and the figures
    into folder/results.json's "sharing", keeping everything else of both."""
    described = f"{machine['cores']} cores ({machine['cpu']}), Python {machine['python']}"
    markdown = section(s, date=machine["date"], machine=described)
    path = folder / "results.md"
    text = path.read_text() if path.is_file() else ""
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + markdown + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + markdown + "\n"
    path.write_text(text)
    figures = folder / "results.json"
    data = json.loads(figures.read_text()) if figures.is_file() else {}
    data["sharing"] = s
    figures.write_text(json.dumps(data, indent=1, default=str))
    return path


def goals_text(s: dict[str, Any]) -> str:
    return "\n".join(
        f"  [{'ok' if met else 'NO'}] {name}: {measured} (goal {target})" for name, measured, target, met in goals(s)
    )
