"""One short agent session of the real default model (SmolLM2-135M-Instruct) turned into a
training sample: the mask lines up with the assistant's own tokens, the forced call prefix and the
tool result stay prompt."""

from __future__ import annotations

from test_agent_data import Recording, assert_mask_is_what_was_generated, spans

from agentspark.training.agent_data import AgentDataParams, run_session, target_backend
from agentspark.training.agent_tasks import AgentTask


def test_a_default_model_session_masks_the_assistants_tokens(default_model):
    tok = default_model.tokenizer
    params = AgentDataParams(temperature=0.0, max_new_tokens=12, max_rounds=2)  # greedy: the same on every torch
    backend = Recording(target_backend(default_model, params))
    task = AgentTask("arithmetic", {"notes.txt": "x\n"}, (("What is 12 * 34? Use the calculator.", "calculator"),))
    sample = run_session(backend, task, params, 0)
    assert len(backend.seen) == 2  # the forced call, then the answer after its result
    assert_mask_is_what_was_generated(sample, backend.seen)
    runs = spans(sample.loss_mask)
    assert len(runs) == 2
    forced = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "'
    before_call = tok.decode(sample.input_ids[: runs[0][0]])
    assert before_call.endswith("<|im_start|>assistant\n" + forced)  # forced text is prompt, not target's
    assert tok.decode(sample.input_ids[: runs[1][0]]).endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    prompt, answer = backend.seen[-1]
    assert sample.input_ids[runs[1][0]:] == answer  # the answer's every token, its end-of-turn token if it ended
    assert answer[-1] == tok.eos_token_id or len(answer) == params.max_new_tokens
