"""The dashboard at /ui in a real browser (Debian's Chromium, driven by Playwright) against a
real `transferlab serve`: sign in, upload a dataset, start a job, watch its curves grow over the
event stream, open the model's confusion matrix, predict by drag-and-drop; at 1280x800 and at a
phone's width. Screenshots go to test-artifacts/dashboard/ (the README shows copies in docs/).
"""

from __future__ import annotations

import base64
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("TRANSFERLAB_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
EPOCHS = 5

# Records each redraw of the loss chart with the job's status at that moment.
WATCH_CHART = """() => {
  window.__redraws = [];
  const chart = document.querySelector('#loss-chart');
  new MutationObserver(() => window.__redraws.push({
    points: Number(chart.dataset.points),
    status: document.querySelector('h1 .badge').dataset.status,
  })).observe(chart, {attributes: true, attributeFilter: ['data-points']});
}"""

# A real drop: a DataTransfer holding a PNG, dispatched on the drop zone.
DROP = """([selector, name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: 'image/png'}));
  const zone = document.querySelector(selector);
  for (const type of ['dragenter', 'dragover', 'drop']) {
    const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
    zone.dispatchEvent(new DragEvent(type, init));
  }
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


class Page:
    """A browser tab on the dashboard that fails the test on any console error (a CSP
    violation, a script error) and records every URL it requested."""

    def __init__(self, browser, service: Service, width: int, height: int) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.service = service

    def sign_in(self) -> None:
        self.page.goto(f"{self.service.url}/ui")
        self.page.fill("#api-key", self.service.api_key)
        self.page.click("#sign-in button")
        self.page.wait_for_selector("h1:has-text('Datasets')")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def fits_width(self) -> bool:
        return self.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors
        assert not [u for u in self.urls if self.service.api_key in u], "the key went into a URL"


def test_the_walk_through_in_the_dashboard(browser, embedded: Service, digits_zip, tmp_path):
    extra = {"digit_2/broken.png": b"not an image"}
    path = digits_zip(classes=(0, 1, 2), per_class=50, extra=extra, name="dashboard.zip")
    tab = Page(browser, embedded, 1280, 800)
    page = tab.page

    # Sign in: a wrong key is refused on the form, the right one opens the datasets.
    page.goto(f"{embedded.url}/ui")
    tab.shot("sign-in")
    page.fill("#api-key", "tl_wrong_key")
    page.click("#sign-in button")
    page.wait_for_selector("#sign-in .error:has-text('not valid')")
    tab.errors.clear()  # the browser logs the 401 it got for the wrong key
    tab.sign_in()

    # Upload through the page: the dataset's report with its class-count chart.
    page.set_input_files("#dataset-drop input[type=file]", str(path))
    page.wait_for_selector("#class-counts svg")
    assert page.locator("#class-counts rect.bar").count() >= 3
    assert "digit_2/broken.png" in page.inner_text("main")
    tab.shot("dataset")

    # Start a job from the dataset's page.
    page.click("#train-link")
    page.wait_for_selector("#job-form")
    page.fill("#job-form [name=base_model]", "timm:test_resnet")
    page.uncheck("#job-form [name=pretrained]")
    page.fill("#job-form [name=epochs]", str(EPOCHS))
    page.fill("#job-form [name=image_size]", "64")
    page.fill("#job-form [name=batch_size]", "8")
    page.click("#job-form button[type=submit]")
    page.wait_for_selector("#loss-chart")
    page.evaluate(WATCH_CHART)

    # The curve grows while the job runs, then the job finishes with every epoch drawn.
    page.wait_for_function(
        "() => Number(document.querySelector('#loss-chart').dataset.points) >= 1",
        timeout=180_000,
    )
    tab.shot("job-running")
    page.wait_for_selector("h1 .badge[data-status=succeeded]", timeout=180_000)
    redraws = page.evaluate("window.__redraws")
    assert [r["points"] for r in redraws] == sorted(r["points"] for r in redraws)
    assert redraws[-1]["points"] == EPOCHS
    assert any(r["status"] == "running" and 0 < r["points"] < EPOCHS for r in redraws), redraws
    assert page.locator("#metrics-table tbody tr").count() == EPOCHS
    tab.shot("job")

    # The model: stats, lineage, per-class table, confusion matrix.
    page.click("#model-link")
    page.wait_for_selector("#confusion svg")
    assert page.locator("#confusion rect.cell").count() == 9  # 3 x 3 classes
    assert page.locator("#lineage a[href^='#/datasets/']").count() == 1
    tab.shot("model")

    # Predict: two images chosen with the file picker, then one dropped on the zone.
    archive = zipfile.ZipFile(path)
    images = []
    for digit in (0, 2):
        image = tmp_path / f"digit_{digit}.png"
        image.write_bytes(archive.read(f"digit_{digit}/000.png"))
        images.append(str(image))
    page.set_input_files("#predict-drop input[type=file]", images)
    page.wait_for_selector("#predictions figure >> nth=1")
    assert page.locator("#predictions figure li").count() == 2 * 3  # top 3 of each
    png = base64.b64encode(archive.read("digit_1/001.png")).decode()
    page.evaluate(DROP, ["#predict-drop", "dropped.png", png])
    page.wait_for_selector("#predictions figure:has-text('dropped.png')")
    assert page.locator("#predictions figure").count() == 1
    page.set_input_files("#predict-drop input[type=file]", images)
    page.wait_for_selector("#predictions figure >> nth=1")
    tab.shot("predict")
    page.locator("#predictions").scroll_into_view_if_needed()

    for name in ("datasets", "jobs", "models", "keys"):
        page.goto(f"{embedded.url}/ui/#/{name}")
        page.wait_for_selector(f"h1:has-text('{'API keys' if name == 'keys' else name.title()}')")
        if name == "jobs":
            page.click("details summary")  # the new-job form, for the screenshot
        assert tab.fits_width(), name
        tab.shot(name)
    tab.close()


def test_pages_fit_a_phone(browser, embedded: Service):
    tab = Page(browser, embedded, 390, 844)
    tab.sign_in()
    page = tab.page
    with embedded.client() as c:
        job = next(j for j in c.get("/v1/jobs").json()["items"] if j["model_id"])
    pages = {
        "datasets": "#/datasets",
        "jobs": "#/jobs",
        "job": f"#/jobs/{job['id']}",
        "model": f"#/models/{job['model_id']}",
    }
    for name, route in pages.items():
        page.goto(f"{embedded.url}/ui/{route}")
        page.wait_for_selector("main h1")
        page.wait_for_load_state("networkidle")
        assert tab.fits_width(), f"{name} is wider than the phone"
        tab.shot(f"phone-{name}")
    tab.close()


def test_the_pages_are_open_and_locked_down(embedded: Service):
    import httpx

    r = httpx.get(f"{embedded.url}/ui/", follow_redirects=True)
    assert r.status_code == 200 and '<script type="module" src="app.js">' in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert httpx.get(f"{embedded.url}/ui/app.js").status_code == 200
    assert httpx.get(f"{embedded.url}/ui").headers["location"] == "/ui/"
    assert httpx.get(f"{embedded.url}/v1/jobs").status_code == 401  # the data needs the key
