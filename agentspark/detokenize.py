"""Incremental detokenization and stop-string matching, one committed token at a time.

Plain and speculative decoding both feed every committed token through the same ``TextTracker``;
that is what makes a stop string inside an accepted block cut exactly where plain decoding stops.

The text of each token comes from the tokenizers library's own incremental decoder
(``tokenizers.decoders.DecodeStream``) where the tokenizer is backed by one: the same window rule
as ``_window_delta`` below (decode a short window of recent tokens, release what grew, hold back a
trailing U+FFFD), done in Rust. It is what a batch round pays per committed token, per row: on the
H200's host, committing 64 rows cost 1.3 ms a round (run 36), about as much as the forward, and
two ``tokenizer.decode`` calls a token were most of it (here 5.6 us a token against 0.65). Other
tokenizers (slow ones, test doubles) take the window rule in Python.
"""

from __future__ import annotations

from typing import Any

try:  # tokenizers >= 0.21 (transformers 5 needs >= 0.22)
    from tokenizers import Tokenizer as _BackendTokenizer
    from tokenizers.decoders import DecodeStream
except ImportError:  # pragma: no cover - transformers brings tokenizers
    _BackendTokenizer = DecodeStream = None


def stream_backend(tokenizer: Any | None) -> Any | None:
    """The ``tokenizers.Tokenizer`` behind a transformers tokenizer whose ``decode`` is that
    Tokenizer's own (what ``DecodeStream`` steps through), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if DecodeStream is None or not isinstance(backend, _BackendTokenizer):
        return None
    return backend


class TextTracker:
    """Turns a growing list of token ids into text deltas and finds stop strings.

    Decoding re-reads a short window of recent tokens (prefix_offset..end) instead of the whole
    sequence, and holds back text ending in U+FFFD (an incomplete UTF-8 sequence).
    """

    def __init__(self, tokenizer: Any | None, stop: tuple[str, ...] = (), *, stream: bool = True) -> None:
        """stream: decode through ``DecodeStream`` where the tokenizer allows (module docstring);
        False takes the Python window rule (the tests compare the two)."""
        self.tokenizer = tokenizer
        self._backend = stream_backend(tokenizer) if stream else None
        self._stream = DecodeStream(skip_special_tokens=True) if self._backend is not None else None
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # decoded text, cut before a stop string once one appears
        self.released = 0  # len(text) already handed out as deltas
        self._prefix_offset = 0
        self._read_offset = 0
        self._max_stop = max((len(s) for s in stop), default=0)
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _held_back(self) -> int:
        """Length of the longest tail of text that could still grow into a stop string."""
        for n in range(min(self._max_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def push(self, token: int) -> str:
        """Add one token; return the text it releases ('' while a character is incomplete or
        while the tail could be the start of a stop string).

        Once a stop string appears, ``stopped`` is True and the text is cut before it.
        """
        self.ids.append(token)
        if self.tokenizer is None or self.stopped:
            return ""
        grown = self._stream_delta(token) if self._stream is not None else self._window_delta()
        if not grown:
            return ""
        search_from = max(0, len(self.text) - self._max_stop + 1)
        self.text += grown
        if self.stop:
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = self.text[: min(hits)]
        end = len(self.text) if self.stopped else len(self.text) - self._held_back()
        delta = self.text[self.released : end]
        self.released = max(self.released, end)
        return delta

    def _window_delta(self) -> str:
        """The text the newest token adds ('' while it adds none or ends in half a character):
        decode ids[prefix_offset:read_offset] (text already released) and ids[prefix_offset:],
        and take what grew; the window then moves up to the newest token."""
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return full[len(prefix) :]

    def _stream_delta(self, token: int) -> str:
        """``_window_delta`` through the tokenizers library's DecodeStream. Should it refuse a
        step (its window no longer starts with what it released), the Python rule takes over from
        the newest token on, with nothing released lost."""
        try:
            return self._stream.step(self._backend, token) or ""
        except Exception:  # tokenizers raises its own error types; none may end a request
            self._stream = None
            self._prefix_offset, self._read_offset = len(self.ids) - 1, len(self.ids) - 1
            return self._window_delta()

    def flush(self) -> str:
        """At the end of generation: release what was held back for a possible stop string."""
        delta = self.text[self.released :]
        self.released = len(self.text)
        return delta
