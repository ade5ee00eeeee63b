"""explain.html in real headless Chromium: tokens rendered with their data, the hover shows
both models' alternatives, no console errors."""

import pytest

from gentune.config import ExplainSettings
from gentune.trust.explain import explain

from .conftest import write_jsonl
from .test_explain import HELD
from .test_playground_e2e import browser  # noqa: F401  (the fixture; skips without chromium)

pytestmark = pytest.mark.slow


def test_the_page_renders_in_a_browser(trained_run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains

    held = write_jsonl(tmp_path / "held.jsonl", HELD)
    settings = ExplainSettings(run=trained_run, data=str(held), out=str(tmp_path / "x"), limit=3,
                               bootstrap=50)  # fmt: skip
    explain(settings, log=lambda *_: None)
    browser.get((tmp_path / "x" / "explain.html").as_uri())
    tokens = browser.find_elements("css selector", ".tok")
    assert tokens and all(t.get_attribute("data-info") for t in tokens)
    ActionChains(browser).move_to_element(tokens[0]).perform()
    tip = browser.find_element("id", "tip")
    assert tip.is_displayed() and "base rank" in tip.text and "tuned" in tip.text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
