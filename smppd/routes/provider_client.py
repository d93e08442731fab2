"""One HTTP provider's endpoint: its base URL, its timeout, a JSON POST.

The route (``http.HttpRoute``) sends through it, and so do the tools that talk to
a provider without a route or a store (``smppd cost``, SMSC.ru HLR): before this
they built a whole route over a ``None`` store to borrow its POST.
"""

from __future__ import annotations

from typing import Any, Mapping

import aiohttp

from .. import http_client
from ..config import HttpRouteConfig
from ..http_client import Ambiguous, Unavailable


class ProviderClient:
    def __init__(self, cfg: HttpRouteConfig, http: aiohttp.ClientSession | None = None) -> None:
        self.cfg = cfg  # replaced by a reload: the next request takes the new timeout and URL
        self._http = http
        self._own_http = http is None

    def url(self, path: str) -> str:
        """``path`` (``send.php``, ``sms/send``) under the route's ``base_url``."""
        return self.cfg.base_url + path

    async def post(self, url: str, form: Mapping[str, str]) -> Any:
        """POST a form (credentials in the body, never the URL) and decode its JSON.

        The transport's failures are ``http_client``'s; what is ours: a provider's 5xx
        or other non-200 says it did not take the request (``Unavailable``), a body that
        is not JSON may hide an acceptance (``Ambiguous``).
        """
        if self._http is None:  # no shared session given (admin commands, tests): our own
            self._http = aiohttp.ClientSession()
        answer = await http_client.post(self._http, url, form, timeout=self.cfg.timeout)
        if answer.status != 200:
            raise Unavailable(f"HTTP {answer.status}")
        try:
            return answer.json()
        except ValueError:
            raise Ambiguous(f"answer is not JSON: {answer.body[:80]!r}") from None

    async def close(self) -> None:
        """Close the session this client opened itself; a shared one is its owner's."""
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
