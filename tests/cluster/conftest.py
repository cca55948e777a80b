"""Lab clusters for the integration tests (root): each fixture builds one with a random name
and removes everything it made afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nonstop.core.spec import ClusterSpec
from nonstop.lab.cluster import LabCluster

from .harness import ClusterProbe


def _free_pair() -> int:
    """A port P on 127.0.0.1 with P + 1 free too (etcd's client and peer ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@contextlib.contextmanager
def etcd_store(spec: ClusterSpec, tmp: str) -> Iterator[str]:
    """A private etcd on 127.0.0.1:P, relayed to 127.0.0.1:P inside the cluster's ctl and host
    namespaces (nonstop/up/storelink.py, as ``nonstop up --store etcd://`` does), so the
    controller and every agent use the same URL and a host's store traffic crosses its own
    namespace, where a partition can drop it."""
    from nonstop.lab import names
    from nonstop.up.storelink import StoreLink
    from nonstop.up.stores import ensure_etcd, stop_etcd

    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    port = _free_pair()
    data_dir = os.path.join(tmp, "etcd")
    pid = ensure_etcd(f"etcd://127.0.0.1:{port}", Path(data_dir))
    link = StoreLink(port, [names.ctl_ns(spec.cluster)] + [names.host_ns(spec.cluster, h.name) for h in spec.hosts])
    link.start()
    try:
        yield f"etcd://127.0.0.1:{port}"
    finally:
        link.stop()
        if pid is not None:
            stop_etcd(pid, data_dir)


@contextlib.contextmanager
def running_cluster(spec: ClusterSpec, *, store: str = "sqlite", **kwargs: object) -> Iterator[tuple[LabCluster, ClusterProbe]]:
    with tempfile.TemporaryDirectory(prefix="nonstop-cluster-") as tmp, contextlib.ExitStack() as stack:
        url = stack.enter_context(etcd_store(spec, tmp)) if store == "etcd" else f"sqlite:///{os.path.join(tmp, 'state.db')}"
        lab = LabCluster(spec, url, **kwargs)  # type: ignore[arg-type]
        try:
            lab.start(lambda _text: None)
            probe = ClusterProbe(lab)
            replicas = sum(g.replicas for g in spec.guests)
            probe.wait_for("every guest running", lambda: len(probe.running()) == replicas, timeout=60)
            for service in spec.services:
                if service.backends is not None:
                    group = next(g for g in spec.guests if g.name == service.backends.group)
                    probe.wait_for(f"{service.name}: every replica in the balancer",
                                   lambda s=service.name, n=group.replicas: len(probe.backends(s)) == n, timeout=30)
            time.sleep(0.3)  # the controller stores the list, then applies it to the balancer
            yield lab, probe
        finally:
            lab.stop()
