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


# ---- the tokenizers library's DecodeStream against the Python window rule --------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agentspark.detokenize import stream_backend  # noqa: E402


def _run(tok, ids, stop, stream: bool) -> tuple[list[str], str, bool]:
    tracker = TextTracker(tok, stop, stream=stream)
    assert (tracker._stream is not None) == stream
    deltas = []
    for t in ids:
        deltas.append(tracker.push(t))
        if tracker.stopped:
            break
    deltas.append(tracker.flush())
    return deltas, tracker.text, tracker.stopped


def test_the_default_tokenizer_streams_through_decodestream(default_model):
    assert stream_backend(default_model.tokenizer) is not None
    assert stream_backend(None) is None and stream_backend(object()) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decodestream_releases_what_the_window_rule_releases(default_model, data):
    """Token for token the same deltas, text and stop, on random ids: whole words, byte tokens
    that split UTF-8 characters, special tokens (skipped), and stop strings."""
    tok = default_model.tokenizer
    vocab = len(tok)
    words = tok.encode("Héllo wörld! 你好，世界。 🚀🔥 <|im_end|> def f(x):\n    return x")
    specials = sorted(tok.all_special_ids)
    token = st.one_of(st.integers(0, vocab - 1), st.sampled_from(words), st.sampled_from(specials))
    ids = data.draw(st.lists(token, max_size=40))
    stop = tuple(data.draw(st.lists(st.sampled_from(["ö", "世界", " x", "lo w", "\n"]), max_size=2, unique=True)))
    assert _run(tok, ids, stop, stream=True) == _run(tok, ids, stop, stream=False)


def test_a_refused_stream_step_hands_over_to_the_window_rule(default_model):
    """Negative control of the fallback: a DecodeStream that raises mid-way loses no text."""
    tok = default_model.tokenizer
    ids = tok.encode("alpha beta gamma delta")
    tracker = TextTracker(tok)

    class Refusing:
        def step(self, backend, token):
            raise RuntimeError("InvalidPrefix")

    out = [tracker.push(t) for t in ids[:2]]
    tracker._stream = Refusing()
    out += [tracker.push(t) for t in ids[2:]] + [tracker.flush()]
    assert "".join(out) == tok.decode(ids, skip_special_tokens=True) and tracker._stream is None
