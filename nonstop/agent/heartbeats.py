"""The agent's heartbeats: one UDP stream to the controller over every link of the host.

Role: find the controller's heartbeat endpoints (the controller publishes them in its
``leader`` record: one ``{link, address, port, prefix}`` per management network), match them
to this host's own IPv4 addresses (the agent lives in the host's namespace, so it reads its
interfaces with pyroute2), and run a ``nonstop.ha.heartbeat.HeartbeatSender`` with one
``HeartbeatLink`` per match — bound to the host's address on that network and pinned to its
device, so a cut cable silences exactly that link. The endpoints are re-read every second; the
sender is rebuilt when they (or the host's addresses) change. Interval from the spec
(``policies.ha.heartbeat_interval``).

It also reports, for self-fencing, when the controller last acknowledged anything, and since
when the current leader record (id, pid, lease) has been seen — a restarted controller gets a
fresh self-fence timeout to answer (nonstop/core/ha/selffence.py says why that is safe).

Must not: stop guests (selffence.py does) or decide liveness (the controller does).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence

from nonstop.core.ha.heartbeat import guests_digest
from nonstop.ha.heartbeat import HeartbeatLink, HeartbeatSender
from nonstop.store import keys
from nonstop.store.base import Store, StoreError
from nonstop.store.records import HeartbeatEndpoint, LeaderRecord, RecordError
from nonstop.store.state import get_spec
from nonstop.vital import vital

log = logging.getLogger("nonstop.agent.heartbeats")


def local_addresses() -> list[tuple[str, str]]:
    """(device, address) of every IPv4 address in this thread's network namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        out = []
        for msg in ipr.get_addr(family=socket.AF_INET):
            addr = msg.get_attr("IFA_ADDRESS")
            device = names.get(msg["index"]) or msg.get_attr("IFA_LABEL")
            if addr and device and device != "lo":
                out.append((str(device), str(addr)))
        return out


def match_links(endpoints: Sequence[HeartbeatEndpoint], addresses: list[tuple[str, str]]) -> list[HeartbeatLink]:
    """One link per controller endpoint that shares a subnet with one of our addresses."""
    links = []
    for ep in endpoints:
        net = ipaddress.ip_network(f"{ep.address}/{ep.prefix}", strict=False)
        for device, addr in addresses:
            if ipaddress.ip_address(addr) in net:
                links.append(HeartbeatLink(ep.link, (ep.address, ep.port), addr, device))
                break
    return links


class AgentHeartbeats:
    """``start()`` / ``await stop()``; ``last_ack()`` for self-fencing."""

    def __init__(self, store: Store, *, cluster: str, host: str, key: bytes,
                 status: Callable[[], dict[str, str]], state: Callable[[], str] = lambda: "ready") -> None:
        self.store, self.cluster, self.host, self.key = store, cluster, host, key
        self.status, self.state = status, state
        self.sender: HeartbeatSender | None = None
        self.interval = 0.1
        self.self_fence_timeout = 5.0
        self._links: list[HeartbeatLink] = []
        self._kept = False
        self._task: asyncio.Task[None] | None = None
        self._acked_before: float | None = None
        self.incarnation = time.time_ns()
        self._leader: tuple[object, ...] | None = None
        self.leader_since: float | None = None
        """Monotonic time the current leader record was first seen (refreshed while there is none)."""

    def _status(self) -> tuple[str, bytes]:
        return self.state(), guests_digest(self.status())

    def last_ack(self) -> float | None:
        """Monotonic time of the controller's last acknowledgement on any link (kept across rebuilds)."""
        acks = list(self.sender.last_ack.values()) if self.sender else []
        if self._acked_before is not None:
            acks.append(self._acked_before)
        return max(acks) if acks else None

    async def _refresh(self) -> None:
        spec = await get_spec(self.store, self.cluster)
        if spec is not None:
            self.interval = spec.spec.policies.ha.heartbeat_interval
            self.self_fence_timeout = spec.spec.policies.ha.self_fence_timeout
        kv = await self.store.get(keys.leader(self.cluster))
        endpoints: list[HeartbeatEndpoint] = []
        leader: tuple[object, ...] | None = None
        if kv is not None:
            with contextlib.suppress(RecordError):
                record = LeaderRecord.decode(kv.value)
                endpoints = list(record.heartbeat)
                leader = (record.id, record.pid, kv.lease)
        if leader is None or leader != self._leader:
            # No controller (nobody can declare us dead), or a new one (it has not heard us yet).
            self.leader_since = time.monotonic()
            if leader is not None and self._leader is not None:
                log.info("a new controller leads (%s, pid %s): its acknowledgements are awaited afresh", *leader[:2])
        self._leader = leader
        links = match_links(endpoints, await asyncio.to_thread(local_addresses)) if endpoints else []
        if not links and self.sender is not None:
            # No endpoint matched this time (no leader record yet, addresses being re-applied):
            # beating on the last good links costs nothing; going silent gets this host fenced.
            if not self._kept:
                self._kept = True
                log.warning("no heartbeat endpoint matches this host's addresses now; still beating on %s",
                            ", ".join(lk.name for lk in self._links))
            return
        self._kept = False
        if links == self._links and (self.sender is None or self.sender.interval == self.interval):
            return
        if self.sender is not None:
            self._acked_before = self.last_ack()
            await self.sender.stop()
            self.sender = None
        self._links = links
        if links:
            self.sender = HeartbeatSender(self.cluster, self.host, self.key, links, interval=self.interval,
                                          status=self._status, incarnation=self.incarnation)
            self.sender.start()
            log.info("heartbeats to the controller every %.0f ms on %s", self.interval * 1000,
                     ", ".join(f"{lk.name} ({lk.source} via {lk.device} -> {lk.target[0]})" for lk in links))

    async def _run(self) -> None:
        while True:
            try:
                await self._refresh()
            except (StoreError, OSError, ValueError) as exc:
                log.warning("heartbeat set-up: %s", exc)
            except Exception:  # never let this loop die: it is what restarts the sender
                log.exception("heartbeat set-up failed")
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self._task = vital(self._run(), "agent-heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.sender is not None:
            await self.sender.stop()
