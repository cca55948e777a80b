"""A running lab's balancers following the stored spec: services changed, added or removed live.

Role: ``nonstop up`` (or ``nonstop apply``) on a running cluster stores a new spec; the session
that runs the lab calls ``apply_services`` when the stored ``services`` differ from the ones its
balancers were started with. ``service_changes`` (pure) says what differs; then, per service:

- **changed** (algorithm, health checks, retries, timeouts, limits, mode, the 127.0.0.1 port):
  the balancer's config file is rewritten with the same settings the spec now has and the
  servers the controller last stored for the service, and the balancer reloads it on SIGHUP —
  the hot reload `nonstop lb` does for an operator: no connection dropped, backends keep their
  health; a changed 127.0.0.1 port gets a new forwarder (the old one is stopped after it);
- **added**: a balancer and its forwarder are started as ``up`` does; **removed**: both are
  stopped (in-flight requests get the balancer's graceful stop);
- when the set of services changed, the controller is restarted (a graceful stop: its lease is
  revoked and its successor leads at once) so it syncs the new set of balancers.

The running lab is seen through the ``RunningLab`` Protocol (defined here): cluster.py
starts balancers with this module's config writer, so this module never imports it.

Must not: touch guests or placement (the controller does), change hosts and switches (a
new lab: ``apply_to_running`` refuses those before anything is stored), or import the lab
cluster.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nonstop.core.spec import ClusterSpec, ServiceSpec
from nonstop.store.records import ServiceBackends

LB_ADMIN_BASE = 19000
"""A lab balancer's admin API port: this + the service's index, on the out namespace's sw0 address."""
LB_LISTEN_BASE = 18000
"""A lab balancer's listening port inside the out namespace: this + the service's index."""


class RunningLab(Protocol):
    """What ``apply_services`` uses of the running lab (``nonstop.lab.cluster.LabCluster``)."""

    cluster: str
    spec: ClusterSpec
    run_dir: Path
    services: dict[str, dict[str, Any]]
    """service → {"listen", "port", "admin", "pid", "index", "inner"} of its balancer."""

    def start_balancer(self, index: int, service: ServiceSpec) -> None: ...

    def stop_balancer(self, name: str) -> dict[str, Any]:
        """Stop the service's balancer and its 127.0.0.1 forwarder; what was recorded of them."""

    def restart_controller(self, kill: bool = True, delay: float = 0.0) -> int: ...


@dataclass(frozen=True)
class ServiceChanges:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> list[str]:
        return ([f"service {n} added" for n in self.added] + [f"service {n} removed" for n in self.removed]
                + [f"service {n} changed" for n in self.changed])


def service_changes(before: ClusterSpec, after: ClusterSpec) -> ServiceChanges:
    old = {s.name: s for s in before.services}
    new = {s.name: s for s in after.services}
    return ServiceChanges(
        added=tuple(n for n in new if n not in old),
        removed=tuple(n for n in old if n not in new),
        changed=tuple(n for n in new if n in old and new[n] != old[n]),
    )


def balancer_admin(index: int) -> str:
    """The admin API address of the lab balancer with this index (on the out namespace's sw0 leg)."""
    from nonstop.lab import names

    return f"{names.switch_address(0, names.OUT_OCTET)}:{LB_ADMIN_BASE + index}"


def balancer_config(index: int, service: ServiceSpec, servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``nonstop lb`` config of a lab service: its own settings, listening inside the out
    namespace, with ``servers`` (a placeholder when none: `nonstop lb` needs one to start; the
    controller's first sync replaces it)."""
    svc = service.model_dump(mode="json")
    svc.update({"listen": f"127.0.0.1:{LB_LISTEN_BASE + index}", "backends": None,
                "servers": servers or [{"name": "placeholder", "address": "127.0.0.1:9", "weight": 1}]})
    return {"admin": balancer_admin(index), "services": [svc]}


def write_balancer_config(run_dir: Path, index: int, service: ServiceSpec,
                          servers: list[dict[str, Any]] | None = None) -> Path:
    """Write the config file (JSON is YAML) into the lab's ``run_dir`` atomically; its path."""
    path = run_dir / f"lb-{service.name}.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(balancer_config(index, service, servers or [])))
    os.replace(tmp, path)
    return path


def apply_services(lab: RunningLab, spec: ClusterSpec, stored_backends: Mapping[str, ServiceBackends]) -> list[str]:
    """Make the lab's balancers match ``spec.services``; what was done (empty: nothing differed).
    ``stored_backends``: service → the backends the controller last stored for it."""
    from nonstop.lab.forward import start_forward, stop_forward

    changes = service_changes(lab.spec, spec)
    if not changes:
        return []
    wanted = {s.name: s for s in spec.services}
    done = []
    for name in changes.removed:
        info = lab.stop_balancer(name)
        done.append(f"service {name} removed (balancer and 127.0.0.1:{info['port']} stopped)")
    for name in changes.changed:
        service, info = wanted[name], lab.services[name]
        stored = stored_backends.get(name)
        servers = [{"name": b.name, "address": b.address, "weight": b.weight} for b in (stored.backends if stored else ())]
        write_balancer_config(lab.run_dir, int(info["index"]), service, servers)
        os.kill(int(info["pid"]), signal.SIGHUP)
        port = int(service.listen.rpartition(":")[2] or 0)
        if port and port != int(info["port"]):
            fwd = start_forward(lab.cluster, "out", ("127.0.0.1", int(info["inner"])), listen_port=port)
            stop_forward(lab.cluster, int(info["port"]))
            info.update(listen=fwd["listen"], port=fwd["port"])
        done.append(f"service {name} reloaded (http://{info['listen']}/)")
    for name in changes.added:
        index = max((int(i["index"]) for i in lab.services.values()), default=-1) + 1
        lab.start_balancer(index, wanted[name])
        done.append(f"service {name} added (http://{lab.services[name]['listen']}/)")
    lab.spec = spec
    if changes.added or changes.removed:
        lab.restart_controller(kill=False)
        done.append("controller restarted for the new set of balancers")
    return done
