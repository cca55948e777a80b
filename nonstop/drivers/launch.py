"""Tiny exec shim that puts a process guest in its place before its workload starts.

Role: run as ``python -S -E launch.py --procs F... --netns PATH --status-fd N -- argv...``: write its own pid into
each cgroup ``cgroup.procs`` file (so nothing the workload allocates escapes the limits), enter the
guest's network namespace with setns(2), then exec the workload. Using a separate process keeps
``preexec_fn`` (unsafe in a threaded asyncio agent) out of the driver. This is the one setns(2)
outside ``nonstop.net.netns``: running with -S, the shim cannot import it (and importing it would
add tens of milliseconds to every guest start).

Must not: import anything outside the standard library (it runs with -S), fork, or linger: it
either execs or exits 127 with the reason on stderr (which is the guest's console log).
"""

import ctypes
import os
import sys

CLONE_NEWNET = 0x40000000
_status_fd = None


def main(argv: list[str]) -> None:
    global _status_fd
    procs: list[str] = []
    netns = None
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "--procs":
            procs.append(argv[i + 1])
        elif argv[i] == "--netns":
            netns = argv[i + 1]
        elif argv[i] == "--status-fd":
            # Closed by a successful exec (close-on-exec); carries the reason when we fail instead.
            _status_fd = int(argv[i + 1])
            os.set_inheritable(_status_fd, False)
        else:
            _fail(f"unknown launcher option {argv[i]}")
        i += 2
    command = argv[i + 1 :]
    if not command:
        _fail("no workload command")
    pid = str(os.getpid())
    for path in procs:
        try:
            with open(path, "w") as f:
                f.write(pid)
        except OSError as exc:
            _fail(f"cannot join cgroup {path}: {exc.strerror}")
    if netns:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(netns, os.O_RDONLY)
        except OSError as exc:
            _fail(f"cannot open network namespace {netns}: {exc.strerror}")
        if libc.setns(fd, CLONE_NEWNET) != 0:
            _fail(f"setns({netns}) failed: {os.strerror(ctypes.get_errno())}")
        os.close(fd)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        _fail(f"cannot run {command[0]!r}: {exc.strerror}")


def _fail(reason: str) -> None:
    if _status_fd is not None:
        try:
            os.write(_status_fd, reason.encode())
        except OSError:
            pass
    sys.stderr.write(f"nonstop-launch: {reason}\n")
    sys.stderr.flush()
    os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
