"""``[route.NAME]``: one SMPP operator bind set, or one HTTP provider account (SMS.ru, SMSC.ru).

Each kind is one typed class; its field defaults are the only place a route default is
written (the parsers below read them from the class, the routes and the SMPP session
read them from the parsed object).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import phonenumbers

from .readers import (MIN_KEY_LENGTH, ConfigError, boolean, choice, field_names, integer, number, only, secret,
                      string, url)

BIND_MODES = ("transceiver", "transmitter", "receiver", "pair")
ID_BASES = ("as-is", "hex", "dec")
RECEIPT_ID_BASES = ("auto", *ID_BASES)  # issue 14.6: auto tries as-is, then the hex<->dec readings
MULTIPART_RECEIPTS = ("all", "first", "last", "any")
LONG_METHODS = ("udh8", "udh16", "sar", "payload")
LATIN_CODINGS = (0x00, 0x01, 0x03)
ROUTE_KINDS = ("smpp", "smsru", "smsc")
ANY_COUNTRY = "*"

UNKNOWN_RECEIPTS_MAX = 1000  # per HTTP route: callbacks kept for ids whose send answer is not in yet
UNKNOWN_RECEIPTS_TTL = 600.0  # seconds such a callback waits for its id before it is dropped

# Maximum message lengths (issue 19 item 7), from reference/providers.md: SMS.ru answers
# error 205 above 8 parts; SMSC.ru's send.php takes `mes` of at most 1000 characters
# (15 parts of 67 Cyrillic characters). SMPP operators commonly accept 10 (max_parts).
SMPP_MAX_PARTS = 10
SMSRU_MAX_PARTS = 8
SMSC_MAX_CHARS = 1000
SMSC_MAX_PARTS = 15


@dataclass(frozen=True, kw_only=True)
class _RouteBase:
    """What every kind of route has."""

    name: str
    # issue 14 item 12: true = phonenumbers' "not a valid number" is final, even for a mobile shape
    strict_numbers: bool = False


@dataclass(frozen=True, kw_only=True)
class SmppRouteConfig(_RouteBase):
    """An SMPP operator connection (life:), MTS, A1)."""

    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    system_type: str = ""
    bind_mode: str = "transceiver"
    window: int = 10  # submit_sm in flight per bind
    throughput: float = 0.0  # segments per second, 0 = no cap
    enquire_link_interval: float = 30.0
    response_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    receipt_id_base: str = "auto"
    registered_delivery: int = 1
    kind: str = "smpp"
    # issue 3: operator profile knobs (see config.toml for what each one means)
    binds: int = 1  # transceivers, or transmitter + receiver pairs with bind_mode = "pair"
    resp_id_base: str | None = None  # None: same as receipt_id_base
    long_method: str = "udh8"
    latin_data_coding: int = 0x00
    alpha_ton: int = 5
    alpha_npi: int = 0
    numeric_ton: int = 1
    numeric_npi: int = 1
    # ISO regions it may send to; None = any. The Belarusian operators carry +375 only
    # (their contracts and sender registrations are national) unless told otherwise.
    countries: frozenset[str] | None = frozenset({"BY"})
    max_parts: int = SMPP_MAX_PARTS  # issue 19 item 7: a longer text fails with the reason (what operators accept)
    # issue 14: operators on bad days (see config.toml for what each one means)
    bind_retry_min: float = 5.0  # first wait after a refused bind (RALYBND, RBINDFAIL), doubling
    queue_full_pause: float = 0.1  # first pause on ESME_RMSGQFUL, doubling while it repeats
    queue_full_pause_max: float = 5.0
    throttle_recovery: float = 3.0  # back to the configured rate this long after the last 0x58
    temporary_retries: int = 5  # sends of a part refused with 0x08, 0x64, ... before it fails
    temporary_retry_age: float = 600.0  # seconds from the first such refusal before it fails
    multipart_receipts: str = "all"  # which parts of a long message the operator sends receipts for
    validity: float = 172800.0  # no receipt this long after acceptance: undelivered, "no receipt"
    query_sm: bool = False  # ask the SMSC with query_sm before giving up on a receipt
    query_sm_delay: float = 3600.0  # after acceptance, before the first query_sm


@dataclass(frozen=True, kw_only=True)
class _HttpRouteBase(_RouteBase):
    """What SMS.ru and SMSC.ru accounts share: the callback door, caps, retries, polling."""

    callback_key: str = field(default="", repr=False)  # ?key= of /dlr/{route}; "" = no callback door (issue 18)
    unknown_receipts_max: int = UNKNOWN_RECEIPTS_MAX  # callbacks kept for ids not known yet (issue 18)
    unknown_receipts_ttl: float = UNKNOWN_RECEIPTS_TTL  # seconds one waits for its id, then dropped
    rate: float = 0.0  # requests per second, 0 = no cap
    concurrency: int = 4
    timeout: float = 15.0
    retry_min: float = 1.0
    retry_max: float = 300.0
    poll_after: float = 300.0  # seconds without a final status before we ask the provider
    poll_interval: float = 60.0
    poll_for: float = 3 * 86400.0  # stop asking about a message this long after it was received
    countries: frozenset[str] | None = None  # the aggregators route internationally; None = any


@dataclass(frozen=True, kw_only=True)
class SmsRuRouteConfig(_HttpRouteBase):
    """An SMS.ru account (reference/providers.md §1)."""

    api_id: str = field(repr=False)
    base_url: str = "https://sms.ru/"
    ttl: int = 0  # minutes, 1–1440; 0 = the provider's default
    translit: bool = False
    test: bool = False  # SMS.ru sends and charges nothing, answers with dummy ids
    batch_size: int = 1  # numbers per sms/send request (up to 100) for identical texts
    batch_interval: float = 0.0
    max_parts: int = SMSRU_MAX_PARTS  # SMS.ru refuses more (error 205): fail it here with the reason
    kind: str = "smsru"


@dataclass(frozen=True, kw_only=True)
class SmscRouteConfig(_HttpRouteBase):
    """An SMSC.ru account (reference/providers.md §2): login+password or an API key."""

    login: str = ""
    password: str = field(default="", repr=False)
    apikey: str = field(default="", repr=False)
    base_url: str = "https://smsc.ru/sys/"
    batch_size: int = 100  # numbers per send.php request
    batch_interval: float = 2.0  # seconds a batch waits for more numbers
    viber: bool = False  # Viber first, SMS when Viber does not deliver
    viber_fallback: float = 300.0  # seconds Viber gets before the SMS goes out
    skip_viber_for_sms_contacts: bool = False  # issue 16: SMS at once to numbers whose Viber last failed
    valid: int = 0  # lifetime in minutes, 0 = the provider's default
    # SMSC.ru takes at most 1000 characters (SMSC_MAX_CHARS), 15 Cyrillic parts; fewer by config
    max_parts: int = SMSC_MAX_PARTS
    kind: str = "smsc"


HttpRouteConfig = SmsRuRouteConfig | SmscRouteConfig  # also an isinstance() target
RouteConfig = SmppRouteConfig | SmsRuRouteConfig | SmscRouteConfig


def route(name: str, t: Any) -> RouteConfig:
    """One ``[route.NAME]`` table, of the kind its ``kind`` key names."""
    key = f"route.{name}"
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    kind = string(t, key, "kind", default=SmppRouteConfig.kind)
    if kind not in ROUTE_KINDS:
        raise ConfigError(f"{key}.kind", f"unknown route kind {kind!r} (known: {', '.join(ROUTE_KINDS)})")
    if kind == SmppRouteConfig.kind:
        return _smpp_route(name, key, t)
    return _http_route(name, key, SmsRuRouteConfig if kind == SmsRuRouteConfig.kind else SmscRouteConfig, t)


def _smpp_route(name: str, key: str, t: Mapping[str, Any]) -> SmppRouteConfig:
    d = SmppRouteConfig
    only(t, key, field_names(d, but=frozenset({"name"})))
    system_id = string(t, key, "system_id")
    if len(system_id) > 15:
        raise ConfigError(f"{key}.system_id", "at most 15 characters (SMPP 3.4)")
    password = secret(t, key, "password")
    if len(password) > 8:
        raise ConfigError(f"{key}.password", "at most 8 characters (SMPP 3.4)")
    reconnect_min = number(t, key, "reconnect_min", default=d.reconnect_min, low=0.01)
    return SmppRouteConfig(
        name=name,
        host=string(t, key, "host"),
        port=integer(t, key, "port", low=1, high=65535),
        system_id=system_id,
        password=password,
        system_type=string(t, key, "system_type", default=d.system_type),
        bind_mode=choice(t, key, "bind_mode", BIND_MODES, default=d.bind_mode),
        window=integer(t, key, "window", default=d.window, low=1, high=10_000),
        enquire_link_interval=number(t, key, "enquire_link_interval", default=d.enquire_link_interval, low=1.0),
        response_timeout=number(t, key, "response_timeout", default=d.response_timeout, low=0.1),
        reconnect_min=reconnect_min,
        reconnect_max=number(t, key, "reconnect_max", default=d.reconnect_max, low=reconnect_min),
        receipt_id_base=choice(t, key, "receipt_id_base", RECEIPT_ID_BASES, default=d.receipt_id_base),
        registered_delivery=integer(t, key, "registered_delivery", default=d.registered_delivery, low=0, high=0xFF),
        **_smpp_profile(t, key),
        **_smpp_bad_days(t, key),
        countries=_countries(t, key, d.countries),
        max_parts=integer(t, key, "max_parts", default=d.max_parts, low=1, high=255),
        strict_numbers=boolean(t, key, "strict_numbers", default=d.strict_numbers),
    )


def _smpp_profile(t: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The per-operator knobs of issue 3: binds, id bases, long messages, coding, TON/NPI."""
    d = SmppRouteConfig
    throughput = number(t, key, "throughput", default=d.throughput, low=0.0)
    if 0 < throughput < 1:
        raise ConfigError(f"{key}.throughput", "must be 0 (no cap) or at least 1 segment per second")
    latin = integer(t, key, "latin_data_coding", default=d.latin_data_coding, low=0, high=0xFF)
    if latin not in LATIN_CODINGS:
        raise ConfigError(f"{key}.latin_data_coding", "must be 0 (GSM 03.38), 1 (IA5/ASCII) or 3 (Latin-1)")
    return dict(
        throughput=throughput,
        binds=integer(t, key, "binds", default=d.binds, low=1, high=32),
        resp_id_base=choice(t, key, "resp_id_base", ID_BASES, default=d.resp_id_base),
        long_method=choice(t, key, "long_method", LONG_METHODS, default=d.long_method),
        latin_data_coding=latin,
        alpha_ton=integer(t, key, "alpha_ton", default=d.alpha_ton, low=0, high=6),
        alpha_npi=integer(t, key, "alpha_npi", default=d.alpha_npi, low=0, high=18),
        numeric_ton=integer(t, key, "numeric_ton", default=d.numeric_ton, low=0, high=6),
        numeric_npi=integer(t, key, "numeric_npi", default=d.numeric_npi, low=0, high=18),
    )


def _smpp_bad_days(t: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The knobs of issue 14: refused binds, queue-full, throttling, retries, receipts."""
    d = SmppRouteConfig
    pause = number(t, key, "queue_full_pause", default=d.queue_full_pause, low=0.01)
    validity = number(t, key, "validity", default=d.validity, low=1.0)
    query_delay = number(t, key, "query_sm_delay", default=d.query_sm_delay, low=1.0)
    query = boolean(t, key, "query_sm", default=d.query_sm)
    if query and query_delay >= validity:
        raise ConfigError(f"{key}.query_sm_delay", "must be shorter than validity, or no query_sm is ever sent")
    return dict(
        bind_retry_min=number(t, key, "bind_retry_min", default=d.bind_retry_min, low=0.01),
        queue_full_pause=pause,
        queue_full_pause_max=number(t, key, "queue_full_pause_max", default=max(d.queue_full_pause_max, pause),
                                    low=pause),
        throttle_recovery=number(t, key, "throttle_recovery", default=d.throttle_recovery, low=0.1),
        temporary_retries=integer(t, key, "temporary_retries", default=d.temporary_retries, low=1, high=1000),
        temporary_retry_age=number(t, key, "temporary_retry_age", default=d.temporary_retry_age, low=1.0),
        multipart_receipts=choice(t, key, "multipart_receipts", MULTIPART_RECEIPTS, default=d.multipart_receipts),
        validity=validity,
        query_sm=query,
        query_sm_delay=query_delay,
    )


def _http_route(name: str, key: str, d: type[SmsRuRouteConfig] | type[SmscRouteConfig],
                t: Mapping[str, Any]) -> HttpRouteConfig:
    only(t, key, field_names(d, but=frozenset({"name"})))
    callback_key = string(t, key, "callback_key", default=d.callback_key)
    if callback_key and len(callback_key) < MIN_KEY_LENGTH:
        raise ConfigError(f"{key}.callback_key", f"must be at least {MIN_KEY_LENGTH} random characters")
    retry_min = number(t, key, "retry_min", default=d.retry_min, low=0.01)
    common: dict[str, Any] = dict(
        name=name,
        base_url=url(t, key, "base_url", default=d.base_url),
        callback_key=callback_key,
        rate=number(t, key, "rate", default=d.rate, low=0.0),
        concurrency=integer(t, key, "concurrency", default=d.concurrency, low=1, high=100),
        timeout=number(t, key, "timeout", default=d.timeout, low=0.1),
        retry_min=retry_min,
        retry_max=number(t, key, "retry_max", default=d.retry_max, low=retry_min),
        poll_after=number(t, key, "poll_after", default=d.poll_after, low=0.0),
        poll_interval=number(t, key, "poll_interval", default=d.poll_interval, low=1.0),
        poll_for=number(t, key, "poll_for", default=d.poll_for, low=60.0),
        countries=_countries(t, key, d.countries),
        unknown_receipts_max=integer(t, key, "unknown_receipts_max", default=d.unknown_receipts_max, low=0,
                                     high=1_000_000),
        unknown_receipts_ttl=number(t, key, "unknown_receipts_ttl", default=d.unknown_receipts_ttl, low=1.0),
        max_parts=integer(t, key, "max_parts", default=d.max_parts, low=1, high=d.max_parts),
        strict_numbers=boolean(t, key, "strict_numbers", default=d.strict_numbers),
        batch_size=integer(t, key, "batch_size", default=d.batch_size, low=1, high=100),
        batch_interval=number(t, key, "batch_interval", default=d.batch_interval, low=0.0),
    )
    if d is SmsRuRouteConfig:
        return SmsRuRouteConfig(
            api_id=string(t, key, "api_id"),
            ttl=integer(t, key, "ttl", default=d.ttl, low=0, high=1440),
            translit=boolean(t, key, "translit", default=d.translit),
            test=boolean(t, key, "test", default=d.test),
            **common,
        )
    c = SmscRouteConfig
    login = string(t, key, "login", default=c.login)
    password = string(t, key, "password", default=c.password)
    apikey = string(t, key, "apikey", default=c.apikey)
    if not apikey and not (login and password):
        raise ConfigError(key, "needs apikey, or login and password")
    if apikey and (login or password):
        raise ConfigError(f"{key}.apikey", "give either apikey or login+password, not both")
    return SmscRouteConfig(
        login=login,
        password=password,
        apikey=apikey,
        viber=boolean(t, key, "viber", default=c.viber),
        viber_fallback=number(t, key, "viber_fallback", default=c.viber_fallback, low=1.0),
        skip_viber_for_sms_contacts=boolean(t, key, "skip_viber_for_sms_contacts",
                                            default=c.skip_viber_for_sms_contacts),
        valid=integer(t, key, "valid", default=c.valid, low=0, high=24 * 60),
        **common,
    )


def _countries(t: Mapping[str, Any], key: str, default: frozenset[str] | None) -> frozenset[str] | None:
    """Regions a route sends to: ISO codes (``["BY", "RU"]``) or ``["*"]`` for any."""
    v = t.get("countries")
    if v is None:
        return default
    if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v):
        raise ConfigError(f"{key}.countries", 'must be a non-empty list of country codes like ["BY", "RU"] or ["*"]')
    if ANY_COUNTRY in v:
        return None
    known = phonenumbers.SUPPORTED_REGIONS
    for c in v:
        if c.upper() not in known:
            raise ConfigError(f"{key}.countries", f"unknown country code {c!r} (ISO 3166 alpha-2, e.g. BY, RU)")
    return frozenset(c.upper() for c in v)
