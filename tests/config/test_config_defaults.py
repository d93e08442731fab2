"""Every config default is written once: in its typed class in ``smppd.config``.

Three ways a second copy creeps back, each held here:
* a parser passes a literal ``default=`` of its own, which then drifts from the class's;
* a part built from the config (the SMPP session, the connection) keeps a default for a
  value the route already has, which is then the one a test or a new caller gets;
* any other module gives a parameter or field named like a config key the same literal.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import tomllib
from pathlib import Path

import pytest

from smppd import config
from smppd.config import portals, processes, routes, rules
from smppd.smpp.connection import Connection, session_config_for
from smppd.smpp.session import BindMode, Session, SessionConfig

from tests.rigs.config_rig import SMPP_ROUTE, session_config, smpp_route

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "smppd" / "config"
CLASSES = (config.DaemonConfig, config.ShimConfig, config.PortalConfig, config.AppConfig, config.AppEventsConfig,
           config.SmppRouteConfig, config.SmsRuRouteConfig, config.SmscRouteConfig, config.SenderConfig,
           config.RulesConfig)


def _defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# --- the parsers take the class's defaults --------------------------------------------------


@pytest.mark.parametrize("table, expected", [
    (SMPP_ROUTE, config.SmppRouteConfig(name="r", **SMPP_ROUTE)),
    ({"kind": "smsru", "api_id": "k"}, config.SmsRuRouteConfig(name="r", api_id="k")),
    ({"kind": "smsc", "apikey": "k"}, config.SmscRouteConfig(name="r", apikey="k")),
])
def test_a_route_with_only_its_required_keys_is_the_class_default(table, expected) -> None:
    assert routes.route("r", dict(table)) == expected


def test_every_section_with_only_its_required_keys_is_the_class_default() -> None:
    assert processes.daemon({"socket": "/s", "database": "/d"}) == config.DaemonConfig(socket_path="/s", database="/d")
    key = "k" * 24
    assert processes.shim({"listen": "127.0.0.1:8080", "handler_key": key}) == config.ShimConfig(
        host="127.0.0.1", port=8080, handler_key=key)
    assert rules.rules({}) == config.RulesConfig()
    assert portals.app_events({}) == config.AppEventsConfig()
    assert rules.sender("c", {"route": "r", "sender_id": "Shop"}) == config.SenderConfig(
        code="c", route="r", sender_id="Shop", name="c")
    portal = dict(member_id="m", domain="x.bitrix24.by", client_endpoint="https://x.bitrix24.by/rest/",
                  server_endpoint="https://oauth.bitrix.info/rest/", client_id="c", client_secret="s",
                  application_token="t")
    assert portals.portals([portal]) == {"m": config.PortalConfig(**portal)}
    # client_endpoint is the one default that depends on another key: https://<domain>/rest/
    assert portals.apps([{"domain": "x.bitrix24.by", "client_id": "c", "client_secret": "s"}]) == {
        "x.bitrix24.by": config.AppConfig(domain="x.bitrix24.by", client_id="c", client_secret="s",
                                          client_endpoint="https://x.bitrix24.by/rest/")}


def test_no_parser_writes_a_default_literal_of_its_own() -> None:
    """``default=10`` in a parser is the second copy of ``window: int = 10``; read the class's."""
    found = []
    for path in sorted(CONFIG_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_field = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "field"
            if isinstance(node, ast.Call) and not is_field:  # field(default=...) is the class's own
                for kw in node.keywords:
                    if kw.arg == "default" and isinstance(kw.value, ast.Constant) \
                            and kw.value.value is not None:
                        found.append(f"{path.name}:{kw.value.lineno}: default={kw.value.value!r}")
    assert not found, "parsers must take defaults from the typed class:\n" + "\n".join(found)


# --- the session and the connection take the route's values -------------------------------


def test_the_session_has_no_default_for_what_the_route_sets() -> None:
    route_keys = {f.name for f in dataclasses.fields(config.SmppRouteConfig)}
    doubled = [f.name for f in dataclasses.fields(SessionConfig)
               if f.name in route_keys and f.default is not dataclasses.MISSING]
    assert not doubled, f"SessionConfig repeats the route's defaults for {doubled}"
    params = inspect.signature(Connection.__init__).parameters
    doubled = [n for n, p in params.items() if n in route_keys and p.default is not inspect.Parameter.empty]
    assert not doubled, f"Connection repeats the route's defaults for {doubled}"


def test_a_session_built_from_a_route_runs_with_the_configs_defaults() -> None:
    route = smpp_route()
    s = Session(session_config_for(route))
    d = _defaults(config.SmppRouteConfig)
    assert s.window == d["window"]
    cfg = s.config
    assert (cfg.enquire_link_interval, cfg.response_timeout, cfg.system_type, cfg.resp_id_base) == (
        d["enquire_link_interval"], d["response_timeout"], d["system_type"], d["resp_id_base"])
    assert cfg.bind_mode is BindMode(d["bind_mode"])
    # "auto" is the route's: both ids are read as-is, the route then tries the other bases
    assert d["receipt_id_base"] == "auto" and cfg.receipt_id_base == "as-is"
    # and the configured value, not a default, when the table sets one
    assert Session(session_config(window=3, response_timeout=2.5)).window == 3
    assert session_config(window=3, response_timeout=2.5).response_timeout == 2.5


def test_a_bad_value_is_refused_by_config_naming_the_key() -> None:
    for key, value in (("window", 0), ("enquire_link_interval", 0), ("response_timeout", 0),
                       ("receipt_id_base", "16"), ("resp_id_base", "auto"), ("bind_mode", "both")):
        with pytest.raises(config.ConfigError) as info:
            smpp_route(**{key: value})
        assert info.value.key == f"route.op.{key}"


# --- no other module repeats a config default ----------------------------------------------

# The SMPP route's knobs that parts take under names of their own.
ALIASES = {"pause_min": "queue_full_pause", "pause_max": "queue_full_pause_max", "recovery": "throttle_recovery"}
# Not defaults: the route classes name the kind they implement.
NOT_DEFAULTS = frozenset({"kind"})
# Simulated peers have knobs of their own (a simulated portal's own rate limit is not ours).
SKIPPED = ("smppd/config/", "smppd/sims/")
# Known repeats, each with why it is here; a new one fails the test.
KNOWN = {
    ("smppd/bitrix24/contacts/scan.py", "valid"): "a count of valid numbers, not SMSC.ru's `valid` lifetime",
    ("smppd/bitrix24/contacts/scan.py", "valid"): "a count of valid numbers, not SMSC.ru's `valid` lifetime",
    ("smppd/routes/smsc.py", "viber"): "send_form's per-request flag, set from the route by its caller",
    ("shim/auth.py", "allow_from"): "DoorConfig.from_config always sets it; () means 'any address' in both",
    # owned by other work in progress (issue 15): to take the value from the config object
    ("smppd/routes/http.py", "batch_size"): "HttpRoute class attribute, set from the route config by each kind",
    ("smppd/routes/http.py", "batch_interval"): "HttpRoute class attribute, set from the route config by each kind",
    ("smppd/routes/resend.py", "retry_min"): "ResendPolicy: HttpRoute passes cfg.retry_min",
    ("smppd/routes/resend.py", "retry_max"): "ResendPolicy: HttpRoute passes cfg.retry_max",
    ("smppd/routes/policy/resend.py", "retry_min"): "ResendPolicy: HttpRoute passes cfg.retry_min",
    ("smppd/routes/policy/resend.py", "retry_max"): "ResendPolicy: HttpRoute passes cfg.retry_max",
    ("smppd/smpp/flow.py", "pause_min"): "FlowPolicy: the SMPP route passes cfg.queue_full_pause",
    ("smppd/smpp/flow.py", "pause_max"): "FlowPolicy: the SMPP route passes cfg.queue_full_pause_max",
    ("smppd/smpp/flow.py", "recovery"): "FlowPolicy: the SMPP route passes cfg.throttle_recovery",
    ("smppd/routes/policy/flow.py", "pause_min"): "FlowPolicy: the SMPP route passes cfg.queue_full_pause",
    ("smppd/routes/policy/flow.py", "pause_max"): "FlowPolicy: the SMPP route passes cfg.queue_full_pause_max",
    ("smppd/routes/policy/flow.py", "recovery"): "FlowPolicy: the SMPP route passes cfg.throttle_recovery",
    ("smppd/routes/policy/submit.py", "pause_min"): "SubmitPolicy.for_route passes cfg.queue_full_pause",
    ("smppd/routes/policy/submit.py", "pause_max"): "SubmitPolicy.for_route passes cfg.queue_full_pause_max",
    ("smppd/routes/policy/submit.py", "recovery"): "SubmitPolicy.for_route passes cfg.throttle_recovery",
}


def _config_defaults() -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for cls in CLASSES:
        for name, value in _defaults(cls).items():
            out.setdefault(name, []).append(value)
    return out


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _named_defaults(tree: ast.AST):
    """(name, default expression) of every parameter and class-level field with a default."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            yield from zip((p.arg for p in positional[len(positional) - len(a.defaults):]), a.defaults)
            yield from ((p.arg, d) for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    yield stmt.target.id, stmt.value
                elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                    yield stmt.targets[0].id, stmt.value


def test_no_module_but_config_repeats_a_config_default() -> None:
    defaults = _config_defaults()
    found = []
    for package in ("smppd", "shim"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(SKIPPED):
                continue
            for name, expr in _named_defaults(ast.parse(path.read_text(encoding="utf-8"))):
                key = ALIASES.get(name, name)
                if key not in defaults or key in NOT_DEFAULTS or (rel, name) in KNOWN:
                    continue
                try:
                    value = ast.literal_eval(expr)
                except ValueError:
                    continue  # a name (ShimConfig.spool_after) or a call: not a literal copy
                if any(_same(value, d) for d in defaults[key]):
                    found.append(f"{rel}:{expr.lineno}: {name} = {ast.unparse(expr)}")
    assert not found, ("config defaults written again outside smppd.config (take the value from the "
                       "config object, or the class attribute):\n" + "\n".join(found))


def test_the_scan_sees_a_repeated_default() -> None:
    """The scan above must not pass because it sees nothing: the session's old field is caught."""
    tree = ast.parse("class SessionConfig:\n    window: int = 10\n\ndef f(*, reconnect_min: float = 1.0): pass\n")
    seen = {(n, ast.literal_eval(e)) for n, e in _named_defaults(tree)}
    defaults = _config_defaults()
    assert {n for n, v in seen if any(_same(v, d) for d in defaults[n])} == {"window", "reconnect_min"}


# --- config.toml's commented defaults are the classes' --------------------------------------

EXAMPLE = ROOT / "config.toml"
# The sections whose commented ``# key = value`` lines document the defaults, by (header,
# whether the header itself is commented out): the operator profiles further down (a
# commented [route.life], [route.mts], ...) and [[portal]] hold examples, not defaults.
_KEY = "k" * 24
DOCUMENTED = {
    ("daemon", False): (config.DaemonConfig, lambda t: processes.daemon({"socket": "/s", "database": "/d", **t})),
    ("shim", False): (config.ShimConfig,
                      lambda t: processes.shim({"listen": "127.0.0.1:8080", "handler_key": _KEY, **t})),
    ("app", False): (config.AppConfig, lambda t: portals.apps(
        [{"domain": "x.bitrix24.by", "client_id": "c", "client_secret": "s", **t}])["x.bitrix24.by"]),
    ("app_events", True): (config.AppEventsConfig, portals.app_events),
    ("route.life", False): (config.SmppRouteConfig, lambda t: routes.route("r", {**SMPP_ROUTE, **t})),
    ("route.smsru", True): (config.SmsRuRouteConfig,
                            lambda t: routes.route("r", {"kind": "smsru", "api_id": "k", **t})),
    ("route.smsc", True): (config.SmscRouteConfig,
                           lambda t: routes.route("r", {"kind": "smsc", "apikey": "k", **t})),
    ("rules", True): (config.RulesConfig, rules.rules),
    ("sender.by_sms_main", False): (config.SenderConfig,
                                    lambda t: rules.sender("c", {"route": "r", "sender_id": "Shop", **t})),
}
# Commented lines that show an example value, not the default (each says so in its comment).
EXAMPLE_KEYS = frozenset({"socket_group", "public_url", "allow_from", "spool_dir", "handler_key_previous",
                          "client_endpoint", "resp_id_base", "portal", "marketing_sender_id", "login", "password",
                          "api_id", "host", "port", "system_id"})


def test_config_toml_documents_the_class_defaults() -> None:
    """README: every route key is "explained next to its default in config.toml"; that copy must not drift."""
    section: tuple[str, bool] | None = None
    checked, wrong = 0, []
    for n, line in enumerate(EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        header = re.match(r"^(#\s*)?\[\[?([a-z0-9_.]+)\]\]?", line)
        if header:
            section = (header[2], header[1] is not None)
            continue
        m = re.match(r"^#\s?([a-z_]+\s*=.*)$", line)
        if m is None or section not in DOCUMENTED:
            continue
        try:
            table = tomllib.loads(m[1])
        except tomllib.TOMLDecodeError:
            continue  # prose that happens to contain "="
        (key, value), = table.items()
        if key in EXAMPLE_KEYS:
            continue
        cls, parse = DOCUMENTED[section]
        got, default = getattr(parse({key: value}), key), getattr(cls, key)
        checked += 1
        if got != default:
            wrong.append(f"config.toml:{n}: {key} = {value!r} reads as {got!r}, "
                         f"but {cls.__name__}.{key} = {default!r}")
    assert not wrong, "config.toml documents another default than the code has:\n" + "\n".join(wrong)
    assert checked >= 60, f"only {checked} documented defaults found: has config.toml's layout changed?"


def test_readme_route_key_table_shows_the_class_defaults() -> None:
    """README's "When the operator has a bad day" table is a third copy: held to the class too."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("### When the operator has a bad day"):]
    table = table[:table.index("\n\n", table.index("| Key |"))]
    checked = 0
    for keys, values in re.findall(r"^\| ((?:`[a-z_]+`(?:, )?)+) \| ((?:`[^`]+`(?:, )?)+) \|", table, re.M):
        for key, value in zip(re.findall(r"`([a-z_]+)`", keys), re.findall(r"`([^`]+)`", values), strict=True):
            got = getattr(routes.route("r", {**SMPP_ROUTE, key: tomllib.loads(f"v = {value}")["v"]}), key)
            assert got == getattr(config.SmppRouteConfig, key), f"README: {key} = {value}"
            checked += 1
    assert checked >= 10, f"only {checked} defaults found in README's table: has its layout changed?"
