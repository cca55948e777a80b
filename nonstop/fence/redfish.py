"""Fencing through a Redfish BMC with the sushy client: power off, then read back "Off".

Role: the first fence agent, and the one the lab uses: every lab host has a Redfish BMC
(nonstop/bmc) whose ForceOff kills everything in the host's namespace, so fencing in the
lab goes through the same path as on real hardware. Steps, all inside one deadline:

1. open a session (sushy: session auth, basic as fallback) — failure: ``unreachable``;
2. find the system (``system_id``, else the one named like the host, else the only one);
3. if PowerState is already Off: ``verified-off`` (idempotent);
4. ``ComputerSystem.Reset`` with ``ForceOff``; a refusal is remembered, not final —
5. poll PowerState every ``poll`` seconds until Off (``verified-off``) or the deadline
   (``timeout``, or ``error`` with the refusal when the reset was refused).

sushy is blocking (requests); the work runs in a thread, and every HTTP call is bounded
by what is left of the deadline, so the thread cannot outlive it by more than one call.

Must not: power the host back on, or report success without having read "Off".
"""

from __future__ import annotations

import asyncio
import time

import sushy
from sushy import exceptions as sushy_exc

from nonstop.bmc.inventory import connect, redfish_session, release
from nonstop.fence.base import FenceAgent, FenceOutcome, FenceResult, FenceTarget, Stopwatch


class RedfishFence(FenceAgent):
    name = "redfish"
    verifies = True
    needs_device = True

    def __init__(self, poll: float = 0.1, reset_type: str = "ForceOff") -> None:
        self.poll = poll
        self.reset_type = sushy.ResetType(reset_type)

    async def fence(self, target: FenceTarget, timeout: float) -> FenceResult:
        watch = Stopwatch()
        try:
            outcome, detail = await asyncio.wait_for(
                asyncio.to_thread(self._fence_blocking, target, time.monotonic() + timeout), timeout + 1.0
            )
        except TimeoutError:
            outcome, detail = FenceOutcome.TIMEOUT, "BMC calls did not return in time"
        return FenceResult(target.host, self.name, outcome, watch.elapsed, detail)

    async def status(self, target: FenceTarget) -> str | None:
        def read() -> str | None:
            try:
                with redfish_session(target.bmc_url or "", target.username, target.password) as root:
                    system = self._system(root, target)
                    return str(system.power_state.value) if system.power_state else None
            except (sushy_exc.SushyError, LookupError):
                return None

        return await asyncio.to_thread(read)

    @staticmethod
    def _system(root: sushy.Sushy, target: FenceTarget) -> sushy.resources.system.system.System:
        if target.system_id:
            return root.get_system(f"/redfish/v1/Systems/{target.system_id}")
        members = sorted(root.get_system_collection().members_identities)
        named = [m for m in members if m.rstrip("/").rsplit("/", 1)[-1] == target.host]
        if named:
            return root.get_system(named[0])
        if len(members) == 1:
            return root.get_system(members[0])
        raise LookupError(f"BMC has {len(members)} systems and none is named {target.host}")

    def _fence_blocking(self, target: FenceTarget, deadline: float) -> tuple[FenceOutcome, str]:
        def left() -> float:
            return max(deadline - time.monotonic(), 0.05)

        if not target.bmc_url:
            return FenceOutcome.ERROR, "no BMC address for this host"
        try:
            root = connect(target.bmc_url, target.username, target.password, timeout=min(left(), 5.0))
        except sushy_exc.AccessError as exc:
            return FenceOutcome.UNREACHABLE, f"credentials refused: {exc}"
        except sushy_exc.SushyError as exc:
            return FenceOutcome.UNREACHABLE, f"BMC unreachable: {type(exc).__name__}"
        try:
            return self._power_off(root, target, deadline)
        finally:
            release(root)

    def _power_off(self, root: sushy.Sushy, target: FenceTarget, deadline: float) -> tuple[FenceOutcome, str]:
        try:
            system = self._system(root, target)
        except sushy_exc.AccessError as exc:  # sushy falls back to basic auth and fails here
            return FenceOutcome.UNREACHABLE, f"credentials refused: {exc}"
        except sushy_exc.ConnectionError as exc:
            return FenceOutcome.UNREACHABLE, f"BMC unreachable: {type(exc).__name__}"
        except sushy_exc.SushyError as exc:
            return FenceOutcome.ERROR, f"system not readable: {exc}"
        except LookupError as exc:
            return FenceOutcome.ERROR, str(exc)
        refusal = ""
        try:
            if system.power_state == sushy.PowerState.OFF:
                return FenceOutcome.VERIFIED_OFF, "already off"
            system.reset_system(self.reset_type)
        except sushy_exc.SushyError as exc:
            refusal = f"reset refused: {exc}"
        while True:
            try:
                system.refresh(force=True)
                if system.power_state == sushy.PowerState.OFF:
                    return FenceOutcome.VERIFIED_OFF, refusal or f"{self.reset_type.value} confirmed"
            except sushy_exc.SushyError as exc:
                refusal = refusal or f"read-back failed: {type(exc).__name__}"
            if time.monotonic() + self.poll > deadline:
                if refusal:
                    return FenceOutcome.ERROR, refusal
                return FenceOutcome.TIMEOUT, f"PowerState still {system.power_state.value if system.power_state else '?'}"
            time.sleep(self.poll)
