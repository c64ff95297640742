"""Run a function on a module the moment it is first imported (or at once, when it already is).

Used to adjust megatron-core before anything uses it without importing it early: importing
megatron-core costs seconds, and many commands of this project never do (runtime/fusers.py,
checkpoint/releases.py). Installed by `megatron_demix`'s `__init__`, which every entry point
imports before megatron-core.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Callable

_HOOKS: dict[str, list[Callable]] = {}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds a hooked module as the normal path finder does, and runs its hooks once it is loaded."""

    def find_spec(self, name, path, target=None):
        if name not in _HOOKS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_hooks(module):
            exec_module(module)
            for hook in _HOOKS[name]:
                hook(module)

        spec.loader.exec_module = exec_then_hooks
        return spec


def after_import(name: str, hook: Callable) -> None:
    """Call `hook(module)` when module `name` is imported; at once if it is already (idempotent per hook)."""
    if name in sys.modules:
        hook(sys.modules[name])
        return
    hooks = _HOOKS.setdefault(name, [])
    if hook not in hooks:
        hooks.append(hook)
    if not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
