"""nftables: the one adapter that runs ``nft``, in a named network namespace or in ours.

Role: every nftables command of nonstop goes through here, three ways:

* ``run`` / ``apply``: the ``nft`` binary, as a process forked by a thread inside the
  namespace (``nonstop.net.netns.run``: no Python runs in the child) or, with ``ns=None``,
  in the calling thread's namespace. ``apply`` is one ``nft -f -`` transaction — all of it
  or nothing, so a team failover or a balancer update is a single atomic rule swap.
* the JSON documents that ``nonstop.core.net.nftables`` renders (``load``, ``delete``) and
  read-back (``list_tables``, ``list_table``, fingerprints for convergence: chain headers
  plus rule comments, so a loaded table can be compared with the rendered one).
* ``Session``: libnftables in this process, for a caller on a hot path (the team daemon's
  failover): ~1 ms a transaction instead of 10-25 ms for forking ``nft``.

A refused command raises ``NftError`` whose message names the command and the namespace
and carries nft's stderr (and, for a script, the script). Timeouts raise
``subprocess.TimeoutExpired``; a missing namespace ``FileNotFoundError``.

Must not: build rulesets (the core renders them), decide what to install, or touch tables
it was not asked about.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from typing import Any

from nonstop.core.net.model import NftTable
from nonstop.core.net.nftables import Fingerprint, delete_document, load_document
from nonstop.net import netns

NFT = "nft"
SCRIPT_TIMEOUT = 10.0
"""Seconds for one ``nft -f -`` transaction."""
JSON_TIMEOUT = 30.0
"""Seconds for one ``nft -j`` command (a listing of a large table takes longer)."""


class NftError(RuntimeError):
    """``nft`` refused a command; the message carries its stderr (and the script, if any)."""


def _where(ns: str | None) -> str:
    return ns or "current netns"


def _failure(command: str, ns: str | None, stderr: str, script: str | None) -> NftError:
    detail = f"\n--- script ---\n{script}" if script else ""
    return NftError(f"{command} failed in {_where(ns)}: {stderr.strip()}{detail}")


def run(ns: str | None, args: list[str], input: str | None = None, *, timeout: float = SCRIPT_TIMEOUT) -> str:
    """``nft ARGS`` (reading ``input`` on stdin) in namespace ``ns`` (None: the calling
    thread's); its stdout."""
    argv = [NFT, *args]
    payload = input.encode() if input is not None else None
    if ns is None:
        proc = subprocess.run(argv, input=payload, capture_output=True, timeout=timeout, check=False)
    else:
        proc = netns.run(ns, argv, input=payload, timeout=timeout)
    if proc.returncode != 0:
        script = input if args[-2:] == ["-f", "-"] else None
        raise _failure(" ".join(argv), ns, proc.stderr.decode(errors="replace"), script)
    return proc.stdout.decode(errors="replace")


def apply(ns: str | None, script: str, *, timeout: float = SCRIPT_TIMEOUT) -> None:
    """Apply one ``nft -f`` transaction (text syntax): all of it or nothing."""
    run(ns, ["-f", "-"], script, timeout=timeout)


# ----------------------------------------------------------------------- JSON


def run_json(ns: str | None, args: list[str], document: dict[str, object] | None = None) -> Any:
    """``nft -j ARGS`` with ``document`` on stdin; the parsed output (None when empty)."""
    payload = json.dumps(document) if document is not None else None
    text = run(ns, ["-j", *args], payload, timeout=JSON_TIMEOUT).strip()
    return json.loads(text) if text else None


def load(ns: str | None, table: NftTable, replace: bool = True) -> None:
    run_json(ns, ["-f", "-"], load_document(table, replace))


def delete(ns: str | None, family: str, name: str) -> None:
    run_json(ns, ["-f", "-"], delete_document(family, name))


def list_tables(ns: str | None) -> list[tuple[str, str]]:
    """(family, name) of every table in ``ns`` (None: ours; tests check the lab adds none there)."""
    data = run_json(ns, ["list", "tables"]) or {"nftables": []}
    return [(item["table"]["family"], item["table"]["name"]) for item in data["nftables"] if "table" in item]


def list_table(ns: str | None, family: str, name: str) -> list[dict[str, Any]] | None:
    """The ``nft -j`` objects of one table, or None when it does not exist."""
    try:
        data = run_json(ns, ["list", "table", family, name]) or {"nftables": []}
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise
    objects: list[dict[str, Any]] = data["nftables"]
    return objects


def read_fingerprint(ns: str, family: str, name: str) -> Fingerprint:
    data = run_json(ns, ["list", "table", family, name]) or {"nftables": []}
    items: set[tuple[object, ...]] = set()
    for item in data["nftables"]:
        if "chain" in item:
            c = item["chain"]
            items.add(("chain", c["name"], c.get("type"), c.get("hook"), c.get("prio"), c.get("policy")))
        elif "rule" in item:
            r = item["rule"]
            items.add(("rule", r["chain"], r.get("comment", f"uncommented-{r.get('handle')}")))
    return frozenset(items)


def read_tables(ns: str, prefixes: tuple[str, ...], names: set[tuple[str, str]]) -> list[tuple[str, str, Fingerprint]]:
    """Fingerprints of the tables whose name has one of ``prefixes`` or is in ``names``."""
    out = []
    for family, name in list_tables(ns):
        if (prefixes and name.startswith(prefixes)) or (family, name) in names:
            out.append((family, name, read_fingerprint(ns, family, name)))
    return out


# ------------------------------------------------------------------ libnftables


def _find_library() -> str | None:
    try:
        ctypes.CDLL("libnftables.so.1")
    except OSError:
        return None
    return "libnftables.so.1"


LIBRARY = _find_library()
"""The libnftables soname, or None when it is not installed (``Session`` then forks ``nft``)."""


class Session:
    """libnftables in this process, working in the namespace of the thread that runs it.

    Make and use it in a thread that lives in the namespace (the team daemon moves itself
    there with ``netns.enter`` first): nft resolves device names (``fwd to "eth0"``) to
    indexes with the calling thread's sockets. Without the library each command runs the
    ``nft`` binary in the calling thread's namespace instead.
    """

    def __init__(self) -> None:
        self._lib: Any = None
        self._ctx: Any = None
        if LIBRARY is None:
            return
        lib = ctypes.CDLL(LIBRARY)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for getter in (lib.nft_ctx_get_error_buffer, lib.nft_ctx_get_output_buffer):
            getter.restype = ctypes.c_char_p
            getter.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lib = lib

    def run(self, command: str) -> str:
        """Run nft commands (a whole ``-f`` script is one transaction); the output."""
        if self._lib is None:
            return run(None, ["-f", "-"], command)
        if self._lib.nft_run_cmd_from_buffer(self._ctx, command.encode()) != 0:
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            raise _failure("nft (libnftables)", None, error, command)
        return str((self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace"))

    def apply(self, script: str) -> None:
        self.run(script)

    def close(self) -> None:
        if self._lib is not None and self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
