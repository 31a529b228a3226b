"""The one error type for refused input, wherever it is checked (a request at a model's door, its
program options, a trace file): the message starts with the offending field's path, so the sender
can fix the input without reading server logs."""
from __future__ import annotations


class RequestError(ValueError):
    """Refused input; the message starts with the offending field's path."""


# Ends the message of a refusal that another replica may not give (this one is busy or draining):
# over a gRPC stream Triton carries an error's message but not its status, so clients (and the
# client library's resubmission) recognise such refusals by these words.
RETRY_ELSEWHERE = "retry on another replica"
