"""`report --html` and `scaling --html` (issue 17): one self-contained file (inline CSS and SVG, no
script, nothing fetched) holding the header, the per-layer table, the spectra and energy plots, the
advice (measured with --eval), the assumptions and the provenance. The `browser` tests open the files
in headless Chromium (Debian's package, driven by Playwright) at laptop and phone width."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "gpt2_w128"
HELDOUT = ROOT / "sui_onnx" / "data" / "heldout.txt"
SCALING = sorted((ROOT / "models" / "reports" / "scaling").glob("llama_w*.json"))
pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="fixtures not built")


def cli(*args, cwd=ROOT):
    env = dict(os.environ, COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


class Page(HTMLParser):
    """Every tag with its attributes, and the text, of an HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def assert_self_contained(text: str) -> Page:
    page = Page(text)
    names = {tag for tag, _ in page.tags}
    assert not names & {"script", "link", "img", "iframe", "object", "embed", "video", "audio", "source", "base"}
    for tag, attrs in page.tags:
        for key, value in attrs.items():
            if key in ("href", "src", "xlink:href", "action", "poster"):
                assert value.startswith("#") or value.startswith("data:"), (tag, key, value)
            if key == "style":
                assert "url(" not in value
    css = "".join(re.findall(r"<style>(.*?)</style>", text, re.S))
    assert "@import" not in css and "url(" not in css
    # the only URL is the SVG namespace, an identifier a browser never fetches
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", text))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp
    return page


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    r = cli("report", MODEL, "--tokens", 2000, "--seq-len", 50, "--eval", HELDOUT, "--eval-tokens", 1000, "--align", 16,
            "--html", out / "r.html", "--json", out / "r.json")
    assert r.returncode == 0, r.stderr
    return out / "r.html", json.loads((out / "r.json").read_text())


@pytest.fixture(scope="module")
def estimate(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    r = cli("report", MODEL, "--tokens", 2000, "--seq-len", 50, "--html", out / "r.html", "--json", out / "r.json")
    assert r.returncode == 0, r.stderr
    return out / "r.html", json.loads((out / "r.json").read_text())


@pytest.fixture(scope="module")
def scaling(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    r = cli("scaling", *SCALING, "--html", out / "s.html", "--json", out / "s.json")
    assert r.returncode == 0, r.stderr
    return out / "s.html", json.loads((out / "s.json").read_text())


def test_report_html_holds_the_header_table_plots_advice_assumptions_and_provenance(estimate):
    path, data = estimate
    text = path.read_text(encoding="utf-8")
    page = assert_self_contained(text)
    words = page.words
    assert "sui-onnx report: gpt2_w128" in words
    assert data["model"]["sha256"] in words  # provenance: model hash
    for source in data["calibration"]["sources"]:
        assert source["sha256"] in words  # the calibration digest
    assert f"sui-onnx {data['tool']['version']}" in words and "python" in words and "numpy" in words
    for x in data["layers"]:  # the per-layer table
        row = f"{x['layer']} {x['width']} {x['tokens']:,} {x['hard_rank']:.1f} {x['soft_rank']:.1f}"
        assert row in words, row
        assert f"{x['sui']:.3f}" in words and f"{x['k90']} {x['k95']} {x['k99']} ok" in words
    a = data["advice"]
    assert f"k95 needs {a['needed_width']} of 128 neurons; {a['recommended_width']} after rounding" in words
    assert "accuracy must be measured" in words
    for assumption in a["assumptions"]:
        assert " ".join(assumption.split()) in words
    svgs = [attrs for tag, attrs in page.tags if tag == "svg" and attrs.get("class") != "swatch"]
    captions = re.findall(r"<figcaption>(.*?)<br>", text)
    assert {"FFN activation covariance spectra", "Cumulative energy (dots: k95 of each layer)",
            "Width each layer needs"} <= set(captions)
    assert len(svgs) >= 7  # spectra, energy, widths and one panel per measure
    assert text.count("gpt2_w128 · 2,000 calibration tokens") >= 7  # every plot names the model and tokens
    assert f"recommended {a['recommended_width']} (estimate)" in text


def test_report_html_shows_the_measured_ladder(measured):
    path, data = measured
    words = assert_self_contained(path.read_text(encoding="utf-8")).words
    m = data["advice"]["measured"]
    assert f"Recommended FFN width {m['recommended_width']} of 128" in words
    for row in m["ladder"]:
        assert f"{row['label']} {max(row['widths'])} {row['ffn_param_saving']:.0%}" in words
        assert f"{row['slim']['worst_delta_ce']:+.4f}" in words
    assert "heldout.txt" in words
    assert f"recommended {m['recommended_width']} (measured)" in path.read_text(encoding="utf-8")


def test_an_encoders_measured_ladder_shows_cosines_everywhere_and_recommends_nothing(tmp_path):
    """An encoder has no logits: terminal, HTML and markdown all show the hidden-state cosine and
    relative error of each ladder width (one definition, sui_onnx.ladder), and none claims a dCE."""
    encoder = ROOT / "tests" / "fixtures" / "bert_w128"
    r = cli("report", encoder, "--tokens", 2000, "--seq-len", 32, "--eval", HELDOUT, "--eval-tokens", 500,
            "--html", tmp_path / "r.html", "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r.json").read_text())["advice"]["measured"]
    assert m["kind"] == "encoder" and m["recommended_width"] is None and m["ladder"]
    words = assert_self_contained((tmp_path / "r.html").read_text(encoding="utf-8")).words
    markdown = (tmp_path / "r.md").read_text(encoding="utf-8")
    terminal = " ".join(r.stdout.split())
    for text in (words, markdown, terminal):
        assert "no width is recommended" in text and "dCE within" not in text and "keep 128" not in text
        assert "cos proj" in text and "cos slim" in text and "err slim" in text
        for row in m["ladder"]:
            assert f"{row['slim']['worst_cosine']:.5f}" in text and f"{row['slim']['worst_rel_error']:.4f}" in text
            assert f"{row['projection']['worst_cosine']:.5f}" in text


@pytest.mark.parametrize("tokens", [2000, 300], ids=["estimate", "withheld"])
def test_the_unmeasured_advice_says_the_same_in_terminal_html_and_markdown(tokens, tmp_path):
    """Without --eval the advice is an estimate (or withheld): the terminal, HTML and markdown give
    the same numbers and the same caveat, naming both commands that measure it (one definition,
    sui_onnx.ladder.estimate_view)."""
    r = cli("report", MODEL, "--tokens", tokens, "--seq-len", 50, "--html", tmp_path / "r.html",
            "--markdown", tmp_path / "r.md", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "r.json").read_text())["advice"]
    html = assert_self_contained((tmp_path / "r.html").read_text(encoding="utf-8")).words
    md = re.sub(r"[*`]", "", (tmp_path / "r.md").read_text(encoding="utf-8"))
    term = " ".join(r.stdout.replace("│", " ").split())  # the panel's lines joined again
    for text in (html, md, term):
        low = text.lower()
        if a.get("withheld"):
            assert f"width advice withheld: {a['withheld']['reason']}".lower() in low
            assert "biased low: a width read from them would be too narrow" in low
            assert "k95 needs" not in low and "not a deployable width" not in low
        else:
            assert f"k95 needs {a['needed_width']} of 128 neurons; {a['recommended_width']} after rounding up to a multiple of 64" in text
            assert f"the worst layer loses {a['max_variance_lost']:.2%} of its variance" in text
            assert "a compressibility estimate, not a deployable width: accuracy must be measured" in low
            assert "sui-onnx report --eval heldout" in low and "sui-onnx slim --eval heldout" in low
            assert "saves" not in low.split("width advice")[-1]


def test_report_html_on_thin_data_withholds_the_advice(tmp_path):
    r = cli("report", MODEL, "--tokens", 300, "--seq-len", 50, "--html", tmp_path / "r.html", "-q")
    assert r.returncode == 0, r.stderr
    words = assert_self_contained((tmp_path / "r.html").read_text(encoding="utf-8")).words
    assert "Width advice withheld: not enough calibration tokens: 300 < 4·D = 512; pass --tokens ≥ 10·D = 1,280" in words
    assert "Thin data" in words and "low_tokens" in words and "k95 needs" not in words


def test_report_html_to_stdout():
    r = cli("report", MODEL, "--tokens", 2000, "--seq-len", 50, "--html", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<!DOCTYPE html>") and "╭" not in r.stdout  # only the page on stdout
    assert_self_contained(r.stdout)


def test_scaling_html_labels_the_paper_and_shows_the_fit(scaling):
    path, data = scaling
    page = assert_self_contained(path.read_text(encoding="utf-8"))
    words = page.words
    soft, hard = data["median_fits"]["soft_rank"], data["median_fits"]["hard_rank"]
    assert f"soft rank {soft['beta']:.3f}" in words and f"hard rank {hard['beta']:.3f}" in words
    assert "paper: soft rank 0.661" in words and "paper: hard rank 0.289" in words
    assert "for comparison, not a result of this fit" in words
    for w in data["inputs"]["widths"]:
        assert f"{w} 4/4 32,768" in words
    assert "Rank against width" in words and "SUI against width" in words and "llama" in words
    for m in data["inputs"]["models"]:
        assert m["sha256"][:16] in words


def test_html_output_is_checked_before_the_analysis(tmp_path):
    (tmp_path / "dir.html").mkdir()
    r = cli("report", MODEL, "--tokens", 2000, "--html", tmp_path / "dir.html")
    assert r.returncode == 2 and "it is a folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("scaling", *SCALING, "--html", SCALING[0])
    assert r.returncode == 2 and "input of this run" in r.stderr


# ------------------------------------------------------------------------------------------------
# a real browser: Debian's chromium, driven by Playwright (never `playwright install`)

CHROMIUM = os.environ.get("SUI_ONNX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install 'sui-onnx[browser]')")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


@pytest.mark.browser
@pytest.mark.parametrize("which", ["measured", "estimate", "scaling"])
@pytest.mark.parametrize("width", [1280, 390])
def test_html_renders_in_headless_chromium_without_errors_or_requests(which, width, request, tmp_path):
    sync_playwright = _browser()
    path, _ = request.getfixturevalue(which)
    url = path.resolve().as_uri()
    shots = Path(os.environ.get("SUI_ONNX_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            console, requests, failures = [], [], []
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: failures.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            page.wait_for_timeout(200)
            layout = page.evaluate("""() => ({
                scroll: document.documentElement.scrollWidth,
                view: window.innerWidth,
                charts: [...document.querySelectorAll('figure.chart > svg')].map(s => {
                    const b = s.getBoundingClientRect(); return [b.width, b.height, b.right]; }),
                tables: [...document.querySelectorAll('.scroll')].map(d => d.getBoundingClientRect().right),
                smallest: Math.min(...[...document.querySelectorAll('p, td, li, dd')].map(
                    e => parseFloat(getComputedStyle(e).fontSize))),
            })""")
            page.screenshot(path=str(shots / f"{which}_{width}.png"), full_page=True)
        finally:
            browser.close()
    assert [m for m in console if m[0] in ("error", "warning")] == [] and failures == []
    assert requests == [url]  # the file itself, nothing else
    assert layout["scroll"] <= layout["view"]  # no sideways scrolling of the page (tables scroll in their box)
    assert layout["charts"] and all(w > 250 and h > 150 and right <= layout["view"] for w, h, right in layout["charts"])
    assert all(right <= layout["view"] + 0.5 for right in layout["tables"])
    assert layout["smallest"] >= 11
