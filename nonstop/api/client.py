"""A small HTTP client of the nonstop API for the CLI (stdlib only, so the CLI needs no extra package).

Role: find the server (``--api URL``, ``$NONSTOP_API``, else the endpoint file ``nonstop up`` /
``nonstop api serve`` wrote), read the token (``--token-file``, ``$NONSTOP_TOKEN_FILE``, else the
endpoint's token file; the admin token when the file has it), send JSON requests, and turn
answers into ``ApiError`` with the exit code the CLI documents: 2 bad input (404, 422), 3 the
cluster's state does not allow it (409), 1 anything else (unreachable, 401/403, 5xx).

Must not: print (the verbs do) or retry mutating calls.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nonstop.api.auth import load_token
from nonstop.api.server import read_endpoint

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STATE = 1, 2, 3


class ApiError(Exception):
    def __init__(self, message: str, exit_code: int, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.exit_code, self.status, self.body = exit_code, status, body


def _exit_code(status: int) -> int:
    if status in (400, 404, 422):
        return EXIT_BAD_INPUT
    if status == 409:
        return EXIT_STATE
    return EXIT_FAILED


@dataclass
class ApiClient:
    url: str
    token: str
    timeout: float = 30.0

    @classmethod
    def discover(cls, api: str | None, cluster: str | None, token_file: str | None, role: str = "admin") -> ApiClient:
        api = api or os.environ.get("NONSTOP_API")
        token_file = token_file or os.environ.get("NONSTOP_TOKEN_FILE")
        if not api or not token_file:
            try:
                endpoint = read_endpoint(cluster)
            except (LookupError, OSError, ValueError) as exc:
                raise ApiError(str(exc), EXIT_STATE if isinstance(exc, LookupError) else EXIT_FAILED) from exc
            api = api or str(endpoint["url"])
            token_file = token_file or str(endpoint["token_file"])
        try:
            try:
                token = load_token(token_file, role)
            except ValueError:
                token = load_token(token_file, "viewer")
        except (OSError, ValueError) as exc:
            raise ApiError(f"cannot read a token: {exc}", EXIT_FAILED) from exc
        return cls(api.rstrip("/"), token)

    def _open(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)  # noqa: S310 - our own URL
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = {"detail": raw.decode(errors="replace")}
            detail = decoded.get("detail") if isinstance(decoded, dict) else decoded
            if not isinstance(detail, str):
                detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
                                   for d in detail) if isinstance(detail, list) else json.dumps(detail)
            raise ApiError(f"HTTP {exc.code}: {detail}", _exit_code(exc.code), exc.code, decoded) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach the API at {self.url}: {getattr(exc, 'reason', exc)}", EXIT_FAILED) from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            raw = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(raw)
            return raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def stream(self, path: str = "/events/stream") -> Iterator[dict[str, Any]]:
        """SSE messages as dicts, until the server closes the stream."""
        with self._open("GET", path, timeout=3600) as response:
            for raw in response:
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("data:"):
                    try:
                        yield json.loads(line[5:])
                    except ValueError:
                        continue
