"""`lianxin device ...` acts like a phone against a real server."""

import json
import os
import subprocess
import sys

DAGUAN = '{"city": "Hangzhou", "district": "Gongshu", "street": "Mishixiang"}'
PIN = "246810"


def phone(*args: str, pin: str | None = PIN) -> subprocess.CompletedProcess[str]:
    """Run `lianxin device ...` as the phone's holder, with `pin` in LIANXIN_PIN (None: unset)."""
    env = {name: value for name, value in os.environ.items() if name != "LIANXIN_PIN"}
    if pin is not None:
        env["LIANXIN_PIN"] = pin
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "device", *args],
        env=env,
        stdin=subprocess.DEVNULL,  # not a terminal: nobody to ask for the PIN
        capture_output=True,
        text=True,
        timeout=60,
    )


def says(*args: str) -> str:
    """The output of a phone command that must succeed, stripped."""
    done = phone(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_a_phone_on_the_command_line_enrols_edits_syncs_and_shows(server, tmp_path):
    code = server.code(server.user("Zhao", "mediator", "Hangzhou/Gongshu"))
    file = ["--file", str(tmp_path / "phone.db"), "--server", server.url]
    assert says("enroll", *file, code).startswith("Enrolled dev-")
    queued = says(
        "edit",
        *file,
        "case",
        "k-1",
        "title=Drains",
        "households=10",
        f"location={DAGUAN}",
        "--add",
        "tags=drains",
    )
    assert queued.startswith("Queued ")
    assert says("sync", *file).startswith("Pushed 1 changes")
    record = json.loads(says("show", *file, "case", "k-1"))
    assert (record["title"], record["households"], record["tags"]) == ("Drains", 10, ["drains"])
    assert says("outbox", *file).endswith("applied")


def test_the_device_file_opens_only_with_its_pin(tmp_path):
    file = tmp_path / "phone.db"
    assert says("outbox", "--file", str(file)) == ""  # a new file, locked with PIN
    wrong = phone("outbox", "--file", str(file), pin="135790")
    assert (wrong.returncode, wrong.stdout) == (
        1,
        f"lianxin: {file}: the replica does not open: wrong passphrase\n",
    )
    unset = phone("outbox", "--file", str(file), pin=None)
    assert (unset.returncode, unset.stderr) == (
        1,
        "lianxin: the device file needs its PIN: set LIANXIN_PIN\n",
    )
    empty = phone("outbox", "--file", str(file), pin="")
    assert (empty.returncode, empty.stderr) == (1, "lianxin: an empty PIN protects nothing\n")
