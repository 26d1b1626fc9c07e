"""Concurrent clients through ``agentspark serve`` with the official openai client: all at once
against the same requests one after another, on one server.

Starts ``agentspark serve`` (a subprocess; its own flags after ``--``) on a free loopback port,
waits for /health, then:

  chats     --chats N greedy chat requests (eval prompts' first turns, --max-tokens each): N
            threads at once, then the same N in turn; wall times, ratio, and each concurrent
            output equal to its sequential one
  sessions  --sessions N agent sessions of the demo's three tasks, each its own sum (tool calls through the openai
            client's tools/tool_choice, the tools run here: calculator, read_file on the demo's
            notes): N threads at once, then in turn; wall times, ratio, identical transcripts

Each pass also reports where the server's batch engine spent it (``engine_concurrent`` and
``engine_sequential``, from /metrics' agentspark_engine_* counters): rounds, rows per round,
milliseconds per round of admission (prefill), drafting (of it: grammar masks), the runner and
committing, and how busy the engine's thread was over the pass.

Prints one JSON object (also to --out) and exits 1 when an output differs.

    python examples/serve_concurrency.py --chats 4 -- --slots 4 --drafter auto
    python examples/serve_concurrency.py --sessions 16 --chats 0 -- --slots 16 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from openai import OpenAI

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names

from agentspark.commands.demo import NOTES, TASKS  # noqa: E402
from agentspark.tools.builtin.arithmetic import evaluate  # noqa: E402 (an AST walk, never eval)

SYSTEM = "You are a helpful assistant. Use the tools when asked."
TOOLS = [
    {"type": "function", "function": {"name": "calculator", "description": "Evaluate an arithmetic expression.",
                                      "parameters": {"type": "object", "required": ["expression"],
                                                     "properties": {"expression": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "read_file", "description": "Read a text file of the workspace.",
                                      "parameters": {"type": "object", "required": ["path"],
                                                     "properties": {"path": {"type": "string"}}}}},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, serve_args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agentspark.cli", "serve", "--port", str(port), "--close-forced-calls",
           "--log-level", "warning", *serve_args]
    print(f"starting: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 600
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the server did not come up") from None
            time.sleep(0.5)


def chat(client: OpenAI, model: str, question: str, max_tokens: int) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                       max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content or ""


def run_tool(name: str, args: dict) -> str:
    if name == "calculator":
        return str(evaluate(str(args.get("expression", ""))))
    if name == "read_file":
        return NOTES if Path(str(args.get("path", ""))).name == "notes.txt" else "error: no such file"
    return f"error: no tool {name}"


def session(client: OpenAI, model: str, max_tokens: int, index: int) -> list[str]:
    """The demo's tasks as one conversation (session ``index`` asks its own sum, so no session's
    conversation is another's: prefix reuse across sessions gets the shared system prompt and tools
    only, concurrent or not); up to 3 model rounds per task, tools run here. The transcript: every
    assistant message and tool result, in order."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    transcript: list[str] = []
    tasks = [(TASKS[0][0].replace("91011", str(91011 + index)), TASKS[0][1]), *TASKS[1:]]
    for task, choice in tasks:
        messages.append({"role": "user", "content": task})
        for round_index in range(3):
            forced = choice != "auto" and round_index == 0
            r = client.chat.completions.create(
                model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=max_tokens,
                tool_choice={"type": "function", "function": {"name": choice}} if forced else "auto")
            msg = r.choices[0].message
            calls = msg.tool_calls or []
            transcript.append(json.dumps({"content": msg.content, "calls": [[c.function.name, c.function.arguments]
                                                                          for c in calls]}))
            messages.append({"role": "assistant", "content": msg.content or "",
                             **({"tool_calls": [c.model_dump() for c in calls]} if calls else {})})
            if not calls:
                break
            for c in calls:
                try:
                    result = run_tool(c.function.name, json.loads(c.function.arguments or "{}"))
                except (ValueError, TypeError) as exc:
                    result = f"error: {exc}"
                transcript.append(result)
                messages.append({"role": "tool", "tool_call_id": c.id, "content": result})
    return transcript


def engine_counters(metrics_text: str) -> dict[str, float]:
    """The batch engine's clock from /metrics (agentspark_engine_*; empty without a batch engine)."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("agentspark_engine_"):
            key, value = line.rsplit(" ", 1)
            out[key.removeprefix("agentspark_engine_").replace('seconds_total{part="', "").replace('"}', "_s")
                .removesuffix("_total")] = float(value)
    return out


def engine_profile(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Where the engine's thread spent one pass: per-round ms of each part, rows per round, and
    how busy the thread was (its parts over the pass's wall time: low means the engine waited for
    requests, so the time went elsewhere: HTTP, templates, the clients)."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    if not d:
        return {}
    rounds = max(1.0, d["rounds"])
    parts = ("admit_s", "draft_s", "runner_s", "commit_s")  # mask_s is inside draft_s
    return {"rounds": d["rounds"], "admissions": d["admissions"], "rows_per_round": d["rows"] / rounds,
            **{f"{k[:-2]}_ms_per_round": 1e3 * d[k] / rounds for k in (*parts, "mask_s")},
            **{f"{k[:-2]}_s": d[k] for k in (*parts, "mask_s")},
            "engine_busy": sum(d[k] for k in parts) / wall_s}


def compare(name: str, n: int, work, counters=dict) -> dict:  # noqa: ANN001 (callables)
    # warm-up: all n at once, so the row counts the timed concurrent pass meets have their graphs
    # captured (run 24 warmed up with one request, and its concurrent chats paid the captures)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(work, range(n)))
    c0, t0 = counters(), time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        together = list(pool.map(work, range(n)))
    concurrent_s = time.perf_counter() - t0
    c1, t0 = counters(), time.perf_counter()
    alone = [work(i) for i in range(n)]
    sequential_s = time.perf_counter() - t0
    c2 = counters()
    same = sum(a == b for a, b in zip(together, alone))
    out = {"n": n, "concurrent_s": concurrent_s, "sequential_s": sequential_s,
           "speedup": sequential_s / concurrent_s, "identical": same,
           "engine_concurrent": engine_profile(c0, c1, concurrent_s),
           "engine_sequential": engine_profile(c1, c2, sequential_s)}
    print(f"[{name}] {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    argv = sys.argv[1:]
    serve_args = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chats", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "serve_concurrency.json"))
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    from agentspark.commands.bench import _mixed
    from agentspark.datasets import load_prompts

    questions = [r.turns[0] for r in _mixed(load_prompts(), max(1, args.chats))]
    port = free_port()
    proc = start_server(port, serve_args)
    result: dict = {"command": "python examples/serve_concurrency.py " + " ".join(argv), "serve_args": serve_args,
                    "machine": platform.processor() or platform.machine(), "max_tokens": args.max_tokens}
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id

        def counters() -> dict[str, float]:
            return engine_counters(httpx.get(f"http://127.0.0.1:{port}/metrics").text)

        if args.chats:
            result["chats"] = compare("chats", args.chats, lambda i: chat(client, model, questions[i], args.max_tokens),
                                      counters)
        if args.sessions:
            result["sessions"] = compare("sessions", args.sessions,
                                         lambda i: session(client, model, args.max_tokens, i), counters)
        result["metrics"] = [line for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines()
                             if line.startswith(("agentspark_tau", "agentspark_requests_total",
                                                 "agentspark_prefill_tokens_reused_total", "agentspark_prompt_tokens_total"))]
    finally:
        proc.terminate()
        proc.wait(30)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    parts = [result[k] for k in ("chats", "sessions") if k in result]
    return 0 if all(p["identical"] == p["n"] for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
