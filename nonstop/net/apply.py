"""Apply desired network state to one namespace: observe, converge, execute.

Role: the level-triggered loop body for host networking. Reads the namespace (links via
pyroute2, tables via ``nft -j``, sysctls via /proc/sys in the namespace), asks the core
for the operations that close the gap, and carries them out in order. Returns the
operations it executed: an empty tuple means the namespace already matched, which is how
tests check idempotence.

Must not: decide what to change (nonstop.core.net.converge does) or reach outside the
namespace it was given.
"""

from __future__ import annotations

import logging

from pyroute2 import IPRoute

from nonstop.core.net.converge import converge
from nonstop.core.net.model import DeleteTable, DesiredState, ObservedState, Op, ReplaceTable, SetSysctl
from nonstop.net import netlink, netns, nft

log = logging.getLogger(__name__)


def observe(ns: str, desired: DesiredState, thread: netns.NetnsThread, ipr: IPRoute) -> ObservedState:
    links = thread.call(netlink.read_links, ipr)
    wanted_tables = {(t.family, t.name) for t in desired.tables}
    tables = nft.read_tables(ns, desired.owned_table_prefixes, wanted_tables)
    sysctls = tuple((path, thread.call(netns.read_sysctl, path) or "") for path, _ in desired.sysctls)
    return ObservedState(links=tuple(links), tables=tuple(tables), sysctls=sysctls)


def plan(ns: str, desired: DesiredState) -> tuple[Op, ...]:
    """The operations ``apply`` would execute now (a dry run)."""
    with netns.NetnsThread(ns) as thread:
        ipr = thread.call(IPRoute)
        try:
            return converge(desired, observe(ns, desired, thread, ipr))
        finally:
            ipr.close()


def apply(ns: str, desired: DesiredState) -> tuple[Op, ...]:
    """Converge namespace ``ns`` to ``desired``; returns the operations executed."""
    with netns.NetnsThread(ns) as thread:
        ipr = thread.call(IPRoute)
        try:
            ops = converge(desired, observe(ns, desired, thread, ipr))
            for op in ops:
                log.debug("%s: %s", ns, op)
                if isinstance(op, ReplaceTable):
                    nft.load(ns, op.table, replace=True)
                elif isinstance(op, DeleteTable):
                    nft.delete(ns, op.family, op.name)
                elif isinstance(op, SetSysctl):
                    thread.call(netns.write_sysctl, op.path, op.value)
                else:
                    thread.call(netlink.apply_link_op, ipr, op)
            return ops
        finally:
            ipr.close()
