"""The L7 proxy's byte-level helpers on bytes alone: which request heads take the fast path
(and what goes upstream for them), and the memoized response-head rewrite."""

from __future__ import annotations

import pytest

from nonstop.lb.http_head import (
    BODY_CHUNKED,
    BODY_NONE,
    RESPONSE_CLOSE,
    RESPONSE_HEAD,
    plain_request,
    response_head_cached,
)

PLAIN = {
    "wrk": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
    "browser-keep-alive": (
        b"GET /a?b=c HTTP/1.1\r\nHost: t\r\nUser-Agent: x/1\r\nConnection: Keep-Alive\r\nAccept: */*\r\n\r\n",
        b"GET /a?b=c HTTP/1.1\r\nHost: t\r\nUser-Agent: x/1\r\nAccept: */*\r\n",
    ),
    "head": (b"HEAD /h HTTP/1.1\r\nhost: t\r\n\r\n", b"HEAD /h HTTP/1.1\r\nhost: t\r\n"),
    "name-starting-like-te": (b"GET / HTTP/1.1\r\nHost: t\r\nTeX: 1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: t\r\nTeX: 1\r\n"),
}

NOT_PLAIN = {
    "content-length": b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    "transfer-encoding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    "te-obfuscated": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n",
    "connection-close": b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "connection-names-a-header": b"GET / HTTP/1.1\r\nHost: t\r\nConnection: X-Secret\r\nX-Secret: 1\r\n\r\n",
    "connection-twice": b"GET / HTTP/1.1\r\nHost: t\r\nConnection: x-a\r\nConnection: keep-alive\r\n\r\n",
    "xff": b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    "via": b"GET / HTTP/1.1\r\nHost: t\r\nVia: 1.0 evil\r\n\r\n",
    "te": b"GET / HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    "expect": b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\nX: 1\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\nHost: t\r\n\r\n",
    "http10-keep-alive": b"GET / HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
    "two-requests": b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n",
    "space-in-name": b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
    "bad-version": b"GET / HTTP/9.7\r\nHost: t\r\n\r\n",
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
    "too-many-headers": b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5)) + b"\r\n",
}


@pytest.mark.parametrize("name", PLAIN)
def test_plain_heads_go_upstream_as_sent_minus_hop_by_hop(name):
    data, upstream = PLAIN[name]
    fields = data.count(b"\n") - 2
    assert plain_request(data, max_headers=4) == (data.split(b" ", 1)[0], upstream, fields)
    assert plain_request(data, max_headers=4) == (data.split(b" ", 1)[0], upstream, fields)  # memoized
    assert plain_request(data, max_headers=fields - 1) is None  # the limit holds for a memoized head too


@pytest.mark.parametrize("name", NOT_PLAIN)
def test_every_other_head_takes_the_general_path(name):
    assert plain_request(NOT_PLAIN[name], max_headers=4) is None
    # and a refused head never leaves the shared validator in a state that refuses the next
    assert plain_request(PLAIN["wrk"][0], max_headers=4) is not None


def test_response_head_rewrite_is_memoized_per_variant():
    head = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
    rewritten, body, reusable, status = response_head_cached(head, 0)
    assert (rewritten, body, reusable, status) == (b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\n", 5, True, 200)
    assert response_head_cached(head, 0)[0] is rewritten
    closing = response_head_cached(head, RESPONSE_CLOSE)
    assert closing[0].endswith(b"Connection: close\r\n\r\n") and closing[2]
    assert response_head_cached(head, RESPONSE_HEAD)[1] == BODY_NONE
    no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n"
    assert response_head_cached(no_content, 0)[1:] == (BODY_NONE, True, 204)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    assert response_head_cached(chunked, 0)[1] == BODY_CHUNKED
