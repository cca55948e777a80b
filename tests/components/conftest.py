"""Component test fixtures: the real sushy-emulator (sushy-tools, --fake driver) on a free port."""

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


@pytest.fixture
def sushy_emulator(tmp_path: Path) -> Iterator[str]:
    emulator = Path(sys.executable).with_name("sushy-emulator")
    if not emulator.exists():
        pytest.skip("sushy-tools is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = tmp_path / "emulator.conf"
    config.write_text(f"SUSHY_EMULATOR_STATE_DIR = {str(tmp_path / 'state')!r}\n"
                      f"SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': {str(uuid.uuid4())!r}, 'name': 'emulated',"
                      " 'power_state': 'On', 'external_notifier': False, 'nics': [{'mac': '00:5c:52:31:3a:9d'}]}]\n")
    with (tmp_path / "emulator.log").open("wb") as log:
        proc = subprocess.Popen([str(emulator), "--fake", "--config", str(config), "-i", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/redfish/v1/", timeout=1).read()  # noqa: S310
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "sushy-emulator did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
