"""
Resolve a WSGI application from a textual spec such as C{pkg.module:app}.

Accepted forms::

    pkg.module:app          module, then attribute
    pkg.module:attr.sub     module, then a dotted attribute path
    pkg.module.app          dotted: the longest importable prefix is the module

The current directory is made importable first (as gunicorn does), so an app
living next to where the server is started can be named directly.

Failures raise L{AppNotFound} naming exactly what was missing.  An exception
raised I{while executing} the app's module (including an C{ImportError} for
one of its own dependencies) is not a "not found" and propagates unchanged,
with a note saying which spec was being loaded.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from types import ModuleType
from typing import Any, Callable, List, NamedTuple, Optional, Tuple, Union

__all__ = ["AppNotFound", "load_app"]


class AppNotFound(ValueError):
    """
    The app spec does not name a callable: the module, or an attribute within
    it, does not exist, or the object found is not callable.
    """


def load_app(spec: str) -> Callable[..., Any]:
    """
    Import and return the WSGI application named by C{spec}.

    @raise ValueError: C{spec} is syntactically invalid.
    @raise AppNotFound: the module or attribute does not exist, or the object
        is not callable.
    """
    _ensureCwdImportable()
    if ":" in spec:
        moduleName, _, attrPath = spec.partition(":")
        _checkDotted(spec, moduleName, "module")
        _checkDotted(spec, attrPath, "attribute")
        imported = _import(moduleName, spec)
        if isinstance(imported, ModuleNotFoundError):
            raise AppNotFound(
                f"module {moduleName!r} not found ({imported}; app spec {spec!r})"
            )
        app = _resolve(spec, imported, attrPath.split("."))
    else:
        _checkDotted(spec, spec, "app")
        parts = spec.split(".")
        if len(parts) < 2:
            raise ValueError(
                f"invalid app spec {spec!r}: expected 'module:attribute' "
                "or 'module.attribute'"
            )
        module, attrs, missing = _importLongestPrefix(parts, spec)
        if module is None:
            assert missing is not None
            raise AppNotFound(
                f"module {missing.name!r} not found ({missing.error}; "
                f"app spec {spec!r})"
            )
        app = _resolve(spec, module, attrs, missing)
    if not callable(app):
        raise AppNotFound(
            f"{spec!r} is not callable (found {type(app).__name__} "
            f"{_shortRepr(app)}); a WSGI application must be callable"
        )
    return app


def _ensureCwdImportable() -> None:
    """
    Put the current directory first on C{sys.path} unless already present.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _checkDotted(spec: str, dotted: str, what: str) -> None:
    """
    Reject empty or non-identifier components early, with a clear message.
    """
    if not dotted or not all(part.isidentifier() for part in dotted.split(".")):
        raise ValueError(
            f"invalid app spec {spec!r}: {dotted!r} is not a valid dotted "
            f"{what} name"
        )


class _Missing(NamedTuple):
    """
    A module name that does not exist, and the import system's explanation.
    """

    name: str
    error: ModuleNotFoundError


def _import(moduleName: str, spec: str) -> Union[ModuleType, ModuleNotFoundError]:
    """
    Import C{moduleName}.  If it (or a parent package) does not exist, return
    the L{ModuleNotFoundError}; re-raise anything that went wrong while
    executing it, including failed imports of its own dependencies.
    """
    try:
        return import_module(moduleName)
    except ModuleNotFoundError as e:
        if e.name is not None and (
            moduleName == e.name or moduleName.startswith(e.name + ".")
        ):
            return e
        _annotate(e, spec, moduleName)
        raise
    except BaseException as e:
        _annotate(e, spec, moduleName)
        raise


def _importLongestPrefix(
    parts: List[str], spec: str
) -> Tuple[Optional[ModuleType], List[str], Optional[_Missing]]:
    """
    Import the longest proper prefix of C{parts} that is a module.

    @return: the module (or L{None}), the remaining attribute names, and the
        longest module name that was tried but does not exist (or L{None}).
    """
    missing: Optional[_Missing] = None
    for end in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:end])
        module = _import(name, spec)
        if not isinstance(module, ModuleNotFoundError):
            return module, parts[end:], missing
        if missing is None:
            missing = _Missing(name, module)
    return None, [], missing


def _resolve(
    spec: str,
    module: ModuleType,
    attrs: List[str],
    missingModule: Optional[_Missing] = None,
) -> object:
    """
    Walk C{attrs} from C{module}, naming the first missing one on failure.
    """
    obj: object = module
    for i, attr in enumerate(attrs):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            where = ".".join(attrs[:i])
            owner = (
                f"module {module.__name__!r}"
                if not where
                else f"{where!r} in module {module.__name__!r}"
            )
            message = f"attribute {attr!r} not found in {owner} (app spec {spec!r})"
            if missingModule is not None and i == 0:
                message += f"; module {missingModule.name!r} not found either"
            raise AppNotFound(message) from None
    return obj


def _annotate(e: BaseException, spec: str, moduleName: str) -> None:
    """
    Add context to an exception raised by the app's own module, without
    replacing it (Python 3.11+; older versions keep the bare exception).
    """
    addNote = getattr(e, "add_note", None)
    if addNote is not None:
        addNote(f"(raised while importing module {moduleName!r} for app spec {spec!r})")


def _shortRepr(obj: object, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
