"""The simulated portal's CRM: rows, multiple fields and user fields, and the ``crm.*``
REST methods ``smppd contacts`` and the consent rule use (issue 8, issue 16).
"""

from __future__ import annotations

import bisect
import collections
import functools
import random
import re
from typing import Any, Callable, Iterable

from .wire import BATCH_MAX_LENGTH, _access_denied, _ApiError, _Paged, _require_admin, _Token, _upper


class CrmMethods:
    """Mixed into ``SimulatedPortal``; the state it uses is the portal's (declared here)."""

    scope: str
    crm_error: str | None
    crm: dict[str, dict[int, dict[str, Any]]]
    crm_reads: collections.Counter[str]
    crm_writes: collections.Counter[str]
    user_fields: dict[str, dict[str, dict[str, Any]]]
    user_fields_added: int
    crm_update_errors: dict[tuple[str, int], str]
    _crm_ids: dict[str, list[int]]
    _next_multi_id: int
    _next_uf_id: int

    # ------------------------------------------------------------------ CRM reads (issue 8: consent)
    #
    # ``crm.<entity>.get`` as the core answers it (CCrm*RestProxy::innerGet): every field in
    # the result, ids and user-field values as strings, a yes/no user field as "1"/"0", phones
    # as the multi-field list; an unknown id is HTTP 400 with an *empty* error code and
    # "Not found"; without the ``crm`` scope the app gets 401 ``insufficient_scope``.
    # ``crm.duplicate.findbycomm`` answers ``{"CONTACT": [ids], "LEAD": [...]}`` (integers),
    # or ``[]`` when nothing matches; the core compares normalized phone numbers.

    def add_crm_entity(self, entity: str, entity_id: int, *, phones: Iterable[str | tuple[str, str]] = (),
                       **fields: Any) -> None:
        """Create a lead/deal/contact/company row; values are stored the way REST returns them.

        A phone is a value (``VALUE_TYPE`` WORK) or a (value, value type) pair; multi-field
        value ids are unique across the portal, as in ``b_crm_field_multi``."""
        row: dict[str, Any] = {"ID": str(entity_id), **{k: _crm_value(v) for k, v in fields.items()}}
        if phones:
            row["PHONE"] = [self._multi_value(p) for p in phones]
        table = self.crm.setdefault(entity, {})
        ids = self._crm_ids.setdefault(entity, [])
        if entity_id not in table:
            if not ids or entity_id > ids[-1]:
                ids.append(entity_id)
            else:
                bisect.insort(ids, entity_id)
        table[entity_id] = row

    def _multi_value(self, phone: str | tuple[str, str]) -> dict[str, str]:
        value, value_type = (phone, "WORK") if isinstance(phone, str) else phone
        self._next_multi_id += 1
        return {"ID": str(self._next_multi_id), "VALUE_TYPE": value_type, "VALUE": value, "TYPE_ID": "PHONE"}

    def seed_crm(self, contacts: int, seed: int = 11) -> None:
        """A messy CRM for the demo and the bench: ``contacts`` contacts and a tenth as many
        leads and companies, ids with gaps, some rows with two numbers, numbers stored the
        ways CRMs hold them (``8029…``, ``375 44 …``, ``29 1…``, ``+7 …``, typos), some shared."""
        rnd = random.Random(seed)
        for entity, count in (("contact", contacts), ("lead", contacts // 10), ("company", contacts // 10)):
            next_id = max(self.crm.get(entity) or {0: None})
            for _ in range(count):
                next_id += rnd.choice((1, 1, 1, 2, 5))
                phones = []
                for _ in range(rnd.choice((1, 1, 1, 2))):
                    form = rnd.choice(_SEED_FORMS)
                    n = rnd.randrange(10**6) if rnd.random() > 0.1 else rnd.randrange(100)
                    parts = (n // 10000 % 100, n // 100 % 100, n % 100) if form.count("{") == 3 else (n,)
                    phones.append((form.format(*parts), rnd.choice(("WORK", "MOBILE", "HOME"))))
                self.add_crm_entity(entity, next_id, phones=phones)

    def add_user_field(self, entity: str, field_name: str, user_type_id: str = "string") -> None:
        """A user field that exists before the test (the admin made it in the UI)."""
        self._uf_add(entity, {"FIELD_NAME": field_name, "USER_TYPE_ID": user_type_id})

    def _crm_methods(self) -> dict[str, Callable[[dict[str, Any], _Token], Any]]:
        methods = {f"crm.{entity}.get": self._crm_get(entity) for entity in ("contact", "lead", "deal", "company")}
        methods["crm.duplicate.findbycomm"] = self._crm_find_by_comm
        for entity in _LISTED_ENTITIES:
            methods[f"crm.{entity}.list"] = functools.partial(self._crm_list, entity)
            methods[f"crm.{entity}.update"] = functools.partial(self._crm_update, entity)
            methods[f"crm.{entity}.userfield.list"] = functools.partial(self._uf_list, entity)
            methods[f"crm.{entity}.userfield.add"] = functools.partial(self._uf_add_method, entity)
        return methods

    # ``crm.<entity>.list`` (CCrm*RestProxy::innerGetList), as api-reference/crm/contacts/
    # crm-contact-list.md and api-reference/performance/huge-data.md (b24-rest-docs) describe it:
    # * pages of 50; ``start`` = offset; the answer has ``total`` and, when more rows match,
    #   ``next`` (the next ``start``). ``start=-1`` skips the count: ``total`` is 0 and there
    #   is no ``next`` (huge-data.md's sample answer); the caller pages by ``filter[>ID]`` with
    #   ``order[ID]=ASC`` and stops at a page shorter than 50.
    # * ``select``: ``*`` is every field except user and multiple fields, ``UF_*`` every user
    #   field; multiple fields (``PHONE``, ``EMAIL``...) only when named. Default ``*`` + ``UF_*``.
    # * a multiple field comes as a list of {ID, VALUE_TYPE, VALUE, TYPE_ID}, ids as strings.
    # * filter prefixes ``>``, ``>=``, ``<``, ``<=``, ``=``, ``!``/``!=``, ``@`` (IN); multiple fields
    #   match exactly only. Simplified here: ID filters, and exact matches of plain fields.

    def _crm_list(self, entity: str, params: dict[str, Any], token: _Token) -> "_Paged":
        self._require_crm_scope()
        params = _upper(params)
        table = self.crm.get(entity, {})
        ids = self._crm_ids.get(entity, [])
        lo, hi, rest = _id_range(params.get("FILTER"))
        order = params.get("ORDER") if isinstance(params.get("ORDER"), dict) else {}
        descending = str(_upper(order).get("ID", "ASC")).upper() == "DESC"
        try:
            start = int(params.get("START", 0) or 0)
        except (TypeError, ValueError):
            start = 0
        left, right = bisect.bisect_left(ids, lo), bisect.bisect_right(ids, hi)
        span = ids[left:right] if not descending else ids[left:right][::-1]
        select = _select(params.get("SELECT"))
        rows: list[dict[str, Any]] = []
        matched = 0
        for entity_id in span:
            row = table[entity_id]
            if rest and not all(_matches_plain(row, k, v) for k, v in rest.items()):
                continue
            matched += 1
            if (start < 0 and len(rows) < BATCH_MAX_LENGTH) or (start >= 0 and start < matched <= start + 50):
                rows.append(_project(row, select))
            elif start < 0:
                break
        self.crm_reads[f"{entity}.list"] += 1
        if start < 0:
            return _Paged(rows, 0, None)
        return _Paged(rows, matched, start + 50 if matched > start + 50 else None)

    # ``crm.<entity>.update`` (crm-contact-update.md, "Working with Multiple Fields"): only the
    # fields passed change; a ``PHONE`` item with ``ID`` rewrites that value (and its
    # ``VALUE_TYPE`` when given), with ``DELETE=Y`` or an empty ``VALUE`` removes it, without
    # ``ID`` adds one. Unknown fields are ignored. An unknown id is HTTP 400, empty code,
    # "Contact is not found". ``result`` is ``true``.

    def _crm_update(self, entity: str, params: dict[str, Any], token: _Token) -> bool:
        self._require_crm_scope()
        params = _upper(params)
        raw = params.get("ID")
        if not isinstance(raw, str) or not raw.strip().isdigit() or int(raw) <= 0:
            raise _ApiError("", "ID is not defined or invalid.")
        fields = params.get("FIELDS")
        if not isinstance(fields, dict):
            raise _ApiError("", "Parameter 'fields' must be array")
        row = self.crm.get(entity, {}).get(int(raw))
        if row is None:
            raise _ApiError("", f"{entity.capitalize()} is not found")
        if self.crm_update_errors.get((entity, int(raw))):
            raise _ApiError("ERROR_CORE", self.crm_update_errors[(entity, int(raw))])
        fields = _upper(fields)
        phones = fields.get("PHONE")
        if isinstance(phones, dict):
            phones = list(phones.values())
        if isinstance(phones, list):
            current = row.setdefault("PHONE", [])
            for item in phones:
                if not isinstance(item, dict):
                    continue
                item = _upper(item)
                value = item.get("VALUE")
                if item.get("ID"):
                    target = next((v for v in current if v["ID"] == str(item["ID"])), None)
                    if target is None:
                        continue
                    if item.get("DELETE") == "Y" or value == "" or "VALUE" not in item:
                        current.remove(target)
                        continue
                    target["VALUE"] = str(value)
                    if item.get("VALUE_TYPE"):
                        target["VALUE_TYPE"] = str(item["VALUE_TYPE"])
                elif value:
                    current.append(self._multi_value((str(value), str(item.get("VALUE_TYPE") or "WORK"))))
        known = self.user_fields.get(entity, {})
        for name, value in fields.items():
            if name in known:
                row[name] = _uf_value(known[name]["USER_TYPE_ID"], value)
        self.crm_writes[entity] += 1
        return True

    # ``crm.<entity>.userfield.list`` / ``.add`` (api-reference/crm/contacts/userfield/
    # crm-contact-userfield-list.md, -add.md): administrators only. ``add`` takes
    # ``fields[FIELD_NAME]`` (``A-Z``, ``0-9``, ``_``; the core puts ``UF_CRM_`` in front when it
    # is missing; 20 characters at most with the prefix) and ``fields[USER_TYPE_ID]``, answers
    # the new field's id (an integer); errors are HTTP 400 with an *empty* code and a
    # description such as "The 'FIELD_NAME' field is not found.". The answer to a name that
    # exists already is not in the docs [inferred from CUserTypeEntity: refused, empty code].

    def _uf_list(self, entity: str, params: dict[str, Any], token: _Token) -> list[dict[str, Any]]:
        self._require_crm_scope()
        _require_admin(token)
        wanted = _upper(params).get("FILTER")
        wanted = _upper(wanted) if isinstance(wanted, dict) else {}
        return [dict(f) for f in self.user_fields.get(entity, {}).values()
                if all(str(f.get(k)) == str(v) for k, v in wanted.items() if k != "LANG")]

    def _uf_add_method(self, entity: str, params: dict[str, Any], token: _Token) -> int:
        self._require_crm_scope()
        _require_admin(token)
        fields = _upper(params).get("FIELDS")
        if not isinstance(fields, dict):
            raise _ApiError("", "The 'FIELD_NAME' field is not found.")
        return self._uf_add(entity, _upper(fields))

    def _uf_add(self, entity: str, fields: dict[str, Any]) -> int:
        name = fields.get("FIELD_NAME")
        if not isinstance(name, str) or not name:
            raise _ApiError("", "The 'FIELD_NAME' field is not found.")
        if not re.fullmatch(r"[A-Z0-9_]+", name):
            raise _ApiError("", "Field name contains invalid characters. Allowed characters are: A-Z, 0-9 and _")
        if not name.startswith("UF_CRM_"):
            name = "UF_CRM_" + name
        if len(name) > 20:
            raise _ApiError("", "Field name is too long")
        type_id = fields.get("USER_TYPE_ID")
        if not type_id:
            raise _ApiError("", "The 'USER_TYPE_ID' field is not found.")
        if type_id not in _UF_TYPES:
            raise _ApiError("", "Incorrect custom type specified")
        existing = self.user_fields.setdefault(entity, {})
        if name in existing:
            raise _ApiError("", "A user field with this code already exists")
        self._next_uf_id += 1
        existing[name] = {
            "ID": str(self._next_uf_id), "ENTITY_ID": f"CRM_{entity.upper()}", "FIELD_NAME": name,
            "USER_TYPE_ID": str(type_id), "XML_ID": fields.get("XML_ID"), "SORT": str(fields.get("SORT", 100)),
            "MULTIPLE": fields.get("MULTIPLE", "N"), "MANDATORY": fields.get("MANDATORY", "N"),
            "SHOW_FILTER": "N" if fields.get("SHOW_FILTER", "N") == "N" else "E",
            "SHOW_IN_LIST": fields.get("SHOW_IN_LIST", "N"), "EDIT_IN_LIST": fields.get("EDIT_IN_LIST", "Y"),
            "IS_SEARCHABLE": fields.get("IS_SEARCHABLE", "N"), "SETTINGS": fields.get("SETTINGS") or [],
        }
        self.user_fields_added += 1
        return self._next_uf_id

    def _require_crm_scope(self) -> None:
        if self.crm_error == "ERROR_METHOD_NOT_FOUND":  # what the core answers for a method it lacks
            raise _ApiError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
        if self.crm_error == "ACCESS_DENIED":
            raise _access_denied()
        if "crm" not in self.scope.split(","):
            raise _ApiError("insufficient_scope",
                            "The request requires higher privileges than provided by the access token", 401)

    def _crm_find_by_comm(self, params: dict[str, Any], token: _Token) -> Any:
        self._require_crm_scope()
        params = _upper(params)
        if params.get("TYPE") != "PHONE":
            raise _ApiError("", "Communication type is not defined or invalid.")
        values = params.get("VALUES")
        values = list(values.values()) if isinstance(values, dict) else values
        if not isinstance(values, list) or not values or len(values) > 20:
            raise _ApiError("", "Communication values are not defined or too many (20 at most).")
        wanted = {_comm_key(str(v)) for v in values}
        found: dict[str, list[int]] = {}
        for entity in ("lead", "contact", "company"):
            for entity_id, row in sorted(self.crm.get(entity, {}).items()):
                phones = {_comm_key(p.get("VALUE", "")) for p in row.get("PHONE", [])}
                if phones & wanted:
                    found.setdefault(entity.upper(), []).append(entity_id)
        self.crm_reads["findbycomm"] += 1
        return found

    def _crm_get(self, entity: str) -> Callable[[dict[str, Any], _Token], Any]:
        def get(params: dict[str, Any], token: _Token) -> dict[str, Any]:
            self._require_crm_scope()
            raw = _upper(params).get("ID")
            if not isinstance(raw, str) or not raw.strip().isdigit() or int(raw) <= 0:
                raise _ApiError("", "ID is not defined or invalid.")
            row = self.crm.get(entity, {}).get(int(raw))
            if row is None:
                raise _ApiError("", "Not found")
            self.crm_reads[entity] += 1
            return dict(row)

        return get


_LISTED_ENTITIES = ("contact", "lead", "company")
_SEED_FORMS = ("+375291{:06d}", "80291{:06d}", "375 44 7{:02d}-{:02d}-{:02d}", "29 1{:06d}",
               "+7 916 1{:02d}-{:02d}-{:02d}", "8 (033) 1{:06d}", "+375255{:06d}", "1{:04d}")
#: USER_TYPE_ID values crm-contact-userfield-add.md lists (custom types left out).
_UF_TYPES = frozenset({"string", "integer", "double", "boolean", "datetime", "date", "money", "url", "address",
                       "enumeration", "file", "employee", "crm_status", "iblock_section", "iblock_element", "crm"})
_MULTI_FIELDS = frozenset({"PHONE", "EMAIL", "WEB", "IM", "LINK"})


def _id_range(raw: Any) -> tuple[int, int, dict[str, Any]]:
    """(lowest id, highest id, other filter keys) of a list filter's ID conditions."""
    lo, hi = 0, 2**63
    rest: dict[str, Any] = {}
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        op = re.match(r"^(>=|<=|>|<|=|!=|!|@)?(.*)$", str(key))
        assert op is not None
        prefix, name = op.group(1) or "", op.group(2).upper()
        if name != "ID":
            rest[str(key)] = value
            continue
        try:
            number = int(value) if prefix != "@" else 0
        except (TypeError, ValueError):
            raise _ApiError("", "Invalid filter value for ID") from None
        if prefix == ">":
            lo = max(lo, number + 1)
        elif prefix == ">=":
            lo = max(lo, number)
        elif prefix == "<":
            hi = min(hi, number - 1)
        elif prefix == "<=":
            hi = min(hi, number)
        elif prefix in ("", "="):
            lo, hi = max(lo, number), min(hi, number)
        else:
            rest[str(key)] = value
    return lo, hi, rest


def _matches_plain(row: dict[str, Any], key: str, value: Any) -> bool:
    op = re.match(r"^(>=|<=|>|<|=|!=|!|@)?(.*)$", key)
    assert op is not None
    prefix, name = op.group(1) or "", op.group(2).upper()
    if name in _MULTI_FIELDS:  # exact match only (crm-contact-list.md)
        found = any(v.get("VALUE") == value for v in row.get(name, []))
    elif prefix == "@" or prefix == "!@":
        values = list(value.values()) if isinstance(value, dict) else value
        found = str(row.get(name)) in {str(v) for v in values}
    else:
        found = str(row.get(name, "")) == str(value)
    return not found if prefix in ("!", "!=") else found


def _select(raw: Any) -> tuple[bool, bool, frozenset[str]]:
    """(all plain fields, all user fields, named fields) of a ``select``."""
    names = [str(v) for v in (raw.values() if isinstance(raw, dict) else raw or ())]
    if not names:
        return True, True, frozenset()
    return "*" in names, "UF_*" in names, frozenset(n.upper() for n in names)


def _project(row: dict[str, Any], select: tuple[bool, bool, frozenset[str]]) -> dict[str, Any]:
    plain, user, named = select
    out: dict[str, Any] = {"ID": row["ID"]}
    for key, value in row.items():
        if key in named or (plain and key not in _MULTI_FIELDS and not key.startswith("UF_")) or (
                user and key.startswith("UF_")):
            out[key] = [dict(v) for v in value] if key in _MULTI_FIELDS else value
    return out


def _uf_value(type_id: str, value: Any) -> Any:
    """A user field's value as ``crm.<entity>.get`` answers it: a yes/no field as "1"/"0"."""
    if type_id == "boolean":
        return "1" if str(value).upper() in ("1", "Y", "TRUE") else "0"
    return value if isinstance(value, (list, dict)) else str(value)


def _comm_key(value: str) -> str:
    """What findbycomm compares: the core normalizes a phone before it looks (so
    ``8 029 100-00-01`` and ``+375291000001`` meet); digits when it cannot be read."""
    from smppd import phone

    try:
        return phone.normalize(value)
    except phone.InvalidNumber:
        return re.sub(r"\D", "", value)


def _crm_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return value
