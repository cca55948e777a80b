"""Lab clusters for the integration tests (root): each fixture builds one with a random name
and removes everything it made afterwards."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator

from nonstop.core.spec import ClusterSpec
from nonstop.lab.cluster import LabCluster

from .harness import ClusterProbe


@contextlib.contextmanager
def running_cluster(spec: ClusterSpec, **kwargs: object) -> Iterator[tuple[LabCluster, ClusterProbe]]:
    with tempfile.TemporaryDirectory(prefix="nonstop-cluster-") as tmp:
        lab = LabCluster(spec, f"sqlite:///{os.path.join(tmp, 'state.db')}", **kwargs)  # type: ignore[arg-type]
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
