"""Apply and read team data-path rulesets with ``nft``, inside a network namespace.

Role: the thin I/O shell around ``nonstop.core.net.team_render``: run one ``nft -f``
transaction (atomic: a failover is a single rule swap) or ``nft -j list`` in the
namespace that holds the team. It uses libnftables in-process, from the calling thread
while it has joined the namespace (``in_netns``), so nothing forks — forking with ``preexec_fn`` is unsafe in a process with
other threads (a test process holding gRPC threads crashed the child). Without the
library it runs ``nsenter --net=... nft``.

Must NOT: decide what to install (the renderer and the state machine do), or touch
tables that are not ``nonstop_team_*`` / ``nonstop_lag_*``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
NFT = "nft"


class NftError(RuntimeError):
    """``nft`` refused a transaction; the message carries its stderr and the script."""


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def setns_to(netns: str) -> None:
    """Move the calling thread into ``netns`` (a whole process when it has one thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path(netns), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the body (in this thread only) inside ``netns``; sockets made here stay there."""
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        setns_to(netns)
        try:
            yield
        finally:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the thread's own namespace")
    finally:
        os.close(own)


def run_nft(netns: str | None, args: list[str], script: str | None = None, timeout: float = 10.0) -> str:
    """Run ``nft ARGS`` (``-f -`` with ``script``, or ``-j list ...``) in ``netns``; stdout."""
    if netns is not None and not os.path.exists(netns_path(netns)):
        raise FileNotFoundError(f"network namespace {netns!r} does not exist ({netns_path(netns)})")
    json_output = args[:1] == ["-j"]
    command = script if args == ["-f", "-"] else " ".join(args[1:] if json_output else args)
    if _LIBRARY_PATH is not None and command is not None:
        # The thread stays in the namespace for the whole command: nft resolves device
        # names (``fwd to "eth0"``) to indexes with ioctls of the calling thread.
        with in_netns(netns) if netns is not None else contextlib.nullcontext():
            nft = InProcessNft(json_output=json_output)
            try:
                return nft.run(command, where=netns or "current netns")
            finally:
                nft.close()
    argv = [NFT, *args] if netns is None else ["nsenter", f"--net={netns_path(netns)}", NFT, *args]
    proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        detail = f"\n--- script ---\n{script}" if script else ""
        raise NftError(f"nft {' '.join(args)} failed in {netns or 'current netns'}: {proc.stderr.strip()}{detail}")
    return proc.stdout


def apply_script(netns: str | None, script: str) -> None:
    """Apply one ``nft -f`` transaction: all of it or nothing."""
    run_nft(netns, ["-f", "-"], script)


def list_table(netns: str | None, table: str) -> list[dict[str, Any]] | None:
    """The ``nft -j`` objects of one netdev table, or None when it does not exist."""
    try:
        out = run_nft(netns, ["-j", "list", "table", "netdev", table])
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise
    objects: list[dict[str, Any]] = json.loads(out).get("nftables", [])
    return objects


def chain_rules(objects: list[dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    """Chain name -> its rules' expression lists, from ``list_table`` output."""
    chains: dict[str, list[list[dict[str, Any]]]] = {}
    for obj in objects:
        if "chain" in obj:
            chains.setdefault(obj["chain"]["name"], [])
        elif "rule" in obj:
            chains.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["expr"])
    return chains


def forward_targets(rules: list[list[dict[str, Any]]]) -> list[str]:
    """Every device a chain's ``fwd``/``dup`` statements can send a frame to, in order."""
    targets: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("fwd", "dup") and isinstance(value, dict):
                    dev = value.get("dev", value.get("addr"))  # nft 1.0.6 prints "dup to" as addr
                    if isinstance(dev, str):
                        targets.append(dev)
                    else:
                        walk(dev)
                else:
                    walk(value)
        elif isinstance(node, list):
            if len(node) == 2 and isinstance(node[0], int) and isinstance(node[1], str):
                targets.append(node[1])  # a map element: [index, "device"]
            else:
                for item in node:
                    walk(item)

    walk(rules)
    return list(dict.fromkeys(targets))


def _find_library() -> str | None:
    try:
        ctypes.CDLL("libnftables.so.1")
    except OSError:
        return None
    return "libnftables.so.1"


_LIBRARY_PATH = _find_library()
NFT_CTX_OUTPUT_JSON = 1 << 4


class InProcessNft:
    """libnftables in this process, bound to the namespace of the thread that made it.

    A transaction costs ~1 ms (forking ``nft`` costs 10-25 ms on this machine), which
    matters on the daemon's failover path. Falls back to the ``nft`` binary when the
    library is missing.
    """

    def __init__(self, *, json_output: bool = False) -> None:
        self._lib: Any = None
        self._ctx: Any = None
        if _LIBRARY_PATH is None:
            return
        lib = ctypes.CDLL(_LIBRARY_PATH)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for getter in (lib.nft_ctx_get_error_buffer, lib.nft_ctx_get_output_buffer):
            getter.restype = ctypes.c_char_p
            getter.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        if json_output:
            lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON)
        self._lib = lib

    def run(self, command: str, where: str = "current netns") -> str:
        """Run nft commands (a whole ``-f`` script is one transaction); the output."""
        if self._lib is None:
            return run_nft(None, ["-f", "-"], command)
        if self._lib.nft_run_cmd_from_buffer(self._ctx, command.encode()) != 0:
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            raise NftError(f"nft failed in {where}: {error.strip()}\n--- script ---\n{command}")
        return str((self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace"))

    def apply(self, script: str) -> None:
        self.run(script)

    def close(self) -> None:
        if self._lib is not None and self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
