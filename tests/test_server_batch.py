"""The server over the batch backend, end to end with the real default model on loopback.

Concurrent requests run together (each output what it is served alone, streamed or not), a
client that disconnects frees only its own slot, admission past slots + max_queued answers 429
with Retry-After, a queued stream gets its headers at once, and /metrics reports in Prometheus'
text format what happened."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agentspark import Engine, NgramDrafter, SamplingParams
from agentspark.backends.batched import BatchBackend
from agentspark.backends.local import LocalBackend
from agentspark.batch import BatchEngine
from agentspark.server import create_app, serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

QUESTIONS = ["Name three colors.", "What is 2 + 2?", "Say hello in French.", "Write one word about the sea."]


def chat(question: str, max_tokens: int = 12, stream: bool = False) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}


def sse_text(body: str) -> tuple[str, list[dict]]:
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")), events


@pytest.fixture(scope="module")
def solo(default_model):
    """What each question gets served alone (the single-request backend)."""
    backend = LocalBackend(Engine(default_model, NgramDrafter(), max_draft=4), reuse_cache=False)
    return [backend.complete([{"role": "user", "content": q}], sampling=SamplingParams(max_new_tokens=12)).message.content
            for q in QUESTIONS]


def test_concurrent_requests_each_get_their_solo_output(default_model, solo):
    backend = BatchBackend(BatchEngine(default_model, NgramDrafter(), slots=4, max_draft=4))
    with serve_in_thread(create_app(backend, model_name="m")) as url:
        def ask(i: int) -> str:
            r = httpx.post(f"{url}/v1/chat/completions", json=chat(QUESTIONS[i], stream=i % 2 == 1), timeout=120)
            assert r.status_code == 200, r.text
            return sse_text(r.text)[0] if i % 2 else r.json()["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(ask, range(4)))
        metrics = httpx.get(f"{url}/metrics").text
    backend.close()
    assert got == solo
    assert 'agentspark_requests_total{outcome="ok"} 4.0' in metrics
    assert "agentspark_time_to_first_token_seconds_count 4.0" in metrics
    assert "agentspark_requests_running 0.0" in metrics and "agentspark_requests_queued 0.0" in metrics
    generated = float(next(line.split()[1] for line in metrics.splitlines()
                           if line.startswith("agentspark_generated_tokens_total")))
    assert 4 <= generated <= 48
    for name in ("agentspark_tau", "agentspark_drafted_tokens_total", "agentspark_accepted_tokens_total",
                 "agentspark_prefill_tokens_reused_total", "agentspark_time_per_output_token_seconds_bucket",
                 "agentspark_tokens_per_second"):
        assert name in metrics
    # the engine's clock: 4 admissions, rows summed over rounds between the rounds and 4x them,
    # and every part's seconds as the engine counted them
    value = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
             if line.startswith("agentspark_engine_")}
    clock = backend.engine_clock()
    assert value["agentspark_engine_admissions_total"] == clock.admissions == 4
    assert value["agentspark_engine_rounds_total"] <= value["agentspark_engine_rows_total"] \
        <= 4 * value["agentspark_engine_rounds_total"]
    assert value['agentspark_engine_seconds_total{part="runner"}'] == clock.runner_s > 0
    assert value['agentspark_engine_seconds_total{part="mask"}'] == 0.0  # no grammar here


def test_disconnect_frees_its_slot_admission_and_queued_headers(default_model, solo):
    engine = BatchEngine(default_model, None, slots=2)
    backend = BatchBackend(engine)
    app = create_app(backend, model_name="m", max_queued=1)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        long_a = client.stream("POST", "/v1/chat/completions", json=chat("Count from 1 to 300, separated by commas.", 300, stream=True))
        long_b = client.stream("POST", "/v1/chat/completions", json=chat("Write a long essay about the history of Rome.", 300, stream=True))
        a, b = long_a.__enter__(), long_b.__enter__()
        assert a.status_code == b.status_code == 200
        # (an iterator dropped early closes httpx's stream: the server would see a disconnect)
        a_lines, b_lines = a.iter_lines(), b.iter_lines()
        next(a_lines), next(b_lines)  # both running: two slots
        deadline = time.monotonic() + 30
        while backend.load()[0] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.load() == (2, 0)
        # A third is queued: its headers and its first event (the role) come at once.
        queued_stream = client.stream("POST", "/v1/chat/completions", json=chat(QUESTIONS[0], stream=True))
        queued = queued_stream.__enter__()
        assert queued.status_code == 200
        lines = queued.iter_lines()
        assert '"role": "assistant"' in next(lines)
        # A fourth is past slots + max_queued: 429, with when to try again.
        busy = client.post("/v1/chat/completions", json=chat(QUESTIONS[1]))
        assert busy.status_code == 429 and int(busy.headers["Retry-After"]) >= 1
        assert busy.json()["error"]["code"] == "server_busy"
        # One client goes away: its slot goes to the queued request; the other keeps streaming.
        long_a.__exit__(None, None, None)
        text = "\n".join(lines)
        assert sse_text(text)[0] == solo_plain(default_model, QUESTIONS[0])
        assert next(b_lines) is not None and backend.load()[0] >= 1
        long_b.__exit__(None, None, None)
        queued_stream.__exit__(None, None, None)
        deadline = time.monotonic() + 30
        while backend.load() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.load() == (0, 0) and sorted(engine.free) == [0, 1]
        metrics = client.get("/metrics").text
    backend.close()
    assert "agentspark_requests_rejected_total 1.0" in metrics
    assert 'agentspark_requests_total{outcome="cancelled"} 2.0' in metrics


def solo_plain(model, question: str) -> str:
    backend = LocalBackend(Engine(model), speculative=False, reuse_cache=False)
    return backend.complete([{"role": "user", "content": question}], sampling=SamplingParams(max_new_tokens=12)).message.content


def test_a_bad_request_is_refused_before_it_is_queued(default_model):
    backend = BatchBackend(BatchEngine(default_model, None, slots=2, max_seq_len=64))
    with serve_in_thread(create_app(backend, model_name="m")) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("word " * 200, stream=True), timeout=60)
    backend.close()
    assert r.status_code == 400 and "context holds" in r.json()["error"]["message"]
    assert backend.load() == (0, 0)


def test_many_threads_share_one_batch_backend_directly(default_model, solo):
    """The Python API: agents on threads of their own call one backend at once."""
    backend = BatchBackend(BatchEngine(default_model, NgramDrafter(), slots=4, max_draft=4))
    out: dict[int, str] = {}

    def run(i: int) -> None:
        msg = [{"role": "user", "content": QUESTIONS[i]}]
        out[i] = backend.complete(msg, sampling=SamplingParams(max_new_tokens=12)).message.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    backend.close()
    assert [out[i] for i in range(4)] == solo


def test_response_format_constrains_the_reply(default_model):
    """response_format json_schema / json_object: the reply is what the grammar allows (it parses,
    with the schema's keys), speculative and plain alike; a schema the grammar library refuses is
    a 400, and so is response_format together with tools."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    ask = {"model": "m", "temperature": 0, "max_tokens": 40,
           "messages": [{"role": "user", "content": "Where is the Eiffel Tower? Answer as JSON."}]}
    spec = BatchBackend(BatchEngine(default_model, NgramDrafter(), slots=2, max_draft=4))
    plain = BatchBackend(BatchEngine(default_model, None, slots=2))
    replies = []
    for backend in (spec, plain):
        with serve_in_thread(create_app(backend, model_name="m")) as url:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                **ask, "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}})
            assert r.status_code == 200, r.text
            replies.append(r.json()["choices"][0])
            any_json = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                                  json={**ask, "response_format": {"type": "json_object"}, "max_tokens": 24})
            assert any_json.status_code == 200 and any_json.json()["choices"][0]["message"]["content"].startswith("{")
            bad = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                **ask, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}})
            assert bad.status_code == 400 and "grammar" in bad.json()["error"]["message"]
            both = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                **ask, "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
            assert both.status_code == 400 and both.json()["error"]["param"] == "response_format"
        backend.close()
    assert replies[0]["message"]["content"] == replies[1]["message"]["content"]
    if replies[0]["finish_reason"] == "stop":
        assert set(json.loads(replies[0]["message"]["content"])) == {"city", "country"}


def test_tool_choice_is_a_grammar_of_the_offered_tools(default_model):
    """Through the app serve builds (--tool-calls constrained, the default): tool_choice required
    and a named tool give a call of an offered tool with arguments of its schema, closed by the
    grammar (finish_reason tool_calls, no text after it), speculative output equal to plain."""
    tools = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
                                               "parameters": {"type": "object", "required": ["expression"],
                                                              "properties": {"expression": {"type": "string"}}}}},
             {"type": "function", "function": {"name": "read_file", "description": "Read a file.",
                                               "parameters": {"type": "object", "required": ["path"],
                                                              "properties": {"path": {"type": "string"}}}}}]
    got = {}
    for name, drafter in (("spec", NgramDrafter()), ("plain", None)):
        backend = BatchBackend(BatchEngine(default_model, drafter, slots=2, max_draft=4), constrain_tool_calls=True)
        with serve_in_thread(create_app(backend, model_name="m")) as url:
            for choice, ask in (("required", "Read the file notes.txt."),
                                ({"type": "function", "function": {"name": "calculator"}}, "What is 12 * 7?")):
                r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                    "model": "m", "temperature": 0, "max_tokens": 60, "tools": tools, "tool_choice": choice,
                    "messages": [{"role": "user", "content": ask}]})
                assert r.status_code == 200, r.text
                got[(name, ask)] = r.json()["choices"][0]
        backend.close()
    for ask, tool in (("Read the file notes.txt.", "read_file"), ("What is 12 * 7?", "calculator")):
        choice = got[("spec", ask)]
        same = [(c["function"], got[("plain", ask)]["message"]["tool_calls"][i]["function"])
                for i, c in enumerate(choice["message"]["tool_calls"])]
        assert all(a == b for a, b in same) and choice["finish_reason"] == got[("plain", ask)]["finish_reason"]
        assert choice["finish_reason"] == "tool_calls" and not choice["message"]["content"]
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == tool
        args = json.loads(call["function"]["arguments"])
        assert set(args) == {"path" if tool == "read_file" else "expression"}
