"""The console in Chinese: every message extracted from server/console is translated.

The messages are extracted here with Babel's API and the very mapping
`pybabel extract` reads (server/console/babel.cfg), so a string added to a
template or marked with `_()` in a module fails this test until it is in
messages.pot and translated in zh_CN/LC_MESSAGES/messages.po (README.md,
"Translating the console"). Values that templates translate as they come
(`_(case.status)`) are listed once below from their sources, so a new status
or role fails here too until server/console/vocabulary.py names it.
"""

import ast
import re
import typing
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

import server.console
from schemas import Add
from schemas.changes import ChangeResult
from schemas.records import (
    AGREEMENT_STATUS,
    CASE_STATUS,
    RECORD_TYPES,
    WARNING_STATUS,
    EarlyWarning,
    Party,
)
from server.storage import people
from server.storage.directory import ROLES
from tests.server.test_app import GONGSHU
from tests.server.test_console import csrf_of, sign_in, supervisor

CONSOLE = Path(server.console.__file__).parent
LOCALE = CONSOLE / "locale"
COMMENT_TAGS = ("dynamic:",)  # `pybabel extract -c dynamic:`


def _literal(struct: type, field: str) -> tuple[str, ...]:
    """The values a `Literal`-typed field of a msgspec Struct may take."""
    return typing.get_args(typing.get_type_hints(struct)[field])


# What templates pass through `_()` from data, from where each comes.
DYNAMIC = {
    "case status": tuple(CASE_STATUS.transitions),
    "warning status": tuple(WARNING_STATUS.transitions),
    "agreement status": tuple(AGREEMENT_STATUS.transitions),
    "role": ROLES,
    "party role": _literal(Party, "role"),
    "warning severity": _literal(EarlyWarning, "severity"),
    "record type": tuple(RECORD_TYPES),
    # `people.digests` indexes these kinds; the strong ones are also `people.STRONG`.
    "repeat matched by": ("name", *people.STRONG),
    # `CodeRow.state` in server/console/admin.py.
    "enrolment code state": ("unused", "used", "expired"),
    "re-applied change outcome": _literal(ChangeResult, "status"),
}
# %(name)s, %s, %d and {name}: what a translation must keep exactly.
PLACEHOLDER = re.compile(r"%\(\w+\)[sdif]|%[sdif]|\{[^{}]*\}")


def _extracted() -> dict[str, list[str]]:
    """Every msgid in server/console, with where it is, as `pybabel extract` finds them."""
    with (CONSOLE / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)
    found: dict[str, list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(CONSOLE), method_map, options_map, comment_tags=COMMENT_TAGS
    ):
        msgid = message[0] if isinstance(message, tuple) else message
        found.setdefault(msgid, []).append(f"{filename}:{lineno}")
    return found


def _catalog(path: Path) -> Catalog:
    with path.open("rb") as po:
        return read_po(po, locale="zh_CN")


@pytest.fixture(scope="module")
def extracted() -> dict[str, list[str]]:
    return _extracted()


@pytest.fixture(scope="module")
def chinese() -> Catalog:
    return _catalog(LOCALE / "zh_CN" / "LC_MESSAGES" / "messages.po")


def _translated(catalog: Catalog, msgid: str) -> bool:
    message = catalog.get(msgid)
    if message is None or message.fuzzy:
        return False
    strings = message.string if isinstance(message.string, tuple) else (message.string,)
    return all(s.strip() for s in strings)


def test_every_extracted_message_is_translated(extracted, chinese):
    assert len(extracted) > 200  # the extraction found the console, not an empty folder
    untranslated = {m: where for m, where in extracted.items() if not _translated(chinese, m)}
    assert untranslated == {}


def test_the_template_is_current(extracted):
    """messages.pot holds what extraction finds now: re-extract after changing messages."""
    template = _catalog(LOCALE / "messages.pot")
    assert {m.id for m in template if m.id} == set(extracted)


def test_no_translation_is_fuzzy_or_empty(chinese):
    assert not chinese.fuzzy  # a fuzzy header would be dropped when compiled
    assert [m.id for m in chinese if m.id and (m.fuzzy or not m.string)] == []


@pytest.mark.parametrize("kind", DYNAMIC)
def test_values_translated_as_they_come_are_in_the_catalog(kind, extracted, chinese):
    values = DYNAMIC[kind]
    assert values
    # Named in vocabulary.py, so that `pybabel update` keeps them, and translated.
    assert [v for v in values if v not in extracted] == []
    assert [v for v in values if not _translated(chinese, v)] == []


def test_translations_keep_every_placeholder(chinese):
    for message in chinese:
        if not message.id or not message.string:
            continue
        wanted = sorted(PLACEHOLDER.findall(message.id))
        assert sorted(PLACEHOLDER.findall(message.string)) == wanted, message.id
        if "%(" in message.id:  # templates fill these with `| format(...)`
            names = re.findall(r"%\((\w+)\)", message.id)
            message.string % dict.fromkeys(names, 1)


def test_no_message_is_marked_inside_an_f_string():
    """Extraction cannot see `_()` inside an f-string before Python 3.12: mark it outside."""
    hidden = []
    for module in sorted(CONSOLE.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if not isinstance(node, ast.JoinedStr):
                continue
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Call)
                    and isinstance(inner.func, ast.Name)
                    and inner.func.id == "_"
                ):
                    hidden.append(f"{module.name}:{inner.lineno}")
    assert hidden == []


def _text(html: str) -> str:
    """What a reader sees of an HTML fragment: its text, tags dropped."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _first(tag: str, page: str) -> str:
    found = re.search(rf"<{tag}\b[^>]*>(.*?)</{tag}>", page, re.DOTALL)
    assert found, f"no <{tag}> in the page"
    return _text(found.group(1))


def test_a_supervisor_reads_the_console_in_chinese(office):
    sun = office.enroll("mediator")
    sun.push([sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})])
    chen = supervisor(office)
    assert sign_in(office, chen).status_code == 303
    csrf = csrf_of(office.http.get("/console/cases"))

    def choose(language):
        answer = office.http.post(
            "/console/language",
            data={"csrf": csrf, "language": language, "next": "/console/cases"},
            follow_redirects=False,
        )
        assert answer.status_code == 303
        return office.http.get("/console/cases")

    english = choose("en")
    assert _first("h1", english.text).startswith("Cases")
    page = choose("zh-CN")
    assert page.status_code == 200 and '<html lang="zh-CN">' in page.text
    assert _first("h1", page.text).startswith("案件")
    assert '<span class="pill">新收</span>' in page.text  # the case's status, "new"
    nav = _first("nav", page.text)
    assert "案件" in nav and "预警" in nav and "统计" in nav
    assert not re.search("[A-Za-z]", nav), nav
    # Every page of the menu is headed in Chinese.
    for path in re.findall(r'<a href="(/console/[^"?#]+)"', page.text.split("</nav>")[0]):
        heading = _first("h1", office.http.get(path).text)
        assert heading and not re.search("[A-Za-z]", heading), (path, heading)


def test_a_case_page_in_chinese_names_statuses_roles_and_parties(office):
    sun = office.enroll("mediator")
    sun.push(
        [
            sun.change("party", "p-1", {"name": "Li Hua", "role": "respondent"}),
            sun.change(
                "case",
                "k-1",
                {"title": "Drains", "location": GONGSHU, "status": "assigned"},
                [Add(field="parties", value="p-1")],
            ),
        ]
    )
    chen = supervisor(office)
    sign_in(office, chen)
    page = office.http.get("/console/cases/k-1").text
    assert '<span class="pill">已分派</span>' in page
    assert "被反映人" in page and "信访干部" in page
