"""
The installed wheel works on its own: the console scripts of the running
interpreter's environment find the C{awsgi} dropin, and txawsgi imports from
site-packages, with the source tree out of reach.

Trial runs from the repository root, where C{import txawsgi} finds the source
tree; these tests run children from an empty directory without
C{PYTHONPATH} so only the installed distribution is visible.
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path
from typing import List, Optional

from twisted.trial.unittest import TestCase

from . import _process


def _sitePackages() -> List[Path]:
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return [Path(p).resolve() for p in sorted(paths)]


def _installedDistribution() -> Optional[metadata.Distribution]:
    """
    txawsgi's distribution in this environment's site-packages (never an
    C{.egg-info} lying in the source tree), if any.
    """
    found = metadata.Distribution.discover(
        name="txawsgi", path=[str(p) for p in _sitePackages()]
    )
    return next(iter(found), None)


def _whyNotInstalled() -> Optional[str]:
    """
    A reason to skip, or L{None} when a non-editable install is present.
    """
    dist = _installedDistribution()
    if dist is None:
        return (
            f"txawsgi is not installed in {sys.prefix} (running from the "
            "source tree?); .ci/run installs the wheel and runs these"
        )
    directUrl = dist.read_text("direct_url.json")
    if directUrl and json.loads(directUrl).get("dir_info", {}).get("editable"):
        return "txawsgi is installed in editable mode; the wheel is not tested"
    return None


class InstalledWheelTests(TestCase):
    """
    The non-editable install in this interpreter's environment.
    """

    timeout = 120
    skip = _whyNotInstalled()

    def setUp(self) -> None:
        self.cwd = tempfile.mkdtemp(prefix="txawsgi-pkg-")
        self.addCleanup(shutil.rmtree, self.cwd, True)

    async def check(self, *argv: str) -> str:
        """
        Run C{argv} from the empty directory; return stdout, fail on error.
        """
        out, err, status = await _process.run(
            list(argv), _process.installedEnv(), self.cwd
        )
        self.assertEqual(status, 0, f"{argv}\n{out}\n{err}")
        return out

    def scriptPath(self, name: str) -> str:
        path = _process.script(name)
        if path is None:
            self.fail(f"no {name} script in {_process.scriptsDir()}")
        return path

    async def test_twistdListsAwsgi(self) -> None:
        out = await self.check(self.scriptPath("twistd"), "--help")
        self.assertRegex(out, r"(?m)^\s+awsgi\s+\S")

    async def test_twistdAwsgiHelp(self) -> None:
        out = await self.check(self.scriptPath("twistd"), "awsgi", "--help")
        for option in ("--app=", "--listen=", "--threads="):
            self.assertIn(option, out)

    async def test_twistListsAwsgi(self) -> None:
        out = await self.check(self.scriptPath("twist"), "--help")
        self.assertRegex(out, r"(?m)^\s+awsgi\s+\S")

    async def test_twistAwsgiHelp(self) -> None:
        out = await self.check(self.scriptPath("twist"), "awsgi", "--help")
        for option in ("--app=", "--listen=", "--threads="):
            self.assertIn(option, out)

    async def test_importsFromSitePackages(self) -> None:
        code = (
            "import txawsgi, twisted.plugins.txawsgi_plugin as p; "
            "print(txawsgi.__file__); print(p.__file__)"
        )
        out = await self.check(sys.executable, "-c", code)
        package, dropin = (Path(line).resolve() for line in out.split())
        sites = _sitePackages()
        self.assertTrue(
            any(site in package.parents for site in sites), (package, sites)
        )
        self.assertTrue(
            any(dropin == site / "twisted/plugins/txawsgi_plugin.py" for site in sites),
            (dropin, sites),
        )

    def test_recordContents(self) -> None:
        """
        The wheel ships the dropin and C{py.typed}, and no C{__init__.py} for
        C{twisted} or C{twisted.plugins}: uninstalling txawsgi must never
        remove Twisted's files.
        """
        dist = _installedDistribution()
        assert dist is not None
        files = {str(f).replace("\\", "/") for f in dist.files or ()}
        self.assertIn("twisted/plugins/txawsgi_plugin.py", files)
        self.assertIn("txawsgi/py.typed", files)
        self.assertIn("txawsgi/tap.py", files)
        self.assertNotIn("twisted/__init__.py", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)
        self.assertFalse([f for f in files if f.startswith("tests/")])
