"""Apply and read team data-path rulesets with ``nft``, inside a network namespace.

Role: the thin I/O shell around ``nonstop.core.net.team_render``: run one ``nft -f -``
transaction (atomic: a failover is a single rule swap) or ``nft -j list`` in the
namespace that holds the team, entering it with ``setns`` in the child process only,
so the calling process never changes namespace.

Must NOT: decide what to install (the renderer and the state machine do), or touch
tables that are not ``nonstop_team_*`` / ``nonstop_lag_*``.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
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


def _enter(netns: str | None) -> Any:
    if netns is None:
        return None
    path = netns_path(netns)
    if not os.path.exists(path):
        raise FileNotFoundError(f"network namespace {netns!r} does not exist ({path})")
    # Runs in the forked child before exec: only the child joins the namespace.
    return lambda: setns_to(path)


def run_nft(netns: str | None, args: list[str], script: str | None = None, timeout: float = 10.0) -> str:
    """Run ``nft ARGS`` in ``netns`` (None = the caller's own namespace); return stdout."""
    proc = subprocess.run(
        [NFT, *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_enter(netns),
        check=False,
    )
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


class InProcessNft:
    """libnftables in this process and its current namespace: a transaction in ~1 ms.

    The daemon swaps rules on the failover path, where forking ``nft`` (10-25 ms on this
    machine) would be most of the gap. Falls back to the ``nft`` binary when the library
    is missing.
    """

    def __init__(self) -> None:
        self._lib: Any = None
        self._ctx: Any = None
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lib = lib

    def apply(self, script: str) -> None:
        if self._lib is None:
            apply_script(None, script)
            return
        if self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()) != 0:
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            raise NftError(f"nft transaction failed: {error.strip()}\n--- script ---\n{script}")

    def close(self) -> None:
        if self._lib is not None and self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
