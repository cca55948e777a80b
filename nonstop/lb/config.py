"""The balancer's config file: ``services: [ServiceSpec ...]`` plus an optional admin address.

Role: load and validate ``lb.yaml`` with the cluster spec's own ``ServiceSpec`` model (the
same schema a cluster spec uses), and report every problem as ``file:line field: message``
through ``nonstop.specfile``'s YAML-with-lines machinery. Also parses ``host:port``.

Must not: start anything; a config is only data.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nonstop.core.spec import Location, ServiceSpec
from nonstop.specfile import SpecError, SpecProblem, render_field_path

try:  # the YAML-with-lines helpers of the spec loader (private there, shared here on purpose)
    from nonstop.specfile import _Document as _YamlDocument
    from nonstop.specfile import _pydantic_message
except ImportError:  # pragma: no cover - only if the spec loader is refactored
    _YamlDocument = None  # type: ignore[assignment,misc]
    _pydantic_message = None  # type: ignore[assignment]


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``":8080"`` / ``"[::1]:80"`` -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected an address like 127.0.0.1:8080, got "{text}"')
    host = host.strip("[]") or default_host
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f'expected an IP address before ":{port}", got "{host}"') from None
    return host, int(port)


class LbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    services: list[ServiceSpec] = Field(min_length=1)
    admin: str | None = None
    """``127.0.0.1:PORT`` of the admin API (JSON + /metrics); none when omitted."""

    @field_validator("admin")
    @classmethod
    def _admin(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value


def _cross_checks(config: LbConfig) -> list[tuple[Location, str]]:
    problems: list[tuple[Location, str]] = []
    names: set[str] = set()
    listens: set[str] = set()
    for s, service in enumerate(config.services):
        if service.name in names:
            problems.append((("services", s, "name"), f'duplicate service name "{service.name}"'))
        names.add(service.name)
        try:
            host, port = parse_address(service.listen)
        except ValueError as exc:
            problems.append((("services", s, "listen"), str(exc)))
            continue
        if port and service.listen in listens:
            problems.append((("services", s, "listen"), f"listen address {service.listen} is used twice"))
        listens.add(service.listen)
        if service.mode == "nft" and (port == 0 or ipaddress.ip_address(host).version != 4):
            problems.append((("services", s, "listen"), "nft mode needs a fixed IPv4 address and port"))
        if not service.servers:
            problems.append((("services", s, "servers"), "nonstop lb needs servers (address list)"))
        seen: set[str] = set()
        for i, server in enumerate(service.servers):
            if server.name in seen:
                problems.append((("services", s, "servers", i, "name"), f'duplicate server name "{server.name}"'))
            seen.add(server.name)
            try:
                parse_address(server.address)
            except ValueError as exc:
                problems.append((("services", s, "servers", i, "address"), str(exc)))
    return problems


def _no_line(loc: Location) -> int:
    return 0


def load_config_text(text: str, filename: str = "<lb config>") -> LbConfig:
    """Validated config; raises ``SpecError`` listing every problem with file:line."""
    import yaml

    line_of: Callable[[Location], int] = _no_line
    problems: list[SpecProblem] = []
    if _YamlDocument is None:  # pragma: no cover
        data: Any = yaml.safe_load(text)
    else:
        try:
            document = _YamlDocument(text, filename)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            raise SpecError([SpecProblem(filename, line, "", f"not valid YAML: {exc}")]) from None
        data = document.data
        line_of = document.line_of
        problems = list(document.problems)
    if not isinstance(data, dict):
        raise SpecError([SpecProblem(filename, 1, "", "expected a mapping with services: [...] and admin:")])
    try:
        config = LbConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(part for part in error["loc"] if part != "[key]")
            message = _pydantic_message(error) if _pydantic_message is not None else error["msg"]
            problems.append(SpecProblem(filename, line_of(loc), render_field_path(loc), message, loc))
        raise SpecError(problems) from None
    for loc, message in _cross_checks(config):
        problems.append(SpecProblem(filename, line_of(loc), render_field_path(loc), message, loc))
    if problems:
        raise SpecError(problems)
    return config


def load_config(path: str | Path) -> LbConfig:
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecProblem(filename, 0, "", f"cannot read the file ({exc})")]) from None
    return load_config_text(text, filename)
