"""Random Bitrix24 handler forms for the shim's parsing tests: PHP bracket keys right and
wrong, repeated keys, files where text belongs, bad integers, missing halves."""

from __future__ import annotations

import random
from typing import Any

from multidict import MultiDict, MultiDictProxy


_KEYS = [
    "bindings[0][OWNER_TYPE_ID]", "bindings[0][OWNER_ID]", "bindings[1][OWNER_TYPE_ID]", "bindings[1][OWNER_ID]",
    "bindings[10][OWNER_ID]", "bindings[2][owner_id]", "bindings[x][OWNER_ID]", "bindings[1234567][OWNER_ID]",
    "bindings[0]", "bindings[", "bindingsX", "bindings[0][OWNER_ID]x",
    "bindings[9][OWNER_TYPE_ID]", "bindings[09][OWNER_ID]", "bindings[9][OWNER_ID]", "auth[refresh_token]", "auth[other]",
    "auth[member_id]", "auth[domain]", "auth[application_token]", "auth[access_token]", "auth[]", "auth[a][b]",
    "auth", "auth[x", "authority[x]",
    "document_id[0]", "document_id[1]", "document_id[2]", "document_id[1000]", "document_id[a]", "document_id",
    "document_type[0]", "properties[phone_number]", "workflow_id", "module_id", "ts", "type", "a", "",
]
_VALUES = ["3", "877", "-5", " 42 ", "1e3", "", "x", "9" * 19, "crm", "CCrmDocumentLead", "LEAD_98", "SMS"]


class _File:
    """What aiohttp gives for a multipart file field."""


def random_form(rng: random.Random) -> MultiDictProxy[Any]:
    """A handler post's form: the four required fields and up to 13 keys drawn from the hard cases."""
    pairs: list[tuple[str, Any]] = [
        ("code", "by_sms_main"), ("message_id", "%032x" % rng.getrandbits(128)),
        ("message_to", "+375291234567"), ("message_body", "Привет"),
    ]
    for _ in range(rng.randrange(0, 14)):
        value: Any = _File() if rng.random() < 0.03 else rng.choice(_VALUES)
        pairs.append((rng.choice(_KEYS), value))
    rng.shuffle(pairs)
    return MultiDictProxy(MultiDict(pairs))
