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
    # Only enrolling makes a file, locked with the PIN, even when the office is not reached.
    offline = phone("enroll", "--file", str(file), "--server", "http://127.0.0.1:9", "CODE")
    assert offline.returncode == 1
    assert offline.stdout.startswith("lianxin: cannot reach the office at http://127.0.0.1:9")
    assert file.stat().st_mode & 0o777 == 0o600  # the holder's alone
    assert says("outbox", "--file", str(file)) == ""
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


def test_a_phone_on_the_command_line_says_what_is_wrong_without_a_traceback(server, tmp_path):
    informant = server.user("Ma", "informant", "Hangzhou/Gongshu")
    file = ["--file", str(tmp_path / "ma.db"), "--server", server.url]
    assert "Warnings from this device are signed " in says("enroll", *file, server.code(informant))

    def refused(*args: str) -> str:
        done = phone(*args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        return done.stdout.strip()

    assert "enrolled as dev-" in refused("enroll", *file, server.code(informant))
    typo = tmp_path / "ma2.db"  # a mistyped name makes no empty device
    assert refused("edit", "--file", str(typo), "case", "k-1", "title=x").startswith(
        "lianxin: no device file"
    )
    assert not typo.exists()
    notes = tmp_path / "notes.db"
    notes.write_text("shopping list\n" * 100)
    assert "is not a device file" in refused("outbox", "--file", str(notes))
    assert "cannot open" in refused("enroll", "--file", str(tmp_path / "no" / "x.db"), "CODE")
