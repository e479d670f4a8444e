"""The console in a real browser: sign in, the case list and a case page, languages."""

from tests.browser.conftest import screenshot, sign_in


def test_a_supervisor_signs_in_and_reads_the_case_list_and_a_case(demo, page):
    sign_in(page, demo, demo.supervisor, demo.supervisor_password)
    page.wait_for_url("**/console/cases")
    # The demo language is Chinese; switch to English for the assertions below.
    switch_language(page, "en")
    page.wait_for_selector("h1:has-text('Cases')")
    rows = page.locator("tbody tr")
    assert rows.count() >= 5
    assert page.locator("text=Late-night mahjong noise").count() == 1
    screenshot(page, "cases")

    page.click("a:has-text('Late-night mahjong noise')")
    page.wait_for_selector("h1:has-text('Late-night mahjong noise')")
    assert page.locator("text=Timeline").count() == 1
    # The two mediators' concurrent summaries are an open conflict, linked from the case.
    assert page.locator("a:has-text('summary')").count() == 1
    screenshot(page, "case")


def test_switching_the_language_changes_the_pages(demo, page):
    sign_in(page, demo, demo.supervisor, demo.supervisor_password)
    page.wait_for_url("**/console/cases")
    switch_language(page, "zh-CN")
    page.wait_for_selector("h1:has-text('案件')")
    assert page.locator("html[lang=zh-CN]").count() == 1
    switch_language(page, "en")
    page.wait_for_selector("h1:has-text('Cases')")


def switch_language(page, language):
    page.select_option("select[name=language]", language)
    page.click("form[action='/console/language'] button")


def test_wrong_passwords_stay_on_the_sign_in_page(demo, page):
    sign_in(page, demo, demo.supervisor, "not the password at all")
    assert page.url.endswith("/console/login")
    assert page.locator("[role=alert]").count() == 1
