"""Where a worker's compressing thread spends its time, sampled with py-spy (when it is
installed and allowed to attach) during one extra end-to-end run, outside the timed ones."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

# First match wins: stack substrings → what the thread was doing.
CATEGORIES = (
    ("ImageFile.load", "compress: decoding (libjpeg, zlib)"),
    ("_encode", "compress: encoding (libjpeg)"),
    ("compress (", "compress: the rest (header checks, colour, alpha)"),
    ("_Stream._collect", "waiting for a download or an upload"),
    ("_record", "recording results (database)"),
    ("_steal", "claiming more images (database)"),
    ("_Stream", "handing work to the I/O threads"),
)


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pids: list[int], folder: Path, seconds: int) -> list[tuple[subprocess.Popen[bytes], Path]]:
    tool = py_spy()
    if tool is None:
        return []
    started = []
    for pid in pids:
        out = folder / f"py-spy-{pid}.txt"
        command = [tool, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
        command += ["--format", "raw", "--nonblocking", "--output", str(out)]
        started.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
    return started


def finish(started: list[tuple[subprocess.Popen[bytes], Path]]) -> dict[str, float]:
    """Share of the compressing threads' samples per category (empty if nothing sampled)."""
    counts: collections.Counter[str] = collections.Counter()
    for process, out in started:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.terminate()
        if not out.exists():
            continue
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            # The compressing thread is the worker's main thread: it runs the stream.
            if "_Stream.run" not in stack or "Thread._bootstrap" in stack:
                continue
            label = next((name for needle, name in CATEGORIES if needle in stack), "other")
            counts[label] += int(count)
    total = sum(counts.values())
    return {label: n / total for label, n in counts.most_common()} if total else {}
