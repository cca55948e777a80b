"""The demo's report and plot from recorded samples: windows, failures, percentiles, the PNG."""

from __future__ import annotations

from pathlib import Path

from nonstop.demo.load import Sample
from nonstop.demo.report import build_report, percentile, write_plot
from nonstop.store.records import EventRecord


def samples(began: float) -> list[Sample]:
    out = []
    for i in range(400):  # 40/s for 10 s; failures and slow answers between t=3 s and t=4 s
        at = began + i / 40
        slow = 3.0 <= i / 40 < 4.0
        status = 0 if slow and i % 10 == 0 else 200
        out.append(Sample(at, status, 0.5 if slow else 0.01))
    return out


def test_report_counts_failures_and_latency_per_event_window(tmp_path: Path) -> None:
    began = 1000.0
    steps = [{"event": "host-failure", "target": "h1", "at": began + 3.0, "end": began + 4.0, "healed_at": began + 3.5,
              "dead_s": 0.5},
             {"event": "link-cut", "target": "h2/eth1", "at": began + 6.0, "end": began + 8.0, "healed_at": None}]
    events = [EventRecord(seq=1, at=began + 3.5, kind="host-dead", subject="h1", reason="silent"),
              EventRecord(seq=2, at=began + 3.6, kind="backends", subject="api", reason="x")]
    report = build_report("c", "api", samples(began), steps, events, began)
    assert report["requests"] == 400 and report["failed"] == 4
    first, second = report["events"]
    assert (first["requests"], first["failed"]) == (40, 4)
    assert first["p99_ms"] == 500.0 and second["p99_ms"] == 10.0
    assert (second["requests"], second["failed"]) == (80, 0)
    assert [e["kind"] for e in report["timeline"]] == ["host-dead"]
    # the per-second series leaves out the last second (the load may have stopped inside it)
    assert sum(p["ok"] + p["failed"] for p in report["series"]) == 360 and len(report["series"]) == 9
    plot = tmp_path / "demo.png"
    write_plot(report, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 99) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_demo_load_defaults_follow_the_replicas_kind() -> None:
    from nonstop.demo.tour import PATH_VM, RATE_VM, default_path, default_rate
    from nonstop.specfile import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "lab.yaml")
    # web: VM replicas under TCG — fewer requests, of the static file; api: process replicas
    assert (default_rate(spec, "web"), default_path(spec, "web")) == (RATE_VM, PATH_VM) == (10.0, "/health")
    assert (default_rate(spec, "api"), default_path(spec, "api")) == (40.0, "/")
