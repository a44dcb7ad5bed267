"""Token ids to text deltas, one token at a time, with stop strings.

Incremental detokenization as vLLM and TGI do it: decode a short window of recent ids and emit
only what is new, holding back pieces that end in an incomplete UTF-8 character. Text that could
be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations


class TextStream:
    """Turns generated token ids into text deltas for one request."""

    def __init__(self, decode, stop: tuple[str, ...] = ()) -> None:
        self.decode = decode
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.held = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; returns the text that can be sent now (maybe ""). Sets ``stopped`` on a stop string."""
        self.ids.append(token_id)
        before = self.decode(self.ids[self.prefix_offset : self.read_offset])
        after = self.decode(self.ids[self.prefix_offset :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._filter(after[len(before) :])

    def _filter(self, delta: str) -> str:
        if not self.stop:
            return delta
        text = self.held + delta
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)]
        keep = max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, at the end of a generation that did not stop on a stop string."""
        rest = ""
        if self.read_offset < len(self.ids):  # an incomplete character at the very end
            before = self.decode(self.ids[self.prefix_offset : self.read_offset])
            rest = self.decode(self.ids[self.prefix_offset :])[len(before) :]
        text, self.held = self.held + rest, ""
        return text
