"""Schemathesis against the live service, as CI runs it (`make security`).

Starts the whole service the way the end-to-end tests do (tests/conftest.py start_stack:
`manage.py serve` = gunicorn + qcluster on a temporary SQLite database, with an API key),
runs `st run <base>/api/schema/ --checks all` with that key, and stops the service. Every
check is on, including the authentication ones (ignored_auth: each operation must answer
401 without the key). The budget is bounded by --max-examples (and a timeout on the whole
run), so CI time stays in the minutes; --seed makes a failure reproducible.

Exit status: schemathesis' own (0 = no failures). Exceptions live in security/exceptions.md
and, where schemathesis must be told, in security/schemathesis.toml.

    .venv/bin/python -m security.schemathesis_run [--max-examples N] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "security" / "schemathesis.toml"
# Bounds the whole run even if a phase misbehaves; a normal run takes about a minute.
RUN_TIMEOUT_SECONDS = 900


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=50, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=20261125, help="schemathesis' random seed")
    args = parser.parse_args(argv)

    # The e2e tests' way of starting the service, and their image server on 127.0.0.2.
    from tests.conftest import ImageServer, csv_bytes, make_image, start_stack, stop_stack

    st = Path(sys.executable).with_name("st")
    images = ImageServer()
    # Workers that exit drop their kept-alive connections: not an error worth a traceback here.
    images.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="schemathesis-") as tmp:
        # The upload throttle is proven by tests/test_attacks.py; here it would turn most
        # uploads into 429s and leave the upload's own logic untested.
        stack = start_stack(Path(tmp), {"UPLOAD_THROTTLE_RATE": "100000/min"}, lane="sqlite")
        try:
            # One finished request (an image done, one failed) whose id schemathesis uses for
            # {id}, so that status, output and retry are tested past their 404.
            good = images.add("/good.jpg", make_image(64, 48))
            seed_csv = csv_bytes([("1", "A", [good, good + "x"])])
            upload = stack.post("/csv/upload", files={"file": ("seed.csv", seed_csv)})
            upload.raise_for_status()
            request_id = upload.json()["request_id"]
            stack.wait_finished(request_id)
            command = [
                str(st),
                "--config-file",
                str(CONFIG),
                "--no-color",
                "run",
                f"{stack.base_url}/api/schema/",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {stack.api_key}",
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--request-timeout",
                "30",
                "--workers",
                "2",
            ]
            env = {**os.environ, "SCHEMATHESIS_REQUEST_ID": request_id}
            result = subprocess.run(command, cwd=tmp, env=env, timeout=RUN_TIMEOUT_SECONDS, check=False)
            if result.returncode:
                print(f"\nschemathesis failed; the service's log:\n{stack.logs()}", file=sys.stderr)
            return result.returncode
        finally:
            stop_stack(stack)
            images.close()


if __name__ == "__main__":
    sys.exit(main())
