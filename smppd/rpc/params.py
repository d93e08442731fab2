"""What a request may hold, checked before any handler runs.

A method declares its parameters' JSON types (``RpcServer(params=...)``); a request
whose parameter has another type is answered ``bad_request`` naming the parameter
in ``field``, and never reaches the handler. The checks are compiled once per method
(``compile_spec``): they run on every intake, the daemon's hottest call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .wire import MAX_INFLIGHT, RpcError

__all__ = ["ListOf", "MapOf", "ParamChecks", "ParamTypes", "Spec", "check_params", "compile_spec", "conforms"]


class ListOf(NamedTuple):
    """A JSON array of ``item`` values, at most ``max_len`` of them."""

    item: Any
    max_len: int = MAX_INFLIGHT


class MapOf(NamedTuple):
    """A JSON object with ``value`` values, at most ``max_len`` keys."""

    value: Any
    max_len: int = 256


Spec = Any
"""A parameter's type: ``str``, ``int``, ``bool``, ``float``, ``None``, a ``ListOf``/``MapOf``,
or a tuple of these (any of them). ``int`` never admits a bool, as JSON tells them apart."""

ParamTypes = Mapping[str, Spec]
"""A method's parameters by name and type; a parameter not named is not checked, and one
that is named may be absent (whether it is required is the handler's business)."""


def conforms(spec: Spec, value: Any) -> bool:
    """Whether ``value`` (decoded JSON) has the type ``spec`` declares."""
    if isinstance(spec, tuple) and not isinstance(spec, (ListOf, MapOf)):  # both are tuples too
        return any(conforms(s, value) for s in spec)
    if spec is None:
        return value is None
    if spec is int:
        return type(value) is int
    if spec is float:
        return type(value) in (int, float)
    if isinstance(spec, ListOf):
        return (type(value) is list and len(value) <= spec.max_len
                and all(conforms(spec.item, v) for v in value))
    if isinstance(spec, MapOf):
        return (type(value) is dict and len(value) <= spec.max_len
                and all(conforms(spec.value, v) for v in value.values()))
    return type(value) is spec


def _type_name(spec: Spec) -> str:
    if isinstance(spec, tuple) and not isinstance(spec, (ListOf, MapOf)):
        return " or ".join(_type_name(s) for s in spec)
    if spec is None:
        return "null"
    if isinstance(spec, ListOf):
        return f"a list of {_type_name(spec.item)} (at most {spec.max_len})"
    if isinstance(spec, MapOf):
        return f"an object of {_type_name(spec.value)} (at most {spec.max_len} keys)"
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(spec, spec.__name__)


def check_params(types: ParamTypes, params: Mapping[str, Any]) -> RpcError | None:
    """The error for the first parameter whose type is not the declared one, else None."""
    for name, spec in types.items():
        if name in params and not conforms(spec, params[name]):
            return RpcError("bad_request", f"{name}: must be {_type_name(spec)}", field=name)
    return None


_TYPE_SETS = {str: (str,), int: (int,), bool: (bool,), float: (int, float), None: (type(None),)}


def _alternatives(spec: Spec) -> tuple[Spec, ...]:
    """The types a spec admits, one or several (a ``ListOf``/``MapOf`` is a tuple, not a choice)."""
    return spec if isinstance(spec, tuple) and not isinstance(spec, (ListOf, MapOf)) else (spec,)


def _plain_types(alternatives: tuple[Spec, ...]) -> frozenset[type]:
    """The Python types of the plain JSON types (no list, no object) among ``alternatives``."""
    return frozenset(t for a in alternatives if not isinstance(a, (ListOf, MapOf)) for t in _TYPE_SETS[a])


def compile_spec(spec: Spec) -> Callable[[Any], bool]:
    """``conforms(spec, ·)`` as a closure built once: the intake's ~12 parameters are checked
    per post, and the generic walk cost ~9 µs of it where this costs ~2. Lists and objects
    get a plain loop each (a lambda per item through ``all(map(...))`` cost ~2.7 µs on a
    post's bindings and document_id, the loop ~1)."""
    alternatives = _alternatives(spec)
    simple = _plain_types(alternatives)
    nested = [_compile_container(a) for a in alternatives if isinstance(a, (ListOf, MapOf))]
    if not nested:
        return lambda value: type(value) in simple
    if len(nested) == 1:
        only = nested[0]
        if not simple:
            return only
        return lambda value: type(value) in simple or only(value)
    return lambda value: type(value) in simple or any(check(value) for check in nested)


def _compile_container(spec: ListOf | MapOf) -> Callable[[Any], bool]:
    """A ``ListOf``/``MapOf`` check: its container type and length, then each item or value."""
    inner_spec = spec.item if isinstance(spec, ListOf) else spec.value
    container, max_len = (list, spec.max_len) if isinstance(spec, ListOf) else (dict, spec.max_len)
    inner_alternatives = _alternatives(inner_spec)
    if not any(isinstance(a, (ListOf, MapOf)) for a in inner_alternatives):
        types = _plain_types(inner_alternatives)

        def flat(value: Any) -> bool:
            if type(value) is not container or len(value) > max_len:
                return False
            for item in (value if container is list else value.values()):
                if type(item) not in types:
                    return False
            return True

        return flat
    inner = compile_spec(inner_spec)

    def deep(value: Any) -> bool:
        if type(value) is not container or len(value) > max_len:
            return False
        for item in (value if container is list else value.values()):
            if not inner(item):
                return False
        return True

    return deep


class ParamChecks:
    """One method's declared parameter types, compiled (see ``compile_spec``).

    A parameter of plain types (a string, an integer, null...) is checked inline against
    its set of types, without a call: an intake post has ten of them and a closure call
    each cost ~0.7 µs of every post; lists and objects keep their compiled check."""

    __slots__ = ("_nested", "_simple", "_types")

    def __init__(self, types: ParamTypes) -> None:
        self._types = types
        self._simple: dict[str, frozenset[type]] = {}
        self._nested: dict[str, Callable[[Any], bool]] = {}
        for name, spec in types.items():
            alternatives = _alternatives(spec)
            if any(isinstance(a, (ListOf, MapOf)) for a in alternatives):
                self._nested[name] = compile_spec(spec)
            else:
                self._simple[name] = _plain_types(alternatives)

    def __call__(self, params: Mapping[str, Any]) -> RpcError | None:
        simple, nested = self._simple, self._nested
        for name, value in params.items():
            types = simple.get(name)
            if types is not None:
                if type(value) in types:
                    continue
            else:
                check = nested.get(name)
                if check is None or check(value):
                    continue
            spec = self._types[name]
            return RpcError("bad_request", f"{name}: must be {_type_name(spec)}", field=name)
        return None
