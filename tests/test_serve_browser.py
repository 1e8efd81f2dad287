"""The chat page in a real headless browser (Debian's Chromium driven by Selenium): ask, read, rate.

Chromium and its driver are installed with apt when missing (the tests run as root in rqa's environment); when
that is impossible the test is skipped with the reason. Selenium is pointed at the system chromedriver: its own
driver manager would try to download one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from serve_helpers import KEY, questions, shared_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def ensure_chromium() -> str | None:
    """None when Chromium and chromedriver are there (installing them if needed), else why they are not."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "Chromium is not installed and apt-get cannot install it here (needs root on Debian)"
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    try:
        done = subprocess.run(install, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=300)
            done = subprocess.run(install, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"installing Chromium failed: {error}"
    if done.returncode != 0 or not Path(CHROMEDRIVER).exists():
        return f"installing Chromium failed: {done.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install rqa[dev])")
    problem = ensure_chromium()
    if problem:
        pytest.skip(problem)
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rqa-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_ask_see_the_answer_and_its_sources_then_rate_it(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    server = shared_server()
    browser.get(server.url + "/")
    browser.execute_script("sessionStorage.setItem('rqa-api-key', arguments[0])", KEY)  # --api_key_env is on
    browser.refresh()
    question = questions()[0]

    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "ask").click()
    wait = WebDriverWait(browser, 180)
    answer = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".turn .answer:not(.pending)")))
    assert "Error" not in answer.text and answer.text.strip()
    assert browser.find_element(By.CSS_SELECTOR, ".turn .question").text == question
    sources = browser.find_elements(By.CSS_SELECTOR, ".turn .source")
    assert len(sources) == 4 and all(s.find_element(By.CSS_SELECTOR, ".source-text").text for s in sources)

    browser.find_element(By.CSS_SELECTOR, ".turn .comment").send_keys("cites the right page")
    browser.find_element(By.CSS_SELECTOR, ".turn .thumb-up").click()
    wait.until(ready.text_to_be_present_in_element((By.CSS_SELECTOR, ".feedback-status"), "feedback saved"))

    rows = [json.loads(line) for line in server.feedback.read_text().splitlines()]
    row = next(r for r in reversed(rows) if r["question"] == question)
    assert row["rating"] == "up" and row["comment"] == "cites the right page"
    assert row["answer"] == answer.text and row["model"] == "rqa-embedded"
    assert len(row["passages"]) == 4 and row["passages"][0]["page_content"]
