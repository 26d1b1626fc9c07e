"""The official ``openai`` client against agentspark's OpenAI-compatible server: a 2-round tool loop.

Starts the app of ``agentspark serve`` (``create_app``; speculative with drafter auto: n-gram lookups + the shipped DSpark drafter, default model, CPU) in
this process on 127.0.0.1 with a free port, waits for ``/health``, runs a tool loop with
``OpenAI(base_url=...)`` (round 1: a tool call, run here and sent back as a ``tool`` message;
round 2: the answer), prints each response's ``agentspark`` extension field (backend, speculative
stats, forced prefix: empty, nothing is put in the model's mouth) and shuts the server down.
Forced, honestly: the 135M model rarely calls a tool on its own, so round 1 sends
``tool_choice={"type": "function", "function": {"name": "calculator"}}``, which the server turns
into a grammar (as ``agentspark serve --tool-calls constrained``, its default): the model writes
the whole call, only a calculator call with an ``expression`` string, and the grammar closes it.
Round 2 sends no tool_choice.

Run:  python examples/openai_client_agent.py [--max-tokens 64] [--base-url http://127.0.0.1:8000/v1]
(--base-url: use a running server instead). Exit code 0 when the tool call was made and both
rounds completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext

import httpx
from openai import OpenAI

from agentspark.tools.builtin.arithmetic import evaluate  # safe arithmetic (an AST walk, never eval)

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression and return the result.",
    "parameters": {"type": "object", "required": ["expression"], "properties": {"expression": {
        "type": "string", "description": 'The expression, for example "sqrt(2) * (3 + 4) ** 2".'}}}}}]
STATS = ("new_tokens", "rounds_count", "mean_accepted_length", "acceptance_rate", "tokens_per_second")


def local_server():  # what `agentspark serve` runs with --slots 1 (forced calls: the tool-call grammar)
    from agentspark import Engine, build_drafter, load_model
    from agentspark.backends.local import LocalBackend
    from agentspark.server import create_app, serve_in_thread

    target = load_model("default")  # SmolLM2-135M-Instruct, float32 on the CPU
    backend = LocalBackend(Engine(target, build_drafter("auto", target), max_draft=4))
    return serve_in_thread(create_app(backend, model_name="agentspark-default"), "127.0.0.1", 0)  # 0: a free port


def wait_for_health(root: str, timeout: float = 60.0) -> dict:  # a server started elsewhere may still be loading
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"{root}/health", timeout=2).raise_for_status().json()
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def show(label: str, response) -> None:  # the `agentspark` extension field (absent on other servers)
    ext = response.model_extra.get("agentspark") or {}
    stats = {k: round(v, 3) if isinstance(v := (ext.get("stats") or {}).get(k), float) else v for k in STATS}
    print(f"  {label} agentspark: backend={ext.get('backend')} forced_prefix={ext.get('forced_prefix')!r}\n"
          f"  {label} stats: {json.dumps(stats)}")


def tool_loop(base_url: str, api_key: str, max_tokens: int) -> int:
    print(f"health: {wait_for_health(base_url.rstrip('/').removesuffix('/v1'))}")
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    messages = [{"role": "system", "content": "You are a helpful assistant. Use the tools when asked."},
                {"role": "user", "content": "Use the calculator to compute 1234 * 5678."}]
    print(f"user: {messages[-1]['content']}")
    forced = {"type": "function", "function": {"name": "calculator"}}  # round 1 only, see the docstring
    r1 = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice=forced,
                                        temperature=0, max_tokens=max_tokens)
    msg = r1.choices[0].message
    print(f"  round 1: finish_reason={r1.choices[0].finish_reason} tool_calls={[c.function for c in msg.tool_calls or []]}")
    show("round 1", r1)
    if not msg.tool_calls or msg.tool_calls[0].function.name != "calculator":
        print("FAIL: no calculator call in round 1", file=sys.stderr)
        return 1
    messages.append({"role": "assistant", "content": msg.content, "tool_calls": [c.model_dump() for c in msg.tool_calls]})
    for call in msg.tool_calls:
        result = str(evaluate(json.loads(call.function.arguments)["expression"]))
        print(f"  tool calculator({call.function.arguments}) -> {result}")
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    r2 = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=max_tokens)
    answer = r2.choices[0].message
    print(f"assistant (round 2, auto): {(answer.content or '').strip()!r} tool_calls={len(answer.tool_calls or [])}")
    show("round 2", r2)
    if not ((answer.content or "").strip() or answer.tool_calls):
        print("FAIL: empty answer in round 2", file=sys.stderr)
        return 1
    print(f"OK: 2 rounds through the openai client, {r1.usage.total_tokens + r2.usage.total_tokens} tokens in all")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="use this running server (.../v1) instead of starting one")
    parser.add_argument("--api-key", default="unused", help="bearer key for --base-url (default: none needed)")
    # 64: the model writes the whole call under the grammar (about 45 tokens on the default model)
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per round (default: 64)")
    args = parser.parse_args()
    with nullcontext(args.base_url) if args.base_url else local_server() as url:
        base_url = url if args.base_url else f"{url}/v1"
        print(f"server: {base_url}")
        code = tool_loop(base_url, args.api_key, args.max_tokens)
    print("done" if args.base_url else "server stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
