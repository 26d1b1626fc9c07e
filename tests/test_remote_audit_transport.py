"""``agentspark audit --base-url``: ``--retries``, ``--timeout`` and ``--concurrency`` reach the
servers through the remote backend, over loopback against a small OpenAI-shaped stub.

Each with a negative control: a first attempt answered with HTTP 503 (Retry-After 0) is that
request's ERROR with ``--retries 0`` and identical with ``--retries 1``; an answer slower than
``--timeout 1`` is an ERROR (ReadTimeout), the same answer under the default timeout identical;
``--concurrency 2`` keeps at most 2 requests in flight at each server, where ``--concurrency 4``
reaches more. (A timed-out attempt sent again is tests/test_remote_backend.py's.)"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentspark.cli import main
from agentspark.server import serve_in_thread
from test_remote_audit_logprobs import completion, echo

SLOW_S = 2.0  # a slow first attempt; --timeout below (1 s) is well under it


@dataclass
class Stub:
    """One server: the first attempt at each prompt fails as ``first`` says ("503": HTTP 503
    with Retry-After 0; "slow": answered after SLOW_S), later ones are answered after ``delay``.
    Counts the attempts per prompt and the most requests in flight at once."""

    first: str | None = None
    delay: float = 0.0
    attempts: Counter = field(default_factory=Counter)
    in_flight: int = 0
    peak: int = 0


def stub_app(stub: Stub) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "stub", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        stub.attempts[prompt] += 1
        stub.in_flight += 1  # one event loop: no lock needed
        stub.peak = max(stub.peak, stub.in_flight)
        try:
            if stub.attempts[prompt] == 1 and stub.first == "503":
                return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503,
                                    headers={"Retry-After": "0"})
            await asyncio.sleep(SLOW_S if stub.attempts[prompt] == 1 and stub.first == "slow" else stub.delay)
            return completion(body, echo(prompt))
        finally:
            stub.in_flight -= 1

    return app


def audit(capsys, tmp_path: Path, candidate: Stub, reference: Stub, n: int, *extra: str) -> tuple[int, str, dict]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [f"p{i}"], "dataset": "t"}) + "\n" for i in range(n)))
    out_file = tmp_path / "audit.json"
    with serve_in_thread(stub_app(candidate)) as candidate_url, serve_in_thread(stub_app(reference)) as reference_url:
        code = main(["audit", "--base-url", candidate_url, "--reference-url", reference_url, "--prompts", str(prompts),
                     "--out", str(out_file), *extra])
    out, err = capsys.readouterr()
    assert out_file.exists(), out + err  # exit 2 (a user mistake) writes no report
    return code, out + err, json.loads(out_file.read_text())


def test_retries_reach_the_servers(tmp_path, capsys):
    code, out, report = audit(capsys, tmp_path, Stub(first="503"), Stub(), 2, "--retries", "0")
    assert code == 1 and report["errors"] == 2, out
    assert "failed after 0 retries: HTTP 503" in out
    candidate = Stub(first="503")
    code, out, report = audit(capsys, tmp_path, candidate, Stub(), 2, "--retries", "1")
    assert code == 0 and "verdict: all 2 identical" in out, out
    assert candidate.attempts == {"p0": 2, "p1": 2}  # each request sent again after its 503


def test_timeout_reaches_the_servers(tmp_path, capsys):
    candidate = Stub(first="slow")
    code, out, report = audit(capsys, tmp_path, candidate, Stub(), 1, "--timeout", "1", "--retries", "0")
    assert code == 1 and report["errors"] == 1 and "ReadTimeout" in out, out
    assert candidate.attempts == {"p0": 1}
    # control: with the default --timeout (120 s) the same slow answer is waited for
    candidate = Stub(first="slow")
    code, out, _ = audit(capsys, tmp_path, candidate, Stub(), 1, "--retries", "0")
    assert code == 0 and "verdict: all 1 identical" in out and candidate.attempts == {"p0": 1}, out


def test_concurrency_limits_the_requests_in_flight(tmp_path, capsys):
    candidate, reference = Stub(delay=0.3), Stub(delay=0.3)
    code, out, _ = audit(capsys, tmp_path, candidate, reference, 6, "--concurrency", "2")
    assert code == 0, out
    assert candidate.peak == reference.peak == 2
    candidate, reference = Stub(delay=0.3), Stub(delay=0.3)  # control: the count sees more when more are allowed
    code, out, _ = audit(capsys, tmp_path, candidate, reference, 6, "--concurrency", "4")
    assert code == 0 and reference.peak >= 3, (out, reference.peak)
