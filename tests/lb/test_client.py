"""The admin API client (nonstop/lb/client.py) against a running balancer, and its failures."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nonstop.lb.client import BalancerAdminClient, BalancerAdminError

from .helpers import free_port, running, service

pytestmark = pytest.mark.timeout(60)


async def test_client_reads_and_changes_backends(backends: Any) -> None:
    a, b = backends("a", "b")
    async with running(service("web", [a], health={"enabled": False}), admin=True) as lb:
        assert lb.admin_address is not None
        host, port = lb.admin_address
        async with BalancerAdminClient(f"{host}:{port}") as client:
            assert [x["name"] for x in await client.get_backends("web")] == ["a"]
            added = await client.add_backend("web", "b", b.address, weight=3)
            assert added["name"] == "b" and added["weight"] == 3
            with pytest.raises(BalancerAdminError) as exists:
                await client.add_backend("web", "b", b.address)
            assert exists.value.status == 409
            assert (await client.set_state("web", "a", "drain"))["admin"] == "drain"
            assert (await client.set_weight("web", "b", 5))["weight"] == 5
            with pytest.raises(BalancerAdminError) as bad:
                await client.set_state("web", "a", "sleepy")
            assert bad.value.status == 400 and "ready, drain or maint" in bad.value.detail
            svc = await client.get_service("web")
            assert svc["name"] == "web" and {x["name"] for x in svc["backends"]} == {"a", "b"}
            await client.remove_backend("web", "b")
            assert [x["name"] for x in await client.get_backends("web")] == ["a"]
            with pytest.raises(BalancerAdminError) as gone:
                await client.remove_backend("web", "b")
            assert gone.value.status == 404
            assert (await client.request_json("GET", "/health")) == {"ok": True}


async def test_an_unreachable_balancer_is_an_error_without_status() -> None:
    async with BalancerAdminClient(f"127.0.0.1:{free_port()}", timeout=0.5) as client:
        with pytest.raises(BalancerAdminError) as err:
            await client.get_backends("web")
    assert err.value.status is None


async def test_answers_that_are_not_json_are_errors() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text="nonstop_lb_up 1\n")
        return httpx.Response(502, text="<html>bad gateway</html>")

    client = BalancerAdminClient("10.0.0.1:9", transport=httpx.MockTransport(answer))
    with pytest.raises(BalancerAdminError) as text:
        await client.request_json("GET", "/metrics")
    assert text.value.status is None
    with pytest.raises(BalancerAdminError) as html:
        await client.get_backends("web")
    assert html.value.status == 502
    await client.aclose()
