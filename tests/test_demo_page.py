"""The demo page in headless Chromium: /?q=... runs the query on load and renders the results.

Needs Debian's `chromium` package (apt-get install -y chromium); skipped when it is missing,
except that with LATEINT_REQUIRE_CHROMIUM=1 (set by scripts/test.sh, so in CI) a missing chromium
fails the tests instead of skipping them.
"""

import html.parser
import os
import shutil
import subprocess

import httpx
import numpy as np
import pytest

from index.precompute import precompute
from serve.launcher import ServerProcess

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
    flags = [
        "--query_length_buckets=16",
        "--query_batch_buckets=1",
        "--candidate_buckets=256",
        "--rerank_buckets=16",
        "--default_n=256",
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
