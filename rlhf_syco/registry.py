"""One lookup rule for every plug-in kind: tasks, judges, reward models, generation backends, stages.

A name resolves, in this order, to: an object registered in this process (`@registry.register("name")`), a
built-in declared lazily as a `module:attr` path (so listing the names imports nothing heavy), an entry point
of the kind's group (an installed package adds plug-ins without touching this project), or a `module:attr`
path given directly. An unknown name is one error line that lists the known names and the closest one.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from rlhf_syco.errors import UserError


class PluginError(UserError, ValueError):
    """An unknown or unloadable plug-in name; a ValueError too, so pydantic validators report it as theirs."""


def import_object(path: str) -> Any:
    """`package.module:attr.sub` -> the object; a PluginError saying what could not be found."""
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise PluginError(f"{path!r} is not a 'module:attr' path")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"cannot import {path!r}: {e}") from None
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise PluginError(f"cannot import {path!r}: {type(obj).__name__} {getattr(obj, '__name__', obj)!r} "
                              f"has no {attr!r}")
        obj = getattr(obj, attr)
    return obj


def build(factory: Callable, options: dict, what: str, where: str | None = None) -> Any:
    """`factory(**options)`, the options checked against its signature first: a misspelt option is one line
    naming `what` (and the config key `where`), not a TypeError from deep inside a model loader."""
    import inspect

    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise UserError(f"bad options for {what}: {e}", where) from None
    return factory(**options)


def suggest(name: Any, choices) -> str:
    """" (did you mean 'x'?)" for the closest choice, or ""."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry:
    """The plug-ins of one kind. `builtins` maps names to `module:attr` paths imported on first use."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str] | None = None):
        self.kind, self.group = kind, group
        self._objects: dict[str, Any] = {}
        self._builtins = dict(builtins or {})

    def register(self, name: str) -> Callable:
        def decorate(obj):
            self._objects[name] = obj
            return obj
        return decorate

    def _entry_points(self) -> dict:
        found = {}
        for entry in entry_points(group=self.group):
            found.setdefault(entry.name, entry)
        return found

    def names(self) -> list[str]:
        """Every name that resolves without a `module:attr` path: registered and built-in, then installed."""
        own = list(dict.fromkeys([*self._builtins, *self._objects]))
        return own + sorted(set(self._entry_points()) - set(own))

    def known(self, name: str) -> bool:
        """Whether `name` resolves, importing nothing but a `module:attr` path's module."""
        if name in self._objects or name in self._builtins or name in self._entry_points():
            return True
        if ":" in name:
            self.get(name)
            return True
        return False

    def check(self, name: Any) -> str:
        """`name` if it resolves, else the one-line PluginError `get` would raise."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {self.kind} name must be a non-empty string (got {name!r})")
        if not self.known(name):
            raise self._unknown(name)
        return name

    def get(self, name: str) -> Any:
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {self.kind} name must be a non-empty string (got {name!r})")
        if name in self._objects:
            return self._objects[name]
        if name in self._builtins:
            self._objects[name] = import_object(self._builtins[name])
            return self._objects[name]
        entry = self._entry_points().get(name)
        if entry is not None:
            try:
                return entry.load()
            except Exception as e:  # a broken plug-in package: one line naming it
                raise PluginError(f"{self.kind} {name!r}: cannot load entry point {entry.value!r}: "
                                  f"{type(e).__name__}: {e}") from None
        if ":" in name:
            try:
                return import_object(name)
            except PluginError as e:
                raise PluginError(f"cannot load {self.kind} {name!r}: {e}") from None
        raise self._unknown(name)

    def _unknown(self, name: str) -> PluginError:
        names = self.names()
        return PluginError(f"unknown {self.kind} {name!r}{suggest(name, names)}; known: {', '.join(names)} "
                           "(or give module:attr)")
