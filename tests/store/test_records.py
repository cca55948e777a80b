"""The typed store records: every family round-trips, old values read as schema 1, newer schemas
and unknown fields (where a family forbids them) are refused, and the helpers read and merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nonstop.core.guests.model import GuestDefinition
from nonstop.store import keys, open_store
from nonstop.store.record import Record, RecordError, RecordVersionError, merge, read_prefix
from nonstop.store.records import (
    AbortRequest,
    EpochRecord,
    EventRecord,
    GuestDesired,
    HostAlive,
    HostComponents,
    HostDesired,
    HostObserved,
    HostPatch,
    IpamRecord,
    LeaderRecord,
    ObservedGuestRecord,
    PatcherLock,
    RunnerLock,
    ServiceBackends,
    model_for,
    put,
    read,
    read_or_none,
)

C = "c1"

SAMPLES: list[tuple[str, Record]] = [
    (keys.host_desired(C, "h1"), HostDesired(state="maintenance", evacuate=False, reason="disk swap", by="ops")),
    (keys.host_alive(C, "h1"), HostAlive(host="h1", pid=42, started_at=1.5, drivers=("process", "qemu"))),
    (keys.host_observed(C, "h1"), HostObserved.model_validate({
        "guests": ["a", "b"], "usage": {"machine_cpus": 2}, "patch_level": "L2", "agent_version": "0.1.0",
        "nics": {"eth0": {"state": "up", "carrier": True, "team": "bond0"}},
        "teams": {"bond0": {"mode": "active-backup", "state": "up", "active": "eth0", "transmit": ["eth0"],
                            "failovers": 1, "members": {"eth0": {"state": "up", "machine": "up", "carrier": True}}}},
        "teams_at": 3.0})),
    (keys.host_components(C, "h1"), HostComponents.model_validate({
        "host": "h1", "health": "degraded", "power_state": "On", "reason": "power: 1 of 2 working",
        "groups": {"power": {"state": "degraded", "working": 1, "total": 2, "failed": ["PSU2"]}},
        "policy": "acting", "placement": "no-new-guests", "bmc_errors": 2, "missing": ["storage"]})),
    (keys.host_patch(C, "h1"), HostPatch(id="r/h1/0/patch", host="h1", action="patch", target="L2", timeout=60,
                                         state="done", exit_code=0, output="ok", patch_level="L2")),
    (keys.guest_observed(C, "g"), ObservedGuestRecord.model_validate({
        "host": "h1", "state": "running", "fencing_epoch": 3, "boot_id": "b-1", "address": "198.18.10.5"})),
    (keys.guest_runner(C, "g"), RunnerLock(host="h1")),
    (keys.epoch(C, "g"), EpochRecord(epoch=7)),
    (keys.service_backends(C, "api"), ServiceBackends.model_validate(
        {"backends": [{"name": "api-0", "address": "198.18.10.5:8080", "weight": 2}]})),
    (keys.leader(C), LeaderRecord.model_validate({
        "id": "ctl@m", "pid": 9, "heartbeat": [{"link": "mgmt", "address": "198.18.0.1", "port": 7000}],
        "updated_at": 5.0, "hosts": {"h1": "up"}, "maintenance": ["h2"], "ops": {"failover-1": "fenced"}})),
    (keys.event(C, 12), EventRecord(seq=12, at=12e-9, kind="host-state", subject="h1", reason="links", after="up",
                                    down_links=["sw1"])),
    (keys.ipam(C, "prod", "198.18.10.5"), IpamRecord(owner="web-0")),
    (keys.op_lock(C, "patch-1"), PatcherLock(patcher="patcher@m")),
    (keys.op_abort(C, "patch-1"), AbortRequest(requested_at=4.0)),
]
IDS = [type(r).__name__ for _, r in SAMPLES]


@pytest.mark.parametrize(("key", "record"), SAMPLES, ids=IDS)
def test_every_record_round_trips_and_is_found_by_its_key(key: str, record: Record) -> None:
    value = record.encode()
    assert json.loads(value)["schema"] == 1
    assert type(record).decode(value) == record
    assert model_for(key) is type(record)


@pytest.mark.parametrize(("key", "record"), SAMPLES, ids=IDS)
def test_a_record_without_schema_is_version_1(key: str, record: Record) -> None:
    old = record.data()
    assert "schema" not in old
    read_back = type(record).decode(json.dumps(old).encode())
    assert read_back.schema_version == 1 and read_back == record


@pytest.mark.parametrize(("key", "record"), SAMPLES, ids=IDS)
def test_a_newer_schema_is_refused_naming_the_family(key: str, record: Record) -> None:
    newer = json.dumps({**record.data(), "schema": 99}).encode()
    with pytest.raises(RecordVersionError, match="schema 99") as caught:
        type(record).decode(newer)
    assert type(record).FAMILY in str(caught.value)
    assert caught.value.family == type(record).FAMILY and caught.value.version == 99
    with pytest.raises(ValueError, match=r"schema 99, this nonstop reads schema 1"):  # any route in
        type(record).model_validate({**record.data(), "schema": 99})


CLOSED = [(k, r) for k, r in SAMPLES if type(r).model_config.get("extra") == "forbid"]
OPEN = [(k, r) for k, r in SAMPLES if type(r).model_config.get("extra") == "allow"]


@pytest.mark.parametrize(("key", "record"), CLOSED, ids=[type(r).__name__ for _, r in CLOSED])
def test_unknown_fields_are_refused_by_closed_families(key: str, record: Record) -> None:
    with pytest.raises(RecordError, match=rf"{type(record).FAMILY}: surprise: Extra inputs are not permitted"):
        type(record).decode(json.dumps({**record.dump(), "surprise": 1}).encode())


@pytest.mark.parametrize(("key", "record"), OPEN, ids=[type(r).__name__ for _, r in OPEN])
def test_open_reports_keep_fields_they_do_not_name(key: str, record: Record) -> None:
    read_back = type(record).decode(json.dumps({**record.dump(), "surprise": 1}).encode())
    assert read_back.dump()["surprise"] == 1


def test_the_open_and_closed_families_are_the_ones_meant() -> None:
    assert {type(r).__name__ for _, r in OPEN} == {"HostDesired", "HostObserved", "ObservedGuestRecord", "EventRecord"}


@pytest.mark.parametrize(("model", "stored", "expected"), [
    (EpochRecord, b"5", EpochRecord(epoch=5)),
    (IpamRecord, b"web-0", IpamRecord(owner="web-0")),
    (IpamRecord, b"123", IpamRecord(owner="123")),
    (ServiceBackends, b'[{"name":"a","address":"198.18.10.5:80"}]',
     ServiceBackends.model_validate({"backends": [{"name": "a", "address": "198.18.10.5:80"}]})),
], ids=["epoch-number", "ipam-text", "ipam-numeric-name", "backends-list"])
def test_values_older_writers_stored_bare_read_as_records(model: type[Record], stored: bytes, expected: Record) -> None:
    assert model.decode(stored) == expected


@pytest.mark.parametrize(("model", "value", "words"), [
    (HostAlive, b"not json", "hosts/<host>/alive: not JSON"),
    (HostAlive, b"{}", "hosts/<host>/alive: host: Field required"),
    (EpochRecord, b'{"epoch": "x"}', "epoch/<guest>: epoch:"),
    (RunnerLock, b'{"host": "h1", "schema": "one"}', "guests/<guest>/runner: schema 'one' is not a version"),
])
def test_unreadable_values_are_refused_naming_the_family(model: type[Record], value: bytes, words: str) -> None:
    with pytest.raises(RecordError, match=words.replace("<", r"\<")):
        model.decode(value)


def test_guest_desired_stores_the_definition_with_its_schema() -> None:
    d = GuestDefinition(name="g", cluster=C, host="h1", memory=64 * 1024**2, max_memory=64 * 1024**2)
    value = GuestDesired.encode(d)
    assert json.loads(value)["schema"] == 1
    assert GuestDesired.decode(value) == d
    assert GuestDesired.decode(json.dumps(d.to_dict()).encode()) == d  # written before schemas
    with pytest.raises(RecordVersionError, match="guests/<guest>/desired"):
        GuestDesired.decode(json.dumps({**d.to_dict(), "schema": 2}).encode())
    with pytest.raises(RecordError, match="guests/<guest>/desired"):
        GuestDesired.decode(b"[1, 2]")


def test_families_with_models_elsewhere_have_none_here() -> None:
    for key in (keys.spec(C), keys.guest_desired(C, "g"), keys.op(C, "x"), keys.controller_memory(C)):
        assert model_for(key) is None


def test_with_changes_validates() -> None:
    request = HostPatch(id="r", host="h1", action="patch")
    assert request.with_changes(state="running", agent_pid=3).state == "running"
    with pytest.raises(ValueError):
        request.with_changes(exit_code="zero")


async def test_read_put_list_and_merge_against_a_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        key = keys.host_observed(C, "h1")
        assert await read(store, key, HostObserved) is None
        assert await merge(store, key, HostObserved, {"guests": ["a"]})
        assert await merge(store, key, HostObserved, {"patch_level": "L1", "agent_pid": 5})
        merged = await read(store, key, HostObserved)
        assert merged is not None and merged.guests == ("a",) and merged.patch_level == "L1"

        await store.put(key, b"garbage")  # an unreadable value is replaced by the merge
        assert await read_or_none(store, key, HostObserved) is None
        with pytest.raises(RecordError):
            await read(store, key, HostObserved)
        assert await merge(store, key, HostObserved, {"guests": ["b"]})
        assert (await read(store, key, HostObserved)) == HostObserved(guests=("b",))

        newer: dict[str, Any] = {"schema": 2, "guests": ["c"], "new_field": True}
        await store.put_json(key, newer)  # a newer nonstop's record is not ours to rewrite
        assert not await merge(store, key, HostObserved, {"guests": ["d"]})
        assert await store.get_json(key) == newer

        for n in (1, 2):
            await put(store, keys.epoch(C, f"g{n}"), EpochRecord(epoch=n))
        await store.put(keys.epoch(C, "old"), b"3")
        await store.put(keys.epoch(C, "bad"), b"{}")
        found = await read_prefix(store, keys.epochs_prefix(C), EpochRecord)
        assert {g: r.epoch for g, r in found.items()} == {"g1": 1, "g2": 2, "old": 3}
    finally:
        await store.close()
