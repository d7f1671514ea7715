"""The status board holding 10,000 open incidents: how fast it answers `/api/v1/incidents`.

On the embedded broker: an alerts topic filled with `--incidents` open
incidents (one service each, `--buckets` firing messages per incident, so
each has that many sparkline points) and `--resolved` resolved ones; then
`stream-detector board` started as its own process (the client here does not
share its interpreter), timed until `/readyz` (the rebuild of the view from
the topic), and its answers timed from this process, one connection per
request as a browser or curl makes them:

- `/api/v1/incidents?status=open` (all 10,000) as the first request after the
  view changed (one more firing message produced, and the board seen to have
  applied it), so the server's answer cache, emptied by the change, cannot
  serve it: the cost of building and encoding the answer;
- the same request again: what polling clients get while nothing changes;
- `/api/v1/board`, the page's feed (the first 200 rows of each list);
- `/healthz`, the baseline: a connection and an answer with nothing to compute.

Requests alternate between the four, `--rounds` each; medians, 95th
percentiles and maxima, in milliseconds, and the board's memory (RSS).

    python bench/board.py [--incidents 10000] [--buckets 10] [--resolved 1000] [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time

import orjson
from aiokafka import AIOKafkaProducer
from kafka_bench import fill_topic

from stream_detector.core.times import iso_utc
from stream_detector.embedded import EmbeddedBroker, free_port

T0 = 1_767_571_200_000
MINUTE = 60_000


def alerts(incidents: int, buckets: int, resolved: int):
    """(service, message) for each alert, in the order a detector sends them."""
    for k in range(incidents + resolved):
        service = f"service-{k:05d}"
        start = T0 + (k % 600) * MINUTE
        base = {"alert_id": f"{service}/*/{iso_utc(start)}", "service": service,
                "region": None, "started_at": iso_utc(start), "bucket_seconds": 60,
                "score": 1.0, "regions": [["US", 300], ["GB", 80], ["DE", 41]],
                "problems": [["login", 250], ["app", 120], ["website", 51]]}
        for b in range(buckets):
            yield service, orjson.dumps({
                **base, "status": "firing", "severity": "critical" if b else "warning",
                "ended_at": None, "bucket_start": iso_utc(start + b * MINUTE),
                "reports": 40 + 7 * b, "expected": 6.5})
        if k >= incidents:
            end = iso_utc(start + buckets * MINUTE)
            yield service, orjson.dumps({
                **base, "status": "resolved", "severity": "critical", "ended_at": end,
                "bucket_start": end, "reports": 5, "expected": 6.5})


async def send(bootstrap: str, service: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait("alerts", value, key=service.encode())
    finally:
        await producer.stop()


def change_view(bootstrap: str, port: int, k: int, buckets: int) -> None:
    """One more firing message of an open incident; returns once the board has it."""
    version = orjson.loads(get(port, "/api/v1/board")[2])["version"]
    service = f"service-{k:05d}"
    start = T0 + (k % 600) * MINUTE
    asyncio.run(send(bootstrap, service, orjson.dumps({
        "alert_id": f"{service}/*/{iso_utc(start)}", "status": "firing", "service": service,
        "region": None, "severity": "critical", "started_at": iso_utc(start), "ended_at": None,
        "bucket_start": iso_utc(start + (buckets + 1) * MINUTE), "bucket_seconds": 60,
        "reports": 99, "expected": 6.5, "score": 1.0, "regions": [["US", 300]],
        "problems": [["login", 250]]})))
    deadline = time.monotonic() + 30
    while orjson.loads(get(port, "/api/v1/board")[2])["version"] == version:
        if time.monotonic() > deadline:
            raise SystemExit("the board did not apply a new message within 30 s")
        time.sleep(0.01)


def get(port: int, path: str) -> tuple[float, int, bytes]:
    """Milliseconds for one request and its whole answer, the status and the body."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return (time.perf_counter() - started) * 1000, response.status, body


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):7.1f}  p95 {p95:7.1f}  max {ordered[-1]:7.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--buckets", type=int, default=10)
    parser.add_argument("--resolved", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    total = (args.incidents + args.resolved) * args.buckets + args.resolved

    with EmbeddedBroker() as broker, tempfile.TemporaryFile() as log:
        bootstrap = broker.bootstrap_servers
        filling = time.perf_counter()
        asyncio.run(fill_topic(bootstrap, "alerts", 3,
                               alerts(args.incidents, args.buckets, args.resolved), total))
        print(f"\r{total:,} alert messages on the topic in "
              f"{time.perf_counter() - filling:.1f} s", file=sys.stderr)

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_DETECTOR_")}
        started = time.perf_counter()
        board = subprocess.Popen(
            [sys.executable, "-m", "stream_detector", "board", "--bootstrap-servers", bootstrap,
             "--port", str(port), "--host", "127.0.0.1", "--log-format", "json"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            while True:
                try:
                    if get(port, "/readyz")[1] == 200:
                        break
                except OSError:
                    pass
                if board.poll() is not None or time.perf_counter() - started > 300:
                    log.seek(0)
                    print(log.read().decode(), file=sys.stderr)
                    raise SystemExit("the board did not become ready")
                time.sleep(0.05)
            ready_s = time.perf_counter() - started
            _, status, body = get(port, "/api/v1/incidents?status=open")
            assert status == 200
            count, size = len(orjson.loads(body)["incidents"]), len(body)
            print(f"board ready (view rebuilt from the topic) {ready_s:.1f} s after start; "
                  f"RSS {rss_mb(board.pid):.0f} MB; {count:,} open incidents, "
                  f"answer {size / 1e6:.1f} MB")

            timings: dict[str, list[float]] = {"uncached": [], "cached": [], "board": [],
                                               "healthz": []}
            for i in range(args.rounds):
                change_view(bootstrap, port, i, args.buckets + i)
                timings["uncached"].append(get(port, "/api/v1/incidents?status=open")[0])
                timings["cached"].append(get(port, "/api/v1/incidents?status=open")[0])
                timings["board"].append(get(port, "/api/v1/board")[0])
                timings["healthz"].append(get(port, "/healthz")[0])
            labels = {
                "uncached": "/api/v1/incidents?status=open, after a change",
                "cached": "/api/v1/incidents?status=open, unchanged",
                "board": "/api/v1/board (page feed), unchanged",
                "healthz": "/healthz (baseline)",
            }
            print(f"{args.rounds} requests each, ms:")
            for key, label in labels.items():
                print(f"  {label:<46} {summary(timings[key])}")
            print(f"board RSS after: {rss_mb(board.pid):.0f} MB")
        finally:
            board.terminate()
            board.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
