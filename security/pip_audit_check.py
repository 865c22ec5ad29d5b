"""pip-audit on requirements.txt that cannot pass by auditing nothing (`make security`).

pip-audit prints "No known vulnerabilities found" and exits 0 when it could not look a single
dependency up (vulnerability service unreachable, or a version it does not know): every one is
then only "skipped". This wrapper reads pip-audit's JSON and fails, loudly, on

* a known vulnerability (exit 1), or
* any dependency that could not be audited, or pip-audit itself failing (exit 2),

unless PIP_AUDIT_ALLOW_UNAUDITED names an exception accepted in security/exceptions.md (e.g.
"A1"): then dependencies that could not be audited print a warning banner instead, and exit 0.
A vulnerability that was found always fails.

    .venv/bin/python -m security.pip_audit_check [--vulnerability-service pypi|osv]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXCEPTIONS = ROOT / "security" / "exceptions.md"


def banner(*lines: str) -> None:
    bar = "!" * 100
    print("\n".join([bar, *(f"!! {line}" for line in lines), bar]), file=sys.stderr)


def accepted_exception(name: str) -> bool:
    """An exception counts only if security/exceptions.md has it as accepted."""
    if not name:
        return False
    text = EXCEPTIONS.read_text() if EXCEPTIONS.exists() else ""
    return any(line.startswith(f"## {name} ") and "[accepted" in line.lower() for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", default=str(ROOT / "requirements.txt"))
    parser.add_argument("--vulnerability-service", default="pypi", choices=["pypi", "osv"])
    parser.add_argument("--pip-audit", default=str(Path(sys.executable).with_name("pip-audit")), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    command = [args.pip_audit, "-r", args.requirements, "-f", "json", "--progress-spinner", "off"]
    command += ["--vulnerability-service", args.vulnerability_service]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        report = {}
    dependencies: list[dict[str, Any]] = report.get("dependencies", [])
    if result.returncode not in (0, 1) or not dependencies:
        sys.stderr.write(result.stderr[-3000:])
        banner(
            f"pip-audit FAILED to run (exit {result.returncode}): nothing was audited.",
            f"Is its vulnerability service ({args.vulnerability_service}) reachable from here?",
        )
        return 2

    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if "skip_reason" in d]
    audited = len(dependencies) - len(skipped)
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
            print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})")
    print(
        f"pip-audit ({args.vulnerability_service}): {audited} of {len(dependencies)} dependencies audited, "
        f"{len(vulnerable)} with known vulnerabilities, {len(skipped)} NOT audited."
    )
    if vulnerable:
        banner(f"pip-audit FAILED: {len(vulnerable)} dependencies have known vulnerabilities (listed above).")
        return 1
    if skipped:
        reasons = sorted({d["skip_reason"].split(":")[0] for d in skipped})
        exception = os.environ.get("PIP_AUDIT_ALLOW_UNAUDITED", "")
        lines = [
            f"{len(skipped)} of {len(dependencies)} dependencies could NOT be audited: {'; '.join(reasons)}.",
            "This is not a pass: nothing is known about their vulnerabilities.",
        ]
        if accepted_exception(exception):
            banner(*lines, f"Continuing ONLY because exception {exception} in security/exceptions.md is accepted.")
            return 0
        banner(*lines, "See security/exceptions.md, A1.")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
