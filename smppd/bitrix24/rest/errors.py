"""How a Bitrix24 call failed: one exception for the portal's error codes and our own."""

from __future__ import annotations

#: Errors that mean "slow down and try again".
RATE_LIMITED = "QUERY_LIMIT_EXCEEDED"
OPERATION_LIMITED = "OPERATION_TIME_LIMIT"
EXPIRED = "expired_token"
#: No answer came back (``http_client.Unavailable`` or ``Ambiguous``), or a proxy's 502/503/504 without JSON:
#: retried like a rate limit.
NETWORK = "network"


class RestError(Exception):
    """A Bitrix24 error code (or ``network``/``bad_response``), its description and HTTP status."""

    def __init__(self, code: str, description: str = "", http_status: int | None = None) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.http_status = http_status


__all__ = ["EXPIRED", "NETWORK", "OPERATION_LIMITED", "RATE_LIMITED", "RestError"]
