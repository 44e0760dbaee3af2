"""``varattn serve`` in a real browser: headless Chromium driven by Selenium against a real uvicorn server.

It loads the page, translates a sentence with a reference beside a second run, hovers a heatmap cell and
checks the number shown is ``varattn align``'s for the same pair, moves to thresholded links, and asks a VQA
question about an uploaded image. It needs the ``serve`` and ``test`` extras and the system's ``chromium``
and ``chromedriver`` (Debian: ``apt-get install chromium chromium-driver``; nothing is downloaded), and skips
saying which is missing. ``VARATTN_SCREENSHOTS=DIR`` saves a screenshot of each view there, and
``VARATTN_SCREENSHOT_RUN=RUN`` shows that translation run (a trained one draws a better picture) in place of the
tiny ``var-enum`` run, ``VARATTN_SCREENSHOT_COMPARE=RUN`` that run in place of the tiny ``soft`` one beside it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import varattn

from conftest import VQA_TINY, need

need("starlette", "serve")
uvicorn = need("uvicorn", "serve")
need("multipart", "serve")
need("selenium", "test")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).is_file()),
                    None)
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("the browser test needs the system's chromium and chromedriver "
                "(Debian: apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from varattn.serve.app import create_app  # noqa: E402
from varattn.serve.explore import load_runs  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    out = {"var-enum": Path(os.environ.get("VARATTN_SCREENSHOT_RUN") or tiny_run("var-enum", 3)),
           "soft": Path(os.environ.get("VARATTN_SCREENSHOT_COMPARE") or tiny_run("soft", 3))}
    try:
        need("easy_vqa", "vqa")
    except pytest.skip.Exception:
        return out
    from varattn.vqa.config import load_config
    from varattn.vqa.train import train

    os.environ.setdefault("VARATTN_CACHE", str(tmp_path_factory.getbasetemp() / "easy-vqa-cache"))
    cfg = load_config("easy", {"mode": "var-enum", "max_steps": 2, "batch_size": 16, "threads": 1, "device": "cpu",
                               "valid_batch_size": 16}, VQA_TINY)
    out["vqa"] = tmp_path_factory.mktemp("browser-vqa") / "vqa-run"
    train(cfg, out["vqa"], progress=False, tensorboard=False)
    return out


@pytest.fixture(scope="module")
def server(runs):
    """A real uvicorn server in a thread, on a free loopback port; its base URL."""
    app = create_app(load_runs(list(runs.values()), device="cpu"), allowed_hosts=["127.0.0.1", "localhost"])
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _shot(driver, name: str) -> None:
    folder = os.environ.get("VARATTN_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(Path(folder) / name))


def test_translate_hover_and_links_in_a_browser(server, browser, runs):
    wait = WebDriverWait(browser, 60)
    browser.get(server + "/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "nmt-run-a")).options) >= 2)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "nmt-example")).options) > 1)
    run_a = Select(browser.find_element(By.ID, "nmt-run-a"))
    run_a.select_by_value(next(o.get_attribute("value") for o in run_a.options if "(var-enum)" in o.text))
    Select(browser.find_element(By.ID, "nmt-run-b")).select_by_value(
        next(o.get_attribute("value") for o in run_a.options if "(soft)" in o.text))
    trained = varattn.load(runs["var-enum"], device="cpu")
    src_lines, tgt_lines = trained.valid_lines()
    src, ref = src_lines[1], tgt_lines[1]
    box = browser.find_element(By.ID, "nmt-src")
    box.clear()
    box.send_keys(src)
    browser.find_element(By.ID, "nmt-ref").send_keys(ref)
    eos = browser.find_element(By.ID, "nmt-eos-norm")
    eos.clear()
    eos.send_keys("3")  # a barely trained model would stop at once without it
    browser.find_element(By.ID, "nmt-go").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".column .pair[data-kind=hyp] td.cell")))
    columns = browser.find_elements(By.CSS_SELECTOR, "#nmt-results .column")
    assert len(columns) == 2  # two runs side by side
    first = columns[0]
    hypothesis = first.find_element(By.CSS_SELECTOR, ".translation").text
    expected = trained.translate([src], beam=5, eos_norm=3.0)[0]
    assert hypothesis == expected.text and expected.tokens
    exact = first.find_element(By.CSS_SELECTOR, ".pair[data-kind=hyp] table[data-method=exact]")
    cells = exact.find_elements(By.CSS_SELECTOR, "td.cell")
    assert len(cells) == len(expected.tokens) * len(src.split())
    assert len(first.find_elements(By.CSS_SELECTOR, ".pair[data-kind=hyp] table.heatmap")) == 3  # prior, q, exact
    assert len(columns[1].find_elements(By.CSS_SELECTOR, ".pair[data-kind=hyp] table.heatmap")) == 2  # soft: no q
    # hover a cell: the number shown is varattn align's for the same pair
    cell = cells[-2]
    ActionChains(browser).move_to_element(cell).perform()
    wait.until(lambda d: d.find_element(By.ID, "nmt-hover").get_attribute("data-method") == "exact")
    shown = float(browser.find_element(By.CSS_SELECTOR, "#nmt-hover .prob").text)
    t, s = int(cell.get_attribute("data-t")), int(cell.get_attribute("data-s"))
    aligned = trained.align([src], [expected.text], method="exact")[0]["matrix"]
    assert shown == pytest.approx(round(float(aligned[t, s]), 5), abs=1e-9)
    # the reference: scored, with its own heatmaps
    reference = first.find_element(By.CSS_SELECTOR, ".pair[data-kind=ref]")
    log_prob = trained.score([src], [ref])[0]["log_prob"]
    assert f"log p(y | x) = {log_prob:.3f}" in reference.find_element(By.CSS_SELECTOR, ".figures").text
    assert len(reference.find_elements(By.CSS_SELECTOR, "table[data-method=prior] td.cell")) == \
        len(ref.split()) * len(src.split())
    _shot(browser, "serve-translation.png")
    # links at a threshold: the server's links, re-fetched
    browser.find_element(By.ID, "nmt-use-threshold").click()
    wait.until(lambda d: "p > 0.3" in d.find_element(By.CSS_SELECTOR, "#nmt-results .links").text)
    first = browser.find_elements(By.CSS_SELECTOR, "#nmt-results .column")[0]  # drawn again
    linked = first.find_elements(By.CSS_SELECTOR, ".pair[data-kind=hyp] table[data-method=exact] td.cell.link")
    assert all(float(c.get_attribute("data-p")) > 0.3 for c in linked)
    # merging pieces into words keeps a table per method (the synthetic task has whole words: same size)
    browser.find_element(By.ID, "nmt-merge").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#nmt-results .column")[0]
               .find_elements(By.CSS_SELECTOR, ".pair[data-kind=hyp] table[data-method=exact] td.cell")) == len(cells)
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")


def test_vqa_upload_in_a_browser(server, browser, runs, tmp_path):
    if "vqa" not in runs:
        pytest.skip("the VQA view needs the vqa extra (pip install 'varattn[vqa]')")
    wait = WebDriverWait(browser, 60)
    browser.get(server + "/")
    wait.until(lambda d: d.find_element(By.ID, "tab-vqa").is_displayed())
    browser.find_element(By.ID, "tab-vqa").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#vqa-examples img")))
    browser.find_element(By.CSS_SELECTOR, "#vqa-examples img").click()  # an example first, then an upload
    from PIL import Image

    from varattn.vqa.easy import load_split

    picture = tmp_path / "upload.png"
    Image.fromarray(load_split("test", 1).pixels[0]).save(picture)
    browser.find_element(By.ID, "vqa-upload").send_keys(str(picture))
    question = browser.find_element(By.ID, "vqa-question")
    question.clear()
    question.send_keys("what color is the shape?")
    browser.find_element(By.ID, "vqa-go").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#vqa-results canvas")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#vqa-results canvas")) == 3  # prior, q, exact
    answers = browser.find_elements(By.CSS_SELECTOR, "#vqa-results .answers li")
    trained = varattn.load(runs["vqa"], device="cpu")
    top = trained.answer("what color is the shape?", image=str(picture), top=1)[0]
    assert answers[0].get_attribute("data-answer") == top[0]
    canvas = browser.find_element(By.CSS_SELECTOR, "#vqa-results canvas[data-method=exact]")
    ActionChains(browser).move_to_element(canvas).perform()
    wait.until(lambda d: "region" in d.find_element(By.ID, "vqa-hover").text)
    _shot(browser, "serve-vqa.png")
