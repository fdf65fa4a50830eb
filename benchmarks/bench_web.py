"""What the request-audit middleware costs: requests/s and p50/p99 latency, with and without it.

For each target (``asgi``: a Starlette endpoint under uvicorn; ``flask``: a
Flask endpoint under waitress; ``django``: a Django view under waitress) the
same minimal endpoint (``GET /items/{item_id}``, a few bytes of text) is
served by the same server, once without and once with the middleware, in
alternating rounds in one run; both server processes configure otel-audit
against the same PostgreSQL, so the only difference is the middleware and
the record it seals per request. Clients are separate processes with
keep-alive connections. Reports medians over the rounds, the throughput
ratio and the added microseconds per request (from p50, and from 1/throughput).

    python benchmarks/bench_web.py [--targets asgi,flask,django] [--seconds 5] [--rounds 3]

Database: ``OTEL_AUDIT_BENCH_DSN`` or an embedded PostgreSQL. The machine is
shared and has 2 cores (server and clients compete): read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fresh_schema, median, report, where


# ----------------------------------------------------------------------------- server side
def _configure(dsn: str) -> None:
    import logging

    import otel_audit

    otel_audit.configure(dsn, service_name="bench-web", metrics=False, spool_dir=tempfile.mkdtemp())
    logging.getLogger("otel_audit").setLevel(logging.ERROR)


def serve(target: str, audited: bool, port: int, dsn: str) -> None:
    import signal

    # SIGTERM ends the server through SystemExit, so that configure()'s exit hook commits what is
    # still spooled (the default SIGTERM action kills the process without it: the records would
    # wait in the spool for the next process using it, which here never comes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _configure(dsn)
    if target == "asgi":
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def item(request: object) -> PlainTextResponse:
            return PlainTextResponse("item\n")

        app = Starlette(routes=[Route("/items/{item_id}", item)])
        if audited:
            from otel_audit.web.asgi import AuditMiddleware

            app.add_middleware(AuditMiddleware)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="off")
    elif target == "flask":
        import flask
        from waitress import serve as waitress_serve

        app = flask.Flask("bench")

        @app.get("/items/<item_id>")
        def item(item_id: str) -> str:
            return "item\n"

        if audited:
            from otel_audit.web.flask import FlaskAudit

            FlaskAudit(app)
        waitress_serve(app, host="127.0.0.1", port=port, threads=4, _quiet=True)
    elif target == "django":
        import django
        from django.conf import settings
        from django.http import HttpResponse
        from django.urls import path

        def item(request: object, item_id: str) -> HttpResponse:
            return HttpResponse("item\n")

        sys.modules[__name__].urlpatterns = [path("items/<str:item_id>", item)]  # type: ignore[attr-defined]
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="bench",
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=["otel_audit.web.django.AuditMiddleware"] if audited else [],
        )
        django.setup()
        from django.core.wsgi import get_wsgi_application
        from waitress import serve as waitress_serve

        waitress_serve(get_wsgi_application(), host="127.0.0.1", port=port, threads=4, _quiet=True)
    else:
        raise SystemExit(f"unknown target {target}")


# ----------------------------------------------------------------------------- client side
def _client(port: int, seconds: float, connections: int, queue: multiprocessing.Queue) -> None:
    import threading

    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        i = 0
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            conn.request("GET", f"/items/{n}-{i}")
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            i += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(latencies)


def load(port: int, seconds: float, clients: int, connections: int) -> tuple[float, float, float, int]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_client, args=(port, seconds, connections, queue)) for _ in range(clients)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    latencies: list[float] = []
    for _ in procs:
        latencies.extend(queue.get())
    for p in procs:
        p.join()
    elapsed = max(time.perf_counter() - started, seconds)
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, p50 * 1e6, p99 * 1e6, len(latencies)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(target: str, audited: bool, dsn: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", target, "--port", str(port), "--dsn", dsn]
        + (["--audited"] if audited else []),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/items/warm")
            conn.getresponse().read()
            conn.close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{target} server did not start")


def bench(target: str, seconds: float, rounds: int, clients: int, connections: int) -> None:
    dsn = fresh_schema()
    servers = {audited: start(target, audited, dsn) for audited in (False, True)}
    results: dict[bool, list[tuple[float, float, float, int]]] = {False: [], True: []}
    audited_requests = 1  # the start-up probe
    try:
        for audited in (False, True):
            warm = load(servers[audited][1], 1.0, clients, connections)
            audited_requests += warm[3] if audited else 0
        for _ in range(rounds):
            for audited in (False, True):
                results[audited].append(load(servers[audited][1], seconds, clients, connections))
        audited_requests += sum(r[3] for r in results[True])
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    with __import__("psycopg").connect(dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM audit_logs").fetchone()[0]
    base_rps, base_p50, base_p99 = (median([r[i] for r in results[False]]) for i in range(3))
    aud_rps, aud_p50, aud_p99 = (median([r[i] for r in results[True]]) for i in range(3))
    report(
        f"{target}: GET /items/{{item_id}}, {clients}x{connections} keep-alive connections, "
        f"{rounds} alternating rounds of {seconds:g} s ({where()})",
        [
            ("without middleware", f"{base_rps:8.0f} req/s   p50 {base_p50:7.0f} µs   p99 {base_p99:7.0f} µs"),
            ("with middleware", f"{aud_rps:8.0f} req/s   p50 {aud_p50:7.0f} µs   p99 {aud_p99:7.0f} µs"),
            ("throughput ratio", f"{aud_rps / base_rps:.3f}"),
            (
                "added per request",
                f"{aud_p50 - base_p50:+.0f} µs at p50; "
                f"{1e6 / aud_rps - 1e6 / base_rps:+.0f} µs of server time (1/throughput)",
            ),
            ("records stored", f"{stored} for {audited_requests} audited requests (warm-up included)"),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="asgi,flask,django")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections per client process")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--audited", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.audited, args.port, args.dsn)
        return
    for target in args.targets.split(","):
        bench(target, args.seconds, args.rounds, args.clients, args.connections)


if __name__ == "__main__":
    main()
