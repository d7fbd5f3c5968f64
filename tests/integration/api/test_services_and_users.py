"""The catalog (public reads, providers manage their own, every change on Kafka) and users
(own profile; admins see everyone)."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from erynoa import events as ev
from tests.builders import service_body
from tests.conftest import unique
from tests.integration.api.conftest import Actors, LiveApi, Probe, create_service, events_of

pytestmark = pytest.mark.integration


async def test_provider_manages_a_service_and_each_change_is_published(
    http: httpx.AsyncClient, live_api: LiveApi, probe_topic: Probe
) -> None:
    catalog = await probe_topic("catalog-services")
    provider = unique("prov-")
    auth = live_api.auth(provider, "provider")
    created = await http.post(
        "/services",
        json=service_body(name="Massage", price={"amount": 7000, "currency": "EUR"}),
        headers=auth,
    )
    assert created.status_code == 201, created.text
    service = created.json()["data"]
    assert created.headers["location"] == f"/api/v1/services/{service['id']}"
    assert (service["provider_id"], service["version"], service["active"]) == (provider, 1, True)

    replaced = await http.put(
        f"/services/{service['id']}",
        json=service_body(
            name="Massage (long)",
            description="90 minutes",
            price={"amount": 9500, "currency": "EUR"},
            duration_minutes=90,
        ),
        headers=auth,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["data"]["version"] == 2

    deleted = await http.delete(f"/services/{service['id']}", headers=auth)
    assert deleted.status_code == 200
    assert deleted.json()["data"]["active"] is False
    # Deleting again changes nothing and publishes nothing.
    assert (await http.delete(f"/services/{service['id']}", headers=auth)).status_code == 200

    public = await http.get(f"/services/{service['id']}")
    assert public.status_code == 200
    assert public.json()["data"]["active"] is False

    changes = events_of(await catalog.events(), ev.ServiceChanged, service_id=service["id"])
    assert [(c.name, c.price, c.active) for c in changes] == [
        ("Massage", ev.Money(7000, "EUR"), True),
        ("Massage (long)", ev.Money(9500, "EUR"), True),
        ("Massage (long)", ev.Money(9500, "EUR"), False),
    ]


async def test_customers_cannot_create_and_providers_only_change_their_own(
    http: httpx.AsyncClient, actors: Actors, live_api: LiveApi
) -> None:
    body = service_body(name="Nope")
    denied = await http.post("/services", json=body, headers=actors.customer_auth)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "FORBIDDEN"
    assert (await http.post("/services", json=body)).status_code == 401

    other_provider = live_api.auth(unique("prov-"), "provider")
    path = f"/services/{actors.service_id}"
    assert (await http.put(path, json=body, headers=other_provider)).status_code == 403
    assert (await http.delete(path, headers=other_provider)).status_code == 403
    assert (await http.put(path, json=body, headers=actors.admin_auth)).status_code == 200
    missing = await http.put(f"/services/{unique()}", json=body, headers=actors.provider_auth)
    assert missing.status_code == 404


async def test_listing_filters_and_paginates(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    provider = unique("prov-")
    auth = live_api.auth(provider, "provider")
    tag = unique()[:8]
    for name, amount, currency in [
        (f"Yoga {tag} basic", 1000, "EUR"),
        (f"Yoga {tag} plus", 3000, "EUR"),
        (f"Pilates {tag}", 2000, "CHF"),
    ]:
        await create_service(http, auth, name=name, price={"amount": amount, "currency": currency})

    def names(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return sorted(s["name"] for s in response.json()["data"])

    mine = await http.get("/services", params={"provider_id": provider})
    assert len(names(mine)) == 3
    assert mine.json()["meta"]["total"] == 3
    yoga = await http.get("/services", params={"q": f"yoga {tag}"})
    assert names(yoga) == [f"Yoga {tag} basic", f"Yoga {tag} plus"]
    cheap = await http.get("/services", params={"provider_id": provider, "max_price": 2000})
    assert names(cheap) == [f"Pilates {tag}", f"Yoga {tag} basic"]
    chf = await http.get("/services", params={"provider_id": provider, "currency": "CHF"})
    assert names(chf) == [f"Pilates {tag}"]
    second = await http.get("/services", params={"provider_id": provider, "per_page": 2, "page": 2})
    assert len(names(second)) == 1
    assert second.json()["meta"]["total"] == 3
    # LIKE wildcards in q are literal text.
    assert names(await http.get("/services", params={"q": f"{tag}%"})) == []
    bad = await http.get("/services", params={"per_page": 1000})
    assert bad.status_code == 422


async def test_invalid_service_bodies_get_422(http: httpx.AsyncClient, actors: Actors) -> None:
    base = service_body()
    for change in (
        {"price": {"amount": 10.5, "currency": "EUR"}},
        {"price": {"amount": "100", "currency": "EUR"}},
        {"price": {"amount": -1, "currency": "EUR"}},
        {"price": {"amount": 100, "currency": "eur"}},
        {"duration_minutes": 2**40},
        {"name": ""},
        {"name": "nul\x00byte"},
        {"extra": 1},
    ):
        response = await http.post("/services", json=base | change, headers=actors.provider_auth)
        assert response.status_code == 422, (change, response.text)
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_first_request_creates_the_user_and_profile_edits_stick(
    http: httpx.AsyncClient, live_api: LiveApi, pg: asyncpg.Pool
) -> None:
    sub = unique("dora-")
    token = live_api.token(sub, "customer", email="dora@example.com")
    auth = {"Authorization": f"Bearer {token}"}
    assert await pg.fetchval("SELECT count(*) FROM users WHERE id = $1", sub) == 0
    me = await http.get("/users/me", headers=auth)
    assert me.status_code == 200
    assert me.json()["data"]["email"] == "dora@example.com"
    assert me.json()["data"]["roles"] == ["customer"]

    updated = await http.put(
        "/users/me",
        json={"display_name": "Dora", "webhook_url": "https://dora.example.com/hooks"},
        headers=auth,
    )
    assert updated.status_code == 200, updated.text
    data = updated.json()["data"]
    assert (data["display_name"], data["webhook_url"]) == ("Dora", "https://dora.example.com/hooks")
    assert data["email"] == "dora@example.com"  # left out: unchanged

    cleared = await http.put("/users/me", json={"webhook_url": None}, headers=auth)
    assert cleared.json()["data"]["webhook_url"] is None
    for bad in (
        {"webhook_url": "ftp://dora.example.com"},
        {"webhook_url": "not a url"},
        {"webhook_url": "https://user:pw@dora.example.com/"},
        {"email": "no-at-sign"},
        {"roles": ["admin"]},
    ):
        response = await http.put("/users/me", json=bad, headers=auth)
        assert response.status_code == 422, (bad, response.text)


async def test_admins_list_and_read_users_others_get_403(
    http: httpx.AsyncClient, actors: Actors, live_api: LiveApi
) -> None:
    await http.get("/users/me", headers=actors.customer_auth)  # make sure the row exists
    one = await http.get(f"/users/{actors.customer}", headers=actors.admin_auth)
    assert one.status_code == 200
    assert one.json()["data"]["id"] == actors.customer
    assert (await http.get(f"/users/{unique()}", headers=actors.admin_auth)).status_code == 404

    listing = await http.get(
        "/users", params={"role": "provider", "per_page": 5}, headers=actors.admin_auth
    )
    assert listing.status_code == 200
    assert listing.json()["meta"]["per_page"] == 5
    assert all("provider" in u["roles"] for u in listing.json()["data"])

    for auth in (actors.customer_auth, actors.provider_auth):
        for path in ("/users", f"/users/{actors.customer}"):
            response = await http.get(path, headers=auth)
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "FORBIDDEN"
