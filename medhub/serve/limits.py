"""Connection limits of ``medhub serve``: defences against slow and idle clients.

uvicorn's h11 protocol has a keep-alive timeout but no timeout for a request's headers or body, and its
``limit_concurrency`` answers 503 only once a request's headers are complete, so a client that opens
connections and never finishes its headers ("slowloris") holds a file descriptor each until the server
runs out. :func:`guarded_protocol` builds an h11 protocol class that adds, per connection:

- a header timeout: the request line and headers must arrive within ``header_timeout`` seconds of the
  connection opening (or of the previous response ending, on a kept-alive connection);
- a body timeout: no more than ``body_timeout`` seconds between two pieces of a request body (while the
  server is not itself holding the reading back);
- a send timeout: a client that stops reading a response for ``send_timeout`` seconds is dropped;
- keep-alive limits: an idle kept-alive connection closes after ``keep_alive_timeout`` seconds (uvicorn's
  own timer), and after ``keep_alive_requests`` requests the response says ``Connection: close``;
- a connection limit: beyond ``max_connections`` open connections, the connection that has waited
  longest for its request headers is dropped to make room (a real client sends its headers at once,
  so half-sent headers are what gets dropped); if every connection is busy with a request, the new one
  gets a 503 in the Hub's error shape.

One watchdog task per server checks every connection about four times per ``header_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
import weakref
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import H11Protocol

from medhub.errors import UsageError

log = logging.getLogger(__name__)
#: Connections accepted in one go (the listen backlog; asyncio accepts up to this many per wake-up,
#: before any of them can be dropped to make room).
ACCEPT_BACKLOG = 128
#: File descriptors kept free beyond the connection limit: one accept burst, plus the store, the logs
#: and the worker threads.
FD_RESERVE = ACCEPT_BACKLOG + 128


@dataclass(frozen=True)
class ConnectionLimits:
    """Limits for each client connection (seconds, counts); the defaults hold against 1,100 half-sent headers.

    Attributes:
        header_timeout: seconds from connection (or previous response) to the end of the request headers.
        body_timeout: longest pause, in seconds, between two pieces of a request body.
        send_timeout: longest time, in seconds, a client may leave a response unread.
        keep_alive_timeout: seconds an idle kept-alive connection stays open.
        keep_alive_requests: requests served on one connection before it is closed.
        max_connections: open connections at most; beyond it, half-sent headers are dropped first.
        max_header_bytes: largest request line plus headers (h11's incomplete-event limit); 431/400 beyond.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    keep_alive_requests: int = 1000
    max_connections: int = 1024
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "send_timeout", "keep_alive_timeout"):
            if not 0 < getattr(self, name) <= 24 * 3600:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 86400 seconds")
        if self.keep_alive_requests < 1 or self.max_connections < 1 or self.max_header_bytes < 4096:
            raise UsageError(
                "--keep-alive-requests and --max-connections must be at least 1 (headers at least 4 KiB)"
            )


def raise_fd_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise the soft open-files limit so that ``max_connections`` fit; lower the limit if they cannot.

    Returns the limits to use (``max_connections`` reduced, with a warning, when the hard limit is low).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + FD_RESERVE
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    fitting = soft - FD_RESERVE
    if fitting < limits.max_connections:
        log.warning(
            "only %d connections fit under the open-files limit (%d): raise LimitNOFILE (ulimit -n)",
            max(fitting, 16),
            soft,
        )
        return ConnectionLimits(**{**limits.__dict__, "max_connections": max(fitting, 16)})
    return limits


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"x-error-message: too many open connections, try again in a moment\r\n"
)
_BUSY_BODY = json.dumps({"error": "too many open connections, try again in a moment"}).encode()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the timeouts and limits of :class:`ConnectionLimits` (see the module)."""

    limits = ConnectionLimits()
    _watchdogs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._waiting_since = self._last_data = time.monotonic()
        self._write_paused_since: float | None = None
        self._requests = 0
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=1 << 20)
        self._start_watchdog()
        if len(self.connections) > self.limits.max_connections:
            open_now = sum(1 for c in self.connections if not c.transport.is_closing())
            if open_now > self.limits.max_connections:
                self._make_room()

    def _start_watchdog(self) -> None:
        state = self.server_state
        if state not in self._watchdogs:
            self._watchdogs[state] = self.loop.create_task(_watch(state.connections, self.limits))

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _make_room(self) -> None:
        """Drop the connection waiting longest for its headers, or refuse this one with a 503."""
        waiting = [
            c
            for c in self.connections
            if c is not self and not c.transport.is_closing() and c._waiting_for_headers()
        ]
        if waiting:
            victim = min(waiting, key=lambda c: c._waiting_since)
            log.info("connection limit reached: dropped a connection that sent no complete request")
            victim.transport.close()
            return
        log.warning("connection limit (%d) reached: refused a connection", self.limits.max_connections)
        self.transport.write(_BUSY + b"content-length: %d\r\n\r\n" % len(_BUSY_BODY) + _BUSY_BODY)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A malformed request (or headers over ``max_header_bytes``): 400 in the Hub's error shape."""
        message = f"{msg} Check the request line and headers (at most {self.limits.max_header_bytes} bytes)."
        body = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"connection", b"close"),
            (b"x-error-message", message.encode()),
        ]
        try:
            output = self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
            output += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
            self.transport.write(output)
        except h11.LocalProtocolError:  # a response had already started: nothing more can be said
            pass
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._last_data = time.monotonic()
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not None and self.cycle is not before:
            self._requests += 1
            if self._requests >= self.limits.keep_alive_requests:
                self.cycle.keep_alive = False
                self.headers.append(CLOSE_HEADER)  # the response then says "Connection: close"

    def on_response_complete(self) -> None:
        self._waiting_since = time.monotonic()
        super().on_response_complete()

    def pause_writing(self) -> None:
        self._write_paused_since = time.monotonic()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._write_paused_since = None
        super().resume_writing()

    def check_timeouts(self, now: float) -> str | None:
        """Close the connection if one of its timeouts has passed; returns which one (or None)."""
        if self.transport is None or self.transport.is_closing():
            return None
        expired = None
        if self._waiting_for_headers() and now - self._waiting_since > self.limits.header_timeout:
            expired = "header"
        elif (
            self.conn.their_state is h11.SEND_BODY
            and not self.flow.read_paused
            and now - self._last_data > self.limits.body_timeout
        ):
            expired = "body"
        elif (
            self._write_paused_since is not None and now - self._write_paused_since > self.limits.send_timeout
        ):
            expired = "send"
        if expired:
            log.info("closed a connection: %s timeout", expired)
            self.transport.abort()  # close() would wait to flush what a stalled client never reads
        return expired


async def _watch(connections: set, limits: ConnectionLimits) -> None:
    """Check every connection's timeouts, about four times per shortest timeout."""
    tick = max(0.05, min(1.0, limits.header_timeout, limits.body_timeout, limits.send_timeout) / 4)
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        for connection in list(connections):
            if isinstance(connection, GuardedH11Protocol):
                connection.check_timeouts(now)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log asyncio's "out of system resource" accept errors as one line, without a traceback.

    asyncio already retries accepting a second later; the connection limit frees descriptors meanwhile.
    """
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if "accept" in str(context.get("message", "")) and isinstance(context.get("exception"), OSError):
            log.warning("accepting connections paused for a second: %s", context["exception"])
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass using ``limits`` (pass it as uvicorn's ``http=``)."""
    return type("MedhubH11Protocol", (GuardedH11Protocol,), {"limits": limits})
