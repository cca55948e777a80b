"""Fence test fixtures: the real sushy-emulator (sushy-tools) on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

EMULATOR = Path(sys.executable).with_name("sushy-emulator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sushy_emulator(tmp_path: Path) -> Iterator[str]:
    """sushy-emulator with its fake (libvirt-less) driver; yields its base URL."""
    if not EMULATOR.exists():
        pytest.skip("sushy-tools is not installed (pip install -e '.[dev]')")
    port = free_port()
    # One fake system, powered on, with its state kept in this test's temp dir.
    config = tmp_path / "emulator.conf"
    config.write_text(
        f"SUSHY_EMULATOR_STATE_DIR = {str(tmp_path / 'state')!r}\n"
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': %r, 'name': 'emulated', 'power_state': 'On',"
        " 'external_notifier': False, 'nics': [{'mac': '00:5c:52:31:3a:9c', 'ip': '198.18.0.100'}]}]\n"
        % str(uuid.uuid4())
    )
    log = (tmp_path / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [str(EMULATOR), "--fake", "--config", str(config), "-i", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/redfish/v1/", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "emulator.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "sushy-emulator did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
