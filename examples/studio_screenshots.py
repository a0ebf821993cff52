"""Screenshots of the studio's pages (sign-in, pairwise, ranking, thumbs, rating, admin) for the README.

Builds a studio in a temporary directory (an admin, two annotators, one project of each kind,
some labels so the admin page has agreement to show), serves it on loopback and drives a headless
Chromium through the pages with Playwright:

    python examples/studio_screenshots.py [--out docs/img] [--chromium /usr/bin/chromium]

Writes ``studio_login.png``, ``studio_pairwise.png``, ``studio_ranking.png``, ``studio_thumbs.png``,
``studio_rating.png`` and ``studio_admin.png``. Needs ``pip install -e ".[studio]"`` and a Chromium
binary (Playwright's own browser download is not used).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time

GUIDELINES = """Pick the response that is more helpful AND harmless.

- Refusing a harmful request politely is good.
- Prefer factual, specific answers over vague ones.
- Tie: both equally good. Both bad: neither is acceptable.
- Strength 1-3: how clear the preference is."""

PAIRS = [
    ("How do I get rid of the wasps' nest under my porch roof?",
     "Wait until dusk, when the wasps are inside and calm. Wear long sleeves and gloves, spray a wasp "
     "and hornet aerosol into the nest entrance from a few metres away, and leave it for a day before "
     "knocking it down. If anyone in the house is allergic, call a pest-control service instead.",
     "Just knock it down with a broom, they won't do anything."),
    ("What's a good way to get back at a coworker who embarrassed me?",
     "I'd rather not help with getting back at someone. If it keeps happening, talk to them privately "
     "or to your manager; writing down what happened and when helps.",
     "Spread a rumour about them so everyone knows what they're really like."),
    ("Can you explain what a mortgage is in two sentences?",
     "A mortgage is a loan used to buy property, where the property itself secures the loan. You repay "
     "it with interest in monthly instalments over many years, and the lender can take the property if "
     "you stop paying.",
     "It's a kind of bank thing for houses."),
]
RANK = [("Suggest a name for a small bakery in a seaside town.",
         ["The Salty Crust", "Bakery 1", "Harbour Loaf & Co.", "Tide and Rye"])]
THUMBS = [("Write a haiku about autumn rain.",
           ["Cold rain on red leaves\nthe gutter hums a low song\nlamps come on early",
            "Rain is wet. Leaves fall. It is autumn now, yes."])]
RATING = [("Summarise: 'The meeting moved from Tuesday to Thursday because the room was booked.'",
           ["The meeting is now on Thursday, since the room was taken on Tuesday.",
            "There is a meeting."])]


def build(directory: str) -> dict:
    from rlhfkit.studio import db

    engine = db.open_db(directory)
    tokens = {"lead": db.add_user(engine, "lead", admin=True)}
    for name in ("ana", "ben"):
        tokens[name] = db.add_user(engine, name)
    team = ["ana", "ben"]
    db.create_project(engine, "hh-harmless", "pairwise",
                      [{"prompt": p, "responses": [c, r]} for p, c, r in PAIRS] * 4,
                      guidelines=GUIDELINES, overlap=2, assign=team, seed=3)
    db.create_project(engine, "bakery-names", "ranking", [{"prompt": p, "responses": r} for p, r in RANK],
                      guidelines="Rank the names from best (top) to worst. Drag a card, or select it with "
                      "j/k and type its rank. Ties are allowed.", assign=team)
    db.create_project(engine, "haiku", "thumbs", [{"prompt": p, "responses": r} for p, r in THUMBS],
                      guidelines="Thumbs up: a real haiku (5-7-5, an image of the season).", assign=team)
    db.create_project(engine, "summaries", "rating", [{"prompt": p, "responses": r} for p, r in RATING],
                      guidelines="1 = useless, 4 = acceptable, 7 = perfect summary.", assign=team)
    # labels on the pairwise project so the admin page has progress and agreement to show
    p = db.get_project(engine, "hh-harmless")
    for who, wrong_at in (("ana", {5}), ("ben", {2, 7})):
        user = db.user_for_token(engine, tokens[who])
        for k in range(9):
            it = db.next_item(engine, "hh-harmless", user)["item"]
            good = PAIRS[it["position"] % len(PAIRS)][1]
            pick = it["responses"].index(good)
            if k in wrong_at:
                pick = 1 - pick
            db.add_label(engine, p, it["id"], user, {"choice": "AB"[pick], "strength": 1 + k % 3})
    engine.dispose()
    return tokens


@contextlib.contextmanager
def serving(directory: str):
    import uvicorn

    from rlhfkit.studio import db
    from rlhfkit.studio.server import create_app

    engine = db.open_db(directory)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", access_log=False))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(10)
        engine.dispose()


def shoot(url: str, tokens: dict, out: str, chromium: str) -> list[str]:
    from playwright.sync_api import expect, sync_playwright

    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
        page = ctx.new_page()

        def save(name):
            path = os.path.join(out, f"studio_{name}.png")
            page.screenshot(path=path, full_page=True)
            written.append(path)

        page.set_viewport_size({"width": 1280, "height": 320})
        page.goto(url + "/")
        page.fill("#token", tokens["ana"])
        save("login")
        page.set_viewport_size({"width": 1280, "height": 760})
        page.click("#login-button")
        expect(page.locator("#projects-section")).to_be_visible()

        page.goto(url + "/label?project=hh-harmless")
        expect(page.locator("#item")).to_be_visible()
        page.keyboard.press("Shift+Digit2")
        texts = page.locator("#responses .response-text").all_text_contents()
        page.fill("#rationale", f"{'AB'[texts.index(PAIRS[0][1])]} gives safe, concrete steps.")
        save("pairwise")

        page.goto(url + "/label?project=bakery-names")
        expect(page.locator("#item")).to_be_visible()
        cards = page.locator("#responses .response")
        cards.nth(2).drag_to(cards.nth(0))
        save("ranking")

        page.goto(url + "/label?project=haiku")
        expect(page.locator("#item")).to_be_visible()
        page.keyboard.press("ArrowUp")  # the first response up, then the second down
        page.keyboard.press("ArrowDown")
        save("thumbs")

        page.goto(url + "/label?project=summaries")
        expect(page.locator("#item")).to_be_visible()
        page.keyboard.press("2")  # the first response 2, the second 6
        page.keyboard.press("6")
        save("rating")

        page.context.clear_cookies()
        page.goto(url + "/")
        page.fill("#token", tokens["lead"])
        page.click("#login-button")
        expect(page.locator("#projects-section")).to_be_visible()
        page.goto(url + "/admin")
        expect(page.locator("#agreement td").first).to_be_visible()
        save("admin")
        browser.close()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "img"))
    ap.add_argument("--chromium", default=os.environ.get("RLHFKIT_CHROMIUM") or shutil.which("chromium")
                    or shutil.which("chromium-browser"))
    a = ap.parse_args()
    if not a.chromium:
        raise SystemExit("no Chromium binary: apt-get install chromium, or pass --chromium PATH")
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokens = build(tmp)
        with serving(tmp) as url:
            for path in shoot(url, tokens, a.out, a.chromium):
                print(os.path.normpath(path))


if __name__ == "__main__":
    main()
