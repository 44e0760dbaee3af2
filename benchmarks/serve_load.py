"""Load test of ``varattn serve``: N requests from C concurrent clients against a real local server.

It starts ``varattn serve RUN`` as its own process on a free loopback port, waits for it, then C client threads
send N requests in all (``translate`` of the run's validation sentences, ``align`` of its validation pairs, or
both in turn) and it reports the latency percentiles, the failures by status, and the server's memory (resident
size after loading, its peak and at the end, from /proc on Linux). Only the standard library talks HTTP here.

    python benchmarks/serve_load.py runs/var-enum                       # 200 requests, 8 clients, both kinds
    python benchmarks/serve_load.py runs/var-enum --requests 50 --clients 4 --kind align --json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, key: str = "VmRSS") -> float | None:
    """The resident size (``VmRSS``) or its peak (``VmHWM``) of a process in MB, from /proc; None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def request(url: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:  # refused, reset, timed out
        return 0, str(exc).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a translation run directory")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--kind", choices=["translate", "align", "both"], default="both")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=1, help="the server's --concurrency")
    p.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds in all")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "varattn", "serve", args.run, "--port", str(port), "--device",
                               "cpu", "--threads", str(args.threads), "--concurrency", str(args.concurrency),
                               "--max-queue", str(args.max_queue)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            status, body = request(base + "/api/runs", timeout=2)
            if status == 200:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start: {server.stderr.read() if server.poll() is not None else ''}")
            time.sleep(0.2)
        run = json.loads(body)["runs"][0]["name"]
        loaded_mb = rss_mb(server.pid)
        examples = json.loads(request(f"{base}/api/examples?run={run}")[1])["examples"] or [{"src": "a", "tgt": "a"}]
        jobs = []
        for k in range(args.requests):
            ex = examples[k % len(examples)]
            kind = args.kind if args.kind != "both" else ("translate", "align")[k % 2]
            body = {"run": run, "src": ex["src"]}
            body.update({"beam": args.beam} if kind == "translate" else {"tgt": ex["tgt"]})
            jobs.append((kind, body))
        latencies: dict[str, list[float]] = {"translate": [], "align": []}
        failures: dict[str, int] = {}
        lock = threading.Lock()
        memory = {"peak_sampled": loaded_mb or 0.0}
        done = threading.Event()
        stop_at = time.monotonic() + args.timeout

        def sample():
            while not done.wait(0.2):
                now = rss_mb(server.pid)
                if now is not None:
                    memory["peak_sampled"] = max(memory["peak_sampled"], now)

        def client(worker: int):
            for k in range(worker, len(jobs), args.clients):
                if time.monotonic() > stop_at:
                    with lock:
                        failures["not sent (time limit)"] = failures.get("not sent (time limit)", 0) + 1
                    continue
                kind, body = jobs[k]
                start = time.perf_counter()
                status, _ = request(f"{base}/api/{kind}", body)
                elapsed = time.perf_counter() - start
                with lock:
                    if status == 200:
                        latencies[kind].append(elapsed)
                    else:
                        failures[str(status)] = failures.get(str(status), 0) + 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        done.set()
        report = {
            "requests": args.requests, "clients": args.clients, "kind": args.kind, "beam": args.beam,
            "server": {"concurrency": args.concurrency, "max_queue": args.max_queue, "threads": args.threads},
            "ok": sum(len(v) for v in latencies.values()), "failed": failures, "wall_s": round(wall, 2),
            "requests_per_s": round(sum(len(v) for v in latencies.values()) / wall, 2),
            "latency_ms": {}, "memory_mb": {"after_loading": loaded_mb, "peak_sampled": memory["peak_sampled"],
                                            "peak_vmhwm": rss_mb(server.pid, "VmHWM"), "end": rss_mb(server.pid)},
            "cpus": os.cpu_count(),
        }
        for kind, values in latencies.items():
            if values:
                report["latency_ms"][kind] = {
                    "n": len(values), "mean": round(1000 * statistics.fmean(values), 1),
                    **{f"p{q}": round(1000 * percentile(values, q), 1) for q in (50, 90, 95, 99)},
                    "max": round(1000 * max(values), 1)}
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['ok']} of {args.requests} requests answered in {report['wall_s']} s "
              f"({report['requests_per_s']}/s) by {args.clients} clients; failures: {failures or 'none'}")
        for kind, lat in report["latency_ms"].items():
            print(f"  {kind:9s} n={lat['n']:4d}  p50 {lat['p50']} ms  p90 {lat['p90']} ms  p99 {lat['p99']} ms  "
                  f"max {lat['max']} ms")
        m = report["memory_mb"]
        print(f"  server memory: {m['after_loading']} MB loaded, peak {m['peak_vmhwm']} MB, {m['end']} MB at the end")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
