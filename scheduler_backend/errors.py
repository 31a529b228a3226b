"""The one error type for refused input, wherever it is checked (a request at a model's door, its
program options, a trace file): the message starts with the offending field's path, so the sender
can fix the input without reading server logs."""
from __future__ import annotations


class RequestError(ValueError):
    """Refused input; the message starts with the offending field's path."""
