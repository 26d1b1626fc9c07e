"""A LangChain tool-calling loop on agentspark: ChatAgentSpark over a local speculative backend.

Shows: a langchain-core ``@tool``, ``ChatAgentSpark(...).bind_tools(...)``, the call in
``AIMessage.tool_calls``, a ``ToolMessage`` fed back, and the speculative-decoding stats in
``response_metadata["agentspark_stats"]``. Offline, CPU, default model (SmolLM2-135M-Instruct).
Forced, honestly: a 135M model rarely calls a tool on its own, so round 1 binds the tool with
``tool_choice="calculator"``, which the local backend turns into a grammar: the model writes the
whole call, only a calculator call with an ``expression`` string, and the grammar closes it.
Round 2 is not forced: the model answers from the tool result.

Run:  python examples/langchain_agent.py [--max-tokens 64]
Exit code 0 when the tool call was made and both rounds completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from agentspark import Engine, build_drafter, load_model
from agentspark.agent.tool_prompt import RAW_TEXT_KEY  # where the raw model text rides
from agentspark.backends.local import LocalBackend
from agentspark.langchain_chat import ChatAgentSpark
from agentspark.tools.builtin.arithmetic import evaluate  # safe arithmetic (an AST walk, never eval)


@tool(parse_docstring=True)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Args:
        expression: The expression, for example "sqrt(2) * (3 + 4) ** 2".
    """
    return str(evaluate(expression))


def stats_line(ai) -> str:
    s = ai.response_metadata.get("agentspark_stats") or {}
    keys = ("new_tokens", "rounds_count", "mean_accepted_length", "acceptance_rate", "tokens_per_second")
    return json.dumps({k: round(s[k], 3) if isinstance(s.get(k), float) else s.get(k) for k in keys})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 64: the model writes the whole call under the grammar (about 45 tokens on the default model)
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per round (default: 64)")
    args = parser.parse_args()

    target = load_model("default")  # SmolLM2-135M-Instruct, float32 on the CPU
    backend = LocalBackend(Engine(target, build_drafter("auto", target), max_draft=4))  # forced calls: a grammar
    llm = ChatAgentSpark(backend=backend, max_tokens=args.max_tokens)  # temperature 0: greedy
    messages = [SystemMessage("You are a helpful assistant. Use the tools when asked."),
                HumanMessage("Use the calculator to compute 1234 * 5678.")]
    print(f"user: {messages[-1].content}")

    # Round 1, forced: tool_choice names the tool (see the docstring for what exactly is forced).
    ai = llm.bind_tools([calculator], tool_choice="calculator").invoke(messages)
    print(f"  constrained by tool_choice='calculator' (a grammar): the model wrote {ai.additional_kwargs[RAW_TEXT_KEY]!r}")
    print(f"  assistant tool_calls: {ai.tool_calls}")
    print(f"  agentspark stats: {stats_line(ai)}")
    if not ai.tool_calls or ai.tool_calls[0]["name"] != "calculator":
        print(f"FAIL: no usable calculator call (invalid: {ai.invalid_tool_calls})", file=sys.stderr)
        return 1
    messages.append(ai)
    for call in ai.tool_calls:
        result = calculator.invoke(call["args"])
        print(f"  tool {call['name']}({call['args']}) -> {result}")
        messages.append(ToolMessage(content=result, tool_call_id=call["id"]))

    # Round 2, not forced: the model answers from the tool result on its own.
    final = llm.bind_tools([calculator]).invoke(messages)
    print(f"assistant: {final.content.strip()!r} tool_calls={final.tool_calls}")
    print(f"  agentspark stats: {stats_line(final)}")
    if not (final.content.strip() or final.tool_calls):
        print("FAIL: round 2 was empty", file=sys.stderr)
        return 1
    print(f"OK: 2 rounds, {len(messages) + 1} messages, backend {final.response_metadata['model_name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
