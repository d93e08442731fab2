"""The daemon's only door to Bitrix24: a small REST client on aiohttp, one per portal.

Its parts, each with one job: ``client`` (the request loop, retry rules, ``batch``),
``oauth`` (the refresh, and "stored before used" for a rotated refresh token), ``budget``
(the per-portal leaky bucket and call priorities), ``form`` (PHP-style request encoding),
``errors`` (`RestError`). Requests go out through ``smppd.http_client``, which maps aiohttp's
errors once for every outgoing caller.
"""

from .budget import PRIORITY_BULK, PRIORITY_NORMAL
from .client import BATCH_MAX_COMMANDS, RestClient
from .errors import RestError
from .form import command_value, encode_params, form_urlencode
from .oauth import refresh_tokens, token_url

__all__ = ["BATCH_MAX_COMMANDS", "PRIORITY_BULK", "PRIORITY_NORMAL", "RestClient", "RestError", "command_value",
           "encode_params", "form_urlencode", "refresh_tokens", "token_url"]
