"""Byte-level helpers of the L7 proxy: request heads sent upstream, response heads sent back,
and the proxy's own error responses.

Role: name the request's hop-by-hop headers (the client protocol builds the upstream head
as headers arrive, adding X-Forwarded-For / X-Forwarded-Proto / Via), rewrite a backend's response
head (hop-by-hop headers removed, our own Connection header for the client), and render
short 4xx/5xx answers with clear bodies. Kept apart from the protocol classes so the hot
path stays readable and these can be tested on bytes alone.

Must not: touch sockets or the event loop.
"""

from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

REQUEST_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
RESPONSE_HOP_BY_HOP = (b"connection:", b"keep-alive:", b"proxy-connection:", b"upgrade:", b"trailer:")
_RESPONSE_HOP_MARKERS = tuple(b"\n" + name for name in RESPONSE_HOP_BY_HOP)

PLAIN_PASS_EXCLUDED = REQUEST_HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"via", b"expect", b"content-length"}
"""Request headers (lowercase) that keep a request off the fast path: framing, hop-by-hop
names, forwarding headers the proxy rewrites, and Expect. A head without any of these
(and with Host, within the limits) goes upstream byte for byte plus our forwarding
headers."""



class _HeadProbe:
    """The fast path's validator: an httptools parser whose callbacks are C builtins (a
    dict's ``__setitem__`` collects the headers, a list's ``pop`` notes the end of the
    message), so validating a head runs no Python code per header."""

    __slots__ = ("headers", "on_header", "pending", "on_message_complete", "parser")

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.on_header = self.headers.__setitem__
        self.pending: list[bool] = []
        self.on_message_complete = self.pending.pop  # a second message in one read raises: not plain
        self.parser = HttpRequestParser(self)


_probe = _HeadProbe()


_PLAIN_MEMO: dict[bytes, tuple[bytes, bytes, int]] = {}
_PLAIN_MEMO_MAX = 256
_PLAIN_MEMO_HEAD_MAX = 2048


def plain_request(data: bytes, max_headers: int) -> tuple[bytes, bytes, int] | None:
    """``_plain_request`` memoized on the head's bytes: a client repeating a request
    (keep-alive loops, pollers, health checkers, load generators) is validated once; the
    memo is bounded and holds only heads that passed. Returns (method, head without its
    blank line, number of header fields) or None."""
    hit = _PLAIN_MEMO.get(data)
    if hit is not None:
        return hit if hit[2] <= max_headers else None
    plain = _plain_request(data, max_headers)
    if plain is not None and len(data) <= _PLAIN_MEMO_HEAD_MAX:
        if len(_PLAIN_MEMO) >= _PLAIN_MEMO_MAX:
            _PLAIN_MEMO.clear()
        _PLAIN_MEMO[data] = plain
    return plain


def _plain_request(data: bytes, max_headers: int) -> tuple[bytes, bytes, int] | None:
    """If ``data`` (ending in a blank line) is exactly one plain request head — valid by
    httptools, HTTP/1.1, keep-alive, with Host, at most ``max_headers`` fields and none of
    PLAIN_PASS_EXCLUDED except ``Connection: keep-alive`` (cut out) — return (method, the
    head without its blank line) to go upstream as is. Otherwise None: the caller parses
    ``data`` with its general parser, which answers every error. The caller checks the size
    limit first."""
    global _probe
    probe = _probe
    line_end = data.find(b"\r\n")
    # header names (and values) lowercased for the lookups; the request line stays as sent
    lowered = data[:line_end] + data[line_end:].lower()
    headers = probe.headers
    headers.clear()
    probe.pending.append(True)
    parser = probe.parser
    try:
        parser.feed_data(lowered)
    except (HttpParserError, HttpParserUpgrade):
        _probe = _HeadProbe()  # its state is unknown now
        return None
    connection = headers.get(b"connection")
    if probe.pending or data[line_end - 9 : line_end] != b" HTTP/1.1" or (connection is not None and connection.strip() != b"keep-alive"):
        # mid-message, or a message after which httptools refuses more (Connection: close,
        # HTTP/1.0; it forgets that flag by the time the message completes): start afresh
        _probe = _HeadProbe()
        return None
    fields = data.count(b"\n") - 2
    if b"host" not in headers or fields > max_headers:
        return None
    if not headers.keys().isdisjoint(PLAIN_PASS_EXCLUDED):
        # browsers and most libraries send "Connection: keep-alive": hop-by-hop, cut it out
        if connection is None or len(headers.keys() & PLAIN_PASS_EXCLUDED) > 1:
            return None
        at = lowered.find(b"\r\nconnection:")
        if lowered.find(b"\r\nconnection:", at + 2) >= 0:
            return None
        data = data[:at] + data[lowered.find(b"\r\n", at + 2) :]
    return parser.get_method(), data[:-2], fields


REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def error_response(status: int, detail: str, *, close: bool) -> bytes:
    body = f"{status} {REASONS.get(status, b'Error').decode()}: {detail}\n".encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Connection: close\r\n" if close else b"",
            b"Cache-Control: no-store\r\n\r\n",
            body,
        )
    )


BODY_NONE, BODY_CHUNKED, BODY_UNTIL_CLOSE = -1, -2, -3


class BadResponse(ValueError):
    """A backend response head the proxy will not forward (ambiguous framing)."""


def response_head(head: bytes, *, close: bool, http10_keep_alive: bool, no_body: bool) -> tuple[bytes, int, bool]:
    """Rewrite a backend response head (status line + header lines ending CRLF, without the
    blank line) for the client, and read its framing. Returns (head to send including the
    blank line, body length or BODY_NONE / BODY_CHUNKED / BODY_UNTIL_CLOSE, whether the
    backend connection may be reused). Raises BadResponse for ambiguous framing."""
    lower = head.lower()
    reusable = lower.startswith(b"http/1.1")
    te_at = lower.find(b"\ntransfer-encoding:")
    if te_at >= 0:
        if b"\ncontent-length:" in lower:
            raise BadResponse("response with both Content-Length and Transfer-Encoding")
        te_end = lower.find(b"\r", te_at + 1)
        te_line = lower[te_at : te_end if te_end >= 0 else len(lower)]
        body = BODY_CHUNKED if te_line.rstrip().endswith(b"chunked") else BODY_UNTIL_CLOSE
    else:
        at = lower.find(b"\ncontent-length:")
        if at >= 0:
            if lower.find(b"\ncontent-length:", at + 16) >= 0:
                raise BadResponse("response with more than one Content-Length")
            value = lower[at + 16 : lower.find(b"\r", at + 16)].strip()
            if not value.isdigit():
                raise BadResponse("response with an invalid Content-Length")
            body = int(value)
        else:
            body = BODY_UNTIL_CLOSE
    if no_body:
        body = BODY_NONE
    for name in _RESPONSE_HOP_MARKERS:
        at = lower.find(name)
        while at >= 0:
            # cut the whole line out by slicing (nginx always sends "Connection: keep-alive")
            end = lower.find(b"\n", at + 1)
            if name == b"\nconnection:":
                value = lower[at + 12 : end]
                if b"close" in value:
                    reusable = False
                elif b"keep-alive" in value and not reusable:
                    reusable = True  # an HTTP/1.0 backend that keeps the connection
            head = head[: at + 1] + head[end + 1 :]
            lower = lower[: at + 1] + lower[end + 1 :]
            at = lower.find(name, at)
    if body == BODY_UNTIL_CLOSE:
        reusable = False
    if close or body == BODY_UNTIL_CLOSE:
        return head + b"Connection: close\r\n\r\n", body, reusable
    if http10_keep_alive:
        return head + b"Connection: keep-alive\r\n\r\n", body, reusable
    return head + b"\r\n", body, reusable


RESPONSE_CLOSE, RESPONSE_HEAD, RESPONSE_HTTP10_KEEP_ALIVE = 1, 2, 4
"""Bits of a response-rewrite variant: close the client connection after this response;
the request was HEAD (no body follows whatever the head says); an HTTP/1.0 client asked
for keep-alive (so we say it explicitly)."""

RESPONSE_HEAD_CACHES: list[dict[bytes, tuple[bytes, int, bool, int]]] = [{} for _ in range(8)]
"""Per variant: backend head -> (head for the client, body length or BODY_*, reusable, status)."""
_HEAD_CACHE_MAX = 512


def response_head_cached(head: bytes, flags: int) -> tuple[bytes, int, bool, int]:
    """``response_head`` memoized per variant (``flags``: RESPONSE_* bits): a backend sends the
    same head (Date changes once a second) over and over, and one dict lookup is far cheaper
    than re-reading it in Python. Returns (rewritten head, body, reusable, status)."""
    cache = RESPONSE_HEAD_CACHES[flags]
    hit = cache.get(head)
    if hit is None:
        code = head[9:12]
        status = int(code) if code.isdigit() and head[12:13] in (b" ", b"\r") else 0
        no_body = bool(flags & RESPONSE_HEAD) or status in (204, 304) or 100 <= status < 200
        rewritten, body, reusable = response_head(
            head, close=bool(flags & RESPONSE_CLOSE), http10_keep_alive=bool(flags & RESPONSE_HTTP10_KEEP_ALIVE), no_body=no_body
        )
        hit = (rewritten, body, reusable, status)
        if len(cache) >= _HEAD_CACHE_MAX:
            cache.clear()
        cache[head] = hit
    return hit
