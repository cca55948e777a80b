"""The lab's state file: what ``lab up`` made, so ``down`` and a restart after a crash can
remove it all.

Role: read and write ``/run/nonstop/<cluster>/lab.json`` (atomically: write a temporary
file, then rename): the phase (``building`` until every step finished, then ``up``), the
namespaces, the processes the lab started (name -> pid) and the forwards
(listen port -> target). A copy of the spec sits next to it as ``spec.json``.

Must not: decide what to clean up (nonstop.lab.fabric does) or hold anything that cannot
be rebuilt from the spec.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from nonstop.lab.names import STATE_ROOT, state_dir

STATE_FILE = "lab.json"
SPEC_FILE = "spec.json"
LOCK_FILE = "lab.lock"
LAB_FILES = (STATE_FILE, SPEC_FILE, LOCK_FILE, "upstream.log", "forward.log")


@dataclass
class LabState:
    cluster: str
    phase: str = "building"
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, int] = field(default_factory=dict)
    forwards: list[dict[str, object]] = field(default_factory=list)


def state_path(cluster: str) -> str:
    return os.path.join(state_dir(cluster), STATE_FILE)


def spec_path(cluster: str) -> str:
    return os.path.join(state_dir(cluster), SPEC_FILE)


def load(cluster: str) -> LabState | None:
    try:
        with open(state_path(cluster)) as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return LabState(**data)


def save(state: LabState) -> None:
    directory = state_dir(state.cluster)
    os.makedirs(directory, exist_ok=True)
    tmp = state_path(state.cluster) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(state), f, indent=2)
    os.replace(tmp, state_path(state.cluster))


def save_spec(cluster: str, spec_json: str) -> str:
    os.makedirs(state_dir(cluster), exist_ok=True)
    path = spec_path(cluster)
    with open(path, "w") as f:
        f.write(spec_json)
    return path


def remove_files(cluster: str) -> None:
    """Remove the files the lab wrote, and the directory when nothing else is left in it."""
    directory = state_dir(cluster)
    for name in (*LAB_FILES, STATE_FILE + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.startswith(("forward-", "team-")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)


@contextlib.contextmanager
def locked(cluster: str) -> Iterator[None]:
    """Serialise read-modify-write of the state file between nonstop processes."""
    os.makedirs(state_dir(cluster), exist_ok=True)
    with open(os.path.join(state_dir(cluster), LOCK_FILE), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clusters() -> list[str]:
    """Clusters that have a lab state file."""
    try:
        return sorted(c for c in os.listdir(STATE_ROOT) if os.path.exists(state_path(c)))
    except FileNotFoundError:
        return []
