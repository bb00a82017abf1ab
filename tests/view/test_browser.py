"""``tirl view`` in a real browser: Debian's chromium driven by Selenium (system chromedriver).

Skipped, with the reason, only when chromium / chromedriver / selenium are missing; CI
installs them (apt: chromium chromium-driver; pip: selenium via the test extra).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.view.fixture import make_eval_dir, make_train_run
from tirl.view.server import start_view

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
SHOT = os.environ.get("TIRL_VIEW_SCREENSHOT")  # a folder: screenshots are saved there to look at

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


class _Server:
    """``start_view`` on its own event loop in a thread (Selenium blocks the test's thread)."""

    def __init__(self, path: Path, compare: Path | None = None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.url = asyncio.run_coroutine_threadsafe(
            start_view(path, compare=compare), self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewb")
    return {"run": make_train_run(tmp / "run"), "a": make_eval_dir(tmp / "eval_a", 2),
            "b": make_eval_dir(tmp / "eval_b", 1)}


def _open(drv, url: str, view: str):
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(url)
    WebDriverWait(drv, 30).until(lambda d: d.execute_script("return document.body.dataset.ready") == view)


def _wait_ready(drv, view: str):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, 30).until(lambda d: d.execute_script("return document.body.dataset.ready") == view)


def _css(drv, sel):
    from selenium.webdriver.common.by import By

    return drv.find_elements(By.CSS_SELECTOR, sel)


def test_overview_trajectory_and_filter(browser, dirs):
    from selenium.webdriver.support.ui import Select

    srv = _Server(dirs["run"])
    try:
        _open(browser, srv.url + "#/overview", "overview")
        assert not _css(browser, "#error"), _css(browser, "#error")[0].text
        titles = [c.get_attribute("data-title") for c in _css(browser, ".chart")]
        assert titles == ["Reward", "Held-out accuracy", "Tool-error ratio in positive traces",
                          "Response length (tokens)", "Time split per step (s)"]
        # the reward chart draws reward and pass_rate over the 3 RL steps
        reward = _css(browser, '.chart[data-title="Reward"] path.series')
        assert [p.get_attribute("data-key") for p in reward] == ["reward", "pass_rate"]
        assert "Held-out accuracy went from 0.25 to 0.75" in _css(browser, "#report")[0].text
        assert 'name = "viewfixture"' in _css(browser, "#config")[0].text
        if SHOT:
            browser.save_screenshot(str(Path(SHOT) / "overview.png"))

        # the browser lists all 24 records; open the one with a parse error
        _open(browser, srv.url + "#/browse?src=a%3Atrajectories%2Ftrain.jsonl", "browse")
        assert "24 matching" in _css(browser, "#status")[0].text
        assert len(_css(browser, "#rows tr.row")) == 24
        row = [r for r in _css(browser, "#rows tr.row") if r.get_attribute("data-i") == "22"][0]
        row.click()
        _wait_ready(browser, "traj")
        answer = _css(browser, "#answer")[0].text
        assert "correct" in answer and "dropped by RoC" in answer
        assert _css(browser, "code.final")[0].text == "42" and _css(browser, "code.gold")[0].text == "42"
        turns = _css(browser, "#turns .turn")
        assert len(turns) == 2
        assert "Let me compute for p1." in turns[0].text and "<tool_call>" not in turns[0].text
        # highlighted code and the tool responses with their status
        assert [k.text for k in _css(browser, "#turns .code .kw")][:1] == ["print"]
        badges = [b.text for b in _css(browser, "#turns .call .badge")]
        assert "ok" in badges and "parse_error" in badges
        assert "14" in _css(browser, "#turns .stdout")[0].text
        kv = _css(browser, ".kv")[0].text
        assert "weights version 2" in kv and "advantage 0.5" in kv and "RoC penalty 0" in kv
        # per-token colouring: 16 tokens, 3 inserted by the loop, others shaded by log-prob
        toks = _css(browser, "#tokens span")
        assert len(toks) == 16 and sum(t.get_attribute("class") == "tool" for t in toks) == 3
        assert toks[1].get_attribute("title").startswith("logprob -0.05")
        Select(_css(browser, "#token-mode")[0]).select_by_value("entropy")
        assert _css(browser, "#tokens span")[1].get_attribute("title") == "entropy 0.1"
        if SHOT:
            browser.save_screenshot(str(Path(SHOT) / "trajectory.png"))

        # apply a filter through the form: incorrect and dropped at step 2 = sample 3 of p0 and p1
        browser.back()
        _wait_ready(browser, "browse")
        form = _css(browser, "#filters")[0]
        Select(form.find_element("name", "step")).select_by_value("2")
        Select(form.find_element("name", "correct")).select_by_value("false")
        Select(form.find_element("name", "kept")).select_by_value("false")
        _css(browser, "#apply")[0].click()
        _wait_ready(browser, "browse")
        rows = _css(browser, "#rows tr.row")
        assert "2 matching" in _css(browser, "#status")[0].text and len(rows) == 2
        assert all("incorrect" in r.text and "dropped by RoC" in r.text and "timeout" in r.text for r in rows)

        # the tool-error filter and text search
        _open(browser, srv.url + "#/browse?src=a%3Atrajectories%2Ftrain.jsonl&error=parse_error", "browse")
        assert [r.get_attribute("data-i") for r in _css(browser, "#rows tr.row")] == ["22"]
        _open(browser, srv.url + "#/browse?src=a%3Atrajectories%2Ftrain.jsonl&q=unique-p0-s2-j1", "browse")
        assert [r.get_attribute("data-i") for r in _css(browser, "#rows tr.row")] == ["9"]

        # a problem's group: all 4 samples, which were kept
        _open(browser, srv.url + "#/group?src=a%3Atrajectories%2Ftrain.jsonl&problem=p0&step=1", "group")
        cards = _css(browser, "#group .gcard")
        assert len(cards) == 4
        assert ["kept by RoC" in c.text for c in cards] == [True, True, False, False]
        if SHOT:
            browser.save_screenshot(str(Path(SHOT) / "group.png"))
    finally:
        srv.close()


def test_same_problem_across_two_eval_outputs(browser, dirs):
    srv = _Server(dirs["a"], compare=dirs["b"])
    try:
        _open(browser, srv.url + "#/compare?a=a%3Asamples%2Fbench.jsonl&b=b%3Asamples%2Fbench.jsonl&problem=q2",
              "compare")
        cols = _css(browser, "#compare > div")
        assert len(cols) == 2
        assert "2/3 correct" in cols[0].text and "1/3 correct" in cols[1].text
        assert len(cols[0].find_elements("css selector", ".gcard.is-correct")) == 2
        # an eval sample opens with its answer against the gold
        cols[1].find_elements("css selector", ".gcard a")[2].click()
        _wait_ready(browser, "traj")
        assert _css(browser, "code.final")[0].text == "8" and _css(browser, "code.gold")[0].text == "7"
        assert "incorrect" in _css(browser, "#answer")[0].text
        if SHOT:
            browser.save_screenshot(str(Path(SHOT) / "compare.png"))
    finally:
        srv.close()
