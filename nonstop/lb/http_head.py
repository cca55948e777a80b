"""Byte-level helpers of the L7 proxy: request heads sent upstream, response heads sent back,
and the proxy's own error responses.

Role: build the upstream request head (hop-by-hop headers removed, X-Forwarded-For /
X-Forwarded-Proto / Via added, chunked framing re-declared), rewrite a backend's response
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


def request_head(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes, bytes]],
    *,
    client_ip: bytes,
    client_version: str,
    chunked: bool,
) -> bytes:
    """``headers`` are (lowercase name, name, value). Returns the head to send upstream."""
    drop: frozenset[bytes] = REQUEST_HOP_BY_HOP
    for lname, _, value in headers:
        if lname == b"connection":
            # Connection: <token> names more hop-by-hop headers of this message
            tokens = {t.strip().lower() for t in value.split(b",")} - {b"", b"close", b"keep-alive"}
            drop = drop | tokens
    forwarded_for = b""
    parts = [method, b" ", url, b" HTTP/1.1\r\n"]
    append = parts.append
    for lname, name, value in headers:
        if lname in drop:
            continue
        if lname == b"x-forwarded-for":
            forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
            continue
        if lname == b"x-forwarded-proto" or lname == b"via":
            continue  # replaced below (a client must not choose them)
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    append(b"X-Forwarded-For: ")
    append(forwarded_for + b", " + client_ip if forwarded_for else client_ip)
    append(b"\r\nX-Forwarded-Proto: http\r\nVia: ")
    append(b"1.0 nonstop\r\n" if client_version == "1.0" else b"1.1 nonstop\r\n")
    if chunked:
        append(b"Transfer-Encoding: chunked\r\n")
    append(b"\r\n")
    return b"".join(parts)


def response_head(head: bytes, *, close: bool, http10_keep_alive: bool) -> tuple[bytes, bool]:
    """Rewrite a backend response head (status line + header lines, ending CRLF, without the
    blank line). Returns (new head including the blank line, whether the body is framed by
    Content-Length or chunked encoding)."""
    lower = head.lower()
    framed = b"\ncontent-length:" in lower or b"\ntransfer-encoding:" in lower
    if any(b"\n" + h in lower for h in RESPONSE_HOP_BY_HOP):
        lines = head.split(b"\r\n")
        kept = [lines[0]]
        for line in lines[1:]:
            if line and not line.lower().startswith(RESPONSE_HOP_BY_HOP):
                kept.append(line)
        head = b"\r\n".join(kept) + b"\r\n"
    if close or not framed:
        return head + b"Connection: close\r\n\r\n", framed
    if http10_keep_alive:
        return head + b"Connection: keep-alive\r\n\r\n", framed
    return head + b"\r\n", framed


def status_of(head: bytes) -> int:
    """Status code from ``HTTP/1.1 200 OK...``; 0 when unreadable."""
    code = head[9:12]
    return int(code) if len(code) == 3 and code.isdigit() else 0
