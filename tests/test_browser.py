"""
The built-in demo in a real browser: headless Chromium (Debian's
C{chromium} and C{chromium-driver}, driven by Selenium) opens the page
served by C{twistd awsgi} in two windows; the two exchange chat messages
over server-sent events, one uploads a file and watches its progress, and
the test reads it all from the DOM and takes a screenshot.

Skipped unless C{chromium}, C{chromedriver} and the C{selenium} package are
installed (C{.ci/run} installs them).  The screenshot goes to the trial
temporary directory; with C{TXAWSGI_UPDATE_SCREENSHOT=1} it also replaces
C{docs/demo.png}.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from ._production import twistd_awsgi
from .support import PROJECT_ROOT, free_port

#: Chromium flags: headless, and nothing that reaches out to the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=900,960",
]

UPLOAD_SIZE = 3 * 1024 * 1024
SCREENSHOT = os.path.join(PROJECT_ROOT, "docs", "demo.png")


def _find(name: str) -> Optional[str]:
    return shutil.which(name) or next(
        (path for path in (f"/usr/bin/{name}", f"/usr/lib/chromium/{name}") if os.access(path, os.X_OK)), None
    )


def png_size(data: bytes) -> tuple[int, int]:
    """
    The width and height of a PNG image.

    @raise ValueError: it is not a PNG.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class Page:
    """
    One browser window showing the demo.
    """

    def __init__(self, driver: Any, handle: str, name: str) -> None:
        self.driver = driver
        self.handle = handle
        self.name = name

    def focus(self) -> None:
        self.driver.switch_to.window(self.handle)

    def script(self, source: str, *args: Any) -> Any:
        self.focus()
        return self.driver.execute_script(source, *args)

    def messages(self) -> List[str]:
        return self.script(
            "return Array.from(document.querySelectorAll('#log .message'), p => p.textContent);"
        )

    def say(self, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.focus()
        field = self.driver.find_element(By.ID, "text")
        field.send_keys(text)
        field.send_keys(Keys.ENTER)


def _wait(what: str, check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last saw {result!r}")
        time.sleep(0.05)


def scenario(url: str, workdir: str, screenshot: str) -> Dict[str, Any]:
    """
    Drive the demo (in a thread: Selenium blocks): two windows chat, one
    uploads; return what the DOM showed.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium") or "chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={os.path.join(workdir, 'profile')}")
    service = Service(_find("chromedriver") or "chromedriver", log_output=os.path.join(workdir, "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.get(url + "/?name=alice")
        alice = Page(driver, driver.current_window_handle, "alice")
        driver.switch_to.new_window("window")
        driver.get(url + "/?name=bob")
        bob = Page(driver, driver.current_window_handle, "bob")
        for page in (alice, bob):
            _wait(f"{page.name}'s event stream", lambda: page.script("return document.body.dataset.connected;"))
        _wait("the clock", lambda: alice.script("return document.getElementById('clock').textContent.endsWith('UTC');"))

        alice.say("Hello Bob, this is Alice.")
        _wait("bob to hear alice", lambda: "alice: Hello Bob, this is Alice." in bob.messages())
        bob.say("Hi Alice! Bob here, over server-sent events.")
        _wait("alice to hear bob", lambda: "bob: Hi Alice! Bob here, over server-sent events." in alice.messages())

        data = os.urandom(UPLOAD_SIZE)
        path = os.path.join(workdir, "holiday-photos.bin")
        with open(path, "wb") as f:
            f.write(data)
        alice.focus()
        driver.find_element(By.ID, "file").send_keys(path)
        driver.find_element(By.ID, "upload").click()
        _wait("the upload", lambda: alice.script("return document.getElementById('upload-result').dataset.done;"), 30)
        uploaded = f"alice: uploaded holiday-photos.bin ({UPLOAD_SIZE} bytes)"
        _wait("bob to hear of the upload", lambda: uploaded in bob.messages())
        _wait("alice to hear of the upload", lambda: uploaded in alice.messages())
        alice.focus()
        result = {
            "alice": alice.messages(),
            "bob": bob.messages(),
            "count": alice.script("return document.getElementById('count').textContent;"),
            "upload": driver.find_element(By.ID, "upload-result").text,
            "progress": alice.script("return document.getElementById('progress-text').textContent;"),
            "progress_value": alice.script("return document.getElementById('progress').value;"),
            "progress_events": int(alice.script("return document.body.dataset.progressEvents || '0';")),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        driver.save_screenshot(screenshot)
        return result
    finally:
        driver.quit()


class BrowserDemoTests(TestCase):
    """
    Two browser windows chat through the demo; one uploads a file.
    """

    timeout = 60

    def setUp(self) -> None:
        for name in ("chromium", "chromedriver"):
            if _find(name) is None:
                raise SkipTest(f"{name} is not installed (apt-get install chromium chromium-driver)")
        try:
            import selenium  # noqa: F401
        except ImportError:
            raise SkipTest("selenium is not installed (pip install txawsgi[browser])")

    async def test_chat_and_upload(self) -> None:
        port = free_port()
        proc = twistd_awsgi(self, "-l", f"tcp:{port}:interface=127.0.0.1")
        await proc.wait_for_output(b"txawsgi serving", timeout=20)
        workdir = tempfile.mkdtemp(prefix="txawsgi-browser-")
        self.addCleanup(shutil.rmtree, workdir, True)
        screenshot = os.path.abspath(self.mktemp() + ".png")
        seen = await deferToThread(scenario, f"http://127.0.0.1:{port}", workdir, screenshot)

        conversation = ["alice: Hello Bob, this is Alice.", "bob: Hi Alice! Bob here, over server-sent events."]
        for name in ("alice", "bob"):
            self.assertEqual(seen[name][:2], conversation, name)
        self.assertEqual(seen["count"], "2")
        self.assertEqual(seen["upload"], f"holiday-photos.bin: {UPLOAD_SIZE} bytes, sha256 {seen['sha256']}")
        self.assertEqual(seen["progress"], f"holiday-photos.bin: {UPLOAD_SIZE} of {UPLOAD_SIZE} bytes")
        self.assertEqual(seen["progress_value"], UPLOAD_SIZE)
        # Reported as the bytes streamed in, not just at the end.
        self.assertGreaterEqual(seen["progress_events"], 2, seen)

        with open(screenshot, "rb") as f:
            png = f.read()
        width, height = png_size(png)
        self.assertGreaterEqual(width, 600)
        self.assertGreaterEqual(height, 600)
        self.assertGreater(len(png), 20_000)
        if os.environ.get("TXAWSGI_UPDATE_SCREENSHOT"):
            shutil.copyfile(screenshot, SCREENSHOT)
        self.assertTrue(proc.running, proc.output.decode(errors="replace"))
