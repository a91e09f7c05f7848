"""The console's widgets, screens and app keep their own state under names Textual does not use: an attribute set
on `self` that Textual's classes also set or define would silently replace Textual's own and break it where no
other test looks (the compare screen's threading lock was once `self.lock`, Textual's asyncio lock of every
widget, which `Widget.batch` awaits)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from functools import cache

import textual
from textual.dom import DOMNode

import tunix_tui


@cache
def assigned_on_self(cls: type) -> frozenset[str]:
    """Names a class's own code sets on `self` (`self.x = ...`, `self.x: T = ...`, `self.x += ...`)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return frozenset()
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == "self"):
            names.add(node.attr)
    return frozenset(names)


def console_classes() -> list[type]:
    """Every class of the tunix_tui package that is a Textual DOM node (app, screens, widgets)."""
    found = []
    for info in pkgutil.walk_packages(tunix_tui.__path__, "tunix_tui."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, DOMNode):
                found.append(obj)
    return found


def textual_names(cls: type) -> set[str]:
    """What Textual's classes among `cls`'s bases define or set on their instances, less what they mean to be set
    (reactives and other data descriptors: `theme`, `border_title`, ...)."""
    names: set[str] = set()
    for base in cls.__mro__:
        if base.__module__.split(".")[0] == textual.__name__:
            names |= set(vars(base)) | assigned_on_self(base)
    return {name for name in names if not hasattr(type(inspect.getattr_static(cls, name, None)), "__set__")}


def test_no_console_class_sets_an_attribute_textual_has():
    classes = console_classes()
    assert len(classes) > 20   # the app, its screens and widgets were all found
    clashes = {f"{cls.__module__}.{cls.__qualname__}": sorted(assigned_on_self(cls) & textual_names(cls))
               for cls in classes}
    assert not {name: attrs for name, attrs in clashes.items() if attrs}


def test_the_check_sees_a_clash():
    from textual.screen import Screen

    class Shadowing(Screen):
        def __init__(self) -> None:
            super().__init__()
            self._compositor = None   # Textual's own: the clash the test above looks for

    assert "_compositor" in assigned_on_self(Shadowing) & textual_names(Shadowing)
    assert "border_title" not in textual_names(Shadowing)   # a reactive: Textual's way to set it
