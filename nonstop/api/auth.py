"""Bearer-token authentication for the API: the token file and the two roles.

Role: ``ensure_tokens(path)`` creates (once) a JSON token file, mode 0600, holding one random
token per role — ``admin`` (may change things) and ``viewer`` (may only read) — and
``Authenticator`` maps a presented token to its role in constant time. FastAPI dependencies
``require_viewer`` / ``require_admin`` turn a missing or unknown token into 401 and a viewer on a
mutating call into 403. The SSE stream also accepts ``?token=`` because browsers' EventSource
cannot send headers.

Must not: log tokens, or accept a token file other users can read.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

ROLES = ("admin", "viewer")
bearer = HTTPBearer(auto_error=False, description="A token from the token file (admin or viewer)")
"""Declares the bearer scheme in OpenAPI; the checks below read the header themselves."""


@dataclass(frozen=True)
class Tokens:
    admin: str
    viewer: str
    path: Path


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path}: token file is readable by others (mode {mode:o}); expected 0600")


def ensure_tokens(path: str | Path) -> Tokens:
    """The tokens in ``path``, creating the file (mode 0600, exclusive) with fresh tokens if absent."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {role: secrets.token_urlsafe(32) for role in ROLES}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
    _check_mode(path)
    data = json.loads(path.read_text())
    missing = [role for role in ROLES if not isinstance(data.get(role), str) or not data[role]]
    if missing:
        raise ValueError(f"{path}: token file lacks a token for: {', '.join(missing)}")
    return Tokens(admin=data["admin"], viewer=data["viewer"], path=path)


def load_token(path: str | Path, role: str = "admin") -> str:
    """One role's token from the file (for the CLI); raises like ``ensure_tokens`` if unreadable."""
    path = Path(path)
    _check_mode(path)
    data = json.loads(path.read_text())
    token = data.get(role)
    if not isinstance(token, str) or not token:
        raise ValueError(f"{path}: no {role} token")
    return token


class Authenticator:
    def __init__(self, tokens: Tokens) -> None:
        self._tokens = {"admin": tokens.admin.encode(), "viewer": tokens.viewer.encode()}

    def role_of(self, token: str | None) -> str | None:
        if not token:
            return None
        presented = token.encode()
        found = None
        for role, expected in self._tokens.items():
            if hmac.compare_digest(presented, expected):
                found = role
        return found


def _presented(request: Request, allow_query: bool) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:
        return request.query_params.get("token")
    return None


def _role(request: Request, allow_query: bool = False) -> str:
    auth: Authenticator = request.app.state.auth
    role = auth.role_of(_presented(request, allow_query))
    if role is None:
        raise HTTPException(401, "missing or unknown bearer token (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    return role


Credentials = HTTPAuthorizationCredentials | None


def require_viewer(request: Request, _: Credentials = Depends(bearer)) -> str:
    """Any valid token; returns the role."""
    return _role(request)


def require_viewer_or_query(request: Request, _: Credentials = Depends(bearer)) -> str:
    """Like ``require_viewer`` but also accepts ``?token=`` (EventSource cannot send headers)."""
    return _role(request, allow_query=True)


def require_admin(request: Request, _: Credentials = Depends(bearer)) -> str:
    """Only the admin token; a viewer gets 403."""
    role = _role(request)
    if role != "admin":
        raise HTTPException(403, "this call changes the cluster; it needs the admin token (you presented the viewer token)")
    return role
