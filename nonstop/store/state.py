"""Typed access to the desired cluster spec kept in the store.

Role: the one place that turns a ``ClusterSpec`` into the JSON value at ``keys.spec(cluster)``
and back, so every reader (controller, agents, API) decodes it the same way, and writers can
make the update conditional on the revision they read (no lost updates between two ``apply``).

Must not: decide anything about the spec; validate beyond what the pydantic model does.
"""

from __future__ import annotations

from dataclasses import dataclass

from nonstop.core.spec import ClusterSpec
from nonstop.store import keys
from nonstop.store.base import Op, Store, encode_json


@dataclass(frozen=True)
class StoredSpec:
    spec: ClusterSpec
    mod_revision: int
    """Pass it to ``put_spec(..., expected_mod_revision=)`` to update only if nobody else did."""


async def get_spec(store: Store, cluster: str) -> StoredSpec | None:
    """The desired spec of ``cluster`` and the revision it was written at; None if never stored."""
    kv = await store.get(keys.spec(cluster))
    if kv is None:
        return None
    return StoredSpec(decode_spec(kv.value), kv.mod_revision)


def decode_spec(value: bytes) -> ClusterSpec:
    """The spec stored as ``value`` (pydantic's ``ValidationError``, a ``ValueError``, when it is not one)."""
    return ClusterSpec.model_validate_json(value)


def spec_op(spec: ClusterSpec) -> Op:
    """The transaction op that stores ``spec`` as the desired state (for writers that store it
    together with other keys, e.g. an event)."""
    return Op.put(keys.spec(spec.cluster), encode_json(spec.model_dump(mode="json")))


async def put_spec(store: Store, spec: ClusterSpec, expected_mod_revision: int | None = None) -> int | None:
    """Store ``spec`` as the desired state; return the new revision.

    With ``expected_mod_revision`` the write happens only if the stored spec is still at that
    revision (0: only if none is stored yet); None is returned when it is not.
    """
    op = spec_op(spec)
    key, value = op.key, op.value
    if expected_mod_revision is None:
        return await store.put(key, value)
    if await store.compare_and_set(key, value, expected_mod_revision):
        kv = await store.get(key)
        return kv.mod_revision if kv is not None else None
    return None
