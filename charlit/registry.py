"""One registry mechanism for every extension point: objectives, teachers, samplers, data kinds, eval suites,
judges and kernel backends.

A :class:`Registry` maps names to plugins (classes or factories). Built-ins register with ``@REGISTRY.register
("name")`` in any module of the registry's package: the package is scanned (every module imported once) the
first time a name is looked up, so a new built-in is one new file, with no table to edit. Third-party packages
register through the registry's entry-point group (``[project.entry-points."charlit.objectives"]`` with
``toy = "my_package.toy:Toy"``); an entry point is loaded only when its name is asked for or all names are
listed. Lookups of unknown names raise ``ValueError`` naming the config key, the bad value and every valid name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → plugins for one extension point.

    ``kind``: what a plugin is, for messages ("objective"); ``package``: the package whose modules hold the
    built-ins; ``group``: the entry-point group for third parties; ``option``: the config key users set
    (``method``), used in error messages.
    """

    def __init__(self, kind: str, package: str, group: str, option: str):
        self.kind, self.package, self.group, self.option = kind, package, group, option
        self._plugins: dict[str, T] = {}
        self._scanned = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``plugin`` under ``name`` (a class also gets ``plugin.name = name``)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"A {self.kind} needs a non-empty string name, got {name!r}.")

        def decorator(plugin: T) -> T:
            known = self._plugins.get(name)
            if known is not None and known is not plugin and _qualname(known) != _qualname(plugin):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {_qualname(known)}; "
                    f"pick another name for {_qualname(plugin)}."
                )
            if isinstance(plugin, type):
                plugin.name = name
            self._plugins[name] = plugin
            return plugin

        return decorator

    def get(self, name: str) -> T:
        """The plugin registered as ``name``; a ``ValueError`` listing the valid names otherwise."""
        name = str(name)
        if name not in self._plugins:
            self._scan()
        if name not in self._plugins:
            self._load_entry_points(only=name)
        if name not in self._plugins:
            raise ValueError(
                f"{self.option}={name!r} is not a registered {self.kind}; valid choices: "
                f"{', '.join(self.names())} (third-party {self.kind}s register through the "
                f"{self.group!r} entry-point group)."
            )
        return self._plugins[name]

    def names(self) -> list[str]:
        """Every registered name (built-ins and installed third-party plugins), sorted."""
        self._scan()
        self._load_entry_points()
        return sorted(self._plugins)

    def builtin_names(self) -> list[str]:
        """The names registered by modules of this registry's own package."""
        self._scan()
        return sorted(
            n for n, p in self._plugins.items() if getattr(p, "__module__", "").startswith(self.package + ".")
        )

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except ValueError:
            return False
        return True

    # ---- discovery --------------------------------------------------------------------------
    def _scan(self) -> None:
        """Import every module of the package (recursively) once, so their ``register`` decorators run."""
        if self._scanned:
            return
        self._scanned = True
        package = importlib.import_module(self.package)
        for info in pkgutil.walk_packages(package.__path__, prefix=self.package + "."):
            importlib.import_module(info.name)

    def _load_entry_points(self, only: str | None = None) -> None:
        for ep in entry_points(group=self.group):
            if ep.name in self._plugins or (only is not None and ep.name != only):
                continue
            plugin = ep.load()
            if ep.name not in self._plugins:  # loading the module may have registered it already
                self.register(ep.name)(plugin)


def _qualname(plugin) -> str:
    return f"{getattr(plugin, '__module__', '?')}.{getattr(plugin, '__qualname__', repr(plugin))}"
