"""Real Chromium (Debian's, at /usr/bin/chromium) driven by Playwright against `lianxin demo`.

The demo office runs as its own process on 127.0.0.1, exactly as the
README's first command starts it; Playwright only drives the browser, it
never downloads one.
"""

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
# What this machine's closed network needs (no background fetches, no QUIC, no GPU).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Demo:
    url: str
    data: Path
    supervisor: str
    supervisor_password: str
    admin: str
    admin_password: str
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A short simulated week: the seed's cases stay on the first page of the case list.
DEMO = ["--days", "3", "--devices", "15", "--port"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LIANXIN_PASSPHRASE"}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "--data", str(data), "demo", *DEMO, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    printed = []
    for line in process.stdout:
        printed.append(line)
        if line.startswith("Serving until"):
            break
    text = "".join(printed)
    logins = re.findall(r"(supervisor|admin):\s+user id (\S+), password '([^']+)'", text)
    assert len(logins) == 2, text
    (_, supervisor, supervisor_password), (_, admin, admin_password) = logins
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/office", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield Demo(url, data, supervisor, supervisor_password, admin, admin_password, process)
    process.terminate()
    process.wait(timeout=10)
    process.stdout.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-GB")
    opened = context.new_page()
    yield opened
    context.close()


def sign_in(page: Page, demo: Demo, user: str, password: str) -> None:
    page.goto(f"{demo.url}/console/login")
    page.fill("#user_id", user)
    page.fill("#password", password)
    page.click("button[type=submit]")


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
