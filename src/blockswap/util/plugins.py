"""Plugins: a user's modules, imported by name for the backbones, block types and scorers they register.

`load_plugin` imports one (a dotted module name, or a .py file whose folder joins
sys.path) and records it, so every worker process a pool spawns imports the same
plugins before it runs a job: what a plugin registers then resolves by name in the
workers too, however it was built (closures included), with nothing pickled.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .errors import BlockSwapError

__all__ = ["PLUGINS_ENV", "load_plugin", "env_plugins", "loaded_plugins"]

PLUGINS_ENV = "BLOCKSWAP_PLUGINS"

_LOADED: list[str] = []


def load_plugin(spec: str) -> None:
    """Import a module (dotted name, or a .py file whose folder joins sys.path) for what it registers, and record
    it for worker processes."""
    path = Path(spec)
    name = spec
    if spec.endswith(".py"):
        if not path.is_file():
            raise BlockSwapError(f"plugin file not found: {spec}")
        spec = str(path.resolve())  # workers import it wherever they start
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = path.stem
    try:
        importlib.import_module(name)
    except ImportError as e:
        raise BlockSwapError(f"cannot import plugin {name!r}: {e}") from None
    except BlockSwapError as e:
        raise BlockSwapError(f"plugin {spec}: {e}") from None
    except Exception as e:  # the plugin's own code failed: say so, with what it raised
        text = " ".join(str(e).split())[:300]
        raise BlockSwapError(f"plugin {spec} failed while importing: {type(e).__name__}: {text} (rerun with --debug "
                             "for the traceback)") from e
    if spec not in _LOADED:
        _LOADED.append(spec)


def env_plugins() -> list[str]:
    """The plugin specs named in $BLOCKSWAP_PLUGINS (comma-separated)."""
    return [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]


def loaded_plugins() -> list[str]:
    """Every plugin `load_plugin` imported in this process, in order (.py files as absolute paths)."""
    return list(_LOADED)
