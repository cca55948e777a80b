"""nftables through ``nft -j`` inside a namespace: load, delete and read back tables.

Role: run the JSON documents that nonstop.core.net.nftables renders, and read tables back
as fingerprints (chain headers + rule comments) so convergence can tell whether a loaded
table is exactly the rendered one.

Must not: build rulesets (the core does) or touch tables it was not asked about.
"""

from __future__ import annotations

import json
from typing import Any

from nonstop.core.net.model import NftTable
from nonstop.core.net.nftables import Fingerprint, delete_document, load_document
from nonstop.net import netns


class NftError(RuntimeError):
    pass


def _nft(ns: str, args: list[str], document: dict[str, object] | None = None) -> Any:
    payload = json.dumps(document).encode() if document is not None else None
    proc = netns.run(ns, ["nft", "-j", *args], input=payload)
    if proc.returncode != 0:
        raise NftError(f"nft {' '.join(args)} in {ns}: {proc.stderr.decode().strip()}")
    text = proc.stdout.decode().strip()
    return json.loads(text) if text else None


def load(ns: str, table: NftTable, replace: bool = True) -> None:
    _nft(ns, ["-f", "-"], load_document(table, replace))


def delete(ns: str, family: str, name: str) -> None:
    _nft(ns, ["-f", "-"], delete_document(family, name))


def list_tables(ns: str) -> list[tuple[str, str]]:
    data = _nft(ns, ["list", "tables"]) or {"nftables": []}
    return [(item["table"]["family"], item["table"]["name"]) for item in data["nftables"] if "table" in item]


def list_tables_root() -> list[tuple[str, str]]:
    """Tables of the root namespace (tests check the lab never adds one there)."""
    import subprocess

    proc = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, check=True, timeout=30)
    data = json.loads(proc.stdout or b'{"nftables": []}')
    return [(item["table"]["family"], item["table"]["name"]) for item in data["nftables"] if "table" in item]


def read_fingerprint(ns: str, family: str, name: str) -> Fingerprint:
    data = _nft(ns, ["list", "table", family, name]) or {"nftables": []}
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
