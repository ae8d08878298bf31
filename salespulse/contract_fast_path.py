"""The contracts of :mod:`salespulse.contracts`, checked in one pass of pydantic-core.

``parse_message`` builds pydantic models: pydantic-core parses and type-checks
the JSON, then calls back into Python for every ``AfterValidator`` (UTC
timestamps, money to cents) and model validator (fields required by type,
order totals), and builds a model object per nested object. That is most of
the consumer's CPU. :func:`parse_values` gives the same answer faster:

* a ``TypeAdapter`` over ``TypedDict`` s **derived from the models** (same
  fields, same types and constraints, same strictness and extra handling;
  nothing is written twice) checks shape and constraints without calling
  Python;
* the Python steps are then applied to the validated values directly: the
  same ``AfterValidator`` functions and the same model validators, taken from
  the models, run on a read-only view of the values;
* a UUID is accepted on this path only in its canonical spelling (lowercase,
  hyphenated: what ``str(UUID)`` gives, so the view holds that text, not a
  ``UUID``); anything the path cannot vouch for (another spelling, any
  failure at all) goes to ``parse_message``, which also words every reason.

So ``parse_values`` raises :class:`ContractError` exactly when
``parse_message`` does, with the same reason, and otherwise returns values
equal to the model's (``tests/test_contract_fast_path.py`` checks both on
hostile input). A contract change the derivation does not understand (a
before/wrap validator, a field validator, an alias, ...) fails at import, so
the two paths cannot drift apart silently.
"""

from __future__ import annotations

import types
from collections import namedtuple
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Union, get_args, get_origin
from uuid import UUID

from pydantic import AfterValidator, BeforeValidator, ConfigDict, PlainSerializer, PlainValidator, StringConstraints
from pydantic import TypeAdapter, WrapValidator
from typing_extensions import NotRequired, TypedDict

from salespulse.contracts import TOPICS, ContractError, TimestampWindow, _Contract, parse_message

#: the one UUID spelling this path accepts (every other one takes the model path)
CANONICAL_UUID = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
_SUPPORTED_CONFIG = {"strict", "extra", "frozen"}

Step = Callable[[Any], Any]  # completes one validated value (may raise: then the model path decides)


class Values:
    """Read-only attribute view of one message's validated values (a model's
    fields, UUIDs as canonical text); ``contract`` is the model class. Each
    model's view is a named tuple of its fields: one object per message,
    cheap to build and to keep (the consumer holds two batches of them)."""

    __slots__ = ()
    contract: type[_Contract]


def contract_of(values: Any) -> type[_Contract]:
    """The contract model of a model or a :class:`Values` view."""
    return values.contract if isinstance(values, Values) else type(values)


_new_tuple = tuple.__new__


@dataclass(frozen=True)
class _Shape:
    """How one contract model is checked on the fast path."""

    typed_dict: type  # what pydantic-core validates
    names: tuple[str, ...]  # the model's fields, in order
    steps: tuple[tuple[str, Step], ...]  # field -> Python step for a present, non-None value
    view: type[Values]
    rules: tuple[Callable, ...]  # the model's after-validators, run on the view

    def complete(self, data: dict) -> Values:
        for name, step in self.steps:
            value = data.get(name)
            if value is not None:
                data[name] = step(value)
        view = _new_tuple(self.view, map(data.get, self.names))  # a field left out is None, as in the model
        for rule in self.rules:
            if rule(view) is not view:
                raise ValueError("a model validator replaced the model")
        return view


_shapes: dict[type, _Shape] = {}


def _shape(model: type[_Contract]) -> _Shape:
    """Derive (once) the fast check of ``model`` from its fields and validators."""
    if model in _shapes:
        return _shapes[model]
    config = dict(model.model_config)
    if set(config) - _SUPPORTED_CONFIG:
        raise TypeError(f"{model.__name__}: config {sorted(set(config) - _SUPPORTED_CONFIG)} not supported here")
    decorators = model.__pydantic_decorators__
    if decorators.field_validators or decorators.validators or decorators.root_validators or decorators.computed_fields:
        raise TypeError(f"{model.__name__}: field validators are not supported here")
    rules = []
    for dec in decorators.model_validators.values():
        if dec.info.mode != "after":
            raise TypeError(f"{model.__name__}: only mode='after' model validators are supported here")
        rules.append(dec.func)
    fields, steps = {}, []
    for name, info in model.model_fields.items():
        if info.alias or info.validation_alias or info.default_factory is not None:
            raise TypeError(f"{model.__name__}.{name}: aliases and default factories are not supported here")
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fast, step = _fast_type(annotation)
        if info.is_required():
            fields[name] = fast
        elif info.default is None:
            fields[name] = NotRequired[fast]
        else:
            raise TypeError(f"{model.__name__}.{name}: only None defaults are supported here")
        if step is not None:
            steps.append((name, step))
    typed_dict = TypedDict(f"{model.__name__}Fields", fields)
    typed_dict.__pydantic_config__ = ConfigDict(strict=config.get("strict", False), extra=config.get("extra", "ignore"))
    properties = {k: v for k, v in vars(model).items() if isinstance(v, property)}
    names = tuple(model.model_fields)
    view = type(f"{model.__name__}Values", (namedtuple(f"{model.__name__}Fields", names), Values),
                {"__slots__": (), "contract": model, **properties})
    shape = _Shape(typed_dict, names, tuple(steps), view, tuple(rules))
    _shapes[model] = shape
    return shape


def _fast_type(tp: Any) -> tuple[Any, Step | None]:
    """``tp`` as pydantic-core checks it without Python, and the Python step
    (the dropped ``AfterValidator`` s, nested models' completion) or None."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        inner, step = _fast_type(base)
        kept, after = [], []
        for m in meta:
            if isinstance(m, AfterValidator):
                after.append(m.func)
            elif isinstance(m, (BeforeValidator, WrapValidator, PlainValidator)):
                raise TypeError(f"{m!r} is not supported here")
            elif not isinstance(m, PlainSerializer):  # serialisation only
                kept.append(m)  # constraints pydantic-core checks itself
        funcs = ([step] if step else []) + after
        return (Annotated[(inner, *kept)] if kept else inner), _chain(funcs)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        options = [_fast_type(a) for a in args]
        stepped = [s for _t, s in options if s is not None]
        if stepped and not (len(args) == 2 and type(None) in args):
            raise TypeError(f"{tp!r}: only Optional[...] may need a Python step here")
        return Union[tuple(t for t, _s in options)], (stepped[0] if stepped else None)
    if origin is list:
        (item,) = get_args(tp)
        fast, step = _fast_type(item)
        return list[fast], (None if step is None else (lambda values: [step(v) for v in values]))
    if tp is UUID:
        return CANONICAL_UUID, None
    if isinstance(tp, type) and issubclass(tp, _Contract):
        shape = _shape(tp)
        return shape.typed_dict, shape.complete
    return tp, None  # validated by pydantic-core exactly as in the model


def _chain(funcs: list[Step]) -> Step | None:
    if not funcs:
        return None
    if len(funcs) == 1:
        return funcs[0]

    def chained(value):
        for f in funcs:
            value = f(value)
        return value
    return chained


@dataclass(frozen=True)
class _TopicCheck:
    adapter: TypeAdapter
    complete: Callable[[dict], Values]


_CHECKS = {name: _TopicCheck(TypeAdapter(_shape(t.model).typed_dict), _shape(t.model).complete)
           for name, t in TOPICS.items()}


def fast_values(topic: str, raw: Any) -> Values | None:
    """The validated values, or None when the fast path cannot vouch for the
    message (then only :func:`parse_message` may decide). No window check."""
    check = _CHECKS.get(topic)
    if check is None or type(raw) is not bytes or not raw:
        return None
    try:
        if not raw.isascii():
            raw.decode("utf-8")  # pydantic-core refuses bad UTF-8 too; this keeps the rule explicit
        return check.complete(check.adapter.validate_json(raw))
    except Exception:
        return None


def parse_values(topic: str, raw: Any, window: TimestampWindow | None = None):
    """What :func:`parse_message` returns (a :class:`Values` view instead of the
    model when the fast path vouches for the message) or raises, with the same
    reason."""
    values = fast_values(topic, raw)
    if values is None:
        return parse_message(topic, raw, window)
    if window is not None:
        reason = window.violation(values.timestamp)
        if reason:
            raise ContractError(reason)
    return values
