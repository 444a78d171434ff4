"""The server's own page (GET /) in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``make setup``, driven by selenium): type a question, see
the streamed answer; generate an image and see it, with its seed; see an error.  Writes the
README's screenshot when MOBILEO_SCREENSHOT names a file."""

import os
import shutil

import pytest

import fastapi  # noqa: F401  (the server extra)

from test_server import start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
# make setup installs them; in CI their absence is a failure, never a quiet skip
if os.environ.get("CI") and not (CHROMIUM and DRIVER):
    raise RuntimeError("chromium and chromium-driver are missing: make setup installs them (apt-get)")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (make setup)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        opts.add_argument(arg)
    # without make's LD_PRELOAD of OpenBLAS (Chromium's GPU process will not start with it)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    driver = webdriver.Chrome(service=Service(DRIVER, env=env), options=opts)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    s = start_server(tmp_path_factory)
    yield s
    stop_server(s)


def test_the_page_chats_and_generates(browser, page_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(page_server.url.removesuffix("/v1") + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").text == "· demo")
    # chat: type a question, Enter sends, the answer streams in
    box = browser.find_element(By.ID, "question")
    box.send_keys("What is in the picture?", Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "chat-stats").text.endswith(" s"))
    answers = browser.find_elements(By.CSS_SELECTOR, "#transcript .assistant")
    assert len(answers) == 1 and answers[0].text.strip()
    assert browser.find_element(By.ID, "error").text == ""
    assert int(browser.find_element(By.ID, "chat-stats").text.split()[0]) >= 1  # streamed pieces
    # an image: prompt, a few steps, a seed; the image and its settings appear
    browser.find_element(By.ID, "prompt").send_keys("a red cup")
    browser.find_element(By.ID, "size").clear()
    browser.find_element(By.ID, "size").send_keys("64x64")
    browser.find_element(By.ID, "steps").send_keys("2")
    browser.find_element(By.ID, "seed").send_keys("7")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#images img"))
    img = browser.find_element(By.CSS_SELECTOR, "#images img")
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    assert wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)) == 64
    assert "seed 7" in browser.find_element(By.CSS_SELECTOR, "#images figcaption").text
    if os.environ.get("MOBILEO_SCREENSHOT"):
        browser.save_screenshot(os.environ["MOBILEO_SCREENSHOT"])
    # an error is shown, not swallowed
    browser.find_element(By.ID, "size").clear()
    browser.find_element(By.ID, "size").send_keys("big")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert "'size'" in browser.find_element(By.ID, "error").text


def test_the_page_fetches_nothing_from_outside(page_server):
    import httpx

    r = httpx.get(page_server.url.removesuffix("/v1") + "/")
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no outside link
