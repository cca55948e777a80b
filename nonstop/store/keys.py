"""The key layout of the state store: every key nonstop reads or writes is built here.

Role: one function per kind of key, so the layout lives in one place (documented in
docs/store.md) and no module formats key strings of its own. Everything of one cluster lives
under ``/nonstop/<cluster>/``; desired state (what the spec asks for) and observed state (what
agents report) are separate keys, so a controller can compare them level-driven.

Must not: talk to a store or know value formats beyond the comment on each key.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/nonstop/"
EVENT_SEQ_DIGITS = 20


def _part(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f'expected a key component without "/", got "{name}"')
    return name


def cluster_prefix(cluster: str) -> str:
    """``/nonstop/<cluster>/``: everything of one cluster (watch it to see every change)."""
    return f"{ROOT}{_part(cluster)}/"


def spec(cluster: str) -> str:
    """The desired cluster spec: ``ClusterSpec.model_dump(mode="json")`` as JSON."""
    return f"{cluster_prefix(cluster)}spec"


def leader(cluster: str) -> str:
    """The active controller's id, attached to its lease (leader election by create-if-absent)."""
    return f"{cluster_prefix(cluster)}leader"


# ----------------------------------------------------------------------------- hosts


def hosts_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}hosts/"


def host_desired(cluster: str, host: str) -> str:
    """What the controller wants of the host (state: up / maintenance, patch level ...)."""
    return f"{hosts_prefix(cluster)}{_part(host)}/desired"


def host_observed(cluster: str, host: str) -> str:
    """What the host's agent reports (liveness, NIC/team state, components, guests running)."""
    return f"{hosts_prefix(cluster)}{_part(host)}/observed"


def host_components(cluster: str, host: str) -> str:
    """The host's hardware as the component watcher last read it from the BMC: health,
    per-group redundancy, policy state and whether placement may use the host
    (docs/components.md)."""
    return f"{hosts_prefix(cluster)}{_part(host)}/components"


def host_alive(cluster: str, host: str) -> str:
    """Present while the host's agent keeps its lease alive; vanishes when the agent stops."""
    return f"{hosts_prefix(cluster)}{_part(host)}/alive"


# ---------------------------------------------------------------------------- guests


def guests_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}guests/"


def guest_desired(cluster: str, guest: str) -> str:
    """The guest's placement and size as decided by the controller (host, vcpus, memory, epoch)."""
    return f"{guests_prefix(cluster)}{_part(guest)}/desired"


def guest_observed(cluster: str, guest: str) -> str:
    """The guest's state as reported by the agent running it."""
    return f"{guests_prefix(cluster)}{_part(guest)}/observed"


def guest_lock(cluster: str, guest: str) -> str:
    """Held (lease-bound) by whoever is mid-way through an operation on the guest."""
    return f"{guests_prefix(cluster)}{_part(guest)}/lock"


def guest_runner(cluster: str, guest: str) -> str:
    """The host whose agent runs the guest, on that agent's lease: at most one running copy."""
    return f"{guests_prefix(cluster)}{_part(guest)}/runner"


def epochs_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}epoch/"


def epoch(cluster: str, guest: str) -> str:
    """The guest's fencing token: an integer bumped on every failover; a host runs the guest only
    while its copy of the epoch is the current one."""
    return f"{epochs_prefix(cluster)}{_part(guest)}"


# ---------------------------------------------------------------- services, network


def services_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}services/"


def service_backends(cluster: str, service: str) -> str:
    """The service's backend list (address, port, weight, state) for the load balancer."""
    return f"{services_prefix(cluster)}{_part(service)}/backends"


def ipam_prefix(cluster: str, network: str | None = None) -> str:
    base = f"{cluster_prefix(cluster)}ipam/"
    return base if network is None else f"{base}{_part(network)}/"


def ipam(cluster: str, network: str, ip: str) -> str:
    """An allocated address on a network; the value names its owner (guest and NIC)."""
    return f"{ipam_prefix(cluster, network)}{_part(ip)}"


# ------------------------------------------------------------------- events and ops


def events_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}events/"


def event(cluster: str, seq: int) -> str:
    """One entry of the cluster's event log; ``seq`` is zero-padded so keys sort in order."""
    if seq < 0:
        raise ValueError(f"expected a non-negative sequence number, got {seq}")
    return f"{events_prefix(cluster)}{seq:0{EVENT_SEQ_DIGITS}d}"


def ops_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}ops/"


def op(cluster: str, op_id: str) -> str:
    """A persisted multi-step operation (failover, migration, rolling patch) and its progress."""
    return f"{ops_prefix(cluster)}{_part(op_id)}"


# ------------------------------------------------------------ intents and memory


def intents_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}intents/"


def intent_prefix(cluster: str, intent_id: str) -> str:
    """``intents/<id>/``: ``request`` (written once by whoever asks) and ``outcome`` (written by
    the leading controller only); nonstop/store/intents.py."""
    return f"{intents_prefix(cluster)}{_part(intent_id)}/"


def controller_memory(cluster: str) -> str:
    """The controller's own memory (failback homes, host failures, up-since, back-off): written
    by the leader so that a successor resumes failback windows exactly."""
    return f"{cluster_prefix(cluster)}controller/memory"


# ------------------------------------------------------ operation control, host requests


def op_control(cluster: str, op_id: str) -> str:
    """``op-control/<id>/``: records about operation ``op_id`` that are not the operation itself
    (kept out of ``ops/``, so whoever lists ``ops/`` sees operation records only)."""
    return f"{cluster_prefix(cluster)}op-control/{_part(op_id)}/"


def op_lock(cluster: str, op_id: str) -> str:
    """Held (lease-bound) by the one process running operation ``op_id`` (a rolling patch); a
    killed runner's lock goes with its lease."""
    return f"{op_control(cluster, op_id)}lock"


def op_abort(cluster: str, op_id: str) -> str:
    """Someone asks the process running operation ``op_id`` to stop (it polls for it, stops its
    steps, records the abort and deletes this key)."""
    return f"{op_control(cluster, op_id)}abort"


def host_patch(cluster: str, host: str) -> str:
    """The patch executor's current request to the host's agent (patch or self-test) and the
    agent's result in the same record (nonstop/agent/patch.py)."""
    return f"{hosts_prefix(cluster)}{_part(host)}/patch"


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedKey:
    cluster: str
    kind: str
    """``spec``, ``leader``, ``hosts``, ``guests``, ``services``, ``ipam``, ``events``, ``ops``, ``epoch``,
    ``intents`` or ``controller``."""
    name: str = ""
    """The host, guest, service, network, event seq or op id."""
    leaf: str = ""
    """``desired``, ``observed``, ``alive``, ``runner``, ``lock``, ``backends``, or the IP for ipam keys."""


def parse(key: str) -> ParsedKey:
    """The parts of a key built by this module (the inverse of the functions above)."""
    if not key.startswith(ROOT):
        raise ValueError(f'expected a key under {ROOT}, got "{key}"')
    parts = key[len(ROOT) :].split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f'expected /nonstop/<cluster>/<kind>[/...], got "{key}"')
    cluster, kind, *rest = parts
    if len(rest) > 2:
        raise ValueError(f'too many parts in "{key}"')
    return ParsedKey(cluster, kind, rest[0] if rest else "", rest[1] if len(rest) > 1 else "")
