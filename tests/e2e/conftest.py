"""A real `lianxin serve` process on 127.0.0.1, set up through the real CLI."""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from server.fleet.office import stop_process
from tests.conftest import PASSPHRASE

# What the office's operator would export before running `lianxin`.
OFFICE_ENV = {**os.environ, "LIANXIN_PASSPHRASE": PASSPHRASE}


def lianxin(data: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the `lianxin` command line against `data` (`env` added to the office's);
    its output, stripped."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**OFFICE_ENV, **(env or {})},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    data: Path
    url: str
    process: subprocess.Popen
    # Added to the office's environment when the server (re)starts.
    env: dict[str, str] = field(default_factory=dict)

    def user(self, name: str, role: str, *org_units: str) -> str:
        units = [arg for unit in org_units for arg in ("--org-unit", unit)]
        return lianxin(self.data, "user", "add", name, "--role", role, *units)

    def code(self, user_id: str) -> str:
        return lianxin(self.data, "code", user_id)

    def revoke(self, device_id: str) -> None:
        lianxin(self.data, "device", "revoke", device_id)

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        with open(self.data / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "--data",
                    str(self.data),
                    "serve",
                    "--port",
                    port,
                ],
                stdout=log,
                stderr=log,
                env={**OFFICE_ENV, **self.env},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/office", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flush; what a power cut does."""
        self.process.kill()
        self.process.wait()


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "office"
    lianxin(data, "init", "--admin", "Admin", "--org-unit", "Hangzhou")
    running = Server(data, f"http://127.0.0.1:{free_port()}", None)  # type: ignore[arg-type]
    running.start()
    yield running
    running.stop()
