"""CLI verbs that read or change a running cluster through its API server.

Role: ``nonstop api serve``; and the client verbs ``status``, ``get KIND``, ``get intent ID``,
``describe KIND NAME``, ``apply FILE``, ``maintenance enter|exit HOST``,
``migrate GUEST --to HOST [--mode live|cold]``, ``console GUEST``, ``logs [--follow]``,
``fail host|link|guest|switch|psu|drive|nic NAME``, ``partition HOST``, ``heal``. ``maintenance``
and ``migrate`` print the controller's outcome (done, accepted → target) or, when it has not
answered within the API's wait (HTTP 202), the intent to follow with ``nonstop get intent ID``.
Every client verb takes ``--json`` (print the API's answer as JSON), ``--api URL``,
``--cluster NAME`` and ``--token-file PATH`` (defaults: the endpoint file the server wrote, see
nonstop/api/server.py). Exit codes (docs/architecture.md, docs/api.md): 0 success, 1 the
operation failed (server unreachable, 401/403, 5xx), 2 bad input (invalid spec, unknown name,
bad argument), 3 the cluster's state does not allow it (409, or no server running).

Must not: hold cluster logic; talk to the store directly (everything goes through the API).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from nonstop.api.client import EXIT_BAD_INPUT, ApiClient, ApiError
from nonstop.core.units import format_size

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ApiOpt = typer.Option(None, "--api", envvar="NONSTOP_API", help="API URL (default: the running cluster's).")
ClusterOpt = typer.Option(None, "--cluster", "-c", help="Cluster name (default: the only one running here).")
TokenOpt = typer.Option(None, "--token-file", envvar="NONSTOP_TOKEN_FILE", help="Token file (default: the server's).")
JsonOpt = typer.Option(False, "--json", help="Print the API's answer as JSON.")

KINDS = ("hosts", "guests", "services", "networks", "teams", "components", "events", "switches", "intents")
FAIL_TARGETS = ("host", "link", "guest", "switch", "psu", "drive", "nic")
STATE_STYLE = {"up": "green", "running": "green", "maintenance": "blue", "failed": "red", "dead": "red",
               "down": "red", "suspect": "yellow", "link-degraded": "yellow", "pending": "yellow",
               "healthy": "green", "redundant": "green", "degraded": "yellow", "lost": "red", "unknown": "white"}


def _client(api: str | None, cluster: str | None, token_file: str | None) -> ApiClient:
    try:
        return ApiClient.discover(api, cluster, token_file)
    except ApiError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from None


def _call(client: ApiClient, method: str, path: str, body: Any = None) -> Any:
    try:
        return client.request(method, path, body)
    except ApiError as exc:
        body_ = exc.body if isinstance(exc.body, dict) else {}
        for problem in body_.get("problems", []):
            err.print(f"{problem.get('file')}:{problem.get('line')} {problem.get('field')}: {problem.get('message')}")
        if not body_.get("problems"):
            err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from None


def _state(state: Any) -> str:
    return f"[{STATE_STYLE.get(str(state), 'white')}]{state}[/]"


def _one_of(value: str, allowed: tuple[str, ...], what: str = "") -> None:
    if value not in allowed:
        err.print(f'[red]error:[/] expected {what}{" or ".join(allowed)}, got "{value}"')
        raise typer.Exit(EXIT_BAD_INPUT)


def _ask(api: str | None, cluster: str | None, token_file: str | None, path: str, body: dict[str, Any],
         as_json: bool, asked: str) -> dict[str, Any] | None:
    """POST a request the controller answers (an intent): the answer to print, or None when it is
    printed already (``--json``, or not answered yet: then the intent to follow)."""
    r: dict[str, Any] = _call(_client(api, cluster, token_file), "POST", path, body)
    if as_json:
        _json(r)
        return None
    if r["status"] == "pending":
        out.print(f"{asked} requested; the controller has not answered yet: "
                  f"follow with `nonstop get intent {r['intent']}`")
        return None
    return r


def _print_intent(i: dict[str, Any]) -> None:
    outcome = i.get("outcome") or {}
    out.print(f"[bold]intent {i['id']}[/]: {i['what']}")
    at = time.strftime("%H:%M:%S", time.localtime(float(i["created_at"])))
    for key, value in (("asked", f"{at} by {i['requester']}: {i['reason']}"), ("status", _state(i["status"])),
                       ("outcome", outcome.get("message")), ("from", outcome.get("source")),
                       ("target", outcome.get("target"))):
        if value:
            out.print(f"  {key:<8} {value}")


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _table(kind: str, rows: list[dict[str, Any]]) -> Table:
    t = Table(title=kind, title_justify="left")
    if kind == "hosts":
        for col in ("host", "state", "vCPU alloc/phys", "memory alloc/phys", "NICs", "guests"):
            t.add_column(col)
        for h in rows:
            cap = h.get("capacity") or {}
            cpus, mem = cap.get("cpus") or 0, cap.get("memory") or 0
            t.add_row(h["name"], _state(h["state"]),
                      f"{h['allocated']['vcpus']}/{cpus} ({h['allocated']['vcpus'] / cpus if cpus else 0:.2f}×)",
                      f"{format_size(h['allocated']['memory'])}/{format_size(mem) if mem else '?'}",
                      " ".join(f"{n['name']}:{n['state']}" for n in h["nics"]), ", ".join(h["guests"]))
    elif kind == "guests":
        for col in ("guest", "state", "host", "kind", "vCPU", "memory", "address", "epoch"):
            t.add_column(col)
        for g in rows:
            where = g["host"] or "-"
            if g.get("migrate_to"):
                step = (g.get("migration") or {}).get("step")
                where += f" → {g['migrate_to']}" + (f" ({step})" if step else "")
            t.add_row(g["name"], _state(g["state"]), where, str(g["kind"]), str(g["vcpus"]),
                      format_size(g["memory"]) if g["memory"] else "-", str(g["address"] or "-"), str(g["epoch"]))
    elif kind == "services":
        for col in ("service", "listen", "algorithm", "backends (health, req/s)", "req/s"):
            t.add_column(col)
        for s in rows:
            t.add_row(s["name"], str(s["listen"]), str(s["algorithm"]),
                      ", ".join(f"{b['name']} {b['health']} {b['rate']:g}" for b in s["backends"]) or "-",
                      f"{s['rate']:g}")
    elif kind == "networks":
        for col in ("network", "mode", "subnet", "gateway", "uplink", "addresses"):
            t.add_column(col)
        for n in rows:
            t.add_row(n["name"], n["mode"], n["subnet"], str(n["gateway"] or "-"), str(n["uplink"] or "-"),
                      f"{n['addresses_used']}/{n['addresses_total']}")
    elif kind == "teams":
        for col in ("host", "team", "mode", "state", "active", "members", "failovers", "source"):
            t.add_column(col)
        for tm in rows:
            t.add_row(tm["host"], tm["name"], tm["mode"], _state(tm["state"]), str(tm["active"] or "-"),
                      ", ".join(f"{m['name']}:{m['state']}" for m in tm["members"]),
                      "-" if tm.get("failovers") is None else str(tm["failovers"]), str(tm.get("source") or "-"))
    elif kind == "components":
        for col in ("host", "health", "power", "network", "storage", "cooling", "placement"):
            t.add_column(col)
        for c in rows:
            groups = {g["group"]: g for g in c["groups"]}

            def cell(name: str, groups: dict[str, Any] = groups) -> str:
                g = groups.get(name)
                return "-" if g is None else f"{_state(g['state'])} {g['working']}/{g['total']}" + (
                    f" (failed {', '.join(g['failed'])})" if g["failed"] else "")
            t.add_row(c["host"], _state(c["health"]), cell("power"), cell("network"), cell("storage"), cell("cooling"),
                      str(c.get("placement") or "-"))
    elif kind == "intents":
        for col in ("intent", "asked", "requester", "status", "outcome"):
            t.add_column(col)
        for i in rows:
            t.add_row(str(i["id"]), str(i["what"]), str(i["requester"]), _state(i["status"]),
                      str((i.get("outcome") or {}).get("message") or "-"))
    elif kind == "switches":
        t.add_column("switch")
        t.add_column("state")
        t.add_column("ports")
        for s in rows:
            t.add_row(s["name"], _state(s["state"]), ", ".join(s["ports"]))
    else:
        for col in ("time", "kind", "subject", "reason", "by"):
            t.add_column(col)
        for e in rows:
            t.add_row(time.strftime("%H:%M:%S", time.localtime(float(e.get("at", 0)))), str(e.get("kind")),
                      str(e.get("subject")), str(e.get("reason")), str(e.get("by") or ""))
    return t


def register(app: typer.Typer) -> None:  # noqa: C901 - one place lists every verb
    api_app = typer.Typer(help="The REST API and dashboard server.", no_args_is_help=True)
    app.add_typer(api_app, name="api")

    @api_app.command("serve")
    def serve(store: str = typer.Option(..., "--store", help="Store URL (sqlite:///path or etcd://host:port)."),
              cluster: str = typer.Option(..., "--cluster", help="Cluster name."),
              host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(8700, "--port"),
              token_file: str = typer.Option(None, "--token-file", help="Default /run/nonstop/<cluster>/tokens.json."),
              balancer: list[str] = typer.Option([], "--balancer", help="SERVICE=IP:PORT of a balancer's admin API.")) -> None:
        """Serve the API, dashboard and /metrics for a cluster (chaos actions need `nonstop up`)."""
        from nonstop.api.server import ApiServer

        balancers = dict(b.split("=", 1) for b in balancer if "=" in b)
        try:
            server = ApiServer(store, cluster, token_file, host=host, port=port, balancers=balancers)
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
        err.print(f"nonstop API for {cluster}: {server.url}/  (tokens: {server.token_file})")
        try:
            asyncio.run(server.serve_forever())
        except KeyboardInterrupt:
            pass

    @app.command("status")
    def status(as_json: bool = JsonOpt, api: str = ApiOpt, cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """The cluster at a glance: hosts, guests, services, running operations."""
        s = _call(_client(api, cluster, token_file), "GET", "/status")
        if as_json:
            return _json(s)
        verdict = "[green]healthy[/]" if s["healthy"] else "[yellow]degraded[/]"
        out.print(f"cluster [bold]{s['cluster']}[/] {verdict} · {s['running']}/{s['guests']} guests running · "
                  f"revision {s['revision']}")
        for h in s["hosts"]:
            out.print(f"  {h['name']:<12} {_state(h['state']):<30} {h['guests']} guests")
        for svc in s["services"]:
            health = (f"{svc['backends']} backends (health unknown: no balancer stats)"
                      if svc["health_unknown"] == svc["backends"] else f"{svc['healthy']}/{svc['backends']} backends up")
            out.print(f"  service {svc['name']:<10} {svc['listen']}  {health}, {svc['rate']:g} req/s")
        for op in s["active_ops"]:
            out.print(f"  [yellow]operation[/] {op.get('op_id') or op.get('id')}: {op.get('step')}")
        for warning in s.get("warnings", []):
            out.print(f"  [yellow]warning[/] {warning}")

    @app.command("get")
    def get(kind: str = typer.Argument(..., help="|".join(KINDS) + "|intent"),
            name: str = typer.Argument(None, help="With intent(s): one intent's id."), as_json: bool = JsonOpt,
            api: str = ApiOpt, cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """List hosts, guests, services, networks, teams, components, switches, events or intents;
        `get intent ID`: one request to the controller and its outcome."""
        one = kind in ("intent", "intents") and bool(name)
        if (kind not in KINDS or name) and not one:
            err.print(f'[red]error:[/] unknown kind "{kind}"; expected one of: {", ".join(KINDS)}, or intent ID')
            raise typer.Exit(EXIT_BAD_INPUT)
        if one:
            i = _call(_client(api, cluster, token_file), "GET", f"/intents/{name}")
            return _json(i) if as_json else _print_intent(i)
        rows = _call(_client(api, cluster, token_file), "GET", f"/{kind}")
        if as_json:
            return _json(rows)
        out.print(_table(kind, rows))

    @app.command("describe")
    def describe(kind: str = typer.Argument(..., help="host|guest|service|network|team|switch"),
                 name: str = typer.Argument(..., help="Its name (teams: HOST/TEAM)."), as_json: bool = JsonOpt,
                 api: str = ApiOpt, cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """One object in full; for a guest, where placement would put it and why (every filter and score)."""
        d = _call(_client(api, cluster, token_file), "GET", f"/describe/{kind}/{name}")
        if as_json:
            return _json(d)
        out.print(f"[bold]{kind} {name}[/]")
        for key, value in d["record"].items():
            if value in (None, "", [], {}):
                continue
            if "memory" in key and isinstance(value, int) and not isinstance(value, bool):
                value = format_size(value)
            out.print(f"  {key:<14} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        p = d.get("placement")
        if p and p.get("available") and p.get("explanation"):
            x = p["explanation"]
            out.print(f"placement: would place on [bold]{p['would_place_on']}[/] (runs on {p['current_host']})")
            ft = Table(title="filters", title_justify="left")
            for col in ("filter", "removed", "remaining"):
                ft.add_column(col)
            for f in x["filters"]:
                ft.add_row(f["filter"], f"{f['removed']} {' '.join(f['removed_hosts'])}", str(f["remaining"]))
            out.print(ft)
            scored = [s for s in [x["chosen"], *x["runners_up"]] if s]
            if scored:
                st = Table(title="weighers (weight × normalized)", title_justify="left")
                st.add_column("host")
                for w in scored[0]["scores"]:
                    st.add_column(w["weigher"])
                st.add_column("total")
                for hs in scored:
                    st.add_row(hs["host"], *[f"{w['weight'] * w['normalized']:.2f}" for w in hs["scores"]],
                               f"{hs['total']:.2f}")
                out.print(st)
            out.print(x["reason"])
        elif p and p.get("unplaced_reason"):
            out.print(f"[red]cannot be placed:[/] {p['unplaced_reason']}")
        for e in d.get("events", []):
            out.print(f"  {time.strftime('%H:%M:%S', time.localtime(e['at']))} {e['kind']} {e['reason']}")

    @app.command("apply")
    def apply(file: Path = typer.Argument(..., help="Cluster spec (YAML)."), as_json: bool = JsonOpt, api: str = ApiOpt,
              cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """Make FILE the desired state (validated first; the controller applies the difference)."""
        from nonstop.specfile import SpecError, load_spec_text

        try:
            text = file.read_text()
            spec = load_spec_text(text, str(file))
        except OSError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except SpecError as exc:
            for problem in exc.problems:
                err.print(str(problem))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        result = _call(_client(api, cluster or spec.cluster, token_file), "POST", "/apply",
                       {"spec": text, "filename": str(file)})
        if as_json:
            return _json(result)
        if not result["applied"]:
            out.print("no change: the cluster already has this spec")
        for change in result["changes"]:
            out.print(f"  {change}")

    @app.command("maintenance")
    def maintenance(action: str = typer.Argument(..., help="enter|exit"), host: str = typer.Argument(...),
                    reason: str = typer.Option("", "--reason"), as_json: bool = JsonOpt, api: str = ApiOpt,
                    cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """Ask the controller to evacuate HOST (enter) or to use it again (exit)."""
        _one_of(action, ("enter", "exit"))
        state = "maintenance" if action == "enter" else "up"
        r = _ask(api, cluster, token_file, f"/hosts/{host}/maintenance", {"action": action, "reason": reason},
                 as_json, f"{host}: {state}")
        if r is not None:
            out.print(f"{host}: {_state(state)}" + ("" if r["changed"] else " (already)") + f" — {r['message']}")

    @app.command("migrate")
    def migrate(guest: str = typer.Argument(...), to: str = typer.Option(..., "--to", help="Target host."),
                mode: str = typer.Option("live", "--mode", help="live (VMs: keeps running) or cold (drained, "
                                                                "restarted on the target)."),
                reason: str = typer.Option("", "--reason"), as_json: bool = JsonOpt, api: str = ApiOpt,
                cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """Ask the controller to move GUEST to another host (live by default; --mode cold for any guest)."""
        _one_of(mode, ("live", "cold"), "--mode ")
        r = _ask(api, cluster, token_file, f"/guests/{guest}/migrate", {"to": to, "mode": mode, "reason": reason},
                 as_json, f"{guest}: {mode} migration to {to}")
        if r is not None:
            out.print(f"{guest}: {mode} migration {r['from']} → {r['target']} {r['status']} — {r['message']}")

    @app.command("console")
    def console(guest: str = typer.Argument(...), lines: int = typer.Option(200, "--lines", "-n"),
                as_json: bool = JsonOpt, api: str = ApiOpt, cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """The tail of GUEST's console log."""
        text = _call(_client(api, cluster, token_file), "GET", f"/guests/{guest}/console?lines={lines}")
        _json({"guest": guest, "console": text}) if as_json else sys.stdout.write(text)

    @app.command("logs")
    def logs(follow: bool = typer.Option(False, "--follow", "-f"), limit: int = typer.Option(50, "--limit", "-n"),
             as_json: bool = JsonOpt, api: str = ApiOpt, cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """The cluster's event log (with --follow: then every new event as it happens)."""
        client = _client(api, cluster, token_file)
        events = _call(client, "GET", f"/events?limit={limit}")
        from nonstop.api.routes_read import format_event

        for e in events:
            sys.stdout.write((json.dumps(e) if as_json else format_event(e)) + "\n")
        if not follow:
            return
        try:
            for message in client.stream():
                if message.get("type") == "event":
                    e = message["event"]
                    sys.stdout.write((json.dumps(e) if as_json else format_event(e)) + "\n")
                    sys.stdout.flush()
        except (ApiError, KeyboardInterrupt):
            pass

    @app.command("fail")
    def fail(target: str = typer.Argument(..., help="|".join(FAIL_TARGETS)),
             name: str = typer.Argument(..., help="NAME, or HOST/PART for link, nic, psu, drive."),
             as_json: bool = JsonOpt, api: str = ApiOpt, cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """Break something in the lab (chaos; needs `nonstop up`)."""
        if target not in FAIL_TARGETS:
            err.print(f'[red]error:[/] unknown target "{target}"; expected one of: {", ".join(FAIL_TARGETS)}')
            raise typer.Exit(EXIT_BAD_INPUT)
        r = _call(_client(api, cluster, token_file), "POST", "/chaos/fail", {"target": target, "name": name})
        _json(r) if as_json else out.print(f"{r['action']}({', '.join(r['args'])}): done")

    @app.command("partition")
    def partition(host: str = typer.Argument(...), as_json: bool = JsonOpt, api: str = ApiOpt,
                  cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """Cut HOST off from every other host (chaos; needs `nonstop up`)."""
        r = _call(_client(api, cluster, token_file), "POST", "/chaos/partition", {"host": host})
        _json(r) if as_json else out.print(f"{host}: partitioned")

    @app.command("heal")
    def heal(as_json: bool = JsonOpt, api: str = ApiOpt, cluster: str = ClusterOpt, token_file: str = TokenOpt) -> None:
        """Undo every fault the lab injected."""
        r = _call(_client(api, cluster, token_file), "POST", "/chaos/heal")
        _json(r) if as_json else out.print("healed")
