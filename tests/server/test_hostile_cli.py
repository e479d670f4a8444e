"""`lianxin agreement export --out` cannot be aimed at the office itself (issue 8, point 5)."""

import pytest

from server.cli import main


@pytest.mark.parametrize(
    "out",
    [
        "lianxin.db",
        "keys/data-keys.db",
        "office-keys.json",
        "../data/lianxin.db",
        "sub/../lianxin.db",
    ],
)
def test_an_export_into_the_office_folder_is_refused_and_writes_nothing(tmp_path, capsys, out):
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "lianxin.db").write_bytes(b"the store")
    target = data / out
    code = main(["--data", str(data), "agreement", "export", "a-1", "--out", str(target)])
    assert code == 1
    assert "inside the office's folder" in capsys.readouterr().out
    assert (data / "lianxin.db").read_bytes() == b"the store"
    assert not (data / "office-keys.json").exists()
    assert not (data / "keys" / "data-keys.db").exists()


def test_an_export_over_an_existing_file_or_link_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "bundle.json"
    link.symlink_to(data / "lianxin.db")  # a link into the office, dangling for now
    for out in (precious, link):
        code = main(["--data", str(data), "agreement", "export", "a-1", "--out", str(out)])
        assert code == 1
    assert precious.read_text() == "keep me"
    assert not (data / "lianxin.db").exists()
    printed = capsys.readouterr().out
    assert "precious.txt exists" in printed
