"""What a provider can answer to a request, in the words every HTTP route shares.

The provider modules (``smsru``, ``smsc``) read their wire format into these;
the shell (``http.HttpRoute``) and its resend rules (``policy.resend``) act on
them without knowing which provider spoke. A request-level refusal is an
exception (it covers every number of the request); a per-number answer is an
``Outcome``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Status


class ProviderError(Exception):
    """A request-level refusal: the whole request, every number in it."""

    def __init__(self, code: int, text: str, *, retry_after: float | None = None, account: bool = False) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text
        self.retry_after = retry_after  # None: final
        self.account = account  # the account, not the message, is wrong: alert the admin


class DuplicateRequest(ProviderError):
    """The whole request is an identical one the provider already has (SMSC error 9)."""


@dataclass(frozen=True)
class Accepted:
    smsc_id: str


@dataclass(frozen=True)
class Refused:
    status: Status
    detail: str


@dataclass(frozen=True)
class Retry:
    delay: float
    detail: str


@dataclass(frozen=True)
class Duplicate:
    """Per number: the provider says it has an identical request (SMSC error 9)."""

    detail: str


Outcome = Accepted | Refused | Retry | Duplicate
