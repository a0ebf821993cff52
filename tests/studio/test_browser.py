"""The studio's pages in a real headless Chromium (Playwright), against a real ``rlhfkit studio
serve`` on loopback: sign-in with a token, pairwise labels by keyboard and mouse, ranking by drag
and keys, thumbs, undo, a reload that resumes at the right item, the admin page's agreement after
a second annotator, the stored labels, hostile model text shown as text, and the export training
``rlhfkit rm / dpo / kto``.

Needs the ``playwright`` package and a Chromium binary (``RLHFKIT_CHROMIUM``, else ``chromium`` /
``chromium-browser`` on PATH; Debian's package is what CI installs); without them it skips."""

import contextlib
import io
import json
import math
import os
import shutil
import sqlite3

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the studio's optional packages are not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                               "(pip install playwright; its own browser download is not needed)")
CHROMIUM = os.environ.get("RLHFKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no Chromium binary (apt-get install chromium, or set "
                                "RLHFKIT_CHROMIUM to its path)")

from studio_helpers import start_subprocess_server  # noqa: E402

from conftest import train_losses  # noqa: E402
from rlhfkit.cli import main  # noqa: E402

expect = sync_api.expect
N_PAIRS = 6
XSS_PROMPT = "Repeat: <b>bold</b> <script>alert('prompt')</script>"
XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]
XSS_GUIDE = "Guide <img src=x onerror=alert(3)> & <i>tags</i>"


def cli(*argv) -> str:
    """``rlhfkit studio ARGV`` in this process; its stdout (exit status 0 asserted)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["studio", *argv]) == 0
    return out.getvalue()


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def pairs(n):
    return [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
            for i in range(n)]


RANK_ROWS = [{"prompt": f"Name colour {i}.", "completions": [f"red {i}", f"green {i}", f"blue {i}"],
              "scores": [3, 2, 1]} for i in range(3)]
THUMB_ROWS = [{"prompt": f"Greet {i}.", "chosen": f"Hello {i}!", "rejected": f"Go away {i}."} for i in range(2)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A served studio (admin 'boss' by the CLI, annotators 'ana' and 'ben' by the API; projects
    pp (pairwise, overlap 2), rk (ranking), th (thumbs), xss (pairwise)) and a headless Chromium."""
    import httpx

    tmp = tmp_path_factory.mktemp("studio-browser")
    d = str(tmp / "studio")
    boss = cli("user", "add", "boss", "--admin", "--dir", d).splitlines()[1]
    proc, url = start_subprocess_server(d)
    assert url.startswith("http://127.0.0.1:")
    pw = sync_api.sync_playwright().start()
    browser = None
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {boss}"}, timeout=30) as c:
            tokens = {"boss": boss}
            for name in ("ana", "ben"):
                r = c.post("/api/admin/users", json={"name": name})
                assert r.status_code == 201, r.text
                tokens[name] = r.json()["token"]
            guide = tmp / "guide.md"
            guide.write_text("Prefer the correct sum.")
            data = write_jsonl(tmp / "pp.jsonl", pairs(N_PAIRS))
            cli("project", "create", "pp", "--kind", "pairwise", "--data", data,
                "--overlap", "2", "--assign", "ana,ben", "--seed", "5", "--guidelines", str(guide), "--dir", d)
            for body in ({"name": "rk", "kind": "ranking", "rows": RANK_ROWS, "filename": "rk.jsonl", "seed": 1},
                         {"name": "th", "kind": "thumbs", "rows": THUMB_ROWS, "filename": "th.jsonl", "seed": 2},
                         {"name": "xss", "kind": "pairwise", "filename": "xss.jsonl", "guidelines": XSS_GUIDE,
                          "rows": [{"prompt": XSS_PROMPT, "chosen": XSS[0], "rejected": XSS[1]}]}):
                r = c.post("/api/admin/projects", json={**body, "assign": ["ana"]})
                assert r.status_code == 201, r.text
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield {"url": url, "dir": d, "tokens": tokens, "browser": browser, "expected": {}, "seen": {}}
    finally:
        if browser is not None:
            browser.close()
        pw.stop()
        proc.kill()
        proc.wait(10)


# --------------------------------------------------------------------------- page helpers

def sign_in(env, who):
    """A fresh browser context (its own cookies) signed in as ``who`` through the sign-in form."""
    ctx = env["browser"].new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15000)
    page = ctx.new_page()
    page.dialogs = []
    page.on("dialog", lambda dlg: (page.dialogs.append(dlg.message), dlg.dismiss()))
    page.goto(env["url"] + "/")
    page.fill("#token", env["tokens"][who])
    page.click("#login-button")
    expect(page.locator("#who")).to_have_text(who)
    expect(page.locator("#projects-section")).to_be_visible()
    return page


def open_project(page, name, total):
    page.click(f"#projects a:text-is('{name}')")
    expect(page.locator("#project-name")).to_contain_text(name)
    expect(page.locator("#progress")).to_contain_text(f"of {total} labelled by you")


def wait_done(page, done, total):
    expect(page.locator("#progress")).to_have_text(f"{done} of {total} labelled by you")


def shown(page, prompt):
    """The responses' texts in the order the page shows them, once the item with ``prompt`` is up."""
    expect(page.locator("#prompt")).to_have_text(prompt)
    return page.locator("#responses .response-text").all_text_contents()


def pair_prompt(i):
    return f"What is {i} + {i}?"


def stored_pair(i):
    return [f"It is {2 * i}.", f"It is {2 * i + 1}."]


def expect_pair(env, who, i, texts, choice, strength=None):
    """Record the stored label a pairwise answer must become (stored order: index 0 = correct)."""
    if choice in ("A", "B"):
        win = stored_pair(i).index(texts["AB".index(choice)])
        value = {"outcome": "win", "winner": win, "position": choice, "strength": strength}
    else:
        value = {"outcome": choice, "winner": None, "position": None, "strength": strength}
    env["expected"][("pp", who, pair_prompt(i))] = (value, texts)


def correct_key(i, texts):
    return "12"[texts.index(f"It is {2 * i}.")]


def admin_cell(page, key):
    return page.locator("#agreement tr", has=page.locator(f"th:text-is('{key}')")).locator("td")


# --------------------------------------------------------------------------- the labelling flow

def label_everything(env):
    """ana labels pp (keyboard, mouse, undo, reload), rk (drag, keys) and th; the admin page is
    watched while ben labels pp. Runs once per module; returns what the pages showed."""
    if env["seen"]:
        return env["seen"]
    seen = env["seen"]
    ana = sign_in(env, "ana")
    projects = ana.locator("#projects li").all_text_contents()
    assert projects == ["pp (pairwise, 6 items)", "rk (ranking, 3 items)", "th (thumbs, 2 items)",
                        "xss (pairwise, 1 items)"]
    open_project(ana, "pp", N_PAIRS)
    expect(ana.locator("#guidelines")).to_have_text("Prefer the correct sum.")

    # item 0: keyboard, strength 2 (Shift+2) then the correct response's key
    t = shown(ana, pair_prompt(0))
    ana.keyboard.press("Shift+Digit2")
    expect(ana.locator("#controls button.on")).to_have_text("2")
    ana.keyboard.press(correct_key(0, t))
    expect_pair(env, "ana", 0, t, "AB"[int(correct_key(0, t)) - 1], 2)
    wait_done(ana, 1, N_PAIRS)
    # item 1: keyboard, no strength
    t = shown(ana, pair_prompt(1))
    ana.keyboard.press(correct_key(1, t))
    expect_pair(env, "ana", 1, t, "AB"[int(correct_key(1, t)) - 1])
    wait_done(ana, 2, N_PAIRS)
    # item 2: mouse, strength 3
    t = shown(ana, pair_prompt(2))
    choice = "AB"[int(correct_key(2, t)) - 1]
    ana.click("#controls button:text-is('3')")
    ana.click(f"#controls button:text-is('{choice} is better ({'12'['AB'.index(choice)]})')")
    expect_pair(env, "ana", 2, t, choice, 3)
    wait_done(ana, 3, N_PAIRS)
    # item 3: mouse, the wrong response; then undone with 'u', the page reloaded: item 3 again
    t = shown(ana, pair_prompt(3))
    wrong = "BA"[int(correct_key(3, t)) - 1]
    ana.click(f"#controls button:text-is('{wrong} is better ({'12'['AB'.index(wrong)]})')")
    wait_done(ana, 4, N_PAIRS)
    shown(ana, pair_prompt(4))
    ana.keyboard.press("u")
    wait_done(ana, 3, N_PAIRS)
    seen["after_undo"] = shown(ana, pair_prompt(3))
    ana.reload()
    wait_done(ana, 3, N_PAIRS)
    seen["after_reload"] = shown(ana, pair_prompt(3))  # the same item, the same response order
    t = seen["after_reload"]
    ana.keyboard.press(correct_key(3, t))
    expect_pair(env, "ana", 3, t, "AB"[int(correct_key(3, t)) - 1])
    wait_done(ana, 4, N_PAIRS)
    # item 4: tie by keyboard; item 5: mouse, the correct response
    t = shown(ana, pair_prompt(4))
    ana.keyboard.press("t")
    expect_pair(env, "ana", 4, t, "tie")
    wait_done(ana, 5, N_PAIRS)
    t = shown(ana, pair_prompt(5))
    choice = "AB"[int(correct_key(5, t)) - 1]
    ana.click(f"#controls button:text-is('{choice} is better ({'12'['AB'.index(choice)]})')")
    expect_pair(env, "ana", 5, t, choice)
    wait_done(ana, 6, N_PAIRS)
    expect(ana.locator("#finished")).to_be_visible()

    # the admin page, before the second annotator: no item has two labels yet
    boss = sign_in(env, "boss")
    boss.goto(env["url"] + "/admin")
    boss.select_option("#project-select", "pp")
    expect(boss.locator("#summary")).to_have_text("0 of 6 items done (overlap 2); 6 started; 6 labels")
    expect(admin_cell(boss, "cohen kappa")).to_have_text("n/a")
    seen["kappa_before"] = admin_cell(boss, "cohen kappa").text_content()

    # ben: every item by keyboard, the correct response except item 2 (the wrong one)
    ben = sign_in(env, "ben")
    open_project(ben, "pp", N_PAIRS)
    for i in range(N_PAIRS):
        t = shown(ben, pair_prompt(i))
        key = correct_key(i, t) if i != 2 else "21"[int(correct_key(i, t)) - 1]
        ben.keyboard.press(key)
        expect_pair(env, "ben", i, t, "AB"[int(key) - 1])
        wait_done(ben, i + 1, N_PAIRS)
    seen["kappa_expected"] = cohen_kappa_by_hand(env["expected"])
    # the admin page refreshes itself (every 5 s): the agreement appears without a reload
    expect(boss.locator("#summary")).to_have_text("6 of 6 items done (overlap 2); 6 started; 12 labels",
                                                  timeout=12000)
    expect(admin_cell(boss, "cohen kappa")).to_have_text(f"{seen['kappa_expected']:.3f}")
    seen["kappa_after"] = admin_cell(boss, "cohen kappa").text_content()

    # ranking: item 0 by dragging the third card to the top, item 1 by keys, item 2 with a tie
    ana.goto(env["url"] + "/")
    open_project(ana, "rk", 3)
    t = shown(ana, "Name colour 0.")
    cards = ana.locator("#responses .response")
    cards.nth(2).drag_to(cards.nth(0))
    expect(ana.locator("#responses .response h3")).to_have_text(["Response C", "Response A", "Response B"])
    expect(ana.locator("#responses .response .row span")).to_have_text(["rank 1", "rank 2", "rank 3"])
    ana.click("#submit")
    env["expected"][("rk", "ana", "Name colour 0.")] = (ranks_stored(0, t, [2, 3, 1]), t)
    wait_done(ana, 1, 3)
    t = shown(ana, "Name colour 1.")
    for k in ("3", "1", "2"):
        ana.keyboard.press(k)
    expect(ana.locator("#responses .response .row span")).to_have_text(["rank 3", "rank 1", "rank 2"])
    ana.keyboard.press("Enter")
    env["expected"][("rk", "ana", "Name colour 1.")] = (ranks_stored(1, t, [3, 1, 2]), t)
    wait_done(ana, 2, 3)
    t = shown(ana, "Name colour 2.")
    for k in ("k", "2", "1", "1", "Enter"):  # k at the first card stays there
        ana.keyboard.press(k)
    env["expected"][("rk", "ana", "Name colour 2.")] = (ranks_stored(2, t, [2, 1, 1]), t)
    wait_done(ana, 3, 3)

    # thumbs: item 0 by keys (up, down, Enter), item 1 by mouse (an incomplete answer is refused first)
    ana.goto(env["url"] + "/")
    open_project(ana, "th", 2)
    t = shown(ana, "Greet 0.")
    for k in ("ArrowUp", "ArrowDown", "Enter"):
        ana.keyboard.press(k)
    env["expected"][("th", "ana", "Greet 0.")] = (thumbs_stored(0, t, [True, False]), t)
    wait_done(ana, 1, 2)
    t = shown(ana, "Greet 1.")
    ana.locator("#responses .response").nth(0).locator("button:text-is('▼ down')").click()
    ana.click("#submit")
    expect(ana.locator("#error")).to_have_text("give every response a value first")
    ana.locator("#responses .response").nth(1).locator("button:text-is('▲ up')").click()
    ana.click("#submit")
    env["expected"][("th", "ana", "Greet 1.")] = (thumbs_stored(1, t, [False, True]), t)
    wait_done(ana, 2, 2)
    seen["dialogs"] = ana.dialogs + boss.dialogs + ben.dialogs
    for p in (ana, boss, ben):
        p.context.close()
    return seen


def ranks_stored(i, texts, shown_ranks):
    stored = RANK_ROWS[i]["completions"]
    out = [None] * 3
    for pos, r in enumerate(shown_ranks):
        out[stored.index(texts[pos])] = r
    return {"ranks": out}


def thumbs_stored(i, texts, shown_thumbs):
    stored = [THUMB_ROWS[i]["chosen"], THUMB_ROWS[i]["rejected"]]
    out = [None] * 2
    for pos, v in enumerate(shown_thumbs):
        out[stored.index(texts[pos])] = v
    return {"thumbs": out}


def cohen_kappa_by_hand(expected) -> float:
    """Cohen's kappa of ana and ben on pp: (p_o - p_e) / (1 - p_e) over categories winner / tie."""
    def cat(v):
        return v["winner"] if v["outcome"] == "win" else v["outcome"]

    a = [cat(expected[("pp", "ana", pair_prompt(i))][0]) for i in range(N_PAIRS)]
    b = [cat(expected[("pp", "ben", pair_prompt(i))][0]) for i in range(N_PAIRS)]
    cats = sorted(set(map(str, a + b)))
    pa = np.array([sum(str(x) == c for x in a) for c in cats], dtype=np.float64) / len(a)
    pb = np.array([sum(str(x) == c for x in b) for c in cats], dtype=np.float64) / len(b)
    po = np.mean([x == y for x, y in zip(a, b)])
    pe = float(pa @ pb)
    return (po - pe) / (1 - pe)


def stored_labels(directory):
    con = sqlite3.connect(os.path.join(directory, "studio.db"))
    try:
        return con.execute("SELECT p.name, u.name, i.prompt, i.responses, l.value, l.shown_order, l.skipped "
                           "FROM labels l JOIN users u ON u.id = l.user_id JOIN items i ON i.id = l.item_id "
                           "JOIN projects p ON p.id = l.project_id").fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------- tests

def test_annotators_label_every_kind_and_the_database_holds_exactly_those_labels(env):
    seen = label_everything(env)
    assert seen["after_reload"] == seen["after_undo"]  # resumed at the undone item, same order
    assert seen["kappa_before"] == "n/a"
    # ana: win, win, win, win, tie, win (all correct); ben: the wrong one on item 2:
    # p_o = 4/6, p_e = 5/6 * 5/6 = 25/36, kappa = (24/36 - 25/36) / (11/36) = -1/11
    assert seen["kappa_expected"] == pytest.approx(-1 / 11, abs=1e-12)
    assert seen["kappa_after"] == "-0.091"
    assert seen["dialogs"] == []
    rows = stored_labels(env["dir"])
    got = {}
    for project, user, prompt, responses, value, order, skipped in rows:
        assert not skipped
        responses, order = json.loads(responses), json.loads(order)
        # the stored shown order is the order the page showed
        got[(project, user, json.loads(prompt))] = (json.loads(value), [responses[j] for j in order])
    assert len(rows) == len(got) == 2 * N_PAIRS + 3 + 2
    assert got == {k: (value, list(texts)) for k, (value, texts) in env["expected"].items()}


def test_hostile_model_text_is_shown_as_text(env):
    page = sign_in(env, "ana")
    open_project(page, "xss", 1)
    assert shown(page, XSS_PROMPT) in (XSS, XSS[::-1])
    expect(page.locator("#guidelines")).to_have_text(XSS_GUIDE)
    assert page.locator("#work img, #work script, #work b, #guidelines img, #guidelines i").count() == 0
    with sqlite3.connect(os.path.join(env["dir"], "studio.db")) as con:
        item = con.execute("SELECT i.id FROM items i JOIN projects p ON p.id = i.project_id "
                           "WHERE p.name = 'xss'").fetchone()[0]
    page.goto(f"{env['url']}/items/{item}?project=xss")  # the server-escaped printable view
    pres = page.locator("pre").all_text_contents()
    assert pres[0] == XSS_PROMPT and sorted(pres[1:]) == sorted(XSS)
    assert page.locator("body img, body b").count() == 0
    page.wait_for_timeout(300)  # an onerror handler would have run by now
    assert page.dialogs == []
    page.context.close()


def test_export_trains_rm_dpo_and_kto(env, tiny_dir, tmp_path):
    from test_studio_train import args

    label_everything(env)
    pairs_out, unpaired_out = str(tmp_path / "pairs.jsonl"), str(tmp_path / "thumbs.jsonl")
    cli("export", "pp", "--dir", env["dir"], "--format", "pairs", "--out", pairs_out)
    cli("export", "th", "--dir", env["dir"], "--format", "unpaired", "--out", unpaired_out)
    got = [json.loads(x) for x in open(pairs_out)]
    # items 2 (ana right, ben wrong) and 4 (ana tie, ben right) are split votes: ties, no pair
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in got] == [
        (pair_prompt(i), *stored_pair(i)) for i in (0, 1, 3, 5)]
    thumbs = {}  # what ana gave each stored response (one label per item: the majority is that label)
    for i, row in enumerate(THUMB_ROWS):
        given = env["expected"][("th", "ana", f"Greet {i}.")][0]["thumbs"]
        thumbs.update(zip((row["chosen"], row["rejected"]), given))
    assert sorted(thumbs.values()) == [False, False, True, True]
    assert sorted((r["completion"], r["label"]) for r in map(json.loads, open(unpaired_out))) == sorted(thumbs.items())
    assert main(["rm", *args(tiny_dir, tmp_path / "rm", pairs_out)]) == 0
    assert main(["dpo", *args(tiny_dir, tmp_path / "dpo", pairs_out)]) == 0
    assert main(["kto", *args(tiny_dir, tmp_path / "kto", unpaired_out)]) == 0
    for run in ("rm", "dpo", "kto"):
        losses = train_losses(str(tmp_path / run))
        assert [s for s, _ in losses] == [1, 2] and all(math.isfinite(v) for _, v in losses), (run, losses)
