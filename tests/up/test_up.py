"""`nonstop up` end to end (root): a broken spec exits 2 and starts nothing; a small cluster comes
up and serves real HTTP through its forwarded 127.0.0.1 port; `up` again with more replicas applies
the difference; `nonstop down` leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from . import leftovers
from .small_spec import small_spec, write_spec

pytestmark = [pytest.mark.root]

NONSTOP = [sys.executable, "-m", "nonstop.cli.main"]
ENV = {**os.environ, "COLUMNS": "200"}


def nonstop(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NONSTOP, *args], capture_output=True, text=True, timeout=timeout, env=ENV, check=False)


def wait_for_line(log: Path, proc: subprocess.Popen[bytes], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"`nonstop up` exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {needle!r} within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def get(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.timeout(60)
def test_broken_spec_exits_2_lists_every_error_and_starts_nothing(tmp_path: Path) -> None:
    spec = small_spec()
    spec["hosts"][0]["memory"] = "lots"
    spec["guests"][0]["nics"][0]["network"] = "nowhere"
    spec["guests"][0]["replicas"] = -1
    path = write_spec(tmp_path / "broken.yaml", spec)
    res = nonstop("up", str(path))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if re.match(rf"{re.escape(str(path))}:\d+ ", ln)]
    assert any("hosts[0].memory" in ln for ln in lines), res.stderr
    assert any("replicas" in ln for ln in lines), res.stderr
    assert leftovers.everything(spec["cluster"]) == {k: [] for k in ("namespaces", "nft", "processes", "cgroups", "files")}


def guests_seen(port: int, n: int = 20) -> list[str]:
    out = []
    for _ in range(n):
        status, body = get(port)
        assert status == 200, body
        out.append(re.search(r'"guest": "([^"]+)"', body).group(1))  # type: ignore[union-attr]
    return out


def apply_up(path: Path, spec: dict) -> str:  # type: ignore[type-arg]
    """`nonstop up` on the running cluster with ``spec``: its output (it must succeed)."""
    write_spec(path, spec)
    res = nonstop("up", str(path), timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "applied" in res.stdout, res.stdout
    return res.stdout


@pytest.mark.timeout(240)
def test_up_serves_applies_a_change_and_down_leaves_nothing(tmp_path: Path) -> None:
    spec = small_spec(replicas=2)
    cluster = spec["cluster"]
    path = write_spec(tmp_path / "small.yaml", spec)
    links_before = leftovers.root_links()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*NONSTOP, "up", str(path)], stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        text = wait_for_line(log, proc, "Ctrl-C or `nonstop down`", 90)
        assert "is serving" in text, text
        port = int(re.search(r"service api: http://127\.0\.0\.1:(\d+)/", text).group(1))  # type: ignore[union-attr]
        token_file = Path(re.search(r"API tokens: (\S+)", text).group(1))  # type: ignore[union-attr]
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert re.search(r"api-0 \(process\) running on h\d after [\d.]+ s", text), text
        seen = set()
        for _ in range(20):
            status, body = get(port)
            assert status == 200, body
            seen.add(re.search(r'"guest": "([^"]+)"', body).group(1))  # type: ignore[union-attr]
        assert seen == {"api-0", "api-1"}
        links_up = leftovers.root_links()

        # `up` again with 3 replicas: the running cluster takes the difference and `up` exits.
        spec["guests"][0]["replicas"] = 3
        write_spec(path, spec)
        res = nonstop("up", str(path))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "applied" in res.stdout and "replicas" in res.stdout, res.stdout
        deadline = time.monotonic() + 45
        while "api-2" not in seen and time.monotonic() < deadline:
            status, body = get(port)
            if status == 200:
                seen.add(re.search(r'"guest": "([^"]+)"', body).group(1))  # type: ignore[union-attr]
            time.sleep(0.1)
        assert seen == {"api-0", "api-1", "api-2"}

        # A changed service is reloaded live: source-hash sends every request (all from the
        # forwarder's one address) to one replica, where least-connections spread them.
        assert len(set(guests_seen(port))) > 1
        spec["services"][0]["algorithm"] = "source-hash"
        out = apply_up(path, spec)
        assert f"service api: http://127.0.0.1:{port}/" in out, out
        assert len(set(guests_seen(port))) == 1

        # A new service gets a balancer and a 127.0.0.1 port; a removed one is stopped.
        spec["services"].append({**spec["services"][0], "name": "api2", "algorithm": "round-robin"})
        out = apply_up(path, spec)
        port2 = int(re.search(r"service api2: http://127\.0\.0\.1:(\d+)/", out).group(1))  # type: ignore[union-attr]
        seen2: set[str] = set()
        deadline = time.monotonic() + 30
        while len(seen2) < 3 and time.monotonic() < deadline:  # the controller syncs the new balancer
            status, body = get(port2)
            if status == 200:
                seen2.add(re.search(r'"guest": "([^"]+)"', body).group(1))  # type: ignore[union-attr]
            time.sleep(0.1)
        assert seen2 == {"api-0", "api-1", "api-2"}
        assert len(set(guests_seen(port))) == 1
        spec["services"].pop()
        out = apply_up(path, spec)
        assert "services: -api2" in out and "service api2:" not in out, out
        assert get(port2)[0] == 0
        assert get(port)[0] == 200

        res = nonstop("down", "--cluster", cluster, timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
            nonstop("down", "--cluster", cluster, timeout=90)
    assert get(port)[0] == 0
    assert leftovers.everything(cluster) == {k: [] for k in ("namespaces", "nft", "processes", "cgroups", "files")}
    stayed = (links_up - links_before) & leftovers.root_links()
    assert not stayed, stayed


@pytest.mark.timeout(150)
def test_up_after_a_crash_cleans_the_leftovers_first(tmp_path: Path) -> None:
    spec = small_spec(replicas=1)
    cluster = spec["cluster"]
    path = write_spec(tmp_path / "crash.yaml", spec)
    procs = []
    try:
        for round_ in (1, 2):
            log = tmp_path / f"up{round_}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen([*NONSTOP, "up", str(path)], stdout=out, stderr=subprocess.STDOUT, env=ENV))
            text = wait_for_line(log, procs[-1], "Ctrl-C or `nonstop down`", 90)
            if round_ == 1:
                assert leftovers.namespaces(cluster)
                procs[-1].kill()  # a crash: nothing is cleaned up
                procs[-1].wait(timeout=10)
                assert leftovers.namespaces(cluster)
            else:
                assert "cleaned leftovers of an earlier run" in text, text
                port = int(re.search(r"service api: http://127\.0\.0\.1:(\d+)/", text).group(1))  # type: ignore[union-attr]
                assert get(port)[0] == 200
        res = nonstop("down", "--cluster", cluster, timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        nonstop("down", "--cluster", cluster, timeout=90)
    assert leftovers.everything(cluster) == {k: [] for k in ("namespaces", "nft", "processes", "cgroups", "files")}
