"""Test harness for lab clusters: a client loading a service, an instance checker, store reads.

- ``Load``: a thread that GETs the service through its 127.0.0.1 forwarder as fast as it can
  (keep-alive off: a new connection per request, like the bench), counting successes per
  host and every failure with its error.
- ``InstanceChecker``: every 50 ms, for every guest, on which hosts a process of it exists
  (non-empty cgroup ``nonstop.<cluster>.host-<h>/nonstop.<cluster>.<guest>``); records the
  worst moment (most hosts at once).
- ``ClusterProbe``: synchronous reads of the store (events, controller status, records).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from nonstop.lab.cluster import LabCluster
from nonstop.lab.cluster_procs import host_cgroup_dirs
from nonstop.store import intents, keys, open_store
from nonstop.store.events import read_events


class Load:
    def __init__(self, port: int, path: str = "/", timeout: float = 10.0) -> None:
        self.url = f"http://127.0.0.1:{port}{path}"
        self.timeout = timeout
        self.hosts: collections.Counter[str] = collections.Counter()
        self.ok = 0
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:  # noqa: S310
                    body = json.loads(resp.read())
                self.ok += 1
                self.hosts[str(body.get("host"))] += 1
            except Exception as exc:  # every failure counts, whatever it is
                detail = repr(exc)
                if isinstance(exc, urllib.error.HTTPError):
                    detail += " " + exc.read()[:200].decode(errors="replace")
                self.failures.append((time.time(), detail))
            time.sleep(0.005)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


class InstanceChecker:
    def __init__(self, lab: LabCluster, guests: list[str], every: float = 0.05) -> None:
        self.lab, self.guests, self.every = lab, guests, every
        self.samples = 0
        self.worst: dict[str, tuple[int, list[str]]] = {g: (0, []) for g in guests}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def where(self, guest: str) -> list[str]:
        found = []
        for host in self.lab.spec.hosts:
            for d in host_cgroup_dirs(self.lab.cluster, host.name):
                if not d.name.startswith("nonstop.") or "pids" not in str(d):
                    continue
                procs = Path(d) / f"nonstop.{self.lab.cluster}.{guest}" / "cgroup.procs"
                try:
                    if procs.read_text().split():
                        found.append(host.name)
                except OSError:
                    pass
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            for guest in self.guests:
                hosts = self.where(guest)
                if len(hosts) > self.worst[guest][0]:
                    self.worst[guest] = (len(hosts), hosts)
            self.samples += 1
            time.sleep(self.every)

    @property
    def max_instances(self) -> int:
        return max((n for n, _ in self.worst.values()), default=0)

    def __enter__(self) -> InstanceChecker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class ClusterProbe:
    def __init__(self, lab: LabCluster) -> None:
        self.lab = lab

    def _run(self, coro_fn: Any) -> Any:
        async def go() -> Any:
            store = open_store(self.lab.store_url)
            try:
                return await coro_fn(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def maintenance(self, host: str, enter: bool, evacuate: bool = True, timeout: float = 10.0) -> Any:
        """What an operator's ``nonstop maintenance enter|exit`` does: an intent, answered by the controller."""
        async def ask(store: Any) -> Any:
            req = await intents.submit(store, self.lab.cluster, "maintenance", requester="test", reason="test",
                                       host=host, enter=enter, evacuate=evacuate)
            return await intents.wait_outcome(store, self.lab.cluster, req.id, timeout=timeout)

        outcome = self._run(ask)
        assert outcome is not None and outcome.status == "done", outcome
        return outcome

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [e.data() for e in self._run(lambda s: read_events(s, self.lab.cluster)) if e.at >= since]

    def status(self) -> dict[str, Any]:
        return self._run(lambda s: s.get_json(keys.leader(self.lab.cluster))) or {}

    def desired(self) -> dict[str, dict[str, Any]]:
        async def read(store: Any) -> dict[str, dict[str, Any]]:
            out = {}
            for kv in await store.list(keys.guests_prefix(self.lab.cluster)):
                p = keys.parse(kv.key)
                if p.leaf == "desired":
                    out[p.name] = json.loads(kv.value)
            return out

        return self._run(read)

    def observed(self) -> dict[str, dict[str, Any]]:
        async def read(store: Any) -> dict[str, dict[str, Any]]:
            out = {}
            for kv in await store.list(keys.guests_prefix(self.lab.cluster)):
                p = keys.parse(kv.key)
                if p.leaf == "observed":
                    out[p.name] = json.loads(kv.value)
            return out

        return self._run(read)

    def backends(self, service: str) -> list[str]:
        doc = self._run(lambda s: s.get_json(keys.service_backends(self.lab.cluster, service))) or {}
        return sorted(b["name"] for b in doc.get("backends", []))

    def put_json(self, key: str, value: Any) -> None:
        from nonstop.store.base import encode_json

        self._run(lambda s: s.put(key, encode_json(value)))

    def running(self) -> dict[str, str]:
        """guest → host, for guests observed running where they are assigned."""
        desired, observed = self.desired(), self.observed()
        return {g: d["host"] for g, d in desired.items()
                if observed.get(g, {}).get("state") == "running" and observed[g].get("host") == d["host"]}

    def wait_for(self, what: str, predicate: Any, timeout: float, every: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def first(self, kind: str, subject: str | None = None, since: float = 0.0) -> dict[str, Any] | None:
        for e in self.events(since):
            if e["kind"] == kind and (subject is None or e["subject"] == subject):
                return e
        return None
