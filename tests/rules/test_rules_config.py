"""Config of the business rules (issue 8): sender IDs, message types, countries, [rules]."""

import tomllib
from pathlib import Path

import pytest

from smppd import config

EXAMPLE = Path(__file__).parents[2] / "config.toml"


def raw() -> dict:
    with open(EXAMPLE, "rb") as f:
        return tomllib.load(f)


def parse(mutate) -> config.Config:
    r = raw()
    mutate(r)
    return config.parse(r)


def error(mutate) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as e:
        parse(mutate)
    return e.value


def sender(**kw):
    return lambda r: r["sender"]["by_sms_main"].update(**kw)


def rules(**kw):
    return lambda r: r.setdefault("rules", {}).update(**kw)


def test_defaults():
    cfg = parse(lambda r: None)
    s = cfg.senders["by_sms_main"]
    assert s.type == "transactional" and s.sender_for(True) == s.sender_id == s.sender_for(False)
    assert cfg.routes["life"].countries == frozenset({"BY"}), "Belarusian operators take +375 only"
    assert cfg.rules.duplicate_window == 600 and cfg.rules.duplicate_outcome == "follow-first"
    assert cfg.rules.timezone == "Europe/Minsk" and cfg.rules.consent_field == "UF_CRM_SMS_CONSENT"
    assert cfg.rules.quiet_hours == (21 * 60, 9 * 60)


def test_marketing_sender_and_type():
    cfg = parse(sender(type="marketing", marketing_sender_id="ShopPromo"))
    s = cfg.senders["by_sms_main"]
    assert s.type == "marketing"
    assert s.sender_for(True) == "ShopPromo" and s.sender_for(False) == "MyShop"


@pytest.mark.parametrize("value", ["MyShop", "A1-Info", "Shop 24", "12345", "+375291234567", "ABCDEFGHIJK",
                                   "123456789012345"])
def test_good_sender_ids(value):
    assert parse(sender(sender_id=value)).senders["by_sms_main"].sender_id == value


@pytest.mark.parametrize(
    "value, words",
    [
        ("Магазин", "Cyrillic letters are not allowed"),
        ("Shop№1Мир", "Cyrillic"),
        ("ABCDEFGHIJKL", "at most 11 characters, got 12"),
        ("1234567890123456", "at most 15 digits, got 16"),
        ("Shop<>", "Latin letters/digits"),
        ("Shöp", "Latin letters/digits"),
    ],
)
def test_bad_sender_ids_say_why(value, words):
    e = error(sender(sender_id=value))
    assert e.key == "sender.by_sms_main.sender_id" and words in str(e)
    e = error(sender(marketing_sender_id=value))
    assert e.key == "sender.by_sms_main.marketing_sender_id" and words in str(e)


def test_countries():
    cfg = parse(lambda r: r["route"]["life"].update(countries=["by", "RU"]))
    assert cfg.routes["life"].countries == frozenset({"BY", "RU"})
    assert parse(lambda r: r["route"]["life"].update(countries=["*"])).routes["life"].countries is None


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda r: r["route"]["life"].update(countries=["XX"]), "route.life.countries", "unknown country code 'XX'"),
        (lambda r: r["route"]["life"].update(countries="BY"), "route.life.countries", "list"),
        (lambda r: r["route"]["life"].update(countries=[]), "route.life.countries", "non-empty"),
        (sender(type="promo"), "sender.by_sms_main.type", "transactional, marketing"),
        (rules(duplicate_outcome="drop"), "rules.duplicate_outcome", "follow-first, failed"),
        (rules(duplicate_window=-1), "rules.duplicate_window", "≥ 0"),
        (rules(timezone="Europe/Minks"), "rules.timezone", "unknown time zone"),
        (rules(quiet_hours="9pm-9am"), "rules.quiet_hours", "HH:MM-HH:MM"),
        (rules(quiet_hours="21:00-21:00"), "rules.quiet_hours", "equal"),
        (rules(consent_field="uf crm"), "rules.consent_field", "CRM field name"),
        (rules(stop_words=["STOP", ""]), "rules.stop_words", "non-empty"),
        (rules(quiet=True), "rules.quiet", "unknown key"),
    ],
)
def test_rule_errors_name_the_key(mutate, key, words):
    e = error(mutate)
    assert e.key == key and words in str(e)


def test_rules_values():
    cfg = parse(rules(quiet_hours="22:30-08:00", timezone="Europe/Moscow", duplicate_window=0,
                      duplicate_outcome="failed", stop_words=["stop", "Отписка"]))
    assert cfg.rules.quiet_hours == (22 * 60 + 30, 8 * 60)
    assert cfg.rules.timezone == "Europe/Moscow" and cfg.rules.duplicate_window == 0
    assert cfg.rules.stop_words == frozenset({"STOP", "ОТПИСКА"})
    assert parse(rules(quiet_hours="")).rules.quiet_hours is None


def test_http_routes_take_any_country_unless_told():
    def add(route):
        return lambda r: r["route"].update(agg=route)

    cfg = parse(add({"kind": "smsru", "api_id": "x"}))
    assert cfg.routes["agg"].countries is None
    cfg = parse(add({"kind": "smsc", "login": "l", "password": "p", "countries": ["RU", "by"]}))
    assert cfg.routes["agg"].countries == frozenset({"RU", "BY"})
