"""Lab clusters for the integration tests (root): each fixture builds one with a random name
and removes everything it made afterwards."""

from __future__ import annotations

import contextlib
import os
import tempfile
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
            probe.wait_for("every guest running", lambda: len(probe.running()) == replicas, timeout=30)
            yield lab, probe
        finally:
            lab.stop()
