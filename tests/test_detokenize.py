"""Incremental detokenization: deltas add up to the decoded text; stop strings cut it, also when
they straddle tokens, and text that might begin a stop string is held back until it is decided."""

from __future__ import annotations

from agentspark.detokenize import TextTracker


def feed(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[TextTracker, list[str]]:
    tracker = TextTracker(tokenizer, stop)
    deltas = []
    for t in tokenizer.encode(text):
        deltas.append(tracker.push(t))
        if tracker.stopped:
            break
    deltas.append(tracker.flush())
    return tracker, deltas


def test_deltas_add_up_to_the_decoded_text(default_model):
    tok = default_model.tokenizer
    text = "Héllo wörld! 你好，世界。 Emoji: 🚀🔥 done."
    tracker, deltas = feed(tok, text)
    assert "".join(deltas) == tracker.text == tok.decode(tok.encode(text), skip_special_tokens=True)
    assert all("\ufffd" not in d for d in deltas)  # no half characters released


def test_stop_string_straddling_tokens_cuts_before_it(default_model):
    tracker, deltas = feed(default_model.tokenizer, "alpha beta gamma delta", stop=("ta gam",))
    assert tracker.stopped and tracker.text == "alpha be" and "".join(deltas) == "alpha be"


def test_text_that_may_start_a_stop_is_held_back(default_model):
    tok = default_model.tokenizer
    tracker = TextTracker(tok, ("END!",))
    released = "".join(tracker.push(t) for t in tok.encode("the EN"))
    assert released == "the " and not tracker.stopped  # "EN" may still become "END!"
    assert tracker.flush() == "EN"


def test_earliest_of_several_stops_wins(default_model):
    tracker, _ = feed(default_model.tokenizer, "one two three four", stop=("four", "two"))
    assert tracker.text == "one "
