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

REQUEST_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
RESPONSE_HOP_BY_HOP = (b"connection:", b"keep-alive:", b"proxy-connection:", b"upgrade:", b"trailer:")
_RESPONSE_HOP_MARKERS = tuple(b"\n" + name for name in RESPONSE_HOP_BY_HOP)

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


_HEAD_CACHE: dict[tuple[bytes, bool, bool, bool], tuple[bytes, int, bool]] = {}
_HEAD_CACHE_MAX = 512


def response_head_cached(head: bytes, close: bool, http10_keep_alive: bool, no_body: bool) -> tuple[bytes, int, bool]:
    """``response_head`` memoized: a backend sends the same head (Date changes once a second)
    over and over, and one dict lookup is far cheaper than re-reading it in Python."""
    key = (head, close, http10_keep_alive, no_body)
    hit = _HEAD_CACHE.get(key)
    if hit is None:
        hit = response_head(head, close=close, http10_keep_alive=http10_keep_alive, no_body=no_body)
        if len(_HEAD_CACHE) >= _HEAD_CACHE_MAX:
            _HEAD_CACHE.clear()
        _HEAD_CACHE[key] = hit
    return hit
