"""Name -> constructor registries, with keyword arguments validated before anything is built.

One registry per kind of component (backbones, data sets). A config block such as
``network: {name: unet, base_channels: 64}`` becomes ``BACKBONES.build("unet", base_channels=64)``;
an unknown name, an unknown keyword or a value of the wrong type is a ``ValueError`` naming the
config key (``network.base_channels``) and what was expected.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pydantic

from cdm4mi.io.budget import short_repr


class Registry:
    """Maps names to constructors for one config section (``section`` names it in errors)."""

    def __init__(self, section: str):
        self.section = section
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(constructor: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.section} '{name}' is registered twice")
            self._entries[name] = constructor
            return constructor

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ValueError(f"{self.section}.name: unknown '{name}'; choose one of {self.names()}")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Validate ``kwargs`` against the constructor's signature and type hints, then call it."""
        return self.get(name)(**self.validate(name, **kwargs))

    def validate(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """``kwargs`` checked and coerced for the constructor registered as ``name``; builds nothing."""
        constructor = self.get(name)
        target = constructor.__init__ if isinstance(constructor, type) else constructor
        parameters = {key: p for key, p in inspect.signature(target).parameters.items() if key != "self"}
        for key in kwargs:
            if key not in parameters:
                raise ValueError(f"{self.section}.{key}: unknown option for '{name}'; allowed: {list(parameters)}")
        kwargs = check_annotated(target, kwargs, self.section)
        for key, parameter in parameters.items():
            if parameter.default is inspect.Parameter.empty and key not in kwargs:
                raise ValueError(f"{self.section}.{key}: required by '{name}'")
        return kwargs


def _check(adapter: pydantic.TypeAdapter, value: Any, config_key: str) -> Any:
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as error:
        raise ValueError(f"{config_key}: {error.errors()[0]['msg']} (got {short_repr(value)})") from None


def check_annotated(function: Callable[..., Any], values: dict[str, Any], section: str) -> dict[str, Any]:
    """``values`` checked and coerced against ``function``'s type hints (``Annotated[..., Field(...)]``
    constraints included); an error names ``section.key``."""
    hints = typing.get_type_hints(function, include_extras=True)  # keeps Annotated constraints
    return {
        key: _check(pydantic.TypeAdapter(hints[key]), value, f"{section}.{key}") if key in hints else value
        for key, value in values.items()
    }


def checked_options(
    section: str, keys: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function's ``Annotated`` and ``Literal`` options are checked on every call, so a constraint is written
    once, in the signature, for config and Python callers alike (the config models reuse the same aliases).
    An error names ``section.key``; ``keys`` maps an argument to its config key where the two differ."""

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function)
        adapters: dict[str, pydantic.TypeAdapter] = {}

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not adapters:  # hints resolve once the module has loaded
                hints = typing.get_type_hints(function, include_extras=True)
                adapters.update({k: pydantic.TypeAdapter(h) for k, h in hints.items()
                                 if typing.get_origin(h) in (typing.Annotated, typing.Literal)})
            bound = signature.bind(*args, **kwargs)
            for key, adapter in adapters.items():
                if key in bound.arguments:
                    config_key = f"{section}.{(keys or {}).get(key, key)}"
                    bound.arguments[key] = _check(adapter, bound.arguments[key], config_key)
            return function(*bound.args, **bound.kwargs)

        return wrapper

    return decorator
