"""``segbench serve-load url=http://127.0.0.1:8000 size=256x256 requests=100 concurrency=4``:
requests per second and latency of a running ``segbench serve``, bounded in count and time.

Posts synthetic images (random pixels, seeded, PNG) of one size to ``POST /predict`` from
``concurrency`` threads (standard library only) and prints requests/s, the latency median and
95th percentile, and the errors; ``out=FILE`` also writes them as JSON.
"""

from __future__ import annotations

import io
import json
import statistics
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from segbench.deploy.args import parse_key_values

__all__ = ["load_test", "main"]

OWN = {
    "url": ("http://127.0.0.1:8000", "the server's base URL"),
    "size": ("256x256", "HxW of the posted images"),
    "requests": (100, "requests to send"),
    "concurrency": (4, "requests in flight at once"),
    "timeout_s": (120.0, "stop sending after this many seconds"),
    "out": ("", "also write the results as JSON here"),
}


def _multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load_test(url: str, size: tuple[int, int], requests: int, concurrency: int, timeout_s: float):
    """Send ``requests`` posts (at most ``timeout_s`` seconds of them); returns the figures."""
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(min(requests, 8)):  # a few distinct images, reused
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
        bodies.append(_multipart(buffer.getvalue(), f"load{i}.png"))
    deadline = time.perf_counter() + timeout_s
    latencies: list[float] = []
    errors: list[str] = []

    def one(i: int) -> None:
        if time.perf_counter() > deadline:
            return
        body, boundary = bodies[i % len(bodies)]
        request = urllib.request.Request(
            url.rstrip("/") + "/predict",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=max(1.0, deadline - start + 30)) as r:
                r.read()
            latencies.append(time.perf_counter() - start)
        except (urllib.error.URLError, OSError) as err:
            errors.append(str(err))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return {
        "url": url,
        "size": list(size),
        "requests_sent": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "concurrency": concurrency,
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall if wall > 0 else float("nan"),
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p95_s": _percentile(latencies, 95),
        "latency_mean_s": statistics.fmean(latencies) if latencies else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    """``segbench serve-load``: 0 when every request succeeded, 1 otherwise."""
    args = parse_key_values(
        "serve-load", "Requests/s and latency of a running segbench serve.", OWN, argv, required=()
    )
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: size={args.size}: expected HxW, e.g. 360x480") from None
    if args.requests < 1 or args.concurrency < 1:
        raise SystemExit("error: requests= and concurrency= must be >= 1")
    r = load_test(args.url, (h, w), args.requests, args.concurrency, args.timeout_s)
    print(
        f"{r['ok']} of {r['requests_sent']} requests ok ({h}x{w}, concurrency "
        f"{r['concurrency']}): {r['requests_per_s']:.2f} requests/s, latency p50 "
        f"{1000 * r['latency_p50_s']:.0f} ms, p95 {1000 * r['latency_p95_s']:.0f} ms"
    )
    if r["errors"]:
        print(f"{r['errors']} errors, first: {r['first_error']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
    return 0 if r["errors"] == 0 and r["ok"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
