"""Service → balancer backend sync (level-triggered), on the shared balancer admin client.

Role: for every service, ``decide`` says which backends it wants (``SetBackends``); the applier
stores them in ``services/<svc>/backends`` and makes each running balancer match through its
admin API (docs/lb.md, ``nonstop/lb/client.py``): read its backends, add what is missing, remove
what should not be there, re-add what changed address. Level-triggered: it compares with what
the balancer *reports* every pass, so a restarted balancer or a lost request is repaired on the
next pass. ``remove`` takes one backend out at once (a cold move drains first).

Must not: decide which replicas are healthy (the core does) or hold state between passes
beyond "what I stored last" (to skip identical store writes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nonstop.core.controller.backends import Backend, lb_changes
from nonstop.lb.client import BalancerAdminClient, BalancerAdminError
from nonstop.store import keys
from nonstop.store.base import Store
from nonstop.store.records import BackendEntry, ServiceBackends, put

log = logging.getLogger("nonstop.controller.lb")


class LbSync:
    def __init__(self, store: Store, cluster: str, balancers: Mapping[str, str]) -> None:
        self.store, self.cluster = store, cluster
        self.balancers = dict(balancers)
        """service → admin address (``ip:port``) of its balancer."""
        self._clients: dict[str, BalancerAdminClient] = {}
        self._stored: dict[str, ServiceBackends] = {}
        self.errors: dict[str, str] = {}

    def _client(self, service: str) -> BalancerAdminClient | None:
        address = self.balancers.get(service)
        if address is None:
            return None
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = BalancerAdminClient(address)
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def store_backends(self, service: str, want: tuple[Backend, ...]) -> bool:
        record = ServiceBackends(backends=tuple(BackendEntry(name=b.name, address=b.address, weight=b.weight)
                                                for b in want))
        if self._stored.get(service) == record:
            return False
        await put(self.store, keys.service_backends(self.cluster, service), record)
        self._stored[service] = record
        return True

    async def remove(self, service: str, name: str) -> bool:
        """Take one backend out of the service's balancer now (before its guest is moved)."""
        client = self._client(service)
        if client is None:
            return False
        try:
            await client.remove_backend(service, name)
        except BalancerAdminError as exc:
            if exc.status is None:
                log.warning("balancer of %s: %s", service, exc)
            return False
        return True

    async def apply(self, service: str, want: tuple[Backend, ...]) -> list[str]:
        """Make the service's balancer hold exactly ``want``; returns what was done."""
        client = self._client(service)
        if client is None:
            return []
        done = []
        try:
            have = {str(b["name"]): str(b["address"]) for b in await client.get_backends(service)}
            changes = lb_changes(want, have)
            for backend in changes.add:
                await client.add_backend(service, backend.name, backend.address, backend.weight)
                done.append(f"+{backend.name}")
            for name in changes.remove:
                await client.remove_backend(service, name)
                done.append(f"-{name}")
            for backend in changes.readdress:
                try:
                    await client.remove_backend(service, backend.name)
                except BalancerAdminError as exc:
                    if exc.status != 404:
                        raise
                await client.add_backend(service, backend.name, backend.address, backend.weight)
                done.append(f"~{backend.name}")
            self.errors.pop(service, None)
        except BalancerAdminError as exc:
            if self.errors.get(service) != str(exc):
                log.warning("balancer of %s: %s", service, exc)
            self.errors[service] = str(exc)
        return done
