"""Tests for lstmkit.explore and ``lstmkit explore``: the values, the ranking, the escaping, and
the page itself in a real headless browser (Debian's chromium and chromedriver, via Selenium)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lstmkit.cli import main
from lstmkit.explore import (
    FEATURES,
    MAX_VALUES,
    QUANTITIES,
    _json_for_script,
    correlations,
    explore_page,
    rank_units,
    text_features,
    trace,
    write_explore_page,
)
from lstmkit.grad_mode import no_grad
from lstmkit.models import CharLM
from lstmkit.text import Vocabulary

MARKUP = "「猫」は<b>x</b></script>&amp;(y)。\n"


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer LSTM (random weights) whose vocabulary holds the markup's characters."""
    text = MARKUP + "吾輩は猫である。名前はまだ無い。"
    vocab = Vocabulary.from_text(text, unknown=True)
    model = CharLM(len(vocab), 6, num_layers=2, embedding_dim=4, seed=7)
    model.eval()
    return model, vocab, text


def test_trace_holds_the_gates_and_h_of_every_layer(tiny):
    model, vocab, text = tiny
    ids = vocab.encode(text)
    steps = trace(model, ids)
    assert list(steps) == ["l0", "l1"]
    assert all(list(per) == list(QUANTITIES) for per in steps.values())
    with no_grad():
        output, _, gates = model.rnn(model.embedding(ids[:, None]), return_gates=True)
    for name in "ifgoc":
        assert np.array_equal(steps["l1"][name], gates["l1"][name][:, 0])
    # h = o * tanh(c) is the layer's output.
    np.testing.assert_allclose(steps["l1"]["h"], output[:, 0], rtol=1e-6, atol=1e-7)
    assert steps["l0"]["c"].shape == (len(text), 6)


def test_text_features_describe_the_moment_after_each_character():
    text = "ab「cd」e(f)。\ng"
    features = text_features(text)
    assert list(features) == list(FEATURES)
    assert features["in_quotes"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert features["in_brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert features["line_position"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0]
    assert features["after_punctuation"].tolist() == [0] * 10 + [1, 0, 0]
    assert text_features('x"y"z')["in_quotes"].tolist() == [0, 1, 1, 0, 0]


def test_units_are_ranked_by_how_well_they_track_a_feature():
    rng = np.random.default_rng(0)
    text = ("ab「cdef」g、hi(jk)lm。\n" * 6)[:120]
    features = text_features(text)
    T = len(text)
    values = rng.normal(0, 1, (T, 5))
    values[:, 1] = 0.25  # constant: no correlation at all
    values[:, 2] = 3 * features["in_quotes"] + rng.normal(0, 0.05, T)
    values[:, 3] = -features["line_position"] / 7
    values[:, 4] = features["after_punctuation"] + rng.normal(0, 0.5, T)
    r = correlations(values, features)
    assert r.shape == (5, len(FEATURES))
    assert np.all(r[1] == 0)
    assert r[3, 2] == pytest.approx(-1.0)
    q = features["in_quotes"]
    assert r[2, 0] == pytest.approx(np.corrcoef(values[:, 2], q)[0, 1])
    ranking = rank_units(values, features)
    assert [e["unit"] for e in ranking[:3]] == [3, 2, 4]
    assert [e["feature"] for e in ranking[:3]] == ["line_position", "in_quotes",
                                                   "after_punctuation"]
    assert ranking[0]["r"] == pytest.approx(-1.0) and ranking[-1] == {
        "unit": 1, "feature": "in_quotes", "r": 0.0}
    assert len(rank_units(values, features, top=2)) == 2


def test_the_page_escapes_the_text_and_its_data(tiny):
    model, vocab, text = tiny
    page = explore_page(model, vocab, text, title="<i>model</i>")
    assert page.count("</script>") == 2  # the data's and the script's own end tags
    assert "<b>" not in page and "<i>model" not in page
    for char, escaped in (("<", "&lt;"), (">", "&gt;"), ("&", "&amp;")):
        assert page.count(f">{escaped}</span>") == text.count(char)  # one span per character
    assert "&lt;i&gt;model&lt;/i&gt;" in page
    data = re.search(r'<script type="application/json" id="lstmkit-data">(.*?)</script>', page,
                     re.S).group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    parsed = json.loads(data)
    assert parsed["steps"] == len(text) and parsed["hidden"] == 6
    assert len(parsed["values"]["l1"]["f"]) == len(text) * 6
    # Whatever a value holds, the JSON cannot end its <script> element.
    tricky = {"text": "</script><script>alert(1)</script>&amp;\u2028"}
    assert not set("<>&") & set(_json_for_script(tricky))
    assert json.loads(_json_for_script(tricky)) == tricky
    unknown = explore_page(model, vocab, "吾輩は犬")  # 犬: read as the unknown symbol
    assert 'class="ch unk" data-t="3">犬<' in unknown and "1 characters of the text" in unknown
    with pytest.raises(ValueError, match="empty"):
        explore_page(model, vocab, "")
    with pytest.raises(ValueError, match=f"at most {MAX_VALUES // (2 * 6 * 6):,} characters"):
        explore_page(model, vocab, "猫" * (MAX_VALUES // (2 * 6 * 6) + 1))
    with pytest.raises(ValueError, match="unit 6"):
        explore_page(model, vocab, text, unit=6)


def test_explore_command_writes_once_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "page.html"
    runner = CliRunner()
    result = runner.invoke(main, ["explore", "--text", "吾輩は猫である。", "--out", str(out),
                                  "--quantity", "f"])
    assert result.exit_code == 0, result.output
    assert "page written to" in result.output
    page = out.read_text(encoding="utf-8")
    assert "the bundled model" in page and '<option value="f" selected>' in page
    again = runner.invoke(main, ["explore", "--text", "吾輩", "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output
    assert out.read_text(encoding="utf-8") == page


# ----------------------------------------------------------------------------------------------
# In a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium, with a fresh profile and no network features."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).exists():
            pytest.skip(f"{program} is not installed (Debian: apt-get install chromium "
                        "chromium-driver)")
    profile = tempfile.mkdtemp(prefix="lstmkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_the_page_in_a_browser_shows_lstmkit_s_values(tiny, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    model, vocab, text = tiny
    path = write_explore_page(tmp_path / "page.html", model, vocab, text, layer=1, unit=2)
    steps = trace(model, vocab.encode(text))
    browser.get(path.resolve().as_uri())
    # The markup in the text is text: no element was made from it, every character is shown.
    assert browser.find_elements(By.CSS_SELECTOR, "#text b") == []
    spans = browser.find_elements(By.CSS_SELECTOR, "#text .ch")
    assert len(spans) == len(text)
    shown = "".join(span.get_attribute("textContent") for span in spans)
    assert shown == text.replace("\n", "↵")

    def displayed() -> dict[str, str]:
        return {q: browser.find_element(By.ID, f"value-{q}").text for q in QUANTITIES}

    t = text.index("<")  # the "<" of "<b>": a character like any other
    spans[t].click()
    assert browser.find_element(By.ID, "step").text == str(t)
    assert browser.find_element(By.ID, "char").text == "<"
    assert displayed() == {q: f"{steps['l1'][q][t, 2]:.4f}" for q in QUANTITIES}

    # Hovering shows another step; leaving it shows the pinned one again.
    other = text.index("猫")
    ActionChains(browser).move_to_element(spans[other]).perform()
    assert browser.find_element(By.ID, "step").text == str(other)
    assert displayed() == {q: f"{steps['l1'][q][other, 2]:.4f}" for q in QUANTITIES}
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    assert browser.find_element(By.ID, "step").text == str(t)

    # Another layer and unit (chosen from the ranked list), the same step still pinned.
    Select(browser.find_element(By.ID, "layer")).select_by_value("l0")
    Select(browser.find_element(By.ID, "quantity")).select_by_value("f")
    first = browser.find_element(By.CSS_SELECTOR, "#ranking tbody tr")
    unit = int(first.find_element(By.TAG_NAME, "td").text)
    first.click()
    assert browser.find_element(By.ID, "unit").get_attribute("value") == str(unit)
    assert displayed() == {q: f"{steps['l0'][q][t, unit]:.4f}" for q in QUANTITIES}
    f = steps["l0"]["f"][t, unit]
    expected = [round(255 + (c - 255) * min(max(f, 0), 1)) for c in (33, 102, 172)]
    colour = spans[t].value_of_css_property("background-color")
    assert [int(v) for v in re.findall(r"\d+", colour)[:3]] == pytest.approx(expected, abs=1)
