"""Typed option schemas: a config group's options are the fields of one dataclass, and that
dataclass is the only place that says what each option accepts.

    @dataclass
    class TrainerSettings:
        eval_every: int = option(1000, minimum=1)
        precision: str = option("auto", choices=("auto", "fp32", "bf16"))

    settings = check_options(cfg.trainer, TrainerSettings, "trainer")

`check_options` checks every value against its field's type and rule and returns the dataclass;
the first bad value raises ConfigError with one line naming the key and the allowed values
("trainer.eval_every=0 is not allowed: must be an integer >= 1"). A key the config leaves out
takes the field's default, so a new option needs its field and nothing else (its line in conf/
documents it).

The same dataclass is the group's schema in Hydra's ConfigStore (`register_schema`, called by
the module that owns it; the group's conf files list it first in their defaults), so Hydra
types every option and rejects unknown keys while composing. Hydra's own errors span several
lines: `composition_error` turns them into the same one-line ConfigError, and the rules Hydra
does not know (ranges, choices) are checked by `check_options` on the composed config.
"""
from __future__ import annotations

import dataclasses
import typing
from numbers import Integral, Real
from typing import Any, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value; str(error) is the one-line message shown to the user."""


@dataclasses.dataclass(frozen=True)
class Rule:
    minimum: Optional[float] = None
    strict: bool = False          # value > minimum (else >=)
    maximum: Optional[float] = None
    max_strict: bool = False      # value < maximum (else <=)
    choices: Optional[tuple] = None


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           **rule) -> Any:
    """A dataclass field with a rule: minimum/strict, maximum/max_strict, choices."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"rule": Rule(**rule)})


def as_dict(values) -> dict:
    if hasattr(values, "_metadata"):  # an OmegaConf node: resolve interpolations first
        from omegaconf import OmegaConf
        return OmegaConf.to_container(values, resolve=True)
    return dict(values)


def _unwrap_optional(kind) -> tuple[Any, bool]:
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def _rule_text(kind, rule: Rule, optional: bool) -> Optional[str]:
    if rule.choices is not None:
        return f"must be one of {', '.join(map(str, rule.choices))}"
    noun = {int: "an integer", float: "a number", bool: None}.get(kind)
    if kind is bool:
        return "must be true or false"
    if noun is None:
        return None
    if rule.maximum is not None:
        low = "(" if rule.strict else "["
        high = ")" if rule.max_strict else "]"
        text = f"must be {noun} in {low}{rule.minimum:g}, {rule.maximum:g}{high}"
    elif rule.minimum is not None:
        text = f"must be {noun} {'>' if rule.strict else '>='} {rule.minimum:g}"
    else:
        text = f"must be {noun}"
    return text + (" or null" if optional else "")


def check_value(key: str, value, kind, rule: Rule = Rule()) -> None:
    """Raise ConfigError when `value` (of the option `key`) breaks its type or rule."""
    kind, optional = _unwrap_optional(kind)
    if value is None and optional:
        return
    text = _rule_text(kind, rule, optional)
    ok = True
    if rule.choices is not None:
        ok = value in rule.choices
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind in (int, float):
        ok = not isinstance(value, bool) and isinstance(value, Integral if kind is int else Real)
        if ok and rule.minimum is not None:
            ok = value > rule.minimum if rule.strict else value >= rule.minimum
        if ok and rule.maximum is not None:
            ok = value < rule.maximum if rule.max_strict else value <= rule.maximum
    elif kind is str:
        ok, text = isinstance(value, str), text or "must be a string" + (" or null" if optional else "")
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {text}")


def check_options(values: Mapping, schema: type[T], prefix: str, *, ignore: Sequence[str] = ()) -> T:
    """`values` (a config group) checked against the dataclass `schema`, as an instance of it.
    Keys in `ignore` (e.g. Hydra's `_target_`) are passed over; any other unknown key is an error."""
    values = as_dict(values)
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - set(fields) - set(ignore))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]} is not an option here: must be one of {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{prefix}.{name} is missing from the config")
            continue
        check_value(f"{prefix}.{name}", values[name], hints[name], field.metadata.get("rule", Rule()))
        kwargs[name] = values[name]
    return schema(**kwargs)


def register_schema(group: str, name: str, node: type) -> None:
    """Store the dataclass `node` in Hydra's ConfigStore as `group/name`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=group, name=name, node=node)


def composition_error(error: BaseException) -> Optional[ConfigError]:
    """The one-line ConfigError for Hydra's error about a value its schema rejects, or a key the
    schema does not have; None for any other composition error."""
    cause = error.__cause__ or error
    key, schema = getattr(cause, "full_key", None), getattr(cause, "object_type", None)
    if not key or not dataclasses.is_dataclass(schema):
        return None
    fields = {f.name: f for f in dataclasses.fields(schema)}
    name = key.rsplit(".", 1)[-1]
    if name not in fields:
        return ConfigError(f"{key} is not an option here: must be one of {', '.join(fields)}")
    field = fields[name]
    try:
        check_value(key, getattr(cause, "value", None), typing.get_type_hints(schema)[name],
                    field.metadata.get("rule", Rule()))
    except ConfigError as converted:
        return converted
    return ConfigError(f"{key}={getattr(cause, 'value', None)!r} is not allowed: {str(cause).splitlines()[0]}")
