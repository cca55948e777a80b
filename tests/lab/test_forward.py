"""The 127.0.0.1 -> lab forwarder: in-process and as a lab-managed process."""

from __future__ import annotations

import asyncio

import pytest

from nonstop.lab import fabric, forward, names
from nonstop.lab.probe import TcpResponder
from nonstop.net import netns

from .conftest import make_spec

pytestmark = pytest.mark.root


async def _get(port: int, payload: bytes = b"GET / HTTP/1.0\r\n\r\n") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    return data


async def test_forwarder_reaches_inside_and_is_bounded(cluster: str) -> None:
    spec = make_spec(cluster, teamed=False)
    await asyncio.to_thread(fabric.up, spec, False)
    ctl = names.ctl_ns(cluster)
    responder = await asyncio.to_thread(TcpResponder, names.out_ns(cluster), "0.0.0.0", 7001, "out")
    fwd = forward.Forwarder(ctl, ("198.18.0.254", 7001), max_connections=2)
    port = await fwd.start()
    try:
        answers = await asyncio.gather(*(_get(port, b"") for _ in range(2)))
        assert answers == [b"out 198.18.0.1\n"] * 2
        # an unreachable target closes the client connection instead of hanging
        dead = forward.Forwarder(ctl, ("198.18.0.254", 7999), connect_timeout=0.5)
        dead_port = await dead.start()
        assert await _get(dead_port, b"") == b""
        await dead.close()
        assert fwd.total == 2 and fwd.active == 0
    finally:
        await fwd.close()
        await asyncio.to_thread(responder.close)
    with pytest.raises(ValueError):
        forward.Forwarder(ctl, ("198.18.0.254", 80), listen=("0.0.0.0", 0))


def test_lab_forward_process_is_stopped_by_down(cluster: str) -> None:
    spec = make_spec(cluster, teamed=False)
    fabric.up(spec)
    record = forward.start_forward(cluster, "ctl", ("198.18.0.254", 80))
    answer = asyncio.run(_get(record["port"]))
    assert answer.endswith(b"out 198.18.0.1\n")
    host_record = forward.start_forward(cluster, "host2", ("198.18.1.254", 80))
    assert asyncio.run(_get(host_record["port"])).endswith(b"out 198.18.1.11\n")
    assert forward.stop_forward(cluster, host_record["port"])
    assert not netns.alive(host_record["pid"])
    with pytest.raises(LookupError):
        forward.start_forward(cluster, "nowhere", ("198.18.0.254", 80))
    fabric.down(cluster)
    assert not netns.alive(record["pid"])
