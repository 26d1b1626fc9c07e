"""``agentspark audit --base-url``: servers that refuse logprobs, over loopback.

One small OpenAI-compatible stub (FastAPI, served once for the module) imitates several servers,
one per path prefix: each answers ``You said <prompt>.`` split into word tokens, with logprobs
when asked, or HTTP 400 when its ``refuse`` says so. A server refusing logprobs must be asked that
request again without them, never asked for them again in the run, compared by text and named in
the report; a 400 about anything else must be that request's error, not a fallback.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentspark.cli import main
from agentspark.server import serve_in_thread

Refuse = Callable[[dict[str, Any]], dict[str, Any] | None]  # a request body -> the 400's body, or None


def echo(prompt: str) -> str:
    return f"You said {prompt}."


@dataclass
class Stub:
    """One imitated server: its reply to a prompt, its refusals, and the bodies it was sent."""

    reply: Callable[[str], str] = echo
    refuse: Refuse = lambda body: None
    bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def asked_logprobs(self) -> list[bool]:
        return ["logprobs" in b or "top_logprobs" in b for b in self.bodies]


def logprobs_item(token: str) -> dict[str, Any]:
    tops = [{"token": token, "logprob": -0.1, "bytes": None}, {"token": "<other>", "logprob": -2.5, "bytes": None}]
    return {"token": token, "logprob": -0.1, "bytes": None, "top_logprobs": tops}


def completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    tokens = re.findall(r"\s*\S+", text)
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [logprobs_item(t) for t in tokens]}
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 1, "model": body.get("model"),
            "choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens)}}


def stub_app(stubs: dict[str, Stub]) -> FastAPI:
    app = FastAPI()

    @app.get("/{name}/v1/models")
    def models(name: str) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": f"stub-{name}", "object": "model"}]}

    @app.post("/{name}/v1/chat/completions")
    async def chat(name: str, request: Request) -> Any:
        stub, body = stubs[name], await request.json()
        stub.bodies.append(body)
        refusal = stub.refuse(body)
        if refusal is not None:
            return JSONResponse(refusal, status_code=400)
        return completion(body, stub.reply(body["messages"][-1]["content"]))

    return app


_names = itertools.count()


@pytest.fixture(scope="module")
def serve_stubs():
    """A function registering stubs on the module's one server; returns their base URLs."""
    stubs: dict[str, Stub] = {}
    with serve_in_thread(stub_app(stubs)) as url:
        def register(*new: Stub) -> list[str]:
            names = [f"s{next(_names)}" for _ in new]
            stubs.update(zip(names, new))
            return [f"{url}/{name}" for name in names]

        yield register


def openai_error(message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def asks_logprobs(body: dict[str, Any]) -> bool:
    return "logprobs" in body or "top_logprobs" in body


REFUSALS: dict[str, Refuse] = {
    # OpenAI's error shape naming the parameter
    "openai-param": lambda b: openai_error("top_logprobs is not supported", "top_logprobs") if asks_logprobs(b) else None,
    # llama.cpp's shape: no param, the message says it
    "llama.cpp-message": lambda b: ({"error": {"code": 400, "message": "logprobs is not supported",
                                               "type": "invalid_request_error"}} if asks_logprobs(b) else None),
}


def prompts_file(tmp_path: Path, *turns: str) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"turns": [t], "dataset": "t"}) + "\n" for t in turns))
    return path


def run_audit(capsys, tmp_path: Path, candidate: str, reference: str, *extra: str) -> tuple[int, str, dict]:
    out_file = tmp_path / "audit.json"
    code = main(["audit", "--base-url", candidate, "--reference-url", reference, "--prompts",
                 str(prompts_file(tmp_path, "alpha", "beta", "gamma")), "--retries", "0", "--out", str(out_file),
                 *extra])
    out, err = capsys.readouterr()
    return code, out + err, json.loads(out_file.read_text())


def test_servers_that_serve_logprobs_are_compared_by_tokens(serve_stubs, tmp_path, capsys):
    """The control: the same stubs without refusals send logprobs, so the tokens decide."""
    candidate, reference = serve_stubs(Stub(), Stub())
    code, out, report = run_audit(capsys, tmp_path, candidate, reference, "--concurrency", "1")
    assert code == 0, out
    assert [o["compared"] for o in report["outcomes"]] == ["tokens"] * 3
    assert report["logprobs_refused"] == {} and "refused" not in out
    assert "verdict: all 3 identical\n" in out


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_server_refusing_logprobs_is_asked_again_without_them_and_compared_by_text(serve_stubs, tmp_path, capsys,
                                                                                      refusal):
    """The candidate refuses logprobs and answers "beta" with a planted typo: the first request is
    asked again without logprobs, the later ones never ask, all compare by text, the typo is caught."""
    planted = Stub(reply=lambda p: echo(p).replace("beta", "bexa"), refuse=REFUSALS[refusal])
    reference = Stub()
    candidate_url, reference_url = serve_stubs(planted, reference)
    code, out, report = run_audit(capsys, tmp_path, candidate_url, reference_url, "--concurrency", "1")
    assert code == 1, out
    assert planted.asked_logprobs == [True, False, False, False]  # refused once, then remembered
    assert reference.asked_logprobs == [True] * 3  # the other server is still asked
    assert [o["compared"] for o in report["outcomes"]] == ["text"] * 3
    assert all(o["logprobs_refused_by"] == [candidate_url] for o in report["outcomes"])
    assert [o["identical"] for o in report["outcomes"]] == [True, False, True]
    assert report["outcomes"][1]["divergence"]["by"] == "text"
    assert f"identical t#0: 3 tokens, compared by text (logprobs refused by {candidate_url})" in out
    assert list(report["logprobs_refused"]) == [candidate_url]
    assert "refused logprobs: HTTP 400" in report["logprobs_refused"][candidate_url]
    assert f"{candidate_url} refused logprobs, so their requests were compared by text" in report["verdict"]
    assert "asked again without logprobs and compared by text" in out


def test_concurrent_requests_each_retry_a_refusal_at_most_once(serve_stubs, tmp_path, capsys):
    refusing = Stub(refuse=REFUSALS["openai-param"])
    candidate_url, reference_url = serve_stubs(refusing, Stub())
    code, out, report = run_audit(capsys, tmp_path, candidate_url, reference_url, "--concurrency", "3")
    assert code == 0, out
    asked, not_asked = refusing.asked_logprobs.count(True), refusing.asked_logprobs.count(False)
    assert 1 <= asked <= 3 and not_asked == 3  # requests in flight together may each learn it once
    assert [o["compared"] for o in report["outcomes"]] == ["text"] * 3
    assert "verdict: all 3 identical;" in out


def test_a_400_about_something_else_is_an_error_not_a_fallback(serve_stubs, tmp_path, capsys):
    """The negative control: a 400 naming max_tokens is each request's error, sent once."""
    strict = Stub(refuse=lambda b: openai_error("max_tokens must be at most 8", "max_tokens"))
    candidate_url, reference_url = serve_stubs(strict, Stub())
    code, out, report = run_audit(capsys, tmp_path, candidate_url, reference_url, "--concurrency", "1")
    assert code == 1, out
    assert strict.asked_logprobs == [True] * 3  # no retry without logprobs
    assert all(o["error"] and "HTTP 400" in o["error"] and "max_tokens" in o["error"] for o in report["outcomes"])
    assert report["logprobs_refused"] == {} and "refused logprobs" not in out
    assert out.count("ERROR t#") == 3


def test_a_400_that_only_quotes_the_requests_logprobs_is_still_an_error(serve_stubs, tmp_path, capsys):
    """vLLM-shaped (no param) and quoting the request, so it reads as about logprobs: asked once
    more without them, it fails again, and that is the request's error; nothing is remembered."""
    quoting = Stub(refuse=lambda b: {"object": "error", "code": 400,
                                     "message": f"max_tokens must be at most 8; request: {json.dumps(b)}"})
    candidate_url, reference_url = serve_stubs(quoting, Stub())
    code, out, report = run_audit(capsys, tmp_path, candidate_url, reference_url, "--concurrency", "1")
    assert code == 1, out
    assert quoting.asked_logprobs == [True, False] * 3  # each request retried once, the server never marked
    assert all("asked again without logprobs, it failed too" in o["error"] for o in report["outcomes"])
    assert report["logprobs_refused"] == {}


def test_base_urls_ending_in_v1_reach_the_same_endpoints(serve_stubs, tmp_path, capsys):
    """OpenAI-style base URLs (``.../v1``, as vLLM's, SGLang's and llama.cpp's docs write them)
    name the same server as the bare root: found against a real llama-server, where ``.../v1``
    was sent to ``/v1/v1/models`` and every audit ended "lists no models (HTTP 404)"."""
    candidate, reference = Stub(), Stub()
    candidate_url, reference_url = serve_stubs(candidate, reference)
    code, out, report = run_audit(capsys, tmp_path, candidate_url + "/v1", reference_url + "/v1/", "--concurrency", "1")
    assert code == 0, out
    assert len(candidate.bodies) == len(reference.bodies) == 3
    assert report["model"] == f"stub-{candidate_url.rsplit('/', 1)[1]}"  # the listing was reached too
    assert [o["compared"] for o in report["outcomes"]] == ["tokens"] * 3


def test_server_root_strips_only_a_final_v1():
    from agentspark.backends.remote import RemoteBackend, server_root

    assert server_root("http://h:8000/v1") == server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("http://h:8000/") == "http://h:8000"
    assert server_root("http://h/proxy/v1") == "http://h/proxy"
    assert server_root("http://h/v1beta") == "http://h/v1beta"  # not a /v1 segment
    backend = RemoteBackend("http://h:8000/v1", "m")
    assert backend.base_url == "http://h:8000" and str(backend.client.base_url) == "http://h:8000"
    backend.close()
