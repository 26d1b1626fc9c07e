"""Incremental detokenization and stop-string matching, one committed token at a time.

Plain and speculative decoding both feed every committed token through the same ``TextTracker``;
that is what makes a stop string inside an accepted block cut exactly where plain decoding stops.
"""

from __future__ import annotations

from typing import Any


class TextTracker:
    """Turns a growing list of token ids into text deltas and finds stop strings.

    Decoding re-reads a short window of recent tokens (prefix_offset..end) instead of the whole
    sequence, and holds back text ending in U+FFFD (an incomplete UTF-8 sequence).
    """

    def __init__(self, tokenizer: Any | None, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
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
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        search_from = max(0, len(self.text) - self._max_stop + 1)
        self.text += full[len(prefix) :]
        if self.stop:
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = self.text[: min(hits)]
        end = len(self.text) if self.stopped else len(self.text) - self._held_back()
        delta = self.text[self.released : end]
        self.released = max(self.released, end)
        return delta

    def flush(self) -> str:
        """At the end of generation: release what was held back for a possible stop string."""
        delta = self.text[self.released :]
        self.released = len(self.text)
        return delta
