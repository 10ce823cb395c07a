"""`transferlab datasets | jobs | models` against a real `transferlab serve`: the walk-through
without curl."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest

from tests.e2e.conftest import BIN, PLANTED, Service

pytestmark = pytest.mark.e2e


def cli(service: Service, *args: str, key: str | None = None, url: str | None = None):
    env = {
        "PATH": "/usr/bin:/bin",
        "TRANSFERLAB_URL": url or service.url,
        "TRANSFERLAB_API_KEY": service.api_key if key is None else key,
        "COLUMNS": "160",
    }
    return subprocess.run(
        [str(BIN / "transferlab"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


TRAIN = ["--base-model", "timm:test_resnet", "--no-pretrained", "--image-size", "32"]


def test_the_walk_through_with_the_cli(embedded: Service, digits_zip, tmp_path):
    extra = {"digit_2/broken.png": b"not an image"}
    path = digits_zip(classes=(0, 1, 2), per_class=12, extra=extra, name="cli.zip")

    # Upload: a progress bar on stderr, then the report as tables.
    out = ok(cli(embedded, "datasets", "upload", str(path), "--name", "cli-digits"))
    assert "images per class" in out and "digit_2" in out
    assert "1 files skipped" in out and "digit_2/broken.png" in out
    dataset = json.loads(ok(cli(embedded, "datasets", "list", "--json")))["items"][0]
    assert dataset["name"] == "cli-digits" and dataset["num_classes"] == 3

    # Submit and wait: live bars on stderr, the final job on stdout, exit 0.
    result = cli(
        embedded, "jobs", "submit", "--dataset", dataset["id"], *TRAIN,
        "--epochs", "2", "--batch-size", "8", "--set", "augmentation=none", "--wait",
    )  # fmt: skip
    out = ok(result)
    assert "succeeded" in out and "model" in out
    assert "epochs" in result.stderr and "submitted job" in result.stderr
    jobs = json.loads(ok(cli(embedded, "jobs", "list", "--json")))["items"]
    job = jobs[0]
    assert job["status"] == "succeeded"
    assert job["spec"]["hyperparameters"]["augmentation"] == "none"
    out = ok(cli(embedded, "jobs", "show", job["id"]))
    assert "per epoch" in out and "val acc" in out
    shown = json.loads(ok(cli(embedded, "jobs", "show", job["id"], "--json")))
    assert [m["epoch"] for m in shown["metrics"]] == [1, 2]

    # The model: list, show (per-class table with the confusion matrix), download, predict.
    model_id = job["model_id"]
    models = json.loads(ok(cli(embedded, "models", "list", "--json")))["items"]
    assert model_id in [m["id"] for m in models]
    out = ok(cli(embedded, "models", "show", model_id))
    assert "per class" in out and "lineage" in out and dataset["id"] in out
    out = ok(cli(embedded, "models", "download", model_id, "-o", str(tmp_path)))
    saved = next(tmp_path.glob("*.zip"))
    assert str(saved) in out.replace("\n", "")
    assert "model.safetensors" in zipfile.ZipFile(saved).namelist()
    image = tmp_path / "two.png"
    image.write_bytes(zipfile.ZipFile(path).read("digit_2/000.png"))
    result = json.loads(
        ok(cli(embedded, "models", "predict", model_id, str(image), "--top-k", "2", "--json"))
    )
    assert result["predictions"][0]["filename"] == "two.png"
    assert len(result["predictions"][0]["top_k"]) == 2
    assert "predictions" in ok(cli(embedded, "models", "predict", model_id, str(image)))

    # --wait --json: only the final job on stdout, for scripts.
    result = cli(
        embedded, "jobs", "submit", "--dataset", dataset["id"], *TRAIN, "--epochs", "1",
        "--wait", "--json",
    )  # fmt: skip
    final = json.loads(ok(result))
    assert final["status"] == "succeeded" and final["model_id"]


def test_the_dataset_report_in_the_cli(embedded: Service, leaky_zip):
    # Upload: the report's duplicates, leakage, statistics and warnings as tables and lines.
    out = ok(cli(embedded, "datasets", "upload", str(leaky_zip), "--name", "cli-leaky"))
    items = json.loads(ok(cli(embedded, "datasets", "list", "--json")))["items"]
    dataset = next(d for d in items if d["name"] == "cli-leaky")
    with embedded.client() as c:
        report = c.get(f"/v1/datasets/{dataset['id']}").json()["report"]
    exact, near = report["duplicates"]["exact"], report["duplicates"]["near"]
    leak = report["leakage"]
    assert exact["across_splits"] >= 1 and leak["val_images"] >= 1  # the planted copy
    lines = out.splitlines()
    columns = ("groups", "images", "redundant", "within_class", "across_classes", "across_splits")
    for kind, counts in (("exact", exact), ("near", near)):
        row = next(line.split() for line in lines if line.strip().startswith(f"{kind} "))
        assert row == [kind, *(str(counts[k]) for k in columns)], (kind, out)
    assert "example duplicate groups" in out and "across splits" in out
    assert f"leakage: {leak['val_images']} of {leak['val_total']} validation images" in out
    assert any(PLANTED[1] in line and PLANTED[0] in line for line in lines), out
    assert "shorter side" in out and "class balance" in out
    assert "val_leakage" in out and out.rindex("warning(s)") > out.index("class balance")

    # show prints the same; --json stays the API's JSON.
    assert ok(cli(embedded, "datasets", "show", dataset["id"])) == out
    shown = json.loads(ok(cli(embedded, "datasets", "show", dataset["id"], "--json")))
    assert shown["report"] == report


def test_a_failed_job_exits_non_zero_with_its_error(embedded: Service, digits_zip):
    path = digits_zip(classes=(0, 1), per_class=6, name="cli-fail.zip")
    dataset = json.loads(ok(cli(embedded, "datasets", "upload", str(path), "--json")))
    # The server has no access to the hub (HF_HUB_OFFLINE): published weights cannot load.
    result = cli(
        embedded, "jobs", "submit", "--dataset", dataset["id"], "--base-model",
        "timm:test_resnet", "--pretrained", "--epochs", "1", "--wait",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "job failed" in result.stderr
    assert "pretrained_weights_unavailable" in result.stderr


def test_errors_say_what_to_do(embedded: Service):
    result = cli(embedded, "jobs", "list", key="")
    assert result.returncode == 2
    assert "unauthenticated" in result.stderr and "TRANSFERLAB_API_KEY" in result.stderr
    result = cli(embedded, "jobs", "show", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 2 and "job_not_found" in result.stderr
    result = cli(embedded, "jobs", "list", url="http://127.0.0.1:9")
    assert result.returncode == 3 and "cannot reach the API" in result.stderr


def test_domain_adaptation_and_the_registry_with_the_cli(
    embedded: Service, digits_zip, unlabeled_zip
):
    # An unlabeled target (images in any layout), a labelled source and a labelled eval set.
    target = json.loads(ok(cli(
        embedded, "datasets", "upload", str(unlabeled_zip(count=16, name="cli-target.zip")),
        "--kind", "unlabeled", "--dedupe", "exact", "--name", "cli-target", "--json",
    )))  # fmt: skip
    assert target["kind"] == "unlabeled" and target["num_images"] == 16
    assert target["report"]["dedupe"]["mode"] == "exact"
    out = ok(cli(embedded, "datasets", "show", target["id"]))
    assert "16 images, unlabeled" in out and "images per class" not in out
    listed = ok(cli(embedded, "datasets", "list"))
    assert any("cli-target" in line and "unlabeled" in line for line in listed.splitlines())
    source = json.loads(
        ok(
            cli(
                embedded,
                "datasets",
                "upload",
                str(digits_zip(classes=(0, 1, 2), per_class=8, name="cli-da-src.zip")),
                "--json",
            )
        )
    )
    evaluation = json.loads(ok(cli(embedded, "datasets", "upload", str(
        digits_zip(classes=(0, 2), per_class=4, name="cli-da-eval.zip")), "--json")))  # fmt: skip

    # dann with the target and the eval set, followed live: the epoch table has the eval
    # accuracy and the domain figures.
    result = cli(
        embedded, "jobs", "submit", "--dataset", source["id"], "--strategy", "dann", *TRAIN,
        "--target-dataset", target["id"], "--eval-dataset", evaluation["id"], "--epochs", "2",
        "--batch-size", "8", "--name", "cli-dann", "--wait",
    )  # fmt: skip
    out = ok(result)
    assert "succeeded" in out and f"target dataset {target['id']}" in out
    header = next(line for line in out.splitlines() if "train loss" in line)
    assert "eval acc" in header and "domain acc" in header, out
    job = json.loads(ok(cli(embedded, "jobs", "list", "--json")))["items"][0]
    assert (job["strategy"], job["target_dataset_id"]) == ("dann", target["id"])
    shown = json.loads(ok(cli(embedded, "jobs", "show", job["id"], "--json")))
    assert all(m["eval_accuracy"] is not None for m in shown["metrics"])
    assert all("domain_accuracy" in m["extra"] for m in shown["metrics"])
    out = ok(cli(embedded, "jobs", "show", job["id"]))
    assert "eval accuracy" in out and "domain acc" in out

    # models show: the eval set's accuracy (the API's figure) and the proxy A-distance.
    model = json.loads(ok(cli(embedded, "models", "show", job["model_id"], "--json")))
    evaluated = model["metrics"]["eval"]
    out = ok(cli(embedded, "models", "show", job["model_id"]))
    assert (
        f"eval dataset: accuracy {evaluated['accuracy']:.1%} ({evaluated['num_images']} images)"
        in out
    )
    assert "eval per class" in out and "proxy A-distance" in out

    # The registry: an alias set, moved to by name@alias, a tag on and off, the alias removed.
    out = ok(cli(embedded, "models", "alias", "cli-dann", "staging", str(model["version"])))
    assert f"cli-dann@staging -> v{model['version']}" in out
    assert (
        json.loads(ok(cli(embedded, "models", "show", "cli-dann@staging", "--json")))["id"]
        == model["id"]
    )
    # Promotion by reference (found by the attack: a reference was sent as a version number).
    out = ok(cli(embedded, "models", "alias", "cli-dann", "prod", "cli-dann@staging"))
    assert f"cli-dann@prod -> v{model['version']}" in out
    ok(cli(embedded, "models", "unalias", "cli-dann", "prod"))
    out = ok(cli(embedded, "models", "tag", "cli-dann@staging", "adapted"))
    assert "tags: adapted" in out
    with embedded.client() as c:
        assert c.get(f"/v1/models/{model['id']}").json()["tags"] == ["adapted"]
    ok(cli(embedded, "models", "untag", f"cli-dann:{model['version']}", "adapted"))
    ok(cli(embedded, "models", "unalias", "cli-dann", "staging"))
    with embedded.client() as c:
        fresh = c.get(f"/v1/models/{model['id']}").json()
        assert (fresh["aliases"], fresh["tags"]) == ([], [])
        assert c.get("/v1/models/cli-dann@staging").status_code == 404
    result = cli(embedded, "models", "unalias", "cli-dann", "staging")
    assert result.returncode == 2 and "not_found" in result.stderr
