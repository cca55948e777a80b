"""Team state into the store: what the host's team daemon sees, in ``hosts/<host>/observed``.

Role: the team daemon (``nonstop.net.team_daemon``) writes a status JSON file on every change
and every second: each team's mode, active member, transmitting members, failover count and
each member's state (the core team machine's ``up``/``going-down``/...) and carrier. The agent
runs ``run_team_report``: it reads that file every ``interval`` (0.2 s: a failover reaches the
store well within a second), turns it into a compact record with ``team_view`` (pure; no
counters, so the record changes only when the state does) and merges it into the host's
observed record — fields ``teams`` and ``nics`` and ``teams_at`` — with a compare-and-set, so the
agent's own fields (``usage``, ``guests``) and anyone else's are kept.

A status file that stops being refreshed (the daemon died) turns every team and member
``unknown``: an old "active eth0" must not outlive the daemon that said it.

Must not: decide team membership or touch links (the daemon does); write anything but its
own fields of ``hosts/<host>/observed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from nonstop.store import keys
from nonstop.store.base import Store, StoreError
from nonstop.store.record import merge
from nonstop.store.records import HostObserved

log = logging.getLogger("nonstop.agent.teams")

STALE_AFTER = 5.0
"""Seconds without a status refresh (the daemon writes one every second) before it counts as gone."""
REFRESH = 10.0
"""Re-merge this often even without a change (heals a record someone else overwrote)."""


def team_view(status: dict[str, Any], now: float, stale_after: float = STALE_AFTER) -> dict[str, Any]:
    """The daemon's status document → ``{"teams": {...}, "nics": {...}}`` for the observed record.

    A team is ``up`` with every member up, ``degraded`` with some, ``down`` with none; a member
    the machine holds ``up`` or ``going-down`` still carries traffic, so it counts as up.
    """
    stale = now - float(status.get("updated_at") or 0.0) > stale_after
    teams: dict[str, Any] = {}
    nics: dict[str, Any] = {}
    for name, team in (status.get("teams") or {}).items():
        if not isinstance(team, dict) or team.get("kind", "team") != "team":
            continue
        members: dict[str, Any] = {}
        for member, info in (team.get("members") or {}).items():
            info = info if isinstance(info, dict) else {}
            machine = str(info.get("state", "unknown"))
            link = "unknown" if stale else ("up" if machine in ("up", "going-down") else "down")
            members[member] = {"state": link, "machine": machine, "carrier": bool(info.get("carrier"))}
            nics[member] = {"state": link, "carrier": bool(info.get("carrier")), "team": name}
        working = [m for m, v in members.items() if v["state"] == "up"]
        if stale:
            state = "unknown"
        else:
            state = "up" if members and len(working) == len(members) else "degraded" if working else "down"
        last = team.get("last_failover") if isinstance(team.get("last_failover"), dict) else None
        teams[name] = {
            "mode": team.get("mode"), "state": state, "active": None if stale else team.get("active"),
            "transmit": [] if stale else list(team.get("transmit") or []), "failovers": int(team.get("failovers") or 0),
            "last_failover_at": last.get("at") if last else None, "members": members,
        }
    return {"teams": teams, "nics": nics}


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


async def merge_observed(store: Store, cluster: str, host: str, fields: dict[str, Any]) -> bool:
    """Set ``fields`` of ``hosts/<host>/observed`` (``HostObserved``), keeping every other field
    (compare-and-set)."""
    return await merge(store, keys.host_observed(cluster, host), HostObserved, fields)


async def run_team_report(store: Store, cluster: str, host: str, status_file: Path, stop: asyncio.Event,
                          interval: float = 0.2) -> None:
    """Until ``stop``: copy the team daemon's view into the store whenever it changes."""
    written = ""
    last_write = 0.0
    while not stop.is_set():
        status = await asyncio.to_thread(read_status, status_file)
        if status is not None:
            now = time.time()
            view = team_view(status, now)
            text = json.dumps(view, sort_keys=True)
            if text != written or time.monotonic() - last_write > REFRESH:
                try:
                    if await merge_observed(store, cluster, host, {**view, "teams_at": now}):
                        if text != written:
                            log.info("teams of %s: %s", host, ", ".join(
                                f"{n} {t['state']} active {t['active']}" for n, t in view["teams"].items()))
                        written, last_write = text, time.monotonic()
                except StoreError as exc:
                    log.warning("team state of %s not stored: %s", host, exc)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
