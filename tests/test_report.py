"""``rlhfkit report``: the HTML parsed (tables, embedded PNGs, escaped samples), then rendered in
headless Chromium when one is installed."""

import base64
import glob
import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest

from rlhfkit.cli import main
from rlhfkit.errors import ConfigError
from rlhfkit.report import fmt, write_report

XSS = "<script>alert(1)</script>"
TITLE_HIJACK = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def fake_run(d, recipe_cfg=None, completions=True):
    os.makedirs(d, exist_ok=True)
    cfg = {"model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "lora": {"r": 8}},
           "data": {"path": "pairs.jsonl"}, "train": {"lr": 5e-4, "batch_size": 4, "max_steps": 12},
           "loss_type": "sigmoid", "beta": 0.1, "sft_first": False}
    for k, v in (recipe_cfg or {}).items():  # None removes a key
        cfg.pop(k) if v is None else cfg.__setitem__(k, v)
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump({"config": cfg, "data": {"examples": {"count": 24}}}, f)
    recs = [{"step": 0, "eval/reward_accuracy": 0.5, "eval/reward_margin": 0.0}]
    recs += [{"step": s, "train/loss": 0.7 - 0.02 * s, "train/rewards/accuracy": min(1.0, 0.4 + 0.05 * s),
              "train/grad_norm": 1.0 + 0.1 * (s % 4), "train/lr": 5e-4} for s in range(1, 13)]
    recs += [{"step": 12, "eval/reward_accuracy": 0.75, "eval/reward_margin": 0.4125}]
    write_jsonl(os.path.join(d, "metrics.jsonl"), recs)
    if completions:
        write_jsonl(os.path.join(d, "completions.jsonl"), [
            {"step": 4, "prompt": "What is 2+2?", "completion": "The answer is 4.", "reward": 1.0, "judge": "ok"},
            {"step": 8, "prompt": "What is 3+3?", "completion": TITLE_HIJACK, "reward": 0.0, "judge": "bad"}])
    return d


def fake_quickstart(d):
    os.makedirs(d, exist_ok=True)
    fake_run(os.path.join(d, "dpo"), completions=False)
    sft = os.path.join(d, "sft")
    os.makedirs(sft)
    write_jsonl(os.path.join(sft, "metrics.jsonl"), [{"step": s, "train/loss": 2.0 / s, "train/nll": 2.0 / s}
                                                     for s in range(1, 6)])
    summary = {"title": "Quickstart on arithmetic", "wall_s": 571.4, "output_dir": d,
               "stages": ["sft", "dpo", "ppo"],
               "tables": [{"title": "Win-rate vs the starting model (verifier)", "note": "n = 48; 95% Wilson CI",
                           "columns": ["policy", "win-rate", "95% CI", "n"],
                           "rows": [["sft", 0.6666666, [0.5236, 0.7851], 48], ["dpo", 0.75, [0.61, 0.85], 48]]},
                          {"title": "Alignment tax", "note": "",
                           "columns": ["policy", "held-out NLL", "mean length"],
                           "rows": [["start", 1.83412, 41.2], ["dpo", 0.95871, 21.9]]}],
               "samples": [{"prompt": "What is 12 minus 5? " + XSS, "answer": "7",
                            "responses": {"start": XSS + " 12 - 5 = 8", "dpo": "The answer is 7."}}],
               "rows": [{"ignored": True}]}
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summary, f)
    return d


class Doc(HTMLParser):
    """Tags, tables (caption, header, rows of cell text), images and all text of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.tables, self.imgs, self.text = [], [], [], []
        self._cell = None
        self._caption = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "caption":
            self._caption = []
        elif tag == "img":
            self.imgs.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "caption" and self._caption is not None:
            self.tables[-1]["caption"] = "".join(self._caption).strip()
            self._caption = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)


def parse(path):
    doc = Doc()
    with open(path, encoding="utf-8") as f:
        doc.feed(f.read())
    doc.all_text = "".join(doc.text)
    return doc


def table(doc, caption):
    (t,) = [t for t in doc.tables if t["caption"] == caption]
    return t["rows"]


def png_size(uri):
    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_fmt():
    assert [fmt(v) for v in (None, True, 48, 123456, 0.0, 2.0, 0.6666666, 41.2, 1234.6, 1e-5)] == [
        "—", "yes", "48", "123,456", "0", "2", "0.667", "41.20", "1,235", "1.00e-05"]
    assert fmt([0.5236, 0.7851]) == "[0.524, 0.785]"
    assert fmt(41.2, decimals=2) == "41.20"


def test_quickstart_report(tmp_path):
    q = fake_quickstart(str(tmp_path / "qs"))
    path = write_report(q, log=lambda *a: None)
    assert path == os.path.join(q, "report.html")
    doc = parse(path)
    assert "script" not in doc.tags  # no script element at all, the sample's included
    assert table(doc, "Win-rate vs the starting model (verifier)") == [
        ["policy", "win-rate", "95% CI", "n"], ["sft", "0.667", "[0.524, 0.785]", "48"],
        ["dpo", "0.750", "[0.610, 0.850]", "48"]]
    # one precision per column: 41.2 and 21.9 both with two decimals
    assert table(doc, "Alignment tax") == [["policy", "held-out NLL", "mean length"],
                                           ["start", "1.834", "41.20"], ["dpo", "0.959", "21.90"]]
    assert "n = 48; 95% Wilson CI" in doc.all_text and "9 min 31 s" in doc.all_text
    assert "What is 12 minus 5? " + XSS in doc.all_text  # shown as text
    assert XSS + " 12 - 5 = 8" in doc.all_text
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    assert XSS not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "http://" not in raw and "https://" not in raw  # nothing fetched from a network
    # stage sections: sft (only curves), dpo (eval table and curves), ppo missing
    assert "Stage: sft" in doc.all_text and "Stage: dpo" in doc.all_text and "no run dir at" in doc.all_text
    alts = [i["alt"] for i in doc.imgs]
    assert "sft: negative log-likelihood" in alts and "dpo: pair accuracy" in alts
    assert not any(a.startswith("sft: loss") for a in alts)  # train/loss == train/nll: drawn once
    for img in doc.imgs:
        w, h = png_size(img["src"])
        assert w > 300 and h > 200


def test_single_run_report(tmp_path):
    run = fake_run(str(tmp_path / "my-dpo"))
    out = str(tmp_path / "elsewhere" / "r.html")
    assert main(["report", run, "--out", out]) == 0
    doc = parse(out)
    assert "script" not in doc.tags
    assert "rlhfkit run: my-dpo" in doc.all_text and "dpo (sigmoid)" in doc.all_text
    rows = table(doc, "Evaluation: initial vs final")
    assert rows[0] == ["metric", "initial (step 0)", "final (step 12)", "change"]
    assert rows[1:] == [["eval/reward_accuracy", "0.500", "0.750", "0.250"],
                        ["eval/reward_margin", "0", "0.412", "0.412"]]
    for setting in ("train.lr", "model.name", "loss_type", "training examples"):
        assert setting in doc.all_text
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in doc.all_text
    # sampled completions with their extra keys; the hostile one shown as text
    assert "The answer is 4." in doc.all_text and TITLE_HIJACK in doc.all_text
    steps = [t for t in doc.tables if t["caption"] in ("step 4", "step 8")]
    assert [t["rows"][0] for t in steps] == [["prompt", "completion", "reward", "judge"]] * 2
    assert steps[1]["rows"][1][2:] == ["0", "bad"]
    assert len(doc.imgs) >= 4
    for img in doc.imgs:
        png_size(img["src"])


def test_report_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no directory"):
        write_report(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no summary.json, metrics.jsonl or run.json"):
        write_report(str(tmp_path))
    (tmp_path / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "summary.json" in err[0]
    with pytest.raises(ConfigError, match="--smooth"):
        write_report(str(tmp_path), smooth=1.0)


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    found = sorted(glob.glob(os.path.expanduser("~/.cache/ms-playwright/chromium-*/chrome-linux*/chrome")))
    return found[-1] if found else None


def chromium(*args, timeout=120):
    exe = chromium_binary()
    if exe is None:
        pytest.skip("no Chromium binary (chromium / chromium-browser / google-chrome or playwright's); "
                    "install one, e.g. apt-get install chromium, to render the report")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-extensions", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_headless_chromium(tmp_path):
    q = fake_quickstart(str(tmp_path / "qs"))
    fake_run(os.path.join(q, "dpo"))  # with the hostile completions
    path = write_report(q, log=lambda *a: None)
    url = "file://" + os.path.abspath(path)
    res = chromium("--dump-dom", url)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = Doc()
    dom.feed(res.stdout)
    text = "".join(dom.text)
    assert "script" not in dom.tags
    assert "Win-rate vs the starting model (verifier)" in text and "Alignment tax" in text
    assert table(dom, "Win-rate vs the starting model (verifier)")[2] == ["dpo", "0.750", "[0.610, 0.850]", "48"]
    assert "What is 12 minus 5? " + XSS in text and TITLE_HIJACK in text
    assert "pwned" not in text.replace(TITLE_HIJACK, "")  # neither the script nor onerror ran
    assert "<title>Quickstart on arithmetic</title>" in res.stdout
    assert len(dom.imgs) >= 4
    shot = tmp_path / "shot.png"
    res = chromium(f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    w, h = png_size("data:image/png;base64," + base64.b64encode(shot.read_bytes()).decode())
    assert (w, h) == (1280, 2400) and shot.stat().st_size > 50_000  # a page, not a blank


def test_older_summary_without_tables_or_stages(tmp_path):
    q = tmp_path / "qs"
    fake_run(str(q / "rm"), completions=False)
    (q / "summary.json").write_text(json.dumps({"rows": [
        {"stage": "rm", "metric": "pair accuracy", "before": 0.417, "after": 0.521}]}))
    doc = parse(write_report(str(q), log=lambda *a: None))
    assert table(doc, "Results") == [["stage", "metric", "before", "after"], ["rm", "pair accuracy", "0.417", "0.521"]]
    assert "Stage: rm" in doc.all_text and doc.imgs


def test_list_settings_are_brief(tmp_path):
    run = fake_run(str(tmp_path / "grpo"), {"loss_type": None, "sft_first": None, "advantage": "rloo", "rewards": [
        {"type": "verifier", "verifier": "arithmetic", "weight": 1.0, "timeout": 30.0, "path": ""},
        {"type": "verifier", "verifier": "format", "weight": 0.5, "timeout": 30.0, "path": ""}]}, completions=False)
    doc = parse(write_report(run, log=lambda *a: None))
    assert "type=verifier verifier=arithmetic weight=1; type=verifier verifier=format weight=0.500" in doc.all_text
    assert "grpo (rloo)" in doc.all_text


def test_recipe_of_every_recipe_config():
    import dataclasses

    from rlhfkit.report import recipe_of
    from rlhfkit.train import dpo, kto, online_dpo, reward, rl, sft

    cases = {"sft": sft.SFTConfig(), "rm": reward.RMConfig(), "dpo (sigmoid)": dpo.DPOConfig(),
             "kto": kto.KTOConfig(), "grpo (grpo)": rl.RLConfig(), "ppo": rl.PPOConfig(),
             "online-dpo": online_dpo.OnlineDPOConfig()}
    for want, cfg in cases.items():
        assert recipe_of({"config": dataclasses.asdict(cfg)}) == want
    assert recipe_of({"recipe": "dpo", "config": {}}) == "dpo"
