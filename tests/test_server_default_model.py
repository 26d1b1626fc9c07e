"""End to end with the real default model: `agentspark serve` wiring and the engine behind the
server (speculative with the n-gram drafter), through the official openai client over loopback."""

from __future__ import annotations

import openai
import pytest

from agentspark import Engine, NgramDrafter, SamplingParams
from agentspark.backends.local import LocalBackend
from agentspark.backends.remote import RemoteBackend
from agentspark.server import create_app, serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PROMPT = [{"role": "user", "content": "List three colors of the rainbow."}]


def test_default_model_streamed_equals_non_streamed(default_model):
    # reuse_cache=False: both requests prefill from scratch, so greedy decoding must agree exactly.
    backend = LocalBackend(Engine(default_model, NgramDrafter(), max_draft=4), reuse_cache=False)
    with serve_in_thread(create_app(backend, model_name="agentspark-default")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        full = client.chat.completions.create(model="agentspark-default", messages=PROMPT, max_tokens=16, temperature=0)
        chunks = list(client.chat.completions.create(
            model="agentspark-default", messages=PROMPT, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}))
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    ext = full.model_extra["agentspark"]
    assert ext["backend"] == "local-ngram" and ext["forced_prefix"] == ""
    stats = ext["stats"]
    assert 1 <= stats["new_tokens"] <= 16 and stats["drafter"] == "ngram" and "rounds" not in stats
    assert full.usage.completion_tokens == stats["new_tokens"]
    assert full.usage.prompt_tokens == stats["prompt_tokens"] > 5
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == stats["new_tokens"]
    assert usage_chunk.model_extra["agentspark"]["stats"]["new_tokens"] == stats["new_tokens"]


def test_default_model_logprobs_on_the_wire(default_model):
    """logprobs + top_logprobs through the openai client: one item per generated token, its text
    the content's pieces, greedy's chosen token the best of its alternatives; the stream carries
    the same items; top_logprobs without logprobs is a 400 naming it."""
    backend = LocalBackend(Engine(default_model, NgramDrafter(), max_draft=4), reuse_cache=False)
    ask = dict(model="agentspark-default", messages=PROMPT, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    with serve_in_thread(create_app(backend, model_name="agentspark-default")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        full = client.chat.completions.create(**ask)
        chunks = list(client.chat.completions.create(**ask, stream=True))
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            client.chat.completions.create(model="agentspark-default", messages=PROMPT, max_tokens=2, top_logprobs=2)
        # the remote backend asks for them and hands them on, streamed and not
        remote = RemoteBackend(url, model="agentspark-default")
        sampling = SamplingParams(max_new_tokens=12, logprobs=2)
        got = remote.complete(PROMPT, sampling=sampling).logprobs
        pieces = list(remote.stream(PROMPT, sampling=sampling))
        remote.close()
    items = full.choices[0].logprobs.content
    assert len(items) == full.usage.completion_tokens
    assert all(len(i.top_logprobs) == 2 and i.logprob <= 0 and i.top_logprobs[0].token == i.token for i in items)
    assert "".join(i.token for i in items) == full.choices[0].message.content
    streamed = [i for c in chunks if c.choices and c.choices[0].logprobs for i in c.choices[0].logprobs.content]
    assert [(i.token, i.logprob) for i in streamed] == [(i.token, i.logprob) for i in items]
    assert got == [i.model_dump() for i in items]
    assert [i for p in pieces if p.logprobs for i in p.logprobs] == got == pieces[-1].response.logprobs


def test_serve_command_wires_the_engine(monkeypatch, capsys, reuse_default_model):
    import uvicorn

    from agentspark.cli import main

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: captured.update(app=app, host=host, port=port))
    monkeypatch.delenv("AGENTSPARK_API_KEY", raising=False)
    assert main(["serve", "--plain", "--host", "0.0.0.0", "--port", "8123", "--model-name", "tiny-one"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING" in err and "without an API key" in err
    assert "http://0.0.0.0:8123/v1" in out and "batch-plain, 4 at once" in out
    assert (captured["host"], captured["port"]) == ("0.0.0.0", 8123)

    monkeypatch.setenv("AGENTSPARK_API_KEY", "env-key")
    assert main(["serve", "--port", "0", "--max-draft", "3"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING" not in err and "http://127.0.0.1:0/v1" in out and "API key required" in out
    # the batch's SPS(B) table was measured (or read from its cache) at start-up, before any request
    assert ("measuring the target's speed at 1..16 tokens per batched forward" in err
            or "target speed at 1..16 tokens per batched forward: from the cache" in err)
    # The app the command built answers real requests (the env key is enforced).
    with serve_in_thread(captured["app"]) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="env-key", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["agentspark-default"]
        r = client.chat.completions.create(model="agentspark-default", messages=PROMPT, max_tokens=4, temperature=0)
    assert r.model_extra["agentspark"]["backend"] == "batch-ngram+dspark"  # --drafter auto on the default model
    assert r.model_extra["agentspark"]["stats"]["new_tokens"] <= 4


def test_serve_command_refuses_bad_options(capsys):
    from agentspark.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize("batched", [False, True], ids=["local", "batch"])
def test_plain_completions_with_the_default_model(default_model, batched):
    """/v1/completions through the openai client: the prompt continued as is (no chat template),
    what the engine gives the same text; streamed alike; legacy logprobs; token-id prompts; what
    it cannot honour is a 400 naming the field."""
    from agentspark.backends.batched import BatchBackend
    from agentspark.batch import BatchEngine

    prompt = "The capital of France is"
    if batched:
        backend = BatchBackend(BatchEngine(default_model, NgramDrafter(), slots=2, max_draft=4))
    else:
        backend = LocalBackend(Engine(default_model, NgramDrafter(), max_draft=4), reuse_cache=False)
    reference = Engine(default_model).generate(prompt, SamplingParams(max_new_tokens=8), speculative=False)
    ask = dict(model="agentspark-default", prompt=prompt, max_tokens=8, temperature=0)
    try:
        with serve_in_thread(create_app(backend, model_name="agentspark-default")) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            full = client.completions.create(**ask)
            streamed = "".join(c.choices[0].text for c in client.completions.create(**ask, stream=True) if c.choices)
            scored = client.completions.create(**ask, logprobs=2)
            by_ids = client.completions.create(**{**ask, "prompt": reference.prompt_ids})
            for bad, param in (({"n": 2}, "n"), ({"echo": True}, "echo"), ({"prompt": ["a", "b"]}, "prompt"),
                               ({"presence_penalty": 0.5}, "presence_penalty"), ({"logprobs": 6}, "logprobs")):
                with pytest.raises(openai.BadRequestError) as err:
                    client.completions.create(**{**ask, **bad})
                assert err.value.body["param"] == param
    finally:
        getattr(backend, "close", lambda: None)()
    choice = full.choices[0]
    assert full.object == "text_completion" and choice.text == reference.text == streamed == by_ids.choices[0].text
    assert full.usage.completion_tokens == len(reference.token_ids) and choice.finish_reason in ("stop", "length")
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == scored.usage.completion_tokens
    assert "".join(lp.tokens) == scored.choices[0].text and lp.text_offset == sorted(lp.text_offset)
    assert all(len(top) <= 2 and max(top.values()) >= chosen for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
