"""nonstop/net/netns.py runs nothing in a forked Python child.

An agent on an etcd store has gRPC threads; a fork there that runs Python before exec (pyroute2's
``IPRoute(netns=...)`` helper, ``preexec_fn``) crashed children with SIGSEGV and failed guest
starts. Python's at-fork hooks fire for exactly those forks (``os.fork`` and ``preexec_fn``), and
not for subprocesses forked in C straight into exec — so counting them tells the two apart.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from nonstop.net import netns

pytestmark = pytest.mark.root

_forks: list[int] = []
os.register_at_fork(before=lambda: _forks.append(os.getpid()))


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"nonstop-nf{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def test_netlink_run_and_spawn_reach_the_namespace_without_a_python_fork(namespace: str) -> None:
    before = len(_forks)
    assert netns.run(namespace, ["ip", "link", "add", "nfa0", "type", "veth", "peer", "name", "nfb0"]).returncode == 0
    with netns.iproute(namespace) as ipr:
        index = ipr.link_lookup(ifname="nfa0")
        assert index, "the veth made by run() is seen through iproute() in the same namespace"
        ipr.link("set", index=index[0], state="up")
    listed = netns.run(namespace, ["ip", "-o", "link", "show", "nfa0"]).stdout.decode()
    assert "nfa0" in listed and ",UP" in listed
    proc = netns.spawn(namespace, ["sleep", "30"])
    try:
        assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == netns.inode(namespace)
        assert os.getsid(proc.pid) == proc.pid, "spawned detached (its own session)"
    finally:
        proc.kill()
        proc.wait(5)
    assert len(_forks) == before, "a Python-level fork happened (preexec_fn or a forked helper)"


def test_a_new_namespace_is_really_separate(namespace: str) -> None:
    assert os.stat(netns.netns_path(namespace)).st_ino == netns.inode(namespace)
    assert netns.inode(namespace) != os.stat("/proc/self/ns/net").st_ino
    with netns.iproute(namespace) as ipr:
        assert [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]


def test_a_missing_namespace_is_named_in_the_error() -> None:
    missing = f"nonstop-nf{secrets.token_hex(3)}-absent"
    for call in (lambda: netns.run(missing, ["true"]), lambda: netns.spawn(missing, ["true"]),
                 lambda: netns.open_iproute(missing)):
        with pytest.raises(FileNotFoundError, match=missing):
            call()


def test_run_passes_input_and_times_out(namespace: str) -> None:
    assert netns.run(namespace, ["cat"], input=b"hello").stdout == b"hello"
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        netns.run(namespace, ["sleep", "5"], timeout=0.3)
    assert time.monotonic() - start < 3
