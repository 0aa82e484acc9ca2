"""uvicorn's HTTP protocol with the two things a server facing untrusted clients needs and uvicorn lacks:
a deadline for a request's headers, and JSON for the errors it answers itself.

uvicorn (0.29 to 0.55 at least) has a keep-alive timeout between requests but none while a request's
headers arrive, so a client that opens a connection and sends nothing, or one header byte at a time,
holds it for ever (a slowloris). Its answer to bytes that are not HTTP is a plain-text 400, where every
other error of `convforge serve` is JSON. This subclass of its httptools protocol (the one
`uvicorn[standard]` picks) arms a timer when a connection opens and when each request begins, stops it
when the headers are complete, and answers 408 in JSON when it fires; the body has its own deadline in
the app (`--timeout-ms`, which holds a place in the queue while it is read).

The deadline is a process-wide setting (`set_header_seconds`): uvicorn builds one protocol object per
connection from a class, and with `--workers N` it starts each worker from that class's import path,
so the value reaches a worker through the launch in its environment, set before it accepts connections.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from convforge.deploy.http_input import HttpError

_HEADER_SECONDS = [10.0]  # replaced by set_header_seconds before the server starts


def set_header_seconds(seconds: float) -> None:
    """How long a request's headers may take to arrive, in this process, from the connection's opening
    or the request's first byte."""
    _HEADER_SECONDS[0] = float(seconds)


def json_error_bytes(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with convforge's JSON error body, that closes the connection."""
    body = json.dumps(HttpError(status, message).body()).encode()  # the app's own error body
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")  # fmt: skip
    return head.encode("ascii") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 with a header deadline and JSON protocol errors (see the module docstring)."""

    header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.header_timer is None:  # a later request on a kept-alive connection
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._stop_header_timer()
        message = (f"{msg.rstrip('.')}: the bytes sent are not an HTTP/1.1 request; send POST /v1/predict "
                   "with JSON or multipart/form-data")  # fmt: skip
        self.transport.write(json_error_bytes(400, "Bad Request", message))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._stop_header_timer()
        self.header_timer = self.loop.call_later(_HEADER_SECONDS[0], self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        seconds = _HEADER_SECONDS[0]
        message = (f"the request's headers did not arrive within {seconds:g} s of the connection or the "
                   "request's first byte (--timeout-ms); send the whole request at once")  # fmt: skip
        self.transport.write(json_error_bytes(408, "Request Timeout", message))
        self.transport.close()
