"""The README's main command (root, QEMU under TCG): `nonstop up examples/lab.yaml` brings the whole
example cluster up — 3 VM web replicas and 3 process api replicas, each answering real HTTP through
its balancer's forwarded 127.0.0.1 port — and `nonstop down` removes all of it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nonstop.lab import state

from . import leftovers
from .test_up import ENV, NONSTOP, get, nonstop, wait_for_line

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lab.yaml"


def test_example_lab_up_serves_every_replica_and_down_removes_it(tmp_path: Path) -> None:
    if state.load("lab") is not None:
        pytest.skip("a cluster named lab is already up on this machine")
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*NONSTOP, "up", str(EXAMPLE), "--serve-timeout", "100"], stdout=out,
                                stderr=subprocess.STDOUT, env=ENV)
    try:
        text = wait_for_line(log, proc, "Ctrl-C or `nonstop down`", 130)
        assert "cluster lab is serving" in text, text
        ports = {m.group(1): int(m.group(2)) for m in re.finditer(r"service (\w+): http://127\.0\.0\.1:(\d+)/", text)}
        assert set(ports) == {"web", "api"}
        seen: dict[str, set[str]] = {"web": set(), "api": set()}
        for _ in range(40):
            for service, pattern in (("web", r"guest=(web-\d)"), ("api", r'"guest": "(api-\d)"')):
                status, body = get(ports[service])
                assert status == 200, (service, body)
                seen[service].add(re.search(pattern, body).group(1))  # type: ignore[union-attr]
            if all(len(v) == 3 for v in seen.values()):
                break
        assert seen == {"web": {"web-0", "web-1", "web-2"}, "api": {"api-0", "api-1", "api-2"}}
        res = nonstop("down", "--cluster", "lab", timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    assert leftovers.everything("lab") == {k: [] for k in ("namespaces", "nft", "processes", "cgroups", "files")}
