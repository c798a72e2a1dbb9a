"""Name -> constructor registries, with keyword arguments validated before anything is built.

One registry per kind of component (backbones, data sets). A config block such as
``network: {name: unet, base_channels: 64}`` becomes ``BACKBONES.build("unet", base_channels=64)``;
an unknown name, an unknown keyword or a value of the wrong type is a ``ValueError`` naming the
config key (``network.base_channels``) and what was expected.
"""

from __future__ import annotations

import inspect
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
        constructor = self.get(name)
        signature = inspect.signature(constructor)
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        for key in kwargs:
            if key not in signature.parameters and not accepts_any:
                allowed = [p for p in signature.parameters if p != "self"]
                raise ValueError(f"{self.section}.{key}: unknown option for '{name}'; allowed: {allowed}")
        validated = pydantic.validate_call(config={"arbitrary_types_allowed": True, "strict": False})(constructor)
        try:
            return validated(**kwargs)
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{self.section}.{key}: {first['msg']} (got {first.get('input')!r})") from None
