"""The `next` link of a page: the same filters, the following offset."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode


def next_page(path: str, filters: dict[str, Any], *, limit: int, offset: int, shown: int,
              total: int) -> str | None:
    """URL of the page after one that showed `shown` items from `offset`; None on the last.

    Filters that are None are left out of the URL."""
    if offset + shown >= total:
        return None
    query = {k: v for k, v in filters.items() if v is not None}
    return f"{path}?{urlencode(query | {'limit': limit, 'offset': offset + limit})}"
