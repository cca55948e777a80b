"""Loading a cluster spec from YAML, with every problem tied to a file, line and field.

Role: read ``lab.yaml``, build plain Python data from PyYAML's composed node tree (so each
value keeps the line it came from, and duplicate keys are caught), validate it into
``nonstop.core.spec.ClusterSpec``, run ``check_references``, and raise one ``SpecError``
listing ALL problems at once, each rendered as::

    lab.yaml:14 guests[1].memory: expected a size like 512MiB, got "lots"

Pydantic's terse messages are rewritten so every one says what was expected. When pydantic
rejects the document the cross-reference checks cannot run (there is no model yet); the
pydantic errors alone are reported then.

Must not: start, write or contact anything; know what a spec means beyond turning
locations into lines (the model and its checks live in the pure core).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from nonstop.core.spec import NAME_PATTERN, ClusterSpec, Location
from nonstop.core.spec_refs import check_references

__all__ = [
    "SpecError",
    "SpecProblem",
    "YamlDocument",
    "cluster_spec_schema",
    "load_model_text",
    "load_spec",
    "load_spec_text",
    "pydantic_message",
    "read_yaml",
    "render_field_path",
]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec file. ``line`` is 1-based; 0 when no line applies."""

    file: str
    line: int
    field_path: str
    message: str
    loc: Location = field(default=(), compare=False)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.field_path}: {self.message}" if self.field_path else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field_path, "message": self.message}


class SpecError(Exception):
    """A spec file that cannot be used; ``problems`` lists every problem, in line order."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def render_field_path(loc: Location) -> str:
    """``("guests", 1, "memory")`` -> ``guests[1].memory``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# ------------------------------------------------------------------ YAML with lines


class YamlDocument:
    """Plain data built from a YAML node tree, plus a way back from a location to a line."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.problems: list[SpecProblem] = []
        loader = yaml.SafeLoader(text)
        try:
            self.root: yaml.Node | None = loader.get_single_node()
            self.data: Any = self._build(loader, self.root, ()) if self.root is not None else None
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, loc: Location) -> Any:
        if isinstance(node, yaml.MappingNode):
            self._check_duplicate_keys(loader, node, loc)
            loader.flatten_mapping(node)  # resolve ``<<: *anchor`` merges in place
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    self._add(key_node.start_mark.line + 1, loc, "expected a plain key (text), got a mapping or list")
                    continue
                result[key] = self._build(loader, value_node, (*loc, str(key)))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, (*loc, i)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    def _check_duplicate_keys(self, loader: yaml.SafeLoader, node: yaml.MappingNode, loc: Location) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                self._add(
                    line,
                    (*loc, str(key)),
                    f'duplicate key "{key}" (first given on line {seen[key]}; each key may appear once)',
                )
            else:
                seen[key] = line

    def _add(self, line: int, loc: Location, message: str) -> None:
        self.problems.append(SpecProblem(self.filename, line, render_field_path(loc), message, loc))

    def line_of(self, loc: Location) -> int:
        """The line of the value at ``loc``; for a missing key, the line of its parent."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(
                    (
                        (k, v)
                        for k, v in reversed(node.value)
                        if isinstance(k, yaml.ScalarNode) and k.value == str(part)
                    ),
                    None,
                )
                if match is None:
                    return line
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


# ------------------------------------------------------------- pydantic messages


def _got(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _choices(expected: str) -> str:
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside ``X | None``, ``Annotated[X, ...]`` and friends."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg) if t is not type(None)]
    return [annotation]


def _model_at(loc: Location, root: type[BaseModel] = ClusterSpec) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc`` (walked from the root model's annotations)."""
    current: list[Any] = [root]
    for part in loc:
        following: list[Any] = []
        for candidate in current:
            origin = typing.get_origin(candidate)
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and isinstance(part, str):
                info = candidate.model_fields.get(part)
                if info is not None:
                    following += _unwrap(info.annotation)
            elif origin is list and isinstance(part, int):
                following += _unwrap(typing.get_args(candidate)[0])
            elif origin is dict and isinstance(part, str):
                following += _unwrap(typing.get_args(candidate)[1])
        current = following
    models = [c for c in current if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if models else None


def pydantic_message(error: Any, root: type[BaseModel] = ClusterSpec) -> str:
    """One pydantic error (``ErrorDetails``) as a message that says what was expected."""
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    loc: Location = tuple(error["loc"])
    got = _got(value)
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "missing":
        return f'missing required field "{loc[-1]}"' if loc else "missing required field"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], root)
        allowed = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = f'unknown field "{loc[-1]}"'
        if hint:
            text += f'; did you mean "{hint[0]}"?'
        return text + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
    if kind in ("enum", "literal_error"):
        return f"expected one of: {_choices(str(ctx.get('expected', '')))} (got {got})"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (
                "expected a short lowercase name (a letter, then letters, digits or '-'; "
                f"at most 15 characters), got {got}"
            )
        return f"expected text matching {ctx.get('pattern')}, got {got}"
    simple = {
        "int_parsing": "expected a whole number",
        "int_type": "expected a whole number",
        "int_from_float": "expected a whole number",
        "float_parsing": "expected a number",
        "float_type": "expected a number",
        "bool_parsing": "expected true or false",
        "bool_type": "expected true or false",
        "string_type": "expected text",
        "list_type": "expected a list",
        "dict_type": "expected a mapping of key: value",
        "model_type": "expected a mapping of fields",
        "model_attributes_type": "expected a mapping of fields",
    }
    if kind in simple:
        return f"{simple[kind]}, got {got}"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        symbol, key = bounds[kind]
        return f"expected a number {symbol} {ctx.get(key)}, got {got}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s), got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} item(s), got {ctx.get('actual_length')}"
    message = str(error["msg"])
    return f"{message[:1].lower()}{message[1:]}, got {got}"


# ------------------------------------------------------------------------ loading


def _syntax_problem(filename: str, exc: yaml.YAMLError) -> SpecProblem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        detail = ", ".join(parts) or "cannot parse"
        line = mark.line + 1 if mark is not None else 0
        if "block" in detail:
            detail += "; check the indentation"
        if "expected" not in detail:
            detail += " (expected valid YAML)"
        return SpecProblem(filename, line, "", f"invalid YAML: {detail}")
    return SpecProblem(filename, 0, "", f"invalid YAML: {exc} (expected valid YAML)")


_SECTIONS = ("hosts", "networks", "guests", "services")
_NEUTRAL: dict[tuple[str, str], Any] = {("hosts", "cpus"): 1, ("hosts", "memory"): 0}
"""Stand-ins for broken required fields that nothing else in the spec refers to."""


def _repair(data: dict[str, Any], loc: Location, kind: str) -> Location | None:
    """Make the value at ``loc`` valid in place: drop it so its default applies, or use a stand-in.

    Returns the repaired location, or None when only dropping the whole item would do.
    """
    parent: Any = data
    for part in loc[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return None
    key = loc[-1]
    if not isinstance(parent, dict) or not isinstance(key, str):
        return None
    model = _model_at(loc[:-1])
    info = model.model_fields.get(key) if model else None
    if kind == "extra_forbidden" or (info is not None and not info.is_required() and kind != "missing"):
        parent.pop(key, None)
        return loc
    if len(loc) == 3 and (str(loc[0]), key) in _NEUTRAL:
        parent[key] = _NEUTRAL[(str(loc[0]), key)]
        return loc
    return None


def _references_despite_errors(data: dict[str, Any], errors: list[tuple[Location, str]]) -> list[tuple[Location, str]]:
    """Cross-reference problems in a document pydantic rejected, so one run reports them all.

    Each broken value is repaired (dropped to its default, or a stand-in) or, failing that, its
    whole host / network / guest group / service is left out, and the result is validated again.
    Problems at repaired places, or naming a left-out item (``unknown guest group "web"`` when
    ``web`` itself was broken), are not reported: they would be false alarms. Anything else
    broken (``cluster``, ``switches``) makes this give up and report nothing extra.
    """
    repaired_data = copy.deepcopy(data)
    repaired: list[Location] = []
    left_out: dict[str, set[int]] = {section: set() for section in _SECTIONS}
    for loc, kind in errors:
        fixed = _repair(repaired_data, loc, kind) if len(loc) >= 2 else None
        if fixed is not None:
            repaired.append(fixed)
        elif len(loc) >= 2 and loc[0] in _SECTIONS and isinstance(loc[1], int):
            left_out[str(loc[0])].add(loc[1])
        else:
            return []
    kept_index: dict[str, list[int]] = {}
    left_out_names: list[str] = []
    for section in _SECTIONS:
        items = repaired_data.get(section)
        if not isinstance(items, list):
            continue
        kept_index[section] = [i for i in range(len(items)) if i not in left_out[section]]
        repaired_data[section] = [items[i] for i in kept_index[section]]
        left_out_names += [
            items[i]["name"]
            for i in left_out[section]
            if isinstance(items[i], dict) and isinstance(items[i].get("name"), str)
        ]
    try:
        spec = ClusterSpec.model_validate(repaired_data)
    except ValidationError:
        return []
    mentions_left_out = re.compile("|".join(f'"{re.escape(name)}(-[0-9]+)?"' for name in left_out_names) or "(?!)")
    problems = []
    for loc, message in check_references(spec):
        if len(loc) >= 2 and loc[0] in kept_index and isinstance(loc[1], int):
            loc = (loc[0], kept_index[str(loc[0])][loc[1]], *loc[2:])
        if mentions_left_out.search(message) or any(loc[: len(r)] == r for r in repaired):
            continue
        problems.append((loc, message))
    return problems


def _mapping_document(text: str, filename: str, expected: str) -> YamlDocument:
    """The parsed document; raises ``SpecError`` for a YAML syntax error or a top level that is not a mapping."""
    try:
        document = YamlDocument(text, filename)
    except yaml.YAMLError as exc:
        raise SpecError([_syntax_problem(filename, exc)]) from None
    if not isinstance(document.data, dict):
        what = "the file is empty" if document.data is None else f"got {_got(document.data)}"
        problem = SpecProblem(filename, document.line_of(()), "", f"expected {expected}; {what}")
        raise SpecError([*document.problems, problem])
    return document


def _problems_at(document: YamlDocument, found: list[tuple[Location, str]]) -> list[SpecProblem]:
    return [
        SpecProblem(document.filename, document.line_of(loc), render_field_path(loc), message, loc)
        for loc, message in found
    ]


def _validate(document: YamlDocument, model: type[M]) -> tuple[M | None, list[tuple[Location, str, str]]]:
    """The model, or None and every pydantic error as (location, error type, message)."""
    try:
        return model.model_validate(document.data), []
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            loc = tuple(part for part in error["loc"] if part != "[key]")
            errors.append((loc, error["type"], pydantic_message(error, model)))
        return None, errors


def load_spec_text(text: str, filename: str = "<spec>") -> ClusterSpec:
    """The validated spec from YAML text; raises ``SpecError`` listing every problem."""
    document = _mapping_document(text, filename, "a mapping with cluster, hosts, ...")
    # Top-level ``x-...`` keys are the user's own (for YAML anchors), as in docker compose files.
    document.data = {k: v for k, v in document.data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    spec, errors = _validate(document, ClusterSpec)
    problems = document.problems + _problems_at(document, [(loc, message) for loc, _, message in errors])
    if spec is None:
        broken = [(loc, kind) for loc, kind, _ in errors]
        problems += _problems_at(document, _references_despite_errors(document.data, broken))
    else:
        problems += _problems_at(document, check_references(spec))
    if problems or spec is None:
        raise SpecError(problems)
    return spec


def read_yaml(path: str | Path) -> str:
    """The text of a YAML file; raises ``SpecError`` (never ``OSError``) naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(
            [SpecProblem(str(path), 0, "", f"cannot read the file ({reason}); expected a UTF-8 YAML file")]
        ) from None


def load_model_text(
    text: str,
    filename: str,
    model: type[M],
    cross_checks: Callable[[M], list[tuple[Location, str]]] | None = None,
) -> M:
    """Any pydantic model from YAML text, with the same error reporting as the cluster spec (file:line,
    field path, what was expected, duplicate keys, all problems at once); for other YAML files
    nonstop reads (e.g. ``nonstop lb`` configs). ``cross_checks`` returns (location, message) pairs."""
    document = _mapping_document(text, filename, "a mapping")
    result, errors = _validate(document, model)
    problems = document.problems + _problems_at(document, [(loc, message) for loc, _, message in errors])
    if result is not None and cross_checks is not None:
        problems += _problems_at(document, cross_checks(result))
    if problems or result is None:
        raise SpecError(problems)
    return result


def load_spec(path: str | Path) -> ClusterSpec:
    """The validated spec from a YAML file; raises ``SpecError`` (never ``OSError``)."""
    return load_spec_text(read_yaml(path), str(path))


def cluster_spec_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, as published in docs/cluster-spec.schema.json."""
    schema = ClusterSpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nonstop.invalid/cluster-spec.schema.json",
        **schema,
        "title": "nonstop cluster spec",
    }


def cluster_spec_schema_text() -> str:
    return json.dumps(cluster_spec_schema(), indent=2, sort_keys=True) + "\n"


# Names other modules imported before these were public; keep them working.
_Document = YamlDocument
_pydantic_message = pydantic_message
