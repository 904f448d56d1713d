"""The landing page (/), the API root (/api/) and the offline API docs (/api/docs/)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from rest_framework.authtoken.models import Token


@pytest.mark.django_db
def test_landing_page__links_admin_docs_and_every_api_resource(client):
    response = client.get("/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    for href in ("/admin/", "/api/docs/", "/api/", "/api/health/", "/api/workflows/", "/api/triggers/"):
        assert f'href="{href}"' in page, href


@pytest.mark.django_db
def test_api_root__lists_absolute_urls_that_answer(client, user):
    response = client.get("/api/")
    assert response.status_code == 200
    links = response.json()
    assert set(links) == {"workflows", "triggers", "executions", "runs", "audit", "health", "schema", "docs"}
    assert all(url.startswith("http://testserver/api/") for url in links.values())
    token = Token.objects.create(user=user)
    for name, url in links.items():
        answer = client.get(urlsplit(url).path, HTTP_AUTHORIZATION=f"Token {token.key}")
        # health is 503 here: no beat or worker runs in this test; it still answers its checks.
        assert answer.status_code == (503 if name == "health" else 200), (name, answer.status_code)


@pytest.mark.django_db
def test_api_docs__load_swagger_ui_from_this_server_not_a_cdn(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', page)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets), assets
    for asset in assets:
        assert not urlsplit(asset).netloc, f"{asset} is loaded from another host"
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert b"".join(served.streaming_content if served.streaming else [served.content])
