"""bench/results.md and the throughput chart, from the figures bench/run.py measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    target: str
    met: bool | None  # None: not measured


def goals(r: dict[str, Any]) -> list[Goal]:
    out: list[Goal] = []
    codec, naive, e2e = r.get("codec"), r.get("naive", {}), r.get("e2e", {})
    if codec and "100" in e2e:
        ratio = e2e["100"]["mp_per_s"] / codec["mp_per_s"]
        out.append(
            Goal(
                "End to end at 100 ms vs codec limit",
                f"{ratio:.2f}x ({e2e['100']['mp_per_s']:.0f} vs {codec['mp_per_s']:.0f} MP/s)",
                "≥ 0.8x",
                ratio >= 0.8,
            )
        )
    if "100" in naive and "100" in e2e:
        ratio = e2e["100"]["mp_per_s"] / naive["100"]["mp_per_s"]
        out.append(
            Goal(
                "End to end at 100 ms vs naive at 100 ms",
                f"{ratio:.1f}x ({e2e['100']['mp_per_s']:.0f} vs {naive['100']['mp_per_s']:.1f} MP/s)",
                "≥ 8x",
                ratio >= 8,
            )
        )
    if ingest := r.get("ingest"):
        ratio = ingest["upload_seconds"] / ingest["bulk_create_seconds"]
        out.append(
            Goal(
                f"Upload ingest ({ingest['rows']:,} rows, {ingest['urls']:,} URLs) vs direct bulk_create",
                f"{ratio:.2f}x ({ingest['upload_seconds']:.2f} vs {ingest['bulk_create_seconds']:.2f} s)",
                "≤ 3x",
                ratio <= 3,
            )
        )
    if status := r.get("status"):
        p50 = status["big_p50_ms"] / status["small_p50_ms"]
        p95 = status["big_p95_ms"] / status["small_p95_ms"]
        out.append(
            Goal(
                f"Status first page, {status['products_big']:,} vs 10 products",
                f"p50 {p50:.2f}x ({status['big_p50_ms']:.1f} vs {status['small_p50_ms']:.1f} ms), "
                f"p95 {p95:.2f}x ({status['big_p95_ms']:.1f} vs {status['small_p95_ms']:.1f} ms)",
                "≤ 2x",
                p50 <= 2 and p95 <= 2,
            )
        )
    if rss := r.get("worker_rss"):
        out.append(
            Goal(
                f"Worker peak RSS on {rss['min_megapixels']:g}+ MP images",
                f"{rss['peak_mb']:.0f} MB",
                "≤ 300 MB",
                rss["peak_mb"] <= 300,
            )
        )
    if web := r.get("web_rss"):
        out.append(
            Goal(
                f"Web RSS growth on a {web['csv_bytes'] / 1e6:.1f} MB upload",
                f"{web['growth_mb']:.0f} MB (peak {web['peak_mb']:.0f} MB)",
                "≤ 50 MB",
                web["growth_mb"] <= 50,
            )
        )
    if sizes := r.get("sizes"):
        out.append(
            Goal(
                "No output larger than its input",
                f"{sizes['larger_than_input']} larger; largest output/input {sizes['max_ratio']:.3f}",
                "0",
                sizes["larger_than_input"] == 0,
            )
        )
        if codec:
            delta = sizes["mean_ratio"] / codec["mean_ratio"] - 1
            out.append(
                Goal(
                    "Mean output/input vs plain Pillow q50",
                    f"{sizes['mean_ratio']:.4f} vs {codec['mean_ratio']:.4f} ({delta:+.1%})",
                    "within ±2%",
                    abs(delta) <= 0.02,
                )
            )
    return out


def _mark(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def goals_text(r: dict[str, Any]) -> str:
    lines = ["", "Goals:"]
    for goal in goals(r):
        lines.append(f"  [{'ok' if goal.met else 'NO'}] {goal.name}: {goal.measured} (goal {goal.target})")
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["0 ms", "100 ms"]
    keys = ["0", "100"]
    series = [
        ("codec limit (Pillow, 2 processes)", [r["codec"]["mp_per_s"]] * 2, "#9e9e9e"),
        ("naive (one image at a time)", [r["naive"][k]["mp_per_s"] for k in keys], "#d62728"),
        ("this service, end to end", [r["e2e"][k]["mp_per_s"] for k in keys], "#1f77b4"),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    width = 0.26
    for index, (name, values, colour) in enumerate(series):
        xs = [x + (index - 1) * width for x in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name, color=colour)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], padding=2, fontsize=8)
    ax.set_xticks(range(len(labels)), [f"latency {label}\nper image response and S3 request" for label in labels])
    ax.set_ylabel("input megapixels per second")
    ax.set_title(f"Throughput, {r['corpus'].split(';')[0]}, {r['machine']['cores']} cores")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(0, max(max(v) for _, v, _ in series) * 1.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(r: dict[str, Any], folder: Path, *, quick: bool) -> Path:
    png = folder / "throughput.png"
    chart(r, png)
    m = r["machine"]
    codec, naive, e2e = r["codec"], r["naive"], r["e2e"]
    lines = [
        "# Benchmark results" + (" (quick smoke run: small corpus, figures not meaningful)" if quick else ""),
        "",
        f"Measured {m['date']} by `make {'bench-quick' if quick else 'bench'}` (`python -m bench.run"
        f"{' --quick' if quick else ''}`) in {r['bench_seconds']:.0f} s, on {m['cores']} cores ({m['cpu']}), "
        f"Python {m['python']}, Pillow {m['pillow']}.",
        "",
        f"Corpus: {r['corpus']} — mosaics of the photographs bundled in scikit-image, built by bench/corpus.py.",
        f"Outputs: {r['s3']}. Images from a local HTTP server on 127.0.0.2.",
        "",
        f"![throughput]({png.name})",
        "",
        "## Goals",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for goal in goals(r):
        lines.append(f"| {goal.name} | {goal.measured} | {goal.target} | {_mark(goal.met)} |")
    lines += [
        "",
        "## Throughput (the same images, the same run)",
        "",
        "| pipeline | latency | seconds | MP/s | images/s |",
        "|---|---|---|---|---|",
        f"| codec limit: Pillow decode + encode q50, 2 processes, in memory | — | {codec['seconds']:.2f} | "
        f"{codec['mp_per_s']:.0f} | {codec['images_per_s']:.1f} |",
        f"| codec, 1 process | — | — | {codec['one_process_mp_per_s']:.0f} | — |",
    ]
    for key in ("0", "100"):
        n = naive[key]
        lines.append(
            f"| naive: GET, open, convert, save q50, upload; one at a time | {key} ms | {n['seconds']:.2f} | "
            f"{n['mp_per_s']:.1f} | {n['images_per_s']:.1f} |"
        )
    for key in ("0", "100"):
        e = e2e[key]
        lines.append(
            f"| this service: POST /csv/upload → final status ({e['status']}, {e['done']} done, "
            f"{e['failed']} failed) | {key} ms | {e['seconds']:.2f} | {e['mp_per_s']:.0f} | {e['images_per_s']:.1f} |"
        )
    lines += [
        "",
        "Latency is added by the image server to every response and by a wrapper around moto to every S3 request.",
        "The service runs as `make run` runs it (`manage.py serve`: gunicorn, and a qcluster with the default "
        "worker settings) on a temporary SQLite database, with S3_BUCKET set to the moto bucket. The time runs "
        "from sending the upload to its final status (seen in the database, polled every 20 ms, then read "
        "through the status API). Each throughput is the best of the runs made (other jobs may share the "
        f"machine; the benchmark ran at {r.get('priority', 'default priority')}).",
    ]
    cpu = e2e["100"].get("cpu_seconds")
    if cpu:
        total = sum(cpu.values())
        lines += [
            "",
            "### Where the CPU goes (the profile behind the end-to-end figure)",
            "",
            f"CPU seconds during the best 100 ms run ({e2e['100']['seconds']:.2f} s of wall time on "
            f"{m['cores']} cores = {e2e['100']['seconds'] * (m['cores'] or 1):.1f} core-seconds), against the "
            f"codec limit's {codec['cpu_seconds']:.1f} CPU seconds for the same images:",
            "",
            "| process | CPU s |",
            "|---|---|",
            *[f"| {name} | {seconds:.2f} |" for name, seconds in cpu.items()],
            f"| total | {total:.2f} |",
        ]
    t = e2e["100"].get("timeline")
    # A quick run can store its last output as its first download ends, or end before its
    # worker processes show their I/O threads (none counted): then there is nothing to divide.
    if t and t["last_stored"] > t["first_downloaded"] and t["workers"]:
        middle = t["last_stored"] - t["first_downloaded"]
        fixed = t["first_downloaded"] + t["seen"] - t["last_stored"]
        busy = t["compressing_thread_seconds"] / (middle * t["workers"])
        middle_mp_s = e2e["100"]["mp_per_s"] * e2e["100"]["seconds"] / middle  # the corpus's MP / s
        lines += [
            "",
            "### Where the wall time goes",
            "",
            "The best 100 ms run, in seconds after the upload was sent (from the timestamps the service wrote):",
            "",
            "| moment | s |",
            "|---|---|",
            f"| the upload answered: request and rows created, dispatch queued | {t['answered']:.2f} |",
            f"| the dispatch task claimed the first images (after a queue poll) | {t['first_claimed']:.2f} |",
            f"| the first download ended (at the earliest) | {t['first_downloaded']:.2f} |",
            f"| the last output was stored | {t['last_stored']:.2f} |",
            f"| the request completed: output CSV stored, final status set | {t['completed']:.2f} |",
            f"| the benchmark saw it | {t['seen']:.2f} |",
            "",
            f"Between the first download and the last stored output ({middle:.2f} s), the "
            f"{t['workers']} compressing threads were busy {t['compressing_thread_seconds']:.2f} of "
            f"{middle * t['workers']:.2f} thread-seconds ({busy:.0%}), "
            f"and the images went through at {middle_mp_s:.0f} MP/s ({middle_mp_s / codec['mp_per_s']:.2f}x the codec "
            f"limit). The {fixed:.2f} s before and after are the fixed steps of a request at this latency, in which "
            "the cores mostly wait: a queue poll and the first download; the last upload, then the output CSV's.",
        ]
    if shares := r.get("profile"):
        lines += [
            "",
            "The workers' compressing threads, sampled by py-spy during one more (untimed) 100 ms run:",
            "",
            "| the compressing thread was | share of samples |",
            "|---|---|",
            *[f"| {label} | {share:.1%} |" for label, share in shares.items()],
        ]
    if ingest := r.get("ingest"):
        lines += [
            "",
            "## Upload ingest",
            "",
            f"A {ingest['rows']:,}-row, {ingest['urls']:,}-URL CSV ({ingest['csv_bytes'] / 1e6:.1f} MB): "
            f"`POST /csv/upload` (parse, validate, store, queue) took {ingest['upload_seconds']:.2f} s; a direct "
            "`bulk_create` of the same rows through the ORM (bench/direct_ingest.py) "
            f"{ingest['bulk_create_seconds']:.2f} s (medians of 3).",
        ]
    if status := r.get("status"):
        lines += [
            "",
            "## Status page",
            "",
            "| request | p50 ms | p95 ms |",
            "|---|---|---|",
            f"| {status['products_big']:,} products, first page | {status['big_p50_ms']:.1f} | "
            f"{status['big_p95_ms']:.1f} |",
            f"| 10 products | {status['small_p50_ms']:.1f} | {status['small_p95_ms']:.1f} |",
            "",
            f"{status['calls']} calls each, alternating, over one kept-alive connection.",
        ]
    if (rss := r.get("worker_rss")) and (web := r.get("web_rss")):
        lines += [
            "",
            "## Memory",
            "",
            f"- Worker: peak RSS {rss['peak_mb']:.0f} MB over the qcluster's processes while processing "
            f"{rss['images']} images of {rss['min_megapixels']:g} MP or more ({rss['method']}).",
            f"- Web: a {web['csv_bytes'] / 1e6:.1f} MB CSV ({web['rows']:,} rows, {web['urls']:,} URLs) grew a "
            f"gunicorn worker by {web['growth_mb']:.0f} MB (from {web['baseline_mb']:.0f} MB; {web['method']}); "
            f"the upload took {web['upload_seconds']:.1f} s.",
        ]
    if sizes := r.get("sizes"):
        lines += [
            "",
            "## Output sizes",
            "",
            f"Over the {sizes['images']} images of the 0 ms run: mean output/input {sizes['mean_ratio']:.4f} "
            f"(plain Pillow q50: {codec['mean_ratio']:.4f}), largest {sizes['max_ratio']:.4f} (plain Pillow: "
            f"{codec['max_ratio']:.4f}); {sizes['larger_than_input']} outputs larger than their input; "
            f"{sizes['stored_in_s3']} outputs found in S3 with the size the database records; "
            f"{sizes['bytes_in_mismatched']} input sizes differ from the corpus.",
        ]
    path = folder / ("results-quick.md" if quick else "results.md")
    path.write_text("\n".join(lines) + "\n")
    return path
