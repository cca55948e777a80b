"""The BMC as the lab runs it: its own process, hooks as commands, the admin client, fencing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nonstop.bmc import client
from nonstop.bmc.power import namespace_id, pids_in_namespace
from nonstop.fence import FenceOutcome, FenceTarget, RedfishFence

from .conftest import alive, spawn_in

pytestmark = pytest.mark.root

SPEC = """\
cluster: bmct
hosts:
  - name: h1
    cpus: 1
    memory: 1GiB
"""


def wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def test_bmc_process_with_command_hooks(netns: str, tmp_path: Path) -> None:
    spec = tmp_path / "lab.yaml"
    spec.write_text(SPEC)
    events = tmp_path / "events"
    ready = tmp_path / "ready.json"
    agent_pid = tmp_path / "agent.pid"
    on_nic = f"sh -c 'echo nic $NONSTOP_BMC_HOST $NONSTOP_BMC_NIC $NONSTOP_BMC_UP >> {events}'"
    on_power_on = f"sh -c 'nsenter --net=/run/netns/{netns} sleep 300 >/dev/null 2>&1 & echo $! > {agent_pid}'"
    bmc = subprocess.Popen([
        sys.executable, "-m", "nonstop.bmc", "--spec", str(spec), "--host", "h1", "--netns", netns,
        "--ready-file", str(ready), "--on-nic", on_nic, "--on-power-on", on_power_on,
    ])
    victim = spawn_in(netns, "sleep", "300")
    try:
        wait(lambda: ready.exists())
        url = json.loads(ready.read_text())["url"]
        ns = namespace_id(Path(f"/run/netns/{netns}"))
        assert ns is not None
        wait(lambda: victim.pid in pids_in_namespace(ns))

        state = client.set_component(url, "nic", "eth1", failed=True)
        assert state["failed"] == ["nic/eth1"]
        client.set_component(url, "nic", "eth1", failed=False)
        assert events.read_text().split("\n")[:2] == ["nic h1 eth1 0", "nic h1 eth1 1"]
        with pytest.raises(client.BmcAdminError, match="404"):
            client.set_component(url, "psu", "PSU7", failed=True)

        result = await RedfishFence().fence(FenceTarget("h1", url, "admin", "password"), timeout=5.0)
        assert result.outcome is FenceOutcome.VERIFIED_OFF
        assert victim.wait(timeout=2) == -9
        assert bmc.poll() is None and alive(bmc.pid)  # the BMC survives its host's power-off
        assert client.state(url)["power"] == "Off"

        # power on through Redfish: the hook starts a new "agent" inside the namespace
        import sushy

        from nonstop.bmc.inventory import redfish_session

        with redfish_session(url, "admin", "password") as root:
            root.get_system("/redfish/v1/Systems/h1").reset_system(sushy.ResetType.ON)
        wait(lambda: agent_pid.exists() and agent_pid.read_text().strip() != "")
        new_agent = int(agent_pid.read_text())
        wait(lambda: new_agent in pids_in_namespace(ns))
        assert client.state(url)["power"] == "On"
    finally:
        bmc.terminate()
        bmc.wait(timeout=10)
        victim.kill()
        victim.wait()
