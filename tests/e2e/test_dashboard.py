"""The dashboard at /ui in a real browser (Debian's Chromium, driven by Playwright) against a
real `transferlab serve`: sign in, upload a dataset, start a job, watch its curves grow over the
event stream, open the model's confusion matrix, set an alias and a tag on it, predict by
drag-and-drop, create and revoke a key; a dataset's duplicates and leakage report; at 1280x800
and at a phone's width. Screenshots go to test-artifacts/dashboard/ (the README shows copies in
docs/).
"""

from __future__ import annotations

import base64
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import PLANTED, Service, upload_file

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

    def shot(self, name: str, until: str | None = None) -> None:
        """The whole page; with `until`, from the top down to the bottom of that element."""
        clip = None
        if until:
            box = self.page.locator(until).bounding_box()
            bottom = box["y"] + box["height"] + self.page.evaluate("window.scrollY") + 16
            clip = {"x": 0, "y": 0, "width": self.page.viewport_size["width"], "height": bottom}
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, clip=clip)

    def forget_refusals(self, status: int) -> None:
        """Drop the browser's own log line for each request the API refused with this status
        (the test then checks that the page shows the API's error itself)."""
        self.errors = [e for e in self.errors if f"status of {status}" not in e]

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

    # The registry: point an alias at this version and tag it through the page; both show.
    model_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#model-labels .chip").count() == 0
    set_alias_and_tag(page, "prod", "reviewed")
    with embedded.client() as c:
        model = c.get(f"/v1/models/{model_id}").json()
        assert (model["aliases"], model["tags"]) == (["prod"], ["reviewed"])
        assert c.get(f"/v1/models/{model['name']}@prod").json()["id"] == model_id
    # Delete (confirmed) is refused while the alias points here: the API's message shows.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    page.wait_for_selector("#registry-error:has-text('model_aliased')")
    assert f"{model['name']}@prod point(s) at it" in page.inner_text("#registry-error")
    tab.forget_refusals(409)
    tab.shot("model-registry", until="#registry")
    page.reload()  # what shows comes from the API
    page.wait_for_selector("#model-labels [data-alias=prod]")
    assert page.locator("#model-labels [data-tag=reviewed]").count() == 1
    assert page.locator("#registry-error").is_hidden()
    page.click("#registry details summary")  # the alias's history: created, pointing at v1
    page.wait_for_selector("#alias-history table")
    moves = page.locator("#alias-history tbody tr")
    assert moves.count() == 1 and moves.first.inner_text().split()[:3] == ["prod", "\u2013", "v1"]
    page.goto(f"{embedded.url}/ui/#/models")
    page.wait_for_selector("#model-list .chip.alias:has-text('@prod')")
    assert page.locator("#model-list .chip.tag:text-is('reviewed')").count() == 1
    page.go_back()
    page.wait_for_selector("#predict-drop")

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

    # Keys: create one (its secret is shown once), then revoke it (confirmed).
    page.fill("#key-form [name=name]", "dashboard-test")
    page.click("#key-form button[type=submit]")
    secret = page.inner_text("#new-key code.secret")
    prefix = secret.split("_")[1]
    assert secret.startswith("tl_") and page.locator(f"[data-revoke='{prefix}']").count() == 1
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"[data-revoke='{prefix}']")
    page.wait_for_selector(f"[data-revoke='{prefix}']", state="detached")
    with embedded.client() as c:
        key = next(k for k in c.get("/v1/keys").json() if k["prefix"] == prefix)
    assert key["revoked_at"] is not None
    tab.close()


def set_alias_and_tag(page, alias: str, tag: str) -> None:
    page.fill("#alias-form [name=alias]", alias)
    page.click("#alias-form button")
    page.wait_for_selector(f"#alias-chips .chip:has-text('@{alias}')")
    page.fill("#tag-form [name=tag]", tag)
    page.click("#tag-form button")
    page.wait_for_selector(f"#tag-chips .chip:has-text('{tag}')")
    assert page.locator(f"#model-labels [data-alias='{alias}']").count() == 1
    assert page.locator(f"#model-labels [data-tag='{tag}']").count() == 1


def test_the_dataset_report_shows_duplicates_and_leakage(browser, embedded: Service, leaky_zip):
    tab = Page(browser, embedded, 1280, 800)
    tab.sign_in()
    page = tab.page
    page.fill("#dataset-name", "leaky-ui")
    page.set_input_files("#dataset-drop input[type=file]", str(leaky_zip))
    page.wait_for_selector("#duplicates")
    with embedded.client() as c:
        report = c.get(f"/v1/datasets/{page.url.rsplit('/', 1)[1]}").json()["report"]
    duplicates, leak = report["duplicates"], report["leakage"]
    assert duplicates["exact"]["across_splits"] >= 1  # the planted copy
    assert {"val": PLANTED[1], "train": [PLANTED[0]]} in leak["examples"]

    # The counts on the page are the API's; the planted pair is quoted; the warning is on top.
    for kind in ("exact", "near"):
        shown = page.inner_text(f"[data-kind={kind}-across-splits]")
        assert shown == str(duplicates[kind]["across_splits"]), kind
    leakage = page.inner_text("#leakage")
    assert f"{leak['val_images']} of {leak['val_total']} validation images" in leakage
    row = page.locator("#leakage tr", has_text=PLANTED[1])
    assert row.count() == 1 and PLANTED[0] in row.inner_text()
    assert page.locator("#duplicate-groups td:text-is('across splits')").count() >= 1
    assert page.locator("#dataset-warnings.warnings li[data-code=val_leakage]").count() == 1
    bins = report["statistics"]["sizes"]["shorter_side_histogram"]
    assert page.locator("#size-histogram rect.bar").count() == len(bins) >= 1
    assert page.locator("#mode-histogram rect.bar").count() == len(report["statistics"]["modes"])
    assert tab.fits_width()
    tab.shot("dataset-report")
    tab.close()


def test_pages_fit_a_phone(browser, embedded: Service, leaky_zip):
    tab = Page(browser, embedded, 390, 844)
    tab.sign_in()
    page = tab.page
    with embedded.client() as c:
        job = next(j for j in c.get("/v1/jobs").json()["items"] if j["model_id"])
        datasets = c.get("/v1/datasets", params={"limit": 100}).json()["items"]
        leaky = next((d for d in datasets if d["name"] == "leaky"), None)
        leaky = leaky or upload_file(c, leaky_zip)
    pages = {
        "datasets": "#/datasets",
        "dataset": f"#/datasets/{leaky['id']}",
        "jobs": "#/jobs",
        "job": f"#/jobs/{job['id']}",
        "model": f"#/models/{job['model_id']}",
    }
    for name, route in pages.items():
        page.goto(f"{embedded.url}/ui/{route}")
        page.wait_for_selector("main h1")
        page.wait_for_load_state("networkidle")
        if name == "dataset":
            assert page.locator("#leakage tr", has_text=PLANTED[1]).count() == 1
            assert page.locator("#dataset-warnings li[data-code=val_leakage]").count() == 1
        assert tab.fits_width(), f"{name} is wider than the phone"
        tab.shot(f"phone-{name}")

    # On the model's page: an alias and a tag set at this width show; the alias is removed again.
    set_alias_and_tag(page, "canary", "phone-checked")
    assert tab.fits_width()
    page.locator("#registry").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "phone-registry.png"))  # the viewport: the card
    page.click("#alias-chips [aria-label='Remove the alias canary']")
    page.wait_for_selector("#model-labels [data-alias=canary]", state="detached")
    with embedded.client() as c:
        assert "canary" not in c.get(f"/v1/models/{job['model_id']}").json()["aliases"]
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


def test_domain_adaptation_in_the_dashboard(browser, embedded: Service, digits_zip, unlabeled_zip):
    """A dann job from the form with an unlabeled target and an eval set uploaded through the
    page: the eval accuracy beside the val accuracy, the domain accuracy, the eval confusion
    matrix and the proxy A-distance; then the model opened by name@alias (the alias set with the
    CLI) and by name:version from the lookup box."""
    from tests.e2e.test_cli import cli, ok

    tab = Page(browser, embedded, 1280, 800)
    tab.sign_in()
    page = tab.page
    with embedded.client() as c:
        path = digits_zip(classes=(0, 1, 2), per_class=8, name="ui-da-src.zip")
        with path.open("rb") as fh:
            r = c.post("/v1/datasets", files={"file": (path.name, fh)}, data={"name": "ui-dann"})
        assert r.status_code == 201, r.text
        source = r.json()

    # The target through the page: kind unlabeled (and dedupe exact).
    page.fill("#dataset-name", "ui-target")
    page.select_option("#dataset-kind", "unlabeled")
    page.select_option("#dataset-dedupe", "exact")
    assert "any folder layout" in page.inner_text("#upload-status")
    page.set_input_files("#dataset-drop input[type=file]", str(unlabeled_zip(16, "ui-tgt.zip")))
    page.wait_for_selector("#dataset-kind-value:text-is('unlabeled')")
    target_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#class-counts").count() == 0
    # The eval set through the page: labelled, the default.
    page.goto(f"{embedded.url}/ui/#/datasets")
    page.wait_for_selector("#dataset-drop")
    page.fill("#dataset-name", "ui-eval")
    eval_zip = digits_zip(classes=(0, 2), per_class=4, name="ui-da-eval.zip")
    page.set_input_files("#dataset-drop input[type=file]", str(eval_zip))
    page.wait_for_selector("#class-counts svg")
    eval_id = page.url.rsplit("/", 1)[1]
    with embedded.client() as c:
        target = c.get(f"/v1/datasets/{target_id}").json()
        assert (target["kind"], target["report"]["dedupe"]["mode"]) == ("unlabeled", "exact")
        assert c.get(f"/v1/datasets/{eval_id}").json()["kind"] == "labelled"
    page.goto(f"{embedded.url}/ui/#/datasets")
    row = page.locator("tr", has_text="ui-target")
    row.first.wait_for()
    assert row.first.locator("[data-kind=unlabeled]").count() == 1
    tab.shot("datasets-kinds")

    # The form: the target selectors follow the strategy; the eval set is always there.
    page.goto(f"{embedded.url}/ui/#/jobs")
    page.wait_for_selector("#job-form", state="attached")
    if not page.locator("#job-form").is_visible():
        page.click("details summary")
    page.select_option("#job-form [name=strategy]", "finetune")
    assert page.locator("#target-dataset").is_hidden()
    assert page.locator("#labeled-target-dataset").is_hidden()
    assert page.locator("#eval-dataset").is_visible()
    eval_choices = page.locator("#eval-dataset option").evaluate_all("os => os.map(o => o.value)")
    assert target_id not in eval_choices and eval_id in eval_choices  # labelled only
    page.select_option("#job-form [name=strategy]", "dann")
    assert page.locator("#target-dataset").is_visible()
    assert page.locator("#labeled-target-dataset").is_visible()
    page.select_option("#job-form [name=dataset_id]", source["id"])
    page.select_option("#target-dataset", target_id)
    page.select_option("#eval-dataset", eval_id)
    page.fill("#job-form [name=base_model]", "timm:test_resnet")
    page.uncheck("#job-form [name=pretrained]")
    page.fill("#job-form [name=epochs]", "2")
    page.fill("#job-form [name=image_size]", "32")
    page.fill("#job-form [name=batch_size]", "8")
    tab.shot("job-form-adaptation", until="#job-form")
    page.click("#job-form button[type=submit]")
    page.wait_for_selector("#loss-chart")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("h1 .badge[data-status=succeeded]", timeout=240_000)
    with embedded.client() as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
        epochs = c.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert (job["target_dataset_id"], job["eval_dataset_id"]) == (target_id, eval_id)
    assert job["labeled_target_dataset_id"] is None

    # The job page: eval accuracy beside val accuracy, the domain accuracy in its own chart.
    page.wait_for_function("() => document.querySelectorAll('#accuracy-chart .dot.s3').length == 2")
    legend = page.text_content("#accuracy-chart")
    assert "val accuracy" in legend and "eval accuracy" in legend
    assert page.locator("#extra-card").is_visible()
    assert page.locator("#extra-chart .dot").count() == 2
    assert "domain accuracy" in page.text_content("#extra-chart")
    header = page.text_content("#metrics-table thead")
    assert "Eval acc" in header and "domain accuracy" in header
    last = page.locator("#metrics-table tbody tr").nth(1).inner_text()
    assert f"{epochs[1]['eval_accuracy'] * 100:.1f}%" in last
    assert f"{epochs[1]['extra']['domain_accuracy'] * 100:.1f}%" in last
    assert page.locator("#job-facts a[href='#/datasets/" + target_id + "']").count() == 1
    assert "null" not in page.inner_text("main")
    tab.shot("job-adaptation")

    # The model page: the eval set's accuracy, per class and confusion matrix; the PAD.
    page.click("#model-link")
    page.wait_for_selector("#eval-confusion svg")
    with embedded.client() as c:
        model = c.get(f"/v1/models/{job['model_id']}").json()
    evaluated = model["metrics"]["eval"]
    assert page.inner_text("#eval-accuracy") == f"{evaluated['accuracy'] * 100:.1f}%"
    n = len(evaluated["confusion_matrix"])
    assert page.locator("#eval-confusion rect.cell").count() == n * n
    assert f"on {evaluated['num_images']} images" in page.inner_text("#eval h2")
    pad = model["metrics"]["proxy_a_distance"]
    assert page.inner_text("#pad-before") == f"{pad['before']:.3f}"
    assert page.inner_text("#pad-after") == f"{pad['after']:.3f}"
    assert "null" not in page.inner_text("main")
    page.locator("#eval").scroll_into_view_if_needed()
    tab.shot("model-eval")

    # An alias set with the CLI; the dashboard opens the version by name@alias.
    ok(cli(embedded, "models", "alias", model["name"], "ui-prod", str(model["version"])))
    page.goto(f"{embedded.url}/ui/#/models/{model['name']}@ui-prod")
    page.wait_for_selector(f"#opened-by:has-text('{model['name']}@ui-prod')")
    assert page.inner_text("main h1") == f"{model['name']} v{model['version']}"
    assert page.locator("#model-labels [data-alias=ui-prod]").count() == 1
    assert page.locator("#eval-confusion svg").count() == 1
    # ... and from the lookup box on the models page, by name:version.
    page.goto(f"{embedded.url}/ui/#/models")
    page.fill("#model-ref", f"{model['name']}:{model['version']}")
    page.click("#model-lookup button")
    page.wait_for_selector(f"#opened-by:has-text('{model['name']}:{model['version']}')")
    assert page.locator("#download").count() == 1
    # An unknown reference: the API's error, on the page.
    page.goto(f"{embedded.url}/ui/#/models/{model['name']}@nowhere")
    page.wait_for_selector("main .error:has-text('not_found')")
    tab.forget_refusals(404)
    ok(cli(embedded, "models", "unalias", model["name"], "ui-prod"))
    tab.close()

    # At a phone's width: the job's three charts and wide epoch table, and the model's eval card.
    phone = Page(browser, embedded, 390, 844)
    phone.sign_in()
    pages = {
        f"#/jobs/{job_id}": "#extra-chart .dot",
        f"#/models/{model['id']}": "#eval-confusion svg",
    }
    for route, ready in pages.items():
        phone.page.goto(f"{embedded.url}/ui/{route}")
        phone.page.wait_for_selector(ready)
        assert phone.fits_width(), route
    phone.close()


def test_a_jobs_warnings_show_on_its_page(browser, embedded: Service, leaky_zip):
    with embedded.client() as c:
        datasets = c.get("/v1/datasets", params={"limit": 100}).json()["items"]
        leaky = next((d for d in datasets if d["name"] == "leaky"), None) or upload_file(
            c, leaky_zip
        )
        spec = {"strategy": "finetune", "base_model": "timm:test_resnet", "pretrained": False,
                "dataset_id": leaky["id"], "hyperparameters": {"epochs": 1}}  # fmt: skip
        r = c.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        job = r.json()
    assert [w["code"] for w in job["warnings"]] == ["val_leakage"]  # fixed when it was created
    tab = Page(browser, embedded, 1280, 800)
    tab.sign_in()
    tab.page.goto(f"{embedded.url}/ui/#/jobs/{job['id']}")
    warning = tab.page.locator("#job-warnings li[data-code=val_leakage]")
    warning.wait_for()
    assert job["warnings"][0]["message"] in warning.inner_text()
    with embedded.client() as c:
        c.post(f"/v1/jobs/{job['id']}/cancel")
    tab.close()
