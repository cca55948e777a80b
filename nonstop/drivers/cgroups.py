"""Control groups for process guests, on cgroup v1 (this machine) or the unified v2 hierarchy.

Role: create one group per guest (``nonstop.<cluster>.<guest>``, under the agent's own group so
the session's accounting still covers its guests), set the CPU quota (vcpus × period) and the
memory hard limit, move processes in, read usage/throttling/OOM counters, kill everything inside
and remove the group. ``detect()`` picks v1 when the v1 ``cpu`` and ``memory`` controllers are
mounted, else v2 when its ``cgroup.controllers`` lists ``cpu`` and ``memory``.

Must not: start processes (the launcher joins the group itself, before exec, so no allocation
escapes the limit), or touch groups it did not create (every path it writes ends in a name with
the ``nonstop.`` prefix).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
UNLIMITED = 2**63 - 4096  # v1 spells "no limit" as a page-rounded LLONG_MAX


class CgroupError(Exception):
    pass


@dataclass(frozen=True)
class CgroupStats:
    cpu_seconds: float
    throttled_seconds: float
    nr_periods: int
    nr_throttled: int
    memory_usage: int
    memory_limit: int | None
    limit_hits: int
    oom_kills: int
    quota_vcpus: float | None
    memory_pressure: float | None
    """PSI some-avg10 / 100 on v2; usage / limit on v1 (it has no PSI per group)."""


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str | int) -> None:
    path.write_text(str(value))


def _own_path(controller: str) -> str:
    """This process's group in ``controller`` (v1) or in the unified tree (controller="")."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller == "" and names == "":
            return path
        if controller and controller in names.split(","):
            return path
    return "/"


class Cgroup:
    """One guest's group; ``paths`` (controller → directory) is what the pid file records."""

    version = 0

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = {k: Path(v) for k, v in paths.items()}

    def as_record(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.paths.items()}

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid into to join every controller."""
        return sorted({str(p / "cgroup.procs") for p in self.paths.values()})

    def exists(self) -> bool:
        return any(p.is_dir() for p in self.paths.values())

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                found.update(int(x) for x in _read(path / "cgroup.procs").split())
        return sorted(found)

    def kill_all(self, sig: int = signal.SIGKILL) -> int:
        count = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                count += 1
        return count

    def remove(self, *, timeout: float = 2.0) -> None:
        """Kill what is left and rmdir the group. Succeeds if it is already gone."""
        deadline = time.monotonic() + timeout
        for path in self.paths.values():
            while path.is_dir():
                self.kill_all()
                try:
                    path.rmdir()
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        break
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove {path}: {exc}") from exc
                    time.sleep(0.01)

    # implemented per version
    def create(self) -> None:
        raise NotImplementedError

    def set_cpu(self, vcpus: float) -> None:
        raise NotImplementedError

    def set_memory(self, limit: int) -> None:
        raise NotImplementedError

    def set_pids(self, limit: int) -> None:
        raise NotImplementedError

    def stats(self) -> CgroupStats:
        raise NotImplementedError


class CgroupV1(Cgroup):
    version = 1

    @classmethod
    def for_guest(cls, name: str) -> CgroupV1:
        paths = {}
        for ctrl in V1_CONTROLLERS:
            base = CGROUP_ROOT / ctrl
            if base.is_dir():
                paths[ctrl] = str(base / _own_path(ctrl).lstrip("/") / name)
        return cls(paths)

    def create(self) -> None:
        for path in self.paths.values():
            path.mkdir(exist_ok=True)
        mem = self.paths.get("memory")
        if mem is not None:
            # No OOM freeze: the kernel kills inside the group, and we read the count back.
            with contextlib.suppress(OSError):
                _write(mem / "memory.oom_control", 0)
            with contextlib.suppress(OSError):
                _write(mem / "memory.swappiness", 0)

    def set_cpu(self, vcpus: float) -> None:
        cpu = self.paths["cpu"]
        _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(cpu / "cpu.cfs_quota_us", int(vcpus * CPU_PERIOD_US))

    def set_memory(self, limit: int) -> None:
        mem = self.paths["memory"]
        current = int(_read(mem / "memory.limit_in_bytes"))
        # The kernel wants memsw >= memory at every step: when growing, memsw goes first.
        growing = limit > current
        if growing:
            self._set_memsw(limit)
        try:
            _write(mem / "memory.limit_in_bytes", limit)
        except OSError as exc:
            raise CgroupError(f"cannot set memory.limit_in_bytes to {limit}: {exc.strerror}") from exc
        if not growing:
            self._set_memsw(limit)

    def _set_memsw(self, limit: int) -> None:
        # Keeps swap out of the picture where swap accounting exists (absent or EINVAL otherwise).
        with contextlib.suppress(OSError):
            _write(self.paths["memory"] / "memory.memsw.limit_in_bytes", limit)

    def set_pids(self, limit: int) -> None:
        if "pids" in self.paths:
            _write(self.paths["pids"] / "pids.max", limit)

    def stats(self) -> CgroupStats:
        cpu, acct, mem = self.paths.get("cpu"), self.paths.get("cpuacct"), self.paths.get("memory")
        cpu_ns = 0
        if acct is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                cpu_ns = int(_read(acct / "cpuacct.usage"))
        stat: dict[str, int] = {}
        quota = None
        if cpu is not None:
            with contextlib.suppress(FileNotFoundError):
                stat = _kv(_read(cpu / "cpu.stat"))
                q = int(_read(cpu / "cpu.cfs_quota_us"))
                quota = q / int(_read(cpu / "cpu.cfs_period_us")) if q > 0 else None
        usage = limit_hits = oom = 0
        limit: int | None = None
        if mem is not None:
            with contextlib.suppress(FileNotFoundError):
                usage = int(_read(mem / "memory.usage_in_bytes"))
                raw = int(_read(mem / "memory.limit_in_bytes"))
                limit = None if raw >= UNLIMITED else raw
                limit_hits = int(_read(mem / "memory.failcnt"))
                oom = _kv(_read(mem / "memory.oom_control")).get("oom_kill", 0)
        return CgroupStats(
            cpu_seconds=cpu_ns / 1e9,
            throttled_seconds=stat.get("throttled_time", 0) / 1e9,
            nr_periods=stat.get("nr_periods", 0),
            nr_throttled=stat.get("nr_throttled", 0),
            memory_usage=usage,
            memory_limit=limit,
            limit_hits=limit_hits,
            oom_kills=oom,
            quota_vcpus=quota,
            memory_pressure=(usage / limit) if limit else None,
        )


class CgroupV2(Cgroup):
    version = 2

    @classmethod
    def for_guest(cls, name: str, root: Path | None = None) -> CgroupV2:
        base = root or CGROUP_ROOT
        return cls({"unified": str(base / _own_path("").lstrip("/") / name)})

    @property
    def _dir(self) -> Path:
        return self.paths["unified"]

    def create(self) -> None:
        parent = self._dir.parent
        enabled = set(_read(parent / "cgroup.subtree_control").split())
        for ctrl in ("cpu", "memory", "pids"):
            if ctrl not in enabled:
                with contextlib.suppress(OSError):
                    _write(parent / "cgroup.subtree_control", f"+{ctrl}")
        self._dir.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            _write(self._dir / "memory.swap.max", 0)

    def controllers(self) -> set[str]:
        """Controllers this group has (its ``cgroup.controllers``); empty if it does not exist."""
        try:
            return set(_read(self._dir / "cgroup.controllers").split())
        except FileNotFoundError:
            return set()

    def _require(self, controller: str, file: str) -> None:
        # A v2 tree whose controllers are bound to v1 hierarchies (this machine) has groups
        # without cpu.max/memory.max: say so instead of a bare "No such file".
        if not (self._dir / file).exists():
            have = ", ".join(sorted(self.controllers())) or "none"
            raise CgroupError(f"cgroup v2 group {self._dir} has no {controller} controller "
                              f"(controllers here: {have}); cannot set {file}")

    def set_cpu(self, vcpus: float) -> None:
        self._require("cpu", "cpu.max")
        _write(self._dir / "cpu.max", f"{int(vcpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")

    def set_memory(self, limit: int) -> None:
        self._require("memory", "memory.max")
        try:
            _write(self._dir / "memory.max", limit)
        except OSError as exc:
            raise CgroupError(f"cannot set memory.max to {limit}: {exc.strerror}") from exc

    def set_pids(self, limit: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            _write(self._dir / "pids.max", limit)

    def stats(self) -> CgroupStats:
        d = self._dir
        stat = _kv(_read(d / "cpu.stat")) if (d / "cpu.stat").exists() else {}
        quota = None
        with contextlib.suppress(FileNotFoundError):
            q, period = _read(d / "cpu.max").split()
            quota = None if q == "max" else int(q) / int(period)
        usage, limit, events, pressure = 0, None, {}, None
        with contextlib.suppress(FileNotFoundError):
            usage = int(_read(d / "memory.current"))
            raw = _read(d / "memory.max")
            limit = None if raw == "max" else int(raw)
            events = _kv(_read(d / "memory.events"))
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            some = _read(d / "memory.pressure").splitlines()[0].split()
            pressure = float(some[1].split("=")[1]) / 100.0
        return CgroupStats(
            cpu_seconds=stat.get("usage_usec", 0) / 1e6,
            throttled_seconds=stat.get("throttled_usec", 0) / 1e6,
            nr_periods=stat.get("nr_periods", 0),
            nr_throttled=stat.get("nr_throttled", 0),
            memory_usage=usage,
            memory_limit=limit,
            limit_hits=events.get("max", 0),
            oom_kills=events.get("oom_kill", 0),
            quota_vcpus=quota,
            memory_pressure=pressure if pressure is not None else ((usage / limit) if limit else None),
        )


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def detect() -> int:
    """1 or 2: the cgroup version that has usable cpu and memory controllers here."""
    if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists() and (CGROUP_ROOT / "memory").is_dir():
        return 1
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and {"cpu", "memory"} <= set(_read(controllers).split()):
        return 2
    raise CgroupError("no usable cgroup: need v1 cpu+memory controllers or v2 with cpu and memory enabled")


def for_guest(name: str, version: int | None = None, v2_root: Path | None = None) -> Cgroup:
    """The guest's group; ``v2_root`` = where the unified tree is mounted (default /sys/fs/cgroup)."""
    return CgroupV1.for_guest(name) if (version or detect()) == 1 else CgroupV2.for_guest(name, v2_root)


def from_record(version: int, paths: dict[str, str]) -> Cgroup:
    return CgroupV1(paths) if version == 1 else CgroupV2(paths)
