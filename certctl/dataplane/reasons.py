"""The reason phrase of each HTTP status code, as RFC 9110 names it.

Used for the status lines the data plane writes itself: its own answers (and
their plain-text bodies) on either HTTP version, and an HTTP/2 backend's
answers relayed to HTTP/1.1 clients (HTTP/2 has no reason phrase).
"""

from __future__ import annotations

import http
from typing import Final

# Where Python's table (3.11's; 3.13 has RFC 9110's) still has RFC 7231's phrases.
_RFC_9110: Final = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}
REASONS: Final[dict[int, bytes]] = {
    status.value: _RFC_9110.get(status.value, status.phrase).encode()
    for status in http.HTTPStatus
}
