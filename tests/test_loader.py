"""
Tests for L{txawsgi.loader}.
"""

from __future__ import annotations

import os
import sys
import textwrap
from itertools import count
from pathlib import Path
from typing import Dict

from twisted.trial.unittest import SynchronousTestCase

from txawsgi.loader import AppNotFound, load_app

_counter = count()

_APP_MODULE = """
def application(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

class Holder:
    @staticmethod
    def app(environ, start_response):
        return application(environ, start_response)

NOT_CALLABLE = 42
"""


class _ImportSandbox(SynchronousTestCase):
    """
    Write throwaway packages to a temp dir on C{sys.path} and undo every
    global change (C{sys.path}, C{sys.modules}, cwd) afterwards.
    """

    def setUp(self) -> None:
        savedPath = sys.path[:]
        savedModules = set(sys.modules)
        savedCwd = os.getcwd()

        def restore() -> None:
            os.chdir(savedCwd)
            sys.path[:] = savedPath
            for name in set(sys.modules) - savedModules:
                del sys.modules[name]

        self.addCleanup(restore)
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir(parents=True)
        sys.path.insert(0, str(self.root))
        # A package name unique to this test, so sys.modules never collides.
        self.pkg = f"txawsgi_loader_pkg{next(_counter)}"

    def makePackage(self, modules: Dict[str, str]) -> str:
        """
        Create package C{self.pkg} holding C{modules} (name -> source).
        """
        pkgDir = self.root / self.pkg
        pkgDir.mkdir()
        (pkgDir / "__init__.py").write_text("")
        for name, source in modules.items():
            (pkgDir / f"{name}.py").write_text(textwrap.dedent(source))
        return self.pkg


class LoadAppTests(_ImportSandbox):
    """
    Successful resolution of every supported spec form.
    """

    def test_moduleColonAttribute(self) -> None:
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        app = load_app(f"{pkg}.wsgi:application")
        self.assertIs(app, sys.modules[f"{pkg}.wsgi"].application)

    def test_moduleColonDottedAttribute(self) -> None:
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        app = load_app(f"{pkg}.wsgi:Holder.app")
        self.assertIs(app, sys.modules[f"{pkg}.wsgi"].Holder.app)

    def test_dotted(self) -> None:
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        app = load_app(f"{pkg}.wsgi.application")
        self.assertIs(app, sys.modules[f"{pkg}.wsgi"].application)

    def test_dottedAttributePath(self) -> None:
        """
        In the dotted form the longest importable prefix is the module and
        the rest is an attribute path.
        """
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        app = load_app(f"{pkg}.wsgi.Holder.app")
        self.assertIs(app, sys.modules[f"{pkg}.wsgi"].Holder.app)

    def test_currentDirectoryImportable(self) -> None:
        """
        A module in the current directory is found even when neither the
        directory nor C{""} is on C{sys.path}.
        """
        here = self.root / "cwd"
        here.mkdir()
        name = f"txawsgi_cwd_app{next(_counter)}"
        (here / f"{name}.py").write_text(_APP_MODULE)
        os.chdir(here)
        sys.path[:] = [p for p in sys.path if p not in ("", str(here))]
        app = load_app(f"{name}:application")
        self.assertEqual(sys.path[0], str(here))
        self.assertIs(app, sys.modules[name].application)


class LoadAppFailureTests(_ImportSandbox):
    """
    Failures say precisely what was not found, and never mask errors raised
    by the app's own module.
    """

    def test_appNotFoundIsValueError(self) -> None:
        self.assertTrue(issubclass(AppNotFound, ValueError))

    def test_missingTopLevelModule(self) -> None:
        e = self.assertRaises(AppNotFound, load_app, "txawsgi_no_such_mod:app")
        self.assertIn("module 'txawsgi_no_such_mod' not found", str(e))

    def test_missingSubmodule(self) -> None:
        pkg = self.makePackage({})
        e = self.assertRaises(AppNotFound, load_app, f"{pkg}.nosuch:app")
        self.assertIn(f"module '{pkg}.nosuch' not found", str(e))

    def test_missingModuleDotted(self) -> None:
        e = self.assertRaises(
            AppNotFound, load_app, "txawsgi_no_such_mod.sub.app"
        )
        self.assertIn("module 'txawsgi_no_such_mod.sub' not found", str(e))
        self.assertIn("No module named 'txawsgi_no_such_mod'", str(e))

    def test_missingAttribute(self) -> None:
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        e = self.assertRaises(AppNotFound, load_app, f"{pkg}.wsgi:nosuch")
        self.assertIn(
            f"attribute 'nosuch' not found in module '{pkg}.wsgi'", str(e)
        )

    def test_missingNestedAttribute(self) -> None:
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        e = self.assertRaises(AppNotFound, load_app, f"{pkg}.wsgi:Holder.nosuch")
        self.assertIn(
            f"attribute 'nosuch' not found in 'Holder' in module '{pkg}.wsgi'",
            str(e),
        )

    def test_missingAttributeDotted(self) -> None:
        """
        In the dotted form a missing last component is reported both as a
        missing attribute and as a missing module, since it could be either.
        """
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        e = self.assertRaises(AppNotFound, load_app, f"{pkg}.wsgi.nosuch")
        self.assertIn(
            f"attribute 'nosuch' not found in module '{pkg}.wsgi'", str(e)
        )

    def test_missingModuleUnderExistingPackageDotted(self) -> None:
        pkg = self.makePackage({})
        e = self.assertRaises(AppNotFound, load_app, f"{pkg}.nosuch.app")
        self.assertIn(f"attribute 'nosuch' not found in module '{pkg}'", str(e))
        self.assertIn(f"module '{pkg}.nosuch' not found", str(e))

    def test_importErrorInsideModule(self) -> None:
        """
        A module that exists but fails to import one of I{its} dependencies
        raises that original error, not L{AppNotFound}.
        """
        pkg = self.makePackage({"wsgi": "import txawsgi_missing_dependency\n"})
        for spec in (f"{pkg}.wsgi:application", f"{pkg}.wsgi.application"):
            e = self.assertRaises(ModuleNotFoundError, load_app, spec)
            self.assertNotIsInstance(e, AppNotFound)
            self.assertEqual(e.name, "txawsgi_missing_dependency")
            if sys.version_info >= (3, 11):
                self.assertIn(f"for app spec {spec!r}", "".join(e.__notes__))

    def test_plainImportErrorInsideModule(self) -> None:
        pkg = self.makePackage({"wsgi": "from os import no_such_name\n"})
        e = self.assertRaises(ImportError, load_app, f"{pkg}.wsgi:application")
        self.assertNotIsInstance(e, AppNotFound)
        self.assertIn("no_such_name", str(e))

    def test_otherErrorInsideModule(self) -> None:
        pkg = self.makePackage({"wsgi": "raise RuntimeError('app is broken')\n"})
        e = self.assertRaises(RuntimeError, load_app, f"{pkg}.wsgi:application")
        self.assertEqual(str(e), "app is broken")

    def test_notCallable(self) -> None:
        pkg = self.makePackage({"wsgi": _APP_MODULE})
        spec = f"{pkg}.wsgi:NOT_CALLABLE"
        e = self.assertRaises(AppNotFound, load_app, spec)
        self.assertIn(f"{spec!r} is not callable (found int 42)", str(e))

    def test_notCallableModule(self) -> None:
        """
        A dotted spec naming a module, not an attribute, is not callable.
        """
        e = self.assertRaises(AppNotFound, load_app, "os.path")
        self.assertIn("'os.path' is not callable (found module", str(e))

    def test_malformed(self) -> None:
        specs = ("", "app", ":app", "mod:", "mod:a:b", "a b:app", "mod:.x", "m..a")
        for spec in specs:
            e = self.assertRaises(ValueError, load_app, spec)
            self.assertFalse(isinstance(e, AppNotFound), spec)
            self.assertIn("invalid app spec", str(e), spec)
