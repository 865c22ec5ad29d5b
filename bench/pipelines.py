"""The two references our pipeline is measured against.

- The codec limit: tuned Pillow (the block allocator settings every worker of ours uses)
  decoding and re-encoding the in-memory images at quality 50 in 2 processes, nothing
  else. No pipeline on this machine can beat it by much.
- The naive reference: the original design's algorithm — for each image: GET, open,
  convert to RGB, save at quality 50, upload; one after another.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

import requests
from PIL import Image

from bench.corpus import Corpus, CorpusImage
from imageproc.engine.compress import configure_pillow

_ctx = mp.get_context("fork")


@dataclass
class Run:
    seconds: float
    megapixels: float
    images: int
    out_bytes: int = 0
    in_bytes: int = 0
    ratios: list[float] | None = None
    cpu_seconds: float = 0.0

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def pillow_q50(data: bytes) -> bytes:
    """Plain Pillow: what the naive reference and the codec limit do to one image."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=50)
    return buf.getvalue()


def _balanced(images: list[CorpusImage], parts: int) -> list[list[int]]:
    # Longest job first onto the least loaded part: both processes end together.
    loads = [0] * parts
    split: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(images)), key=lambda i: -images[i].pixels):
        part = loads.index(min(loads))
        split[part].append(index)
        loads[part] += images[index].pixels
    return split


def _codec_worker(corpus: Corpus, indexes: list[int], barrier: Any, results: Any) -> None:
    configure_pillow()  # the allocator settings of our workers: the limit is tuned Pillow
    blobs = [corpus.read(corpus.images[i]) for i in indexes]
    pillow_q50(blobs[0])  # warm the codec
    barrier.wait()
    cpu = time.process_time()
    start = time.perf_counter()
    sizes = [len(pillow_q50(blob)) for blob in blobs]
    end = time.perf_counter()
    results.put((start, end, list(zip(indexes, sizes, strict=True)), time.process_time() - cpu))


def codec_limit(corpus: Corpus, *, processes: int = 2) -> Run:
    """Decode + encode (quality 50) of the in-memory corpus in `processes` processes."""
    barrier = _ctx.Barrier(processes)
    results = _ctx.Queue()
    workers = [
        _ctx.Process(target=_codec_worker, args=(corpus, part, barrier, results))
        for part in _balanced(corpus.images, processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    start = min(o[0] for o in outcomes)
    end = max(o[1] for o in outcomes)
    sizes = dict(pair for o in outcomes for pair in o[2])
    ratios = [sizes[i] / image.bytes for i, image in enumerate(corpus.images)]
    return Run(
        seconds=end - start,
        megapixels=corpus.megapixels,
        images=len(corpus.images),
        out_bytes=sum(sizes.values()),
        in_bytes=corpus.total_bytes,
        ratios=ratios,
        cpu_seconds=sum(o[3] for o in outcomes),
    )


def naive(corpus: Corpus, urls: list[str], s3: Any, bucket: str, prefix: str) -> Run:
    """GET, open, convert RGB, save quality 50, upload — one image after another."""
    out_bytes = 0
    start = time.perf_counter()
    for url in urls:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        with Image.open(io.BytesIO(response.content)) as im:
            rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=50)
        key = f"{prefix}/{os.path.basename(url)}.jpg"
        s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue(), ContentType="image/jpeg")
        out_bytes += buf.tell()
    seconds = time.perf_counter() - start
    return Run(
        seconds=seconds,
        megapixels=corpus.megapixels,
        images=len(urls),
        out_bytes=out_bytes,
        in_bytes=corpus.total_bytes,
    )
