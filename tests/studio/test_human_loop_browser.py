"""One round of ``online-dpo --labeller studio`` whose human is a real headless Chromium driven by
Playwright: it signs in with its token on the start page, waits for the round's project to be
listed, opens it and answers every pairwise item with the keyboard (1 / 2 for the longer
response, t when both are as long); the trainer trains on exactly the pairs those keys imply."""

import os
import threading

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.path.exists("/usr/bin/chromium"):
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

from studio_helpers import live_server  # noqa: E402
from test_human_loop import config, expected_pairs, record_pairs  # noqa: E402

from rlhfkit.studio import db  # noqa: E402
from rlhfkit.train import online_dpo  # noqa: E402


def test_browser_plays_the_human_for_one_round(tiny_dir, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    directory = str(tmp_path / "studio")
    engine = db.open_db(directory)
    token = db.add_user(engine, "human")
    seen = record_pairs(monkeypatch)
    cfg = config(tiny_dir, tmp_path / "run", directory, kind="pairwise", timeout_s=300.0)
    cfg.rounds = 1
    failure: list = []
    logs: list = []

    def train():
        try:
            online_dpo.run(cfg, log=logs.append)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            failure.append(e)

    keys = []
    with live_server(engine) as url, sync_playwright() as pw:
        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#token", token)
            page.click("#login-button")
            page.wait_for_selector("#projects-section:not([hidden])")
            link = page.locator("#projects a", has_text="od-round-0001")
            for _ in range(600):  # the round's project appears once its samples are drawn
                if link.count():
                    break
                page.wait_for_timeout(200)
                page.reload()
                page.wait_for_selector("#projects-section:not([hidden])")
            link.first.click()
            page.wait_for_selector("#progress:has-text('of 4 labelled by you')")
            for k in range(4):
                page.wait_for_selector("#item:not([hidden]) .response-text")
                texts = page.locator("#responses .response-text").evaluate_all("els => els.map(e => e.textContent)")
                assert len(texts) == 2
                key = "1" if len(texts[0]) > len(texts[1]) else "2" if len(texts[1]) > len(texts[0]) else "t"
                page.keyboard.press(key)
                keys.append(key)
                page.wait_for_selector(f"#progress:has-text('{k + 1} of 4 labelled by you')")
            page.wait_for_selector("#finished:not([hidden])")
            page.screenshot(path=str(tmp_path / "label-done.png"))
        finally:
            browser.close()
            trainer.join(300)
    assert not trainer.is_alive() and not failure, failure
    _, items, labels = db.project_labels(engine, "od-round-0001")
    assert len(labels) == 4 and {lab["user"] for lab in labels} == {"human"}
    assert sorted(seen[0]) == sorted(expected_pairs(engine, "od-round-0001"))
    assert len(seen[0]) == sum(k != "t" for k in keys) > 0
    assert (tmp_path / "run" / "final").is_dir()
    engine.dispose()
