"""A server-sent events parser (the WHATWG event-stream format), fed text as it arrives."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    """The event's type (``"message"`` when the stream named none)."""
    data: str
    """Its ``data`` lines joined with newlines."""
    id: str | None = None


class EventParser:
    """Feed it chunks of text; it returns the events they complete.

    Lines end with CRLF, LF or CR (a CR at the end of a chunk waits for the next one, which may
    start with its LF); a line starting with ``:`` is a comment (heartbeats); ``data`` lines
    accumulate; a blank line dispatches the event, unless it has no data; ``retry`` and unknown
    fields are ignored.
    """

    def __init__(self) -> None:
        self._pieces: list[str] = []  # the text of the line not yet ended
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._last_id: str | None = None

    def feed(self, text: str) -> list[Event]:
        pending_cr = bool(self._pieces) and self._pieces[-1].endswith("\r")
        if not pending_cr and "\n" not in text and "\r" not in text:
            self._pieces.append(text)  # the middle of a long line (a big result): no rescanning
            return []
        buffer = "".join(self._pieces) + text
        self._pieces = []
        events: list[Event] = []
        start = 0
        while True:
            lf, cr = buffer.find("\n", start), buffer.find("\r", start)
            if cr != -1 and (lf == -1 or cr < lf):
                if cr == len(buffer) - 1:
                    break  # a CR last: the next chunk may start with its LF
                end, after = cr, cr + (2 if buffer[cr + 1] == "\n" else 1)
            elif lf != -1:
                end, after = lf, lf + 1
            else:
                break
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = after
        if start < len(buffer):
            self._pieces.append(buffer[start:])
        return events

    def flush(self) -> list[Event]:
        """At the end of the stream: a CR still waiting ends its line (an unfinished event, one
        without its blank line, is dropped, as the format says)."""
        if self._pieces and self._pieces[-1].endswith("\r"):
            return self.feed("\n")
        return []

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        if self._id is not None:
            self._last_id = self._id
        event = None
        if self._data:
            event = Event(self._event or "message", "\n".join(self._data), self._last_id)
        self._event, self._data, self._id = "", [], None
        return event
