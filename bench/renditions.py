"""Renditions (issue 15): what the sizes cost against one full-size re-encode, and how they look.

`python -m bench.renditions` (or `python -m bench.run --only renditions`) measures, on the
12 MP JPEGs of the benchmark corpus (built the same way, without network):

- CPU time (this process, one thread, best of REPEAT) of compress() at full size, of
  render() at 1600, 800 and 200 px, and at 800 px alone; for each way of resizing
  (Lanczos the whole way, or reduce() then Lanczos; the draft decode covering the largest
  size, or twice it; no draft at all), so that the choice in imageproc.engine.renditions
  is the measured one;
- the peak RSS of a fresh process doing each, over the RSS it had before;
- SSIMULACRA2 of each rendition against a Lanczos resize of the fully decoded source at
  the rendition's size, and, as the yardstick, of the same encoder run on that reference;
- source megapixels per CPU second over the whole corpus, compress() against render().

Writes the Renditions section of bench/results.md (bench/out/ for --quick) and the figures
under "renditions" in results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import corpus as corpus_mod
from bench.ssimulacra2 import score as ssimulacra2
from imageproc.engine.compress import CompressOptions, compress, configure_pillow
from imageproc.engine.renditions import render

HERE = Path(__file__).resolve().parent
MARK_START, MARK_END = "<!-- renditions:start -->", "<!-- renditions:end -->"
SIZES = (1600, 800, 200)
REPEAT = 5
# name -> keyword arguments of render()
VARIANTS: dict[str, dict[str, Any]] = {
    "draft, Lanczos": {"reducing_gap": None, "draft_margin": 1.0},
    "draft, reduce()+Lanczos (gap 2)": {"reducing_gap": 2.0, "draft_margin": 1.0},
    "draft x2, Lanczos": {"reducing_gap": None, "draft_margin": 2.0},
    "no draft, Lanczos": {"reducing_gap": None, "draft": False},
    "no draft, reduce()+Lanczos (gap 2)": {"reducing_gap": 2.0, "draft": False},
    "draft, bicubic": {"reducing_gap": None, "resample": Image.Resampling.BICUBIC},
}
DEFAULT_VARIANT = "draft, Lanczos"


def big_jpegs(quick: bool) -> list[tuple[str, bytes]]:
    """The corpus's 12 MP JPEGs (quick: its largest JPEGs, 2 MP)."""
    spec = corpus_mod.QUICK if quick else corpus_mod.FULL
    corpus = corpus_mod.build(spec, log=False)
    jpegs = [i for i in corpus.images if i.format == "JPEG"]
    biggest = max(i.pixels for i in jpegs)
    chosen = [i for i in jpegs if i.pixels >= 0.9 * biggest][: 2 if quick else 4]
    return [(f"{i.name} ({i.width}x{i.height})", corpus.read(i)) for i in chosen]


def _cpu(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _quality(data: bytes, opts: CompressOptions) -> list[dict[str, Any]]:
    with Image.open(BytesIO(data)) as im:
        full = im.convert("RGB")
    rows = []
    for rendition in render(data, SIZES, opts):
        result = rendition.result
        reference = full.resize((result.width, result.height), Image.Resampling.LANCZOS)
        ideal = compress(_png(reference), opts)
        ref = np.asarray(reference)
        rows.append(
            {
                "size": rendition.size,
                "width": result.width,
                "height": result.height,
                "bytes": len(result.data),
                "ideal_bytes": len(ideal.data),
                "score": ssimulacra2(ref, _decoded(result.data)),
                "ideal_score": ssimulacra2(ref, _decoded(ideal.data)),
            }
        )
    return rows


def _png(im: Image.Image) -> bytes:
    buf = BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


_RSS_CHILD = """
import sys, resource
from pathlib import Path
from imageproc.engine.compress import compress, configure_pillow
from imageproc.engine.renditions import render
configure_pillow()
data = Path(sys.argv[2]).read_bytes()
def kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
compress(b"" + Path(sys.argv[3]).read_bytes())  # warm the codecs on a small image
before = kb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
if sys.argv[1] == "full":
    compress(data)
else:
    render(data, [int(s) for s in sys.argv[1].split(",")])
print((kb("VmHWM") - before) / 1024)
"""


def _peak_rss(mode: str, path: Path, small: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, mode, str(path), str(small)],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _throughput(quick: bool, opts: CompressOptions) -> dict[str, Any]:
    """Source MP per CPU second over the whole corpus: compress() and render(SIZES)."""
    spec = corpus_mod.QUICK if quick else corpus_mod.FULL
    corpus = corpus_mod.build(spec, log=False)
    full = sized = 0.0
    per_image = []
    for image in corpus.images:
        data = corpus.read(image)
        one = _cpu(lambda data=data: compress(data, opts), 1)  # type: ignore[misc]
        three = _cpu(lambda data=data: render(data, SIZES, opts), 1)  # type: ignore[misc]
        full += one
        sized += three
        per_image.append({"megapixels": image.pixels / 1e6, "format": image.format, "full": one, "sizes": three})
    return {
        "per_image": per_image,
        "images": len(corpus.images),
        "megapixels": corpus.megapixels,
        "full_mp_per_cpu_s": corpus.megapixels / full,
        "sizes_mp_per_cpu_s": corpus.megapixels / sized,
        "ratio": full / sized,
    }


class _WorkerPeak:
    """The highest RSS of any qcluster worker (django-q2 titles them `qcluster Process-…`),
    sampled every 10 ms from /proc: workers are found by their title, wherever they sit in
    the process tree. (bench.memory.Peaks over Stack.qcluster_processes() saw only idle
    processes here: ~80 MB while the workers doing the work were at ~300 MB.)"""

    def __init__(self) -> None:
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if not (proc / "cmdline").read_bytes().startswith(b"qcluster Process"):
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.mb = max(self.mb, int(line.split()[1]) / 1024)
                except OSError:
                    continue
            self._stop.wait(0.01)

    def __enter__(self) -> _WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_e2e(quick: bool, repeat: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The whole service (manage.py serve, default workers, S3 on moto, no added latency) on
    the corpus: one request without sizes, one with 1600,800,200, alternately; the best of
    `repeat` each. MP of source per second, from the upload to the final status."""
    from bench import stack as stack_mod
    from bench.run import catalogue_csv, raise_priority
    from bench.servers import Servers

    spec = corpus_mod.QUICK if quick else corpus_mod.FULL
    corpus = corpus_mod.build(spec, log=False)
    names = [image.name for image in corpus.images]
    servers = Servers(corpus.folder, names)
    work = Path(tempfile.mkdtemp(prefix="bench-renditions-"))
    best: dict[str, float] = {}
    rss: dict[str, float] = {}
    try:
        stack = stack_mod.start(work / "e2e", extra_env=servers.s3_env(), on_start=raise_priority)
        try:
            warm = stack.upload(catalogue_csv([f"{servers.image_base}/warm/{n}" for n in names[:8]]))
            stack.wait_finished(warm["request_id"])
            for attempt in range(repeat):
                for mode, fields in (("full", {}), ("sizes", {"sizes": ",".join(map(str, SIZES))})):
                    urls = [f"{servers.image_base}/r{attempt}-{mode}/{n}" for n in names]
                    start = time.perf_counter()
                    created = stack.upload(catalogue_csv(urls), fields=fields)
                    final = stack.wait_finished(created["request_id"], interval=0.02)
                    seconds = time.perf_counter() - start
                    if final["status"] != "completed":
                        raise RuntimeError(f"{mode}: {final['status']}")
                    log(f"renditions e2e {mode}: {corpus.megapixels / seconds:.1f} MP/s ({seconds:.2f} s)")
                    best[mode] = min(best.get(mode, seconds), seconds)
            # Worker peak RSS on the biggest images (twice over, distinct URLs), as the rss
            # phase of bench/run.py measures it, without and with sizes.
            biggest = max(image.pixels for image in corpus.images)
            big = [image.name for image in corpus.images if image.pixels >= 0.9 * biggest]
            for mode, fields in (("full", {}), ("sizes", {"sizes": ",".join(map(str, SIZES))})):
                urls = [f"{servers.image_base}/rss-{mode}{copy}/{n}" for copy in range(2) for n in big]
                with _WorkerPeak() as peak:
                    created = stack.upload(catalogue_csv(urls), fields=fields)
                    stack.wait_finished(created["request_id"], interval=0.02)
                rss[mode] = peak.mb
                log(f"renditions worker peak RSS {mode}: {peak.mb:.0f} MB on {len(urls)} images")
        finally:
            stack_mod.stop(stack)
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "images": len(names),
        "megapixels": corpus.megapixels,
        "full_mp_per_s": corpus.megapixels / best["full"],
        "sizes_mp_per_s": corpus.megapixels / best["sizes"],
        "ratio": best["full"] / best["sizes"],
        "repeat": repeat,
        "worker_peak_mb": rss,
    }


def run(quick: bool = False, log: Callable[[str], None] = print, *, e2e: bool = True) -> dict[str, Any]:
    configure_pillow()
    opts = CompressOptions()
    repeat = 2 if quick else REPEAT
    sources = big_jpegs(quick)
    results: dict[str, Any] = {"sizes": list(SIZES), "repeat": repeat, "images": [], "options": "quality 50, JPEG"}
    for name, data in sources:
        log(f"renditions: {name}")
        row: dict[str, Any] = {"name": name, "bytes": len(data)}
        row["full_cpu"] = _cpu(lambda data=data: compress(data, opts), repeat)  # type: ignore[misc]
        row["variants"] = {
            variant: _cpu(lambda data=data, kw=kw: render(data, SIZES, opts, **kw), repeat)  # type: ignore[misc]
            for variant, kw in VARIANTS.items()
        }
        row["one_800_cpu"] = _cpu(lambda data=data: render(data, [800], opts), repeat)  # type: ignore[misc]
        row["quality"] = _quality(data, opts)
        results["images"].append(row)

    # Peak RSS on the first source, each in a fresh process.
    work = HERE / "out"
    work.mkdir(parents=True, exist_ok=True)
    path, small = work / "renditions-source.jpg", work / "renditions-small.jpg"
    path.write_bytes(sources[0][1])
    Image.new("RGB", (64, 64), "grey").save(small, "JPEG")
    results["rss_mb"] = {
        "full": _peak_rss("full", path, small),
        "sizes": _peak_rss(",".join(map(str, SIZES)), path, small),
        "800": _peak_rss("800", path, small),
    }
    path.unlink()
    small.unlink()
    log("renditions: throughput over the corpus")
    results["throughput"] = _throughput(quick, opts)
    if e2e:
        log("renditions: end to end, without and with sizes")
        results["e2e"] = run_e2e(quick, 1 if quick else 2, log)
    return results


def summary(r: dict[str, Any]) -> dict[str, Any]:
    images = r["images"]
    full = statistics.fmean(i["full_cpu"] for i in images)
    variants = {v: statistics.fmean(i["variants"][v] for i in images) / full for v in VARIANTS}
    one = statistics.fmean(i["one_800_cpu"] for i in images) / full
    gaps = [q["ideal_score"] - q["score"] for i in images for q in i["quality"]]
    return {"full_cpu": full, "variants": variants, "one_800": one, "worst_gap": max(gaps)}


def markdown(r: dict[str, Any], *, date: str) -> str:
    s = summary(r)
    t = r["throughput"]
    rss = r["rss_mb"]
    lines = [
        MARK_START,
        "## Renditions",
        "",
        f"`python -m bench.renditions` ({date}): {len(r['images'])} JPEGs of the corpus "
        f"({', '.join(i['name'] for i in r['images'])}), {r['options']}, sizes "
        f"{', '.join(map(str, r['sizes']))}; CPU time of this process, best of {r['repeat']}. "
        "One decode per source (a JPEG at the smallest DCT scale covering the largest size), "
        "then each size resized from the one before (imageproc/engine/renditions.py).",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
        _goal("3 sizes / one full-size re-encode (CPU)", s["variants"][DEFAULT_VARIANT], 1.0),
        _goal("one 800 px / one full-size re-encode (CPU)", s["one_800"], 0.4),
        f"| peak RSS growth of one process, 3 sizes vs full size | {rss['sizes']:.0f} MB vs {rss['full']:.0f} MB "
        f"| no higher | {'yes' if rss['sizes'] <= rss['full'] else 'NO'} |",
        *(
            [
                f"| worker peak RSS on the biggest images, with sizes vs without | {w['sizes']:.0f} MB vs "
                f"{w['full']:.0f} MB | no higher | {'yes' if w['sizes'] <= w['full'] else 'NO'} |"
            ]
            if (w := r.get("e2e", {}).get("worker_peak_mb"))
            else []
        ),
        f"| SSIMULACRA2: rendition vs the same encoder on a Lanczos resize of the full decode "
        f"(worst drop) | {s['worst_gap']:.2f} | ≤ 2 | {'yes' if s['worst_gap'] <= 2 else 'NO'} |",
        *(
            [
                f"| end to end, MP of source per second with sizes vs without ({e['images']} images, "
                f"best of {e['repeat']}) | {e['ratio']:.2f}x ({e['sizes_mp_per_s']:.1f} vs "
                f"{e['full_mp_per_s']:.1f} MP/s) | ≥ 1.2x | {'yes' if e['ratio'] >= 1.2 else 'NO'} |"
            ]
            if (e := r.get("e2e"))
            else []
        ),
        f"| source MP per CPU second over the corpus, sizes vs full size (codec only, "
        f"{t['images']} images) | {t['ratio']:.2f}x ({t['sizes_mp_per_cpu_s']:.1f} vs "
        f"{t['full_mp_per_cpu_s']:.1f}) | (≥ 1.2x) | {'yes' if t['ratio'] >= 1.2 else 'NO'} |",
        "",
        *_why(t),
        "",
        f"A full-size re-encode takes {s['full_cpu'] * 1000:.0f} ms of CPU. The ways of resizing, "
        "as CPU against it (the first is the one the service uses):",
        "",
        "| way | 3 sizes / full |",
        "|---|---|",
        *(f"| {v} | {ratio:.2f} |" for v, ratio in s["variants"].items()),
        "",
        f"Peak RSS growth of a fresh process (over its RSS once the codecs are loaded): full size "
        f"{rss['full']:.0f} MB, 3 sizes {rss['sizes']:.0f} MB, 800 px alone {rss['800']:.0f} MB.",
        "",
        "| image | size | rendition | bytes | SSIMULACRA2 | ideal | ideal bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for image in r["images"]:
        for q in image["quality"]:
            lines.append(
                f"| {image['name']} | {q['size']} | {q['width']}x{q['height']} | {q['bytes']} "
                f"| {q['score']:.2f} | {q['ideal_score']:.2f} | {q['ideal_bytes']} |"
            )
    lines += [
        "",
        "'ideal' is the same compress() run on a Lanczos resize of the fully decoded source, "
        "scored against that resize, as the rendition is.",
        MARK_END,
    ]
    return "\n".join(lines)


def _why(t: dict[str, Any]) -> list[str]:
    """Where the sizes cost more than one full-size output, by kind of image."""
    rows = t.get("per_image") or []
    if not rows:
        return []

    def ratio(pick: Callable[[dict[str, Any]], bool]) -> tuple[float, int]:
        chosen = [r for r in rows if pick(r)]
        return (sum(r["sizes"] for r in chosen) / sum(r["full"] for r in chosen), len(chosen)) if chosen else (0, 0)

    big, n_big = ratio(lambda r: r["format"] == "JPEG" and r["megapixels"] >= 6)
    mid, n_mid = ratio(lambda r: r["format"] == "JPEG" and 2.5 <= r["megapixels"] < 6)
    small, n_small = ratio(lambda r: r["format"] == "JPEG" and r["megapixels"] < 2.5)
    png, n_png = ratio(lambda r: r["format"] == "PNG")
    return [
        "Why the throughput goal is missed: CPU of the three sizes against one full-size output, by kind "
        f"of image: JPEG of 6 MP or more {big:.2f}x ({n_big} images), JPEG of 2.5-6 MP {mid:.2f}x ({n_mid}), "
        f"JPEG under 2.5 MP {small:.2f}x ({n_small}), PNG {png:.2f}x ({n_png}). Only a JPEG at least twice "
        "the largest size is decoded smaller, and libjpeg-turbo's scaled decode saves little of the decode "
        "(its entropy decoding is the same at every scale): what is saved is the full-size "
        "encode, and a Lanczos resize and two more encodes are paid instead. A source no larger than 1600 px "
        "costs its full-size output plus the two smaller ones; a PNG is decoded whole. Each output is also "
        "one more upload."
    ]


def _goal(name: str, measured: float, target: float) -> str:
    return f"| {name} | {measured:.2f}x | ≤ {target:.1f}x | {'yes' if measured <= target else 'NO'} |"


def publish(r: dict[str, Any], folder: Path, *, date: str) -> Path:
    """The section into folder/results.md (replacing an earlier one), the figures into
    folder/results.json's "renditions"."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.md"
    text = path.read_text() if path.is_file() else ""
    section = markdown(r, date=date)
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    path.write_text(text)
    figures = folder / "results.json"
    data = json.loads(figures.read_text()) if figures.is_file() else {}
    data["renditions"] = r
    figures.write_text(json.dumps(data, indent=1, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    r = run(args.quick)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    path = publish(r, HERE / "out" if args.quick else HERE, date=date)
    print(markdown(r, date=date))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
