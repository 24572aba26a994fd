"""Web pages cannot drive the local service (api.origin_guard): a page that rebinds its own
name to 127.0.0.1 is refused by the Host check, a page of another site cannot change
anything (Origin, Sec-Fetch-Site), and every answer carries the security headers.

The browser tests are the real attack: Debian's Chromium resolves `evil.example` to
127.0.0.1 (as a rebinding DNS server would make it) and loads the service under that
name; and a page served by another local server posts a form and a `no-cors` request to
the service, as any site the user visits could."""

from __future__ import annotations

import http.server
import threading
from typing import Any

import httpx
import pytest

from tests.support.browser import NEEDS_BROWSER, chromium
from tests.support.live_service import LiveService, running_service

#: A rebinding DNS server's answer, as Chromium's own resolver rule.
REBOUND = "--host-resolver-rules=MAP evil.example 127.0.0.1"


@pytest.fixture
def guarded(settings: Any) -> Any:
    """A test client of an app with the product's default hosts (loopback names)."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(settings.model_copy(update={"allowed_hosts": "127.0.0.1,localhost,::1"}))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


@pytest.mark.parametrize("host", ["evil.example:8000", "evil.example", "127.0.0.1.evil.example",
                                  "", "[::2]:8000", "attacker.localhost"])
def test_another_host_is_421_before_any_route(guarded: Any, host: str) -> None:
    for method, path in (("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/"),
                         ("delete", "/v1/jobs/x")):
        response = guarded.request(method, path, headers={"host": host}, json={})
        assert response.status_code == 421, (method, path, response.text)
        assert "QUANTA_ALLOWED_HOSTS" in response.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000",
                                  "LOCALHOST"])
def test_the_loopback_names_are_served(guarded: Any, host: str) -> None:
    assert guarded.get("/v1/jobs", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"origin": "http://127.0.0.1:9999"},  # another port is another origin
    {"origin": "null"},  # a sandboxed frame, a data: page
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
])
def test_changes_sent_by_another_sites_page_are_403(guarded: Any, headers: dict) -> None:
    created = guarded.post("/v1/jobs", json={"kind": "source", "spec": {
        "source_task": "digits"}})
    assert created.status_code == 201
    job = created.json()["id"]
    for method, path, body in (("post", "/v1/jobs", {"kind": "source", "spec": {}}),
                               ("post", f"/v1/jobs/{job}/cancel", None),
                               ("delete", f"/v1/jobs/{job}", None)):
        response = guarded.request(method, path, headers=headers, json=body)
        assert response.status_code == 403, (method, path, response.text)
    assert guarded.get(f"/v1/jobs/{job}").json()["status"] == "queued"  # untouched
    # Reading stays open to the same page; its own changes go through.
    own = {"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"}
    assert guarded.post(f"/v1/jobs/{job}/cancel", headers=own).status_code == 200


def test_every_answer_carries_the_security_headers(guarded: Any) -> None:
    for path in ("/v1/jobs", "/docs", "/openapi.json", "/healthz", "/v1/jobs/nothing"):
        response = guarded.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["referrer-policy"] == "no-referrer", path


def test_quanta_serve_answers_to_the_address_it_listens_on(settings: Any,
                                                             monkeypatch: Any) -> None:
    from api.serve import serve_settings

    monkeypatch.delenv("QUANTA_ALLOWED_HOSTS", raising=False)
    base = settings.model_copy(update={"allowed_hosts": "127.0.0.1,localhost,::1"})
    assert serve_settings(base, 0, "127.0.0.1").allowed_hosts == "127.0.0.1,localhost,::1"
    assert serve_settings(base, 0, "10.1.2.3").allowed_hosts.endswith(",10.1.2.3")
    assert serve_settings(base, 0, "0.0.0.0").allowed_hosts == "*"  # tokens required there
    monkeypatch.setenv("QUANTA_ALLOWED_HOSTS", "quanta.lab")
    assert serve_settings(base, 0, "0.0.0.0").allowed_hosts == base.allowed_hosts


# --- the real attacks, in a real browser ----------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_service(tmp_path_factory.mktemp("service"), workers=0) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Any:
    with chromium(REBOUND) as launched:
        yield launched


def _attacker_site(html: str) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Another site: a local server (another address, so another origin) serving `html`."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.2:{server.server_address[1]}/", server


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_a_rebinding_page_is_refused(service: LiveService, browser: Any) -> None:
    page = browser.new_page()
    try:
        evil = service.url.replace("127.0.0.1", "evil.example")
        response = page.goto(f"{evil}/v1/jobs")
        assert response.status == 421
        assert "evil.example" in page.content()
        # A script of that page cannot read the service either.
        read = page.evaluate("() => fetch('/v1/jobs').then(r => r.status)")
        assert read == 421
        # Under the service's own name, it works.
        assert page.goto(f"{service.url}/v1/jobs").status == 200
    finally:
        page.close()


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_another_sites_form_and_no_cors_requests_change_nothing(service: LiveService,
                                                                 browser: Any) -> None:
    api = httpx.Client(base_url=service.url, timeout=30)
    job = api.post("/v1/jobs", json={"kind": "source", "spec": {
        "source_task": "digits"}}).json()["id"]  # no worker: it stays queued
    before = api.get("/v1/jobs").json()["total"]
    html = f"""<!doctype html><body>
      <form id="f" method="post" enctype="multipart/form-data" action="{service.url}/v1/uploads">
        <input type="hidden" name="file" value="x"></form>
      <script>
        const send = (path, body) => fetch("{service.url}" + path, {{method: "POST",
          mode: "no-cors", headers: {{"content-type": "text/plain"}}, body}});
        send("/v1/jobs/{job}/cancel", "x")
          .then(() => send("/v1/jobs", JSON.stringify({{kind: "source",
                                                         spec: {{source_task: "digits"}}}})))
          .finally(() => document.getElementById("f").submit());
      </script></body>"""
    url, site = _attacker_site(html)
    page = browser.new_page()
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if service.url in r.url else None)
    try:
        with page.expect_navigation(url=f"{service.url}/v1/uploads"):
            page.goto(url)
    finally:
        page.close()
        site.shutdown()
    assert statuses.count(403) == 3, statuses  # the cancel, the job, the upload form
    assert api.get(f"/v1/jobs/{job}").json()["status"] == "queued"
    assert api.get("/v1/jobs").json()["total"] == before
    assert not any(p.is_file() for p in (service.root / "uploads").rglob("*"))
