"""Measure what a big request without an API key costs the server: time to its 401, /health
latency meanwhile, and the server's memory growth (README, "Security").

    python examples/measure_server_body_guard.py [--mb 45] [--with-key]

Starts `create_app` over a ScriptedBackend with a key in a child process on 127.0.0.1 (so its
memory is its own), polls /health every 20 ms from a thread, and POSTs a chat body of about
--mb MB made of many small messages (the expensive shape for a parser and a validator) with no
Authorization header (--with-key: with the key, for a body under the cap, which is then parsed
and validated). Prints one JSON object. Run it against another checkout by putting that
checkout first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

KEY = "sk-measure"


def serve(port: int) -> None:
    import uvicorn

    from agentspark.backends.scripted import ScriptedBackend
    from agentspark.server import create_app

    app = create_app(ScriptedBackend(["ok"] * 1000), model_name="measure", api_key=KEY)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def big_body(mb: float) -> bytes:
    message = {"role": "user", "content": "x" * 16}
    one = len(json.dumps(message)) + 2
    return json.dumps({"messages": [message] * int(mb * 1e6 / one)}).encode()


def poll_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(timeout=120) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            http.get(f"{url}/health").raise_for_status()
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)


def measure(mb: float, with_key: bool = False) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        body = big_body(mb)
        rss_before = rss_mb(child.pid)
        stop, latencies = threading.Event(), []
        poller = threading.Thread(target=poll_health, args=(url, stop, latencies), daemon=True)
        poller.start()
        time.sleep(0.3)  # a few quiet polls first
        t0 = time.perf_counter()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {KEY}"} if with_key else {})}
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=300)
        seconds = time.perf_counter() - t0
        time.sleep(0.3)
        stop.set()
        poller.join(timeout=120)
        return {
            "body_mb": round(len(body) / 1e6, 1), "status": r.status_code, "seconds_to_response": round(seconds, 3),
            "health_max_latency_s": round(max(latencies), 3), "health_polls": len(latencies),
            "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_mb(child.pid), 1),
            "server_peak_rss_mb": round(rss_mb(child.pid, "VmHWM"), 1),
        }
    finally:
        child.terminate()
        child.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=45.0, help="body size in MB (default: 45)")
    parser.add_argument("--with-key", action="store_true", help="send the key (the body is then parsed)")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    print(json.dumps(measure(args.mb, args.with_key)))


if __name__ == "__main__":
    main()
