"""Name -> constructor registries, with keyword arguments validated before anything is built.

One registry per kind of component (backbones, data sets). A config block such as
``network: {name: unet, base_channels: 64}`` becomes ``BACKBONES.build("unet", base_channels=64)``;
an unknown name, an unknown keyword or a value of the wrong type is a ``ValueError`` naming the
config key (``network.base_channels``) and what was expected.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import pydantic


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
        hints = typing.get_type_hints(target, include_extras=True)  # keeps Annotated constraints
        for key, value in kwargs.items():
            if key not in parameters:
                raise ValueError(f"{self.section}.{key}: unknown option for '{name}'; allowed: {list(parameters)}")
            if key in hints:
                try:
                    kwargs[key] = pydantic.TypeAdapter(hints[key]).validate_python(value)
                except pydantic.ValidationError as error:
                    message = error.errors()[0]["msg"]
                    raise ValueError(f"{self.section}.{key}: {message} (got {value!r})") from None
        for key, parameter in parameters.items():
            if parameter.default is inspect.Parameter.empty and key not in kwargs:
                raise ValueError(f"{self.section}.{key}: required by '{name}'")
        return kwargs
