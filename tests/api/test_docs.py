"""The API documentation works offline: /docs names no other host, and its assets are here."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_reference_no_other_host_and_their_assets_are_served(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    parser = _Links()
    parser.feed(page.text)
    assert parser.urls, page.text
    # Every URL in the page, in tags or in its inline script, is on this host.
    for url in [*parser.urls, *re.findall(r"https?://[^\s'\"`)]+", page.text)]:
        assert not urlsplit(url).netloc, f"/docs loads {url} from another host"
    assert any(u.endswith("swagger-ui-bundle.js") for u in parser.urls)
    assert any(u.endswith("swagger-ui.css") for u in parser.urls)
    for url in parser.urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    script = client.get(next(u for u in parser.urls if u.endswith(".js")))
    assert "SwaggerUIBundle" in script.text
    assert "'/openapi.json'" in page.text and client.get("/openapi.json").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/redoc").status_code == 404  # no ReDoc: it would need a CDN
