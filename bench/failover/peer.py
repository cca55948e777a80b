"""The peer for bench/failover: keepalived (VRRP, advert_int 1 s) moving a VIP in front of
HAProxy with its default checks, in the same lab.

Three lab hosts (namespaces, same fabric as nonstop's run), each running a backend (nonstop's
workload server on :8080 — the "guest"), HAProxy (``bind *:80``, the three backends with
``check``: inter 2 s, rise 2, fall 3; ``retries 3``, no redispatch — all defaults) and
keepalived (one ``vrrp_instance``, state BACKUP + ``nopreempt`` everywhere so a returning node
does not take the VIP back, priority 100, ``advert_int 1``, VIP 198.18.0.100/24 on eth0). The
client reaches the VIP through a forwarder into the out namespace, one connection per request.

Each round kills -9 every process of the current VRRP master's namespace (its keepalived,
HAProxy and backend) and measures: detection = the VIP configured on another host; service
restored = first answer after the kill; clean again = the last failed request; failed
requests. Nothing restarts the killed host's backend (keepalived and HAProxy have no
orchestrator), so "guests serving again" is "never" for the peer; the round ends by
restarting the host's processes and waiting for HAProxy to see its backend up again.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench.failover.client import Client
from nonstop.core.spec import ClusterSpec
from nonstop.lab import fabric, names
from nonstop.net import netns

VIP = "198.18.0.100"


def peer_spec(cluster: str) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "cluster": cluster, "switches": ["sw0", "sw1"],
        "hosts": [{"name": f"h{i}", "cpus": 2, "memory": "4GiB",
                   "nics": [{"name": "eth0", "switch": "sw0"}, {"name": "eth1", "switch": "sw1"}]} for i in (1, 2, 3)],
    })


def host_ip(spec: ClusterSpec, host: str) -> str:
    return names.switch_address(0, names.host_octet(spec, host))


def haproxy_cfg(spec: ClusterSpec, run: Path, host: str) -> str:
    servers = "\n".join(f"  server {h.name} {host_ip(spec, h.name)}:8080 check" for h in spec.hosts)
    return f"""global
  maxconn 2000
  pidfile {run}/haproxy-{host}.pid
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind *:80
  default_backend be
backend be
  balance roundrobin
{servers}
"""


def keepalived_cfg(host: str) -> str:
    return f"""global_defs {{
  router_id {host}
}}
vrrp_instance VI_1 {{
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 51
  priority 100
  advert_int 1
  virtual_ipaddress {{
    {VIP}/24 dev eth0
  }}
}}
"""


def start_host(spec: ClusterSpec, run: Path, host: str) -> list[int]:
    ns = names.host_ns(spec.cluster, host)
    env = {**os.environ, "NONSTOP_GUEST": f"app-{host}", "NONSTOP_HOST": host, "NONSTOP_CLUSTER": spec.cluster}
    pids = [netns.spawn(ns, [sys.executable, "-m", "nonstop.workload", "--host", "0.0.0.0", "--port", "8080"],
                        log_path=str(run / f"app-{host}.log"), env=env).pid]
    (run / f"haproxy-{host}.cfg").write_text(haproxy_cfg(spec, run, host))
    pids.append(netns.spawn(ns, ["haproxy", "-db", "-f", str(run / f"haproxy-{host}.cfg")],
                            log_path=str(run / f"haproxy-{host}.log")).pid)
    (run / f"keepalived-{host}.conf").write_text(keepalived_cfg(host))
    pids.append(netns.spawn(ns, ["keepalived", "-n", "-l", "-f", str(run / f"keepalived-{host}.conf"),
                                 "-p", str(run / f"ka-{host}.pid"), "-r", str(run / f"ka-vrrp-{host}.pid"),
                                 "-c", str(run / f"ka-chk-{host}.pid")], log_path=str(run / f"keepalived-{host}.log")).pid)
    return pids


class VipWatcher:
    """Which host holds the VIP (one pyroute2 handle per host namespace)."""

    def __init__(self, spec: ClusterSpec) -> None:
        from pyroute2 import IPRoute

        self.handles = {h.name: IPRoute(netns=names.host_ns(spec.cluster, h.name)) for h in spec.hosts}

    def holder(self, exclude: str | None = None) -> str | None:
        for host, ipr in self.handles.items():
            if host == exclude:
                continue
            for msg in ipr.get_addr(family=socket.AF_INET):
                if msg.get_attr("IFA_ADDRESS") == VIP:
                    return host
        return None

    def close(self) -> None:
        for ipr in self.handles.values():
            ipr.close()


def run(kills: int = 10, progress: Any = print) -> dict[str, Any]:
    from nonstop.bmc.power import kill_namespace
    from nonstop.lab.forward import start_forward

    cluster = "bp" + os.urandom(2).hex()
    spec = peer_spec(cluster)
    rounds = []
    try:
        fabric.up(spec)
        run_dir = Path(names.state_dir(cluster)) / "peer"
        run_dir.mkdir(parents=True, exist_ok=True)
        for h in spec.hosts:
            start_host(spec, run_dir, h.name)
        watcher = VipWatcher(spec)
        deadline = time.monotonic() + 30
        while watcher.holder() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("keepalived elected no master")
            time.sleep(0.1)
        fwd = start_forward(cluster, "out", (VIP, 80))
        time.sleep(6.0)  # HAProxy: every backend up (rise 2 x inter 2 s)
        client = Client(int(fwd["port"])).start()
        try:
            time.sleep(2.0)
            for i in range(kills):
                master = watcher.holder()
                assert master is not None
                killed = time.time()
                kill_namespace(names.host_ns(cluster, master))
                new_master = None
                while new_master is None and time.time() - killed < 30:
                    new_master = watcher.holder(exclude=master)
                    if new_master is None:
                        time.sleep(0.01)
                detected = time.time()
                time.sleep(10.0)  # past HAProxy's fall 3 x inter 2 s
                end = time.time()
                failures = [t for t, _ in client.failures if killed <= t <= end]
                # restored: the first answer after the first failure (answers in flight at the kill don't count)
                restored = client.first_answer(min(failures)) if failures else killed
                row = {
                    "round": i + 1, "host": master, "new_master": new_master,
                    "detection_s": round(detected - killed, 3),
                    "fence_s": None,
                    "service_restored_s": round(restored - killed, 3) if restored else None,
                    "clean_again_s": round(max(failures) - killed, 3) if failures else 0.0,
                    "guests_serving_again_s": None,
                    "failed_requests": len(failures),
                    "requests": sum(1 for t, _, _ in client.answers if killed <= t <= end),
                }
                rounds.append(row)
                progress(f"  peer round {i + 1}: {row}")
                # the VIP is still configured on the dead master's eth0: a real dead host loses it; drop it
                with netns.inside(names.host_ns(cluster, master)) as t:
                    t.call(_drop_vip)
                start_host(spec, run_dir, master)
                time.sleep(7.0)  # its backend seen up again by HAProxy (rise 2 x inter 2 s)
        finally:
            client.stop()
            watcher.close()
        return {"rounds": rounds, "requests": len(client.answers), "failed_requests_total": len(client.failures)}
    finally:
        fabric.down(cluster, spec)
        import shutil

        shutil.rmtree(names.state_dir(cluster), ignore_errors=True)


def _drop_vip() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        try:
            ipr.addr("del", index=index, address=VIP, prefixlen=24)
        except Exception:  # already gone
            pass
