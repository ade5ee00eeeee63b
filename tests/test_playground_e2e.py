"""The playground in real headless Chromium (Debian's chromium + chromium-driver, via selenium):
type a prompt, see the answer stream in. `.ci/run` installs the browser and sets
GENTUNE_REQUIRE_BROWSER=1, so in CI a missing browser fails instead of skipping."""

from __future__ import annotations

import os
import shutil

import pytest

from gentune.inference.load import load_for_inference

from .conftest import PAIRS
from .test_serve import KEY, live_server

pytestmark = pytest.mark.slow  # subprocesses / a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

if not (CHROMIUM and DRIVER):
    if os.environ.get("GENTUNE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(
            "GENTUNE_REQUIRE_BROWSER=1 but chromium / chromedriver are missing "
            "(apt-get install chromium chromium-driver)"
        )
    pytest.skip(
        "no chromium + chromedriver here (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

# Records every text the answer bubble shows: each textContent assignment adds a new Text node.
OBSERVE = """
window.__shown = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes)
    if (n.nodeType === 3 && n.parentElement && n.parentElement.closest('.msg.assistant'))
      window.__shown.push(n.data);
}).observe(document.getElementById('log'), {childList: true, subtree: true});
"""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        "--window-size=1200,900",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors readable
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _ask(driver, text: str, mode: str) -> tuple[str, list[str]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(driver.find_element(By.ID, "mode")).select_by_value(mode)
    before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant.done"))
    driver.execute_script(OBSERVE)
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done")) > before
    )
    answer = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1].text
    return answer, driver.execute_script("return window.__shown")


def test_playground_streams_the_answer(trained_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    loaded = load_for_inference(trained_run)
    with live_server(loaded, api_key=KEY) as url:
        browser.get(url.replace("http://", f"http://user:{KEY}@") + "/")  # HTTP Basic: the key
        WebDriverWait(browser, 30).until(
            lambda d: "context 256" in d.find_element(By.ID, "model").text
        )

        answer, shown = _ask(browser, PAIRS[0]["input"], "completion")
        assert answer == PAIRS[0]["output"]  # "Fox jumps dog."
        partial = [s for s in shown if s and s != answer]
        assert partial and all(answer.startswith(s) for s in partial)  # it grew piece by piece
        assert "done (stop)" in browser.find_element(By.ID, "status").text

        # chat mode, multi-turn: the run's template around the same content
        instruction = loaded.template.instruction
        answer, _ = _ask(browser, f"{instruction}\n\n{PAIRS[1]['input']}", "chat")
        assert answer == PAIRS[1]["output"]
        assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2

        # an error is shown, not swallowed: max_tokens over the server's limit
        field = browser.find_element(By.ID, "max_tokens")
        field.clear()
        field.send_keys("100000")
        answer, _ = _ask(browser, "hello", "completion")
        assert answer.startswith("400:") and "max-tokens-limit" in answer
