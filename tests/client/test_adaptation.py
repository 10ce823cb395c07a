"""The client and CLI side of domain adaptation and the registry, against a fake API (httpx's
MockTransport): what each command sends, and how the answers are shown. The e2e CLI test runs the
same commands against a real server."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx
import pytest
from rich.console import Console

from app.client import cli, render
from app.client.core import Client

JOB = {
    "id": "j1", "status": "succeeded", "strategy": "dann", "base_model": "timm:test_resnet",
    "dataset_id": "src", "target_dataset_id": "tgt", "labeled_target_dataset_id": None,
    "eval_dataset_id": "evl", "model_id": "m1", "error": None, "error_code": None,
    "progress": {"epoch": 2, "total_epochs": 2, "step": 3, "total_steps": 3, "fraction": 1.0},
    "latest_metrics": {"train_loss": 0.5, "val_accuracy": 0.75, "eval_accuracy": 0.625,
                       "extra": {"domain_accuracy": 0.52, "domain_loss": 0.69}},
    "warnings": [{"code": "val_leakage", "message": "1 of 4 validation images have a copy"}],
}  # fmt: skip


def epoch(n: int, eval_accuracy: float | None, extra: dict[str, float]) -> dict[str, Any]:
    return {
        "epoch": n, "phase": "train", "train_loss": 1.0 / n, "val_loss": 0.9, "val_accuracy": 0.5,
        "learning_rate": 0.001, "images_per_second": 100.0, "seconds": 1.5,
        "eval_loss": None if eval_accuracy is None else 0.8, "eval_accuracy": eval_accuracy,
        "extra": extra,
    }  # fmt: skip


MODEL = {
    "id": "m1", "name": "dann", "version": 1, "strategy": "dann", "base_model": "timm:test_resnet",
    "dataset_id": "src", "job_id": "j1", "parent_id": None, "class_names": ["a", "b"],
    "aliases": [], "tags": [],
    "metrics": {
        "val_accuracy": 0.75, "num_val_images": 4,
        "per_class_accuracy": {"a": 1.0, "b": 0.5}, "confusion_matrix": [[2, 0], [1, 1]],
        "eval": {"accuracy": 0.625, "num_images": 8, "per_class_accuracy": {"a": 0.75, "b": 0.5},
                 "confusion_matrix": [[3, 1], [2, 2]]},
        "proxy_a_distance": {"before": 1.8, "after": 0.4},
        "instance_weights": {"min": 0.1, "p10": 0.2, "median": 1.0, "p90": 2.0, "max": 5.0,
                             "effective_sample_size": 12.5, "effective_fraction": 0.625},
        "val_leak_fraction": 0.25,
    },
}  # fmt: skip


def text(view, value) -> str:
    console = Console(record=True, width=160, highlight=False)
    view(console, value)
    return console.export_text()


def test_the_epoch_table_has_eval_and_the_strategys_figures_only_when_present():
    shown = text(render.metrics_table, [epoch(1, 0.5, {"domain_accuracy": 0.9}),
                                        epoch(2, 0.625, {"domain_accuracy": 0.55})])  # fmt: skip
    header = next(line for line in shown.splitlines() if "train loss" in line)
    assert "eval acc" in header and "domain acc" in header
    row = next(line.split() for line in shown.splitlines() if line.split()[:1] == ["2"])
    assert "62.5%" in row and "55.0%" in row
    plain = text(render.metrics_table, [epoch(1, None, {})])
    assert "eval" not in plain and "domain" not in plain


def test_a_job_shows_its_datasets_latest_figures_and_warnings():
    shown = text(render.job, JOB)
    assert "target dataset tgt" in shown and "eval dataset evl" in shown
    assert "eval accuracy 62.5%" in shown and "domain acc 52.0%" in shown
    assert "warning val_leakage: 1 of 4 validation images" in shown


def test_a_model_shows_the_eval_set_the_proxy_a_distance_and_the_weights():
    shown = text(render.model, MODEL)
    assert "eval dataset: accuracy 62.5% (8 images)" in shown
    rows = {line.split()[1]: line.split()[2:] for line in shown.splitlines()
            if line.split()[:1] in (["0"], ["1"])}  # fmt: skip
    assert rows["b"] == ["50.0%", "2", "2"]  # the eval matrix's second row
    assert "before 1.8000, after 0.4000" in shown
    assert "effective sample size 12.5000 (62.5% of the source)" in shown
    assert "val leakage: 25.0%" in shown
    bare = {**MODEL, "metrics": {k: MODEL["metrics"][k] for k in ("val_accuracy",)}}
    assert "eval dataset" not in text(render.model, bare)


class FakeApi:
    """Records each request; answers from a table of (method, path) -> JSON."""

    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers, self.requests = answers, list[httpx.Request]()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(204)
        return httpx.Response(200, json=answer)


def run(argv: list[str], api: FakeApi, capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="transferlab")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    with Client("http://api", transport=httpx.MockTransport(api)) as client:
        console = Console(width=160, highlight=False)
        rc = cli._dispatch(client, args, console, Console(stderr=True))
    return rc, capsys.readouterr().out


def test_submit_sends_the_target_labelled_target_eval_and_options(capsys):
    api = FakeApi({("POST", "/v1/jobs"): JOB})
    argv = ["jobs", "submit", "--dataset", "src", "--strategy", "dann", "--target-dataset", "tgt",
            "--labeled-target-dataset", "lt", "--eval-dataset", "evl", "--option", "trade_off=0.5",
            "--json"]  # fmt: skip
    rc, out = run(argv, api, capsys)
    spec = json.loads(api.requests[0].content)
    assert rc == 0 and json.loads(out)["id"] == "j1"  # --json: the API's JSON as it came
    assert (spec["target_dataset_id"], spec["labeled_target_dataset_id"]) == ("tgt", "lt")
    assert spec["eval_dataset_id"] == "evl" and spec["options"] == {"trade_off": 0.5}
    api = FakeApi({("POST", "/v1/jobs"): JOB})
    run(["jobs", "submit", "--dataset", "src", "--json"], api, capsys)
    assert "target_dataset_id" not in json.loads(api.requests[0].content)


def test_upload_sends_the_kind_and_dedupe(tmp_path, capsys):
    archive = tmp_path / "target.zip"
    archive.write_bytes(b"PK")
    dataset = {"id": "d1", "name": "target", "kind": "unlabeled"}
    api = FakeApi({("POST", "/v1/datasets"): dataset})
    rc, _ = run(["datasets", "upload", str(archive), "--kind", "unlabeled", "--dedupe", "near",
                 "--json"], api, capsys)  # fmt: skip
    body = api.requests[0].content
    assert rc == 0
    assert b'name="kind"\r\n\r\nunlabeled' in body and b'name="dedupe"\r\n\r\nnear' in body


@pytest.mark.parametrize(
    ("argv", "method", "path", "payload"),
    [
        (["models", "alias", "dann", "prod", "2"], "PUT", "/v1/models/dann/aliases/prod",
         {"version": 2}),
        (["models", "alias", "dann", "prod", "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00"], "PUT",
         "/v1/models/dann/aliases/prod", {"model_id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00"}),
        # Any reference: resolved by the API first, then the alias names its id (promotion).
        (["models", "alias", "dann", "prod", "dann@staging"], "PUT",
         "/v1/models/dann/aliases/prod", {"model_id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00"}),
        (["models", "unalias", "dann", "prod"], "DELETE", "/v1/models/dann/aliases/prod", None),
        (["models", "tag", "dann@prod", "reviewed"], "PUT", "/v1/models/dann@prod/tags/reviewed",
         None),
        (["models", "untag", "dann:1", "reviewed"], "DELETE", "/v1/models/dann:1/tags/reviewed",
         None),
    ],
)  # fmt: skip
def test_registry_commands(argv, method, path, payload, capsys):
    alias = {"ref": "dann@prod", "version": 2, "model_id": "m2"}
    tagged = {**MODEL, "tags": ["reviewed"]}
    api = FakeApi({(method, path): alias if "aliases" in path else tagged})
    if argv[1] == "alias" and not argv[-1].isdigit():
        resolved = {**MODEL, "id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00"}
        api.answers[("GET", f"/v1/models/{argv[-1]}")] = resolved
    if argv[1] == "unalias":
        api.answers.pop((method, path))
    rc, out = run(argv, api, capsys)
    request = api.requests[-1]
    assert rc == 0 and (request.method, request.url.path) == (method, path)
    assert (json.loads(request.content) if request.content else None) == payload
    expected = {"alias": "dann@prod -> v2", "unalias": "removed dann@prod", "tag": "tags: reviewed",
                "untag": "tags: reviewed"}[argv[1]]  # fmt: skip
    assert expected in out
