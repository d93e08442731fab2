"""The simulated portal's SMS side: messages the core hands to a provider's HANDLER, the
``messageservice.*`` REST methods, ``app.info`` and ``user.admin`` (bitrix24.md §3-§7).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import aiohttp

from .wire import _access_denied, _ApiError, _require_admin, _Token, _upper, encode_form

#: The five statuses REST may set (bitrix24.md §7), in rank order. Case-sensitive, as in
#: ``Sender\Sms\Rest::resolveStatus``.
STATUSES: tuple[str, ...] = ("queued", "sent", "delivered", "undelivered", "failed")
_RANK = {"queued": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}
_CODE_RE = re.compile(r"^[a-z0-9.\-_]+$", re.IGNORECASE)


@dataclass
class SimMessage:
    """One message as the portal's ``b_messageservice_message`` row sees it."""

    b24_id: str
    code: str
    to: str
    text: str
    module_id: str
    author_id: int
    status: str
    history: list[tuple[float, str]] = field(default_factory=list)

    def regressions(self) -> list[tuple[str, str]]:
        """(old, new) pairs where the status moved backwards or between final statuses.

        Why: the real core applies any change; this is how a test proves we never send one.
        """
        moves = []
        for (_, old), (_, new) in zip(self.history, self.history[1:]):
            if _RANK[new] < _RANK[old] or (_RANK[old] == 3 and new != old):
                moves.append((old, new))
        return moves



class MessageService:
    """Mixed into ``SimulatedPortal``; the state it uses is the portal's (declared here)."""

    member_id: str
    domain: str
    client_id: str
    application_token: str
    access_ttl: float
    scope: str
    admin_user_id: int
    allow_local_handler: bool
    app_version: int
    installed: bool
    messages: dict[str, SimMessage]
    purged: dict[str, SimMessage]
    senders: dict[str, dict[str, Any]]
    updates_applied: int
    updates_noop: int
    _tokens: dict[str, _Token]
    _refusals: dict[str, tuple[str, str]]
    _next_internal_id: int

    client_endpoint: str  # properties of the portal, once started
    server_endpoint: str

    def _messageservice_methods(self) -> dict[str, Callable[[dict[str, Any], _Token], Any]]:
        return {
            "messageservice.message.status.update": self._status_update,
            "messageservice.sender.add": self._sender_add,
            "messageservice.sender.update": self._sender_update,
            "messageservice.sender.delete": self._sender_delete,
            "messageservice.sender.list": self._sender_list,
            "app.info": self._app_info,
            "user.admin": self._user_admin,
        }

    def purge(self, b24_id: str) -> None:
        """The 14-day cleanup agent: the row is gone, later updates get ERROR_MESSAGE_NOT_FOUND."""
        message = self.messages.pop(b24_id, None)
        if message is not None:
            self.purged[b24_id] = message

    def refuse(self, b24_id: str, code: str, description: str = "refused by the test") -> None:
        """Make every ``status.update`` of one message fail with this error (in ``result_error``)."""
        self._refusals[b24_id] = (code, description)

    # ------------------------------------------------------------------ messages

    def create_message(
        self,
        code: str,
        to: str,
        text: str,
        *,
        module_id: str = "crm",
        bindings: Iterable[tuple[int, int]] = ((2, 1541), (3, 877)),
        author: bool = True,
        author_id: int = 7,
    ) -> tuple[str, list[tuple[str, str]]]:
        """Register a message as sent by the core and return (b24_id, HANDLER form fields).

        The core marks the message SENT as soon as it is handed to the queue server
        (bitrix24.md §6), so the message starts with status ``sent``. The form follows
        the §4 layout in the core's order: MESSAGE_HEADERS, properties, type, code,
        message_id, message_to, message_body, ts, then the event-style ``auth`` block
        (omitted when the message has no author).
        """
        internal_id = self._next_internal_id
        self._next_internal_id += 1
        b24_id = hashlib.md5(f"{internal_id}|{uuid.uuid4().hex}".encode()).hexdigest()
        now = time.time()
        self.messages[b24_id] = SimMessage(
            b24_id=b24_id, code=code, to=to, text=text, module_id=module_id,
            author_id=author_id if author else 0, status="sent", history=[(now, "sent")],
        )
        form = self._headers(module_id, bindings)
        form += [
            ("properties[phone_number]", to),
            ("properties[message_text]", text),
            ("type", "SMS"),
            ("code", code),
            ("message_id", b24_id),
            ("message_to", to),
            ("message_body", text),
            ("ts", str(int(now))),
        ]
        if author:
            form += self._auth_block(author_id)
        return b24_id, form

    def _headers(self, module_id: str, bindings: Iterable[tuple[int, int]]) -> list[tuple[str, str]]:
        form = [("module_id", module_id)]
        if module_id == "crm":
            for n, (owner_type, owner_id) in enumerate(bindings):
                form += [(f"bindings[{n}][OWNER_TYPE_ID]", str(owner_type)),
                         (f"bindings[{n}][OWNER_ID]", str(owner_id))]
        elif module_id == "bizproc":
            workflow_id = f"{secrets.token_hex(7)}.{secrets.randbelow(90_000_000) + 10_000_000}"
            document_id = ("crm", "CCrmDocumentLead", "LEAD_98")
            document_type = ("crm", "CCrmDocumentLead", "LEAD")
            form.append(("workflow_id", workflow_id))
            form += [(f"document_id[{i}]", v) for i, v in enumerate(document_id)]
            form += [(f"document_type[{i}]", v) for i, v in enumerate(document_type)]
        return form

    def _auth_block(self, author_id: int) -> list[tuple[str, str]]:
        """Event-style auth of the message author (not the admin), no refresh_token (§4)."""
        token = secrets.token_hex(35)
        expires = time.time() + self.access_ttl
        self._tokens[token] = _Token(author_id, expires, author_id == self.admin_user_id)
        fields = [
            ("application_token", self.application_token),
            ("member_id", self.member_id),
            ("domain", self.domain),
            ("access_token", token),
            ("expires_in", str(int(self.access_ttl))),
            ("scope", self.scope),
            ("user_id", str(author_id)),
            ("client_endpoint", self.client_endpoint),
            ("server_endpoint", self.server_endpoint),
            ("expires", str(int(expires))),
            ("status", "L"),
        ]
        return [(f"auth[{key}]", value) for key, value in fields]

    async def post_to_handler(
        self, http: aiohttp.ClientSession, handler_url: str, form: list[tuple[str, str]] | bytes
    ) -> tuple[int, str]:
        """POST the form urlencoded, as the Bitrix queue server does; the answer is not interpreted.

        ``form`` may come encoded already (``encode_form``): a load generator builds its
        posts before it starts the clock."""
        body = form if isinstance(form, bytes) else encode_form(form)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with http.post(handler_url, data=body, headers=headers) as resp:
            # read() and UTF-8, not text(): text() looks for the charset on every answer,
            # a cost a load generator pays per post (Kannel's reads bytes too).
            return resp.status, (await resp.read()).decode("utf-8", "replace")

    # ------------------------------------------------------------------ messageservice

    def _status_update(self, params: dict[str, Any], token: _Token) -> bool:
        """``RestService::updateMessageStatus``: validate, find, apply — without a monotonic guard."""
        params = _upper(params)
        code = _validate_code(params.get("CODE"))
        b24_id = params.get("MESSAGE_ID")
        if not b24_id:
            raise _ApiError("ERROR_MESSAGE_NOT_FOUND", "Message not found!")
        status = params.get("STATUS")
        if status not in STATUSES:
            raise _ApiError("ERROR_MESSAGE_STATUS_INCORRECT", "Message status incorrect!")
        if str(b24_id) in self._refusals:
            raise _ApiError(*self._refusals[str(b24_id)])
        message = self.messages.get(str(b24_id))
        if message is None or message.code != code:
            raise _ApiError("ERROR_MESSAGE_NOT_FOUND", "Message not found!")
        if message.author_id != token.user_id and not token.is_admin:
            raise _access_denied()
        if message.status == status:  # UPDATE ... WHERE STATUS_ID != new: a no-op
            self.updates_noop += 1
            return True
        message.status = status
        message.history.append((time.time(), status))
        self.updates_applied += 1
        return True

    def _app_info(self, params: dict[str, Any], token: _Token) -> dict[str, Any]:
        """``app.info``: ``CODE`` is the app's client_id (for a local app ``local.…``) [inferred]."""
        return {"ID": 1, "CODE": self.client_id, "VERSION": self.app_version, "STATUS": "L",
                "INSTALLED": self.installed, "PAYMENT_EXPIRED": "N", "DAYS": None, "LICENSE": "by_project"}

    def _user_admin(self, params: dict[str, Any], token: _Token) -> bool:
        """``user.admin``: whether the token's user may manage apps (true for the portal admin only)."""
        return token.is_admin

    def _sender_add(self, params: dict[str, Any], token: _Token) -> bool:
        _require_admin(token)
        params = _upper(params)
        if not params:
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty data!")
        code = _validate_code(params.get("CODE"))
        self._validate_handler(params.get("HANDLER"))
        if not params.get("NAME"):
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty sender NAME!")
        if not params.get("TYPE"):
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty sender message TYPE!")
        if params["TYPE"] != "SMS":
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Unknown sender message TYPE!")
        if code in self.senders:
            raise _ApiError("ERROR_SENDER_ALREADY_INSTALLED", "Sender already installed!")
        self.senders[code] = {
            "CODE": code, "TYPE": "SMS", "HANDLER": params["HANDLER"],
            "NAME": params["NAME"], "DESCRIPTION": params.get("DESCRIPTION", ""),
        }
        return True

    def _sender_update(self, params: dict[str, Any], token: _Token) -> bool:
        """Cloud-only method (bitrix24.md §3); descriptions are not documented, ours are plain."""
        _require_admin(token)
        params = _upper(params)
        code = params.get("CODE")
        if not code:
            raise _ApiError("ERROR_SENDER_CODE_REQUIRED", "Sender code is required")
        changes = {k: params[k] for k in ("HANDLER", "NAME", "DESCRIPTION") if params.get(k)}
        if not changes:
            raise _ApiError("ERROR_SENDER_OTHER_PARAMS_REQUIRED", "HANDLER, NAME or DESCRIPTION is required")
        if code not in self.senders:
            raise _ApiError("ERROR_SENDER_NOT_FOUND", "Sender not found!")
        if "HANDLER" in changes:
            self._validate_handler(changes["HANDLER"])
        self.senders[code].update(changes)
        return True

    def _sender_delete(self, params: dict[str, Any], token: _Token) -> bool:
        _require_admin(token)
        code = _validate_code(_upper(params).get("CODE"))
        if self.senders.pop(code, None) is None:
            raise _ApiError("ERROR_SENDER_NOT_FOUND", "Sender not found!")
        return True

    def _sender_list(self, params: dict[str, Any], token: _Token) -> list[str]:
        _require_admin(token)
        return list(self.senders)

    def _validate_handler(self, handler: Any) -> None:
        """``HandlerHelper::checkCallback`` (host with a dot, http/https) plus the cloud's no-LAN rule."""
        parts = urlsplit(handler) if isinstance(handler, str) else None
        host = parts.hostname if parts else None
        if not host or host.find(".") <= 0:
            raise _ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
        if parts.scheme not in ("http", "https"):
            raise _ApiError("ERROR_UNSUPPORTED_PROTOCOL", "Unsupported handler protocol")
        if len(handler) > 1000:
            raise _ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
        if not self.allow_local_handler and _is_local(host):
            raise _ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")


def _validate_code(code: Any) -> str:
    if not code:
        raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty sender code!")
    if not isinstance(code, str) or not _CODE_RE.match(code):
        raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Wrong sender code!")
    return code


def _is_local(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith(".local") or host.endswith(".localhost")
    return ip.is_private or ip.is_loopback or ip.is_link_local
