"""The demo page in headless Chromium: /?q=... runs the query on load and renders the results;
typed into the form, a query (and the first stage picked in the selector) is what the page sends
and the answer is what it shows; a refused request shows the server's own error message.

`--dump-dom` and `--screenshot` give the page as loaded from a URL; the form is driven over the
DevTools protocol on a pipe (tests/chromium_pipe.py): typed keys, a mouse click on Search, the
requests read from the browser's network events.

Needs Debian's `chromium` package (apt-get install -y chromium); skipped when it is missing,
except that with LATEINT_REQUIRE_CHROMIUM=1 (set by scripts/test.sh, so in CI) a missing chromium
fails the tests instead of skipping them.
"""

import html.parser
import json
import os
import shutil
import subprocess
import urllib.parse

import httpx
import numpy as np
import pytest
from chromium_pipe import Browser

from lateint.index.first_stage import build as first_stage_build
from lateint.index.precompute import precompute
from launcher import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
]


@pytest.fixture(scope="module", autouse=True)
def _chromium_is_installed():
    """Skips this file's tests without chromium; fails them when LATEINT_REQUIRE_CHROMIUM=1.
    (Module scope and autouse: it runs before the server starts.)"""
    if CHROMIUM is None:
        missing = "chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("LATEINT_REQUIRE_CHROMIUM") == "1":
            pytest.fail(
                f"{missing}, and LATEINT_REQUIRE_CHROMIUM=1 says this test must run", pytrace=False
            )
        pytest.skip(missing)


@pytest.fixture(scope="module")
def server(tiny_workdir, scenes_dir, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("demo_index"))
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64)
    first_stage_build.build_from_index(index_dir, ["concepts"])  # the selector offers several
    flags = [
        "--query_length_buckets=16",
        "--query_batch_buckets=1",
        "--candidate_buckets=256",
        "--rerank_buckets=16",
        "--default_n=16",  # n = K = 16 of 200 images: the stage decides the candidates
        "--default_K=16",
    ]
    with ServerProcess(tiny_workdir, index_dir, flags) as server:  # images: from the manifest
        server.wait_ready()
        yield server


def _chromium(tmp_path, *arguments) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
        capture_output=True,
        text=True,
        timeout=180,
    )


class _Page(html.parser.HTMLParser):
    """Collects what the test checks from the rendered DOM."""

    def __init__(self):
        super().__init__()
        self.body_state = None
        self.results: list[dict] = []  # one per <figure class="result">, in page order
        self.image_states: list[str] = []
        self.timing_rows: list[str] = []
        self.error_text = []
        self._in_error = False

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "body":
            self.body_state = attributes.get("data-state")
        elif tag == "figure" and attributes.get("class") == "result":
            self.results.append(
                {
                    "id": attributes["data-id"],
                    "rank": int(attributes["data-rank"]),
                    "score": float(attributes["data-score"]),
                }
            )
        elif tag == "img":
            self.image_states.append(attributes.get("data-state"))
        elif tag == "tr" and "data-stage" in attributes:
            self.timing_rows.append(attributes["data-stage"])
        self._in_error = attributes.get("id") == "error"

    def handle_data(self, data):
        if self._in_error:
            self.error_text.append(data)


def test_the_page_runs_the_query_and_renders_images_scores_and_timings(server, tmp_path):
    expected = httpx.post(server.url + "/search", json={"query": "two horses", "k": 6}).json()
    completed = _chromium(tmp_path, "--dump-dom", server.url + "/?q=two%20horses&k=6")
    assert completed.returncode == 0, completed.stderr[-3000:]
    page = _Page()
    page.feed(completed.stdout)
    assert page.body_state == "done", ("".join(page.error_text), completed.stdout[-3000:])
    assert [result["id"] for result in page.results] == [hit["id"] for hit in expected["results"]]
    assert [result["rank"] for result in page.results] == [1, 2, 3, 4, 5, 6]
    for shown, hit in zip(page.results, expected["results"]):
        assert shown["score"] == pytest.approx(hit["score"], abs=1e-6)
    assert page.image_states == ["loaded"] * 6  # every <img> fetched and decoded its PNG
    assert page.timing_rows == [
        "tokenize",
        "text_tower",
        "first_stage",
        "maxsim",
        "gather",
        "joint",
        "queue",
        "total",
    ]
    assert "two horses" in completed.stdout


def test_a_refused_query_shows_the_error(server, tmp_path):
    completed = _chromium(tmp_path, "--dump-dom", server.url + "/?q=two%20horses&k=500")
    page = _Page()
    page.feed(completed.stdout)
    assert page.body_state == "error"
    assert "422" in "".join(page.error_text) and "body.k" in "".join(page.error_text)
    assert page.results == []


def test_a_screenshot_shows_the_results(server, tmp_path):
    screenshot = tmp_path / "demo.png"
    completed = _chromium(
        tmp_path,
        f"--screenshot={screenshot}",
        "--window-size=1200,900",
        server.url + "/?q=two%20horses&k=8",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size == (1200, 900)
        luminance = np.asarray(image.convert("L"))  # [900, 1200]
    # The page is light (#fafafa); the 8 result thumbnails (>= 170 px square) are dark scenes.
    # A page that rendered no results (an error, an empty grid) has almost no dark pixels.
    dark = int((luminance < 96).sum())
    assert dark >= 8 * 170 * 170 * 0.6, dark


# ---- the form, driven over the DevTools protocol ------------------------------------------------

# What the page's script reads back: the results grid, the timing rows, the status and error
# lines, the URL it put in the address bar, the selector's options.
PAGE_STATE = """(() => ({
  state: document.body.dataset.state,
  results: [...document.querySelectorAll("figure.result")].map((figure) => ({
    id: figure.dataset.id, rank: Number(figure.dataset.rank), score: Number(figure.dataset.score),
  })),
  timings_shown: !document.getElementById("timings").hidden,
  status: document.getElementById("status").textContent,
  error: document.getElementById("error").textContent,
  search: location.search,
  stages: [...document.getElementById("first_stage").options].map((option) => option.value),
  stage: document.getElementById("first_stage").value,
}))()"""
SETTLED = "['done', 'error'].includes(document.body.dataset.state)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--virtual-time")]
    with Browser(CHROMIUM, str(tmp_path_factory.mktemp("chromium-pipe")), flags) as browser:
        yield browser


def _open(browser, url):
    """A new tab on `url`, once the page has filled its selector from /healthz."""
    page = browser.new_page()
    page.navigate(url)
    page.wait_for("document.getElementById('first_stage').options.length > 0")
    return page


def _submit(page, query, k=None, first_stage=None):
    """Types the query (and k), picks the first stage, clicks Search; returns the page's state
    once the answer is shown and the one /search request this submit sent."""
    before = len(page.requests("/search"))
    page.evaluate("delete document.body.dataset.state")
    if first_stage is not None:
        page.evaluate(
            f"(() => {{ const box = document.getElementById('first_stage'); "
            f"box.value = {json.dumps(first_stage)}; "
            "box.dispatchEvent(new Event('change', { bubbles: true })); })()"
        )
    page.type_into("#query", query)
    if k is not None:
        page.type_into("#k", str(k))
    page.click("button[type=submit]")
    page.wait_for(SETTLED)
    sent = page.requests("/search")[before:]
    assert len(sent) == 1, sent
    return page.evaluate(PAGE_STATE), sent[0]


def _expected(server, body):
    answer = httpx.post(server.url + "/search", json=body)
    return answer.status_code, answer.json()


def test_the_form_sends_the_typed_query_and_shows_the_ranked_answer(server, browser):
    health = httpx.get(server.url + "/healthz").json()
    page = _open(browser, server.url + "/")
    shown = page.evaluate(PAGE_STATE)
    assert shown["stages"] == health["first_stages"]  # the selector offers the server's stages
    assert shown["stage"] == health["default_first_stage"] == "refined"
    assert shown["status"] == (
        f"{health['images']} images indexed · model step {health['model_step']}"
    )

    query = "a cat to the left of a dog"
    shown, sent = _submit(page, query, k=7)
    body = {"query": query, "k": 7, "options": {"first_stage": "refined"}}
    assert (sent["method"], json.loads(sent["body"])) == ("POST", body)
    status, expected = _expected(server, body)
    assert status == 200 and shown["state"] == "done", shown["error"]
    assert [(hit["id"], hit["rank"]) for hit in shown["results"]] == [
        (hit["id"], hit["rank"]) for hit in expected["results"]
    ]
    assert [hit["rank"] for hit in shown["results"]] == [1, 2, 3, 4, 5, 6, 7]
    for hit, reference in zip(shown["results"], expected["results"]):
        assert hit["score"] == pytest.approx(reference["score"], abs=1e-6)
    assert shown["timings_shown"] and shown["error"] == ""
    assert shown["status"].startswith(f"7 results for “{query}” · refined n=16 → MaxSim → K=16")
    # The address bar holds the query, so the page can be reloaded or shared.
    assert urllib.parse.parse_qs(shown["search"].lstrip("?")) == {
        "q": [query],
        "k": ["7"],
        "first_stage": ["refined"],
    }


def test_the_first_stage_selector_sets_the_stage_of_request_and_answer(server, browser):
    page = _open(browser, server.url + "/")
    query = "two horses"
    answers = {}
    for stage in ("exact", "concepts", "exact_global"):
        shown, sent = _submit(page, query, k=5, first_stage=stage)
        assert json.loads(sent["body"])["options"] == {"first_stage": stage}
        answer = json.loads(page.response_body(sent["request_id"]))  # what the page was given
        assert answer["settings"]["first_stage"] == stage
        assert shown["state"] == "done" and f"· {stage} n=16 → MaxSim" in shown["status"]
        status, expected = _expected(server, json.loads(sent["body"]))
        assert status == 200
        assert [hit["id"] for hit in shown["results"]] == [hit["id"] for hit in expected["results"]]
        answers[stage] = [hit["id"] for hit in shown["results"]]
    # n = 16 of 200 images: each stage hands the joint layers other candidates, so a page that
    # sent the default stage whatever the selector said would show the same list three times.
    assert len({tuple(ids) for ids in answers.values()}) == 3, answers


def test_a_refused_request_clears_the_answer_and_shows_the_servers_message(server, browser):
    page = _open(browser, server.url + "/")
    shown, _ = _submit(page, "two horses", k=4)
    assert shown["state"] == "done" and len(shown["results"]) == 4

    # Blank (spaces only): the browser sends it, the server refuses it with a 422.
    shown, sent = _submit(page, "   ")
    status, refusal = _expected(server, json.loads(sent["body"]))
    assert status == 422 and "query" in refusal["error"]
    assert shown["state"] == "error"
    assert shown["error"] == f"422: {refusal['error']}"
    assert shown["results"] == [] and not shown["timings_shown"] and shown["status"] == ""

    # Empty: the query box is required, so the form sends nothing and the page stays as it was
    # (a submit handler that ran would have reset the error line and the address at once).
    before, address = len(page.requests("/search")), shown["search"]
    page.type_into("#query", "")
    page.click("button[type=submit]")
    assert page.evaluate("document.getElementById('query').validity.valueMissing") is True
    still = page.evaluate(PAGE_STATE)
    assert (still["state"], still["error"], still["search"]) == (
        "error",
        f"422: {refusal['error']}",
        address,
    )
    assert len(page.requests("/search")) == before


def test_an_unknown_stage_in_the_address_shows_the_servers_message(server, browser):
    page = browser.new_page()
    page.navigate(server.url + "/?q=two%20horses&first_stage=nearest")
    page.wait_for(SETTLED)
    shown = page.evaluate(PAGE_STATE)
    [sent] = page.requests("/search")
    body = json.loads(sent["body"])
    assert body == {"query": "two horses", "k": 10, "options": {"first_stage": "nearest"}}
    status, refusal = _expected(server, body)
    assert status == 422 and "options.first_stage" in refusal["error"]
    assert shown["state"] == "error" and shown["error"] == f"422: {refusal['error']}"
    assert shown["results"] == []
