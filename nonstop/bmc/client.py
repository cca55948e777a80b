"""Talk to a lab BMC's private admin path: fail and repair components, read its state.

Role: what tests, the chaos CLI (``nonstop fail psu host1/PSU1``) and the lab call to break
hardware on purpose. Redfish has no standard "break this part" action, so the lab BMC
serves ``POST /nonstop/v1/components/{psu|nic|drive}/{name}/{fail|repair}`` and
``GET /nonstop/v1/state`` next to its Redfish tree, behind the same credentials. Reading
health goes through Redfish like any other client (nonstop/bmc/inventory.py).

Must not: be used against real BMCs (they do not have this path) — blocking urllib, so
call it from a thread in async code.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any


class BmcAdminError(Exception):
    pass


def _request(method: str, url: str, username: str, password: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise BmcAdminError(f"{method} {url}: {exc.code} {message}") from exc
    except OSError as exc:
        raise BmcAdminError(f"{method} {url}: {exc}") from exc
    if not isinstance(data, dict):
        raise BmcAdminError(f"{method} {url}: unexpected answer")
    return data


def set_component(url: str, kind: str, name: str, failed: bool, *, username: str = "admin",
                  password: str = "password", timeout: float = 5.0) -> dict[str, Any]:
    """Fail (``failed=True``) or repair a PSU, NIC or drive; returns the BMC's state summary."""
    action = "fail" if failed else "repair"
    return _request("POST", f"{url.rstrip('/')}/nonstop/v1/components/{kind}/{name}/{action}", username, password, timeout)


def state(url: str, *, username: str = "admin", password: str = "password", timeout: float = 5.0) -> dict[str, Any]:
    """``{"host", "power", "power_off_reason", "health": {...}, "failed": ["psu/PSU1", ...]}``."""
    return _request("GET", f"{url.rstrip('/')}/nonstop/v1/state", username, password, timeout)
