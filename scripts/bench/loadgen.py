"""A small closed-loop HTTP/1.1 load generator: `python -m scripts.bench.loadgen URL ...`.

C keep-alive connections each send one request, read the whole response, and send the next,
until N requests are done; prints one JSON line (requests/s, latency percentiles in ms, errors).
Raw asyncio streams (uvloop when installed) instead of an HTTP client library, so the generator
costs a fraction of the server it loads and both servers see the same byte-identical requests.
Run as its own process so it never shares an interpreter (or a GIL) with the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (fraction 0.99 for p99)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _connection(
    host: str, port: int, request: bytes, budget: list[int], latencies: list[float]
) -> int:
    """Send requests until the shared budget is spent; returns how many were not 2xx."""
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while budget[0] > 0:
            budget[0] -= 1
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            if not 200 <= status < 300:
                errors += 1
    finally:
        writer.close()
    return errors


async def load(url: str, body: bytes, requests: int, connections: int) -> dict[str, float]:
    """POST `body` to `url` `requests` times over `connections` keep-alive connections."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    budget, latencies = [requests], []
    began = time.perf_counter()
    errors = await asyncio.gather(
        *(_connection(host, port, request, budget, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * latencies[-1] if latencies else float("nan"),
        "errors": sum(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--body", default="{}")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    result = runner(load(args.url, args.body.encode(), args.requests, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
