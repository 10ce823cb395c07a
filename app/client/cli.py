"""`transferlab datasets | jobs | models ...`: the API from a terminal, through ``Client``.

Tables and progress bars go to the terminal (rich); ``--json`` prints the API's JSON on stdout
instead, for scripts. The API's address and key come from ``--url``/``TRANSFERLAB_URL`` and
``TRANSFERLAB_API_KEY`` (never a flag: a key on a command line ends up in shell history and in
``ps``). Exit status: 0 done, 1 the job failed or was cancelled, 2 the API refused the request,
3 the API could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from app.client import render
from app.client.core import ApiError, Client

COMMANDS = ("datasets", "jobs", "models")
# (command, action) pairs among them that run on the server host, not through the API.
SERVER_ACTIONS = {("models", "export-onnx")}
EXIT_JOB_FAILED, EXIT_API_ERROR, EXIT_UNREACHABLE = 1, 2, 3
# A request refused before it was sent (a bad flag, a file that cannot be read) exits as one the
# API refused, and as argparse's own usage errors do.
EXIT_USAGE = EXIT_API_ERROR


class UsageError(Exception):
    """What the user typed cannot be sent; the message says what to change."""


def add_commands(sub: Any) -> None:
    """Add the client commands to the `transferlab` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the API (default: TRANSFERLAB_URL or 127.0.0.1:8000)")
    common.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")

    d = sub.add_parser("datasets", help="upload and inspect datasets (via the API)")
    ds = d.add_subparsers(dest="action", required=True)
    up = ds.add_parser(
        "upload",
        parents=[common],
        help="upload a .zip/.tar of class folders (or, unlabeled, images)",
    )
    up.add_argument("path", type=Path)
    up.add_argument("--name", help="default: made from the file's name")
    up.add_argument(
        "--kind",
        choices=["labelled", "unlabeled"],
        help="unlabeled: images in any layout, no classes (a domain-adaptation target)",
    )
    up.add_argument(
        "--dedupe", choices=["none", "exact", "near"], help="drop copies within a class"
    )
    ds.add_parser("list", parents=[common], help="list datasets")
    ds.add_parser("show", parents=[common], help="a dataset and its report").add_argument("id")

    j = sub.add_parser("jobs", help="submit, follow and cancel jobs (via the API)")
    js = j.add_subparsers(dest="action", required=True)
    sm = js.add_parser("submit", parents=[common], help="submit a training job")
    sm.add_argument("--dataset", required=True, help="dataset id")
    sm.add_argument(
        "--target-dataset", help="domain adaptation (dann, instance_weighting): the target's images"
    )
    sm.add_argument(
        "--labeled-target-dataset", help="dann: labelled target images (semi-supervised)"
    )
    sm.add_argument("--eval-dataset", help="a labelled set scored every epoch and at the end")
    sm.add_argument("--base-model", default="timm:resnet18", help="timm:<name> or model:<id>")
    sm.add_argument("--strategy", default="finetune", help="GET /v1/strategies lists them")
    sm.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load the backbone's published weights (default: yes)",
    )
    sm.add_argument("--epochs", type=int)
    sm.add_argument("--image-size", type=int)
    sm.add_argument("--batch-size", type=int)
    sm.add_argument("--learning-rate", "--lr", type=float, dest="learning_rate")
    sm.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another hyperparameter (repeatable); VALUE is read as JSON when it parses",
    )
    sm.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a strategy option"
    )
    sm.add_argument("--name", help="the model's name (default: the dataset's)")
    sm.add_argument("--idempotency-key", help="makes the submission safe to retry")
    sm.add_argument("--wait", action="store_true", help="follow it live until it ends")
    ls = js.add_parser("list", parents=[common], help="list jobs, newest first")
    ls.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    js.add_parser("show", parents=[common], help="a job and its metrics").add_argument("id")
    js.add_parser("wait", parents=[common], help="follow a job until it ends").add_argument("id")
    js.add_parser("cancel", parents=[common], help="cancel a job").add_argument("id")

    m = sub.add_parser("models", help="inspect, download and call model versions (via the API)")
    ms = m.add_subparsers(dest="action", required=True)
    ml = ms.add_parser("list", parents=[common], help="list model versions")
    ml.add_argument("--name", help="only versions of this model")
    ms.add_parser("show", parents=[common], help="metrics, classes, lineage").add_argument(
        "id", help="a version id, name:version or name@alias"
    )
    al = ms.add_parser("alias", parents=[common], help="point NAME@ALIAS at a version (set/move)")
    al.add_argument("name")
    al.add_argument("alias")
    al.add_argument(
        "version", help="a version number, or any reference: an id, name:version, name@alias"
    )
    ua = ms.add_parser("unalias", parents=[common], help="remove the alias NAME@ALIAS")
    ua.add_argument("name")
    ua.add_argument("alias")
    for action, about in (("tag", "tag a version"), ("untag", "remove a tag from a version")):
        tg = ms.add_parser(action, parents=[common], help=about)
        tg.add_argument("ref", help="a version id, name:version or name@alias")
        tg.add_argument("tag")
    dl = ms.add_parser("download", parents=[common], help="save model.safetensors + model.json")
    dl.add_argument("id")
    dl.add_argument("-o", "--output", type=Path, help="a file or folder (default: here)")
    pr = ms.add_parser("predict", parents=[common], help="classify image files")
    pr.add_argument("id")
    pr.add_argument("images", nargs="+", type=Path)
    pr.add_argument("--top-k", type=int, default=5)
    # Run on the server host against its database (not through the API): see app/cli.py.
    ex = ms.add_parser(
        "export-onnx", help="on the server host: export a version made before ONNX exports"
    )
    ex.add_argument("ref", help="a version id, name:version or name@alias")


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False)
    try:
        with Client(args.url) as client:
            return _dispatch(client, args, Console(highlight=False), err)
    except ApiError as exc:
        err.print(f"[red]error[/red] ({exc.status} {exc.code}): {exc.message}")
        if exc.status == 401:
            err.print("set TRANSFERLAB_API_KEY to a key (`transferlab keys create`)")
        return EXIT_API_ERROR
    except httpx.TransportError as exc:
        err.print(f"[red]error[/red]: cannot reach the API ({exc}); is it running? (--url)")
        return EXIT_UNREACHABLE
    except UsageError as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}")
        return EXIT_USAGE
    except OSError as exc:  # a file to upload or a folder to write to
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[red]error[/red]: {escape(exc.strerror or str(exc))}{escape(where)}")
        return EXIT_USAGE


def _dispatch(client: Client, args: argparse.Namespace, out: Console, err: Console) -> int:
    command, action = args.command, args.action
    result: Any
    if command == "datasets":
        if action == "upload":
            fields = {"name": args.name, "kind": args.kind, "dedupe": args.dedupe}
            if args.json:
                result = client.upload_dataset(args.path, **fields)
            else:
                with render.upload_progress(err, args.path) as on_progress:
                    result = client.upload_dataset(args.path, **fields, on_progress=on_progress)
            return _show(out, args, result, render.dataset)
        if action == "list":
            return _show(out, args, client.list_datasets(), render.datasets)
        return _show(out, args, client.get_dataset(args.id), render.dataset)
    if command == "jobs":
        if action == "submit":
            job = client.submit_job(job_spec(args), idempotency_key=args.idempotency_key)
            if not args.wait:
                return _show(out, args, job, render.job)
            if not args.json:
                err.print(f"submitted job [bold]{job['id']}[/bold]")
            return _wait(client, job["id"], args, out, err)
        if action == "wait":
            return _wait(client, args.id, args, out, err)
        if action == "list":
            return _show(out, args, client.list_jobs(status=args.status), render.jobs)
        if action == "show":
            job = client.get_job(args.id)
            metrics = client.job_metrics(args.id)
            if args.json:
                return _print_json(out, {**job, "metrics": metrics})
            render.job(out, job)
            render.metrics_table(out, metrics)
            return 0
        return _show(out, args, client.cancel_job(args.id), render.job)
    if action == "list":
        return _show(out, args, client.list_models(name=args.name), render.models)
    if action == "show":
        return _show(out, args, client.get_model(args.id), render.model)
    if action == "alias":
        if args.version.isdigit():
            alias = client.set_alias(args.name, args.alias, version=int(args.version))
        else:
            # A reference (name@alias promotes what another alias points at): the API resolves
            # it; its id is what the alias then names.
            target = client.get_model(args.version)["id"]
            alias = client.set_alias(args.name, args.alias, model_id=target)
        return _show(out, args, alias, render.alias)
    if action == "unalias":
        client.remove_alias(args.name, args.alias)
        if args.json:
            return _print_json(out, {"removed": f"{args.name}@{args.alias}"})
        out.print(f"removed {args.name}@{args.alias}")
        return 0
    if action in ("tag", "untag"):
        change = client.tag_model if action == "tag" else client.untag_model
        return _show(out, args, change(args.ref, args.tag), render.labels)
    if action == "download":
        path = client.download_model(args.id, args.output)
        if args.json:
            return _print_json(out, {"path": str(path), "bytes": path.stat().st_size})
        out.print(f"saved {path} ({path.stat().st_size:,} bytes)")
        return 0
    result = client.predict(args.id, args.images, top_k=args.top_k)
    return _show(out, args, result, render.predictions)


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    hyperparameters = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("image_size", args.image_size),
            ("batch_size", args.batch_size),
            ("learning_rate", args.learning_rate),
        )
        if value is not None
    }
    hyperparameters.update(_pairs(args.set, "--set"))
    spec: dict[str, Any] = {
        "strategy": args.strategy,
        "base_model": args.base_model,
        "pretrained": args.pretrained,
        "dataset_id": args.dataset,
        "hyperparameters": hyperparameters,
    }
    for key, value in (
        ("target_dataset_id", args.target_dataset),
        ("labeled_target_dataset_id", args.labeled_target_dataset),
        ("eval_dataset_id", args.eval_dataset),
    ):
        if value:
            spec[key] = value
    if args.option:
        spec["options"] = _pairs(args.option, "--option")
    if args.name:
        spec["name"] = args.name
    return spec


def _pairs(items: list[str], flag: str) -> dict[str, Any]:
    pairs = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            pairs[key] = json.loads(raw)
        except ValueError:
            pairs[key] = raw
    return pairs


def _wait(client: Client, job_id: str, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.json:
        job = client.wait(job_id)
        _print_json(out, job)
    else:
        with render.JobProgress(err) as progress:
            job = client.wait(job_id, on_event=progress.update)
        render.job(out, job)
        render.metrics_table(out, client.job_metrics(job_id))
    if job["status"] == "succeeded":
        return 0
    reason = job.get("error") or "cancelled"
    err.print(
        f"[red]job {job['status']}[/red] ({job.get('error_code') or job['status']}): {reason}"
    )
    return EXIT_JOB_FAILED


def _show(out: Console, args: argparse.Namespace, result: Any, view: Any) -> int:
    if args.json:
        return _print_json(out, result)
    view(out, result)
    return 0


def _print_json(out: Console, result: Any) -> int:
    # Plain print: rich would wrap long lines and colour the JSON, and scripts read this.
    print(json.dumps(result, indent=2), file=sys.stdout)
    return 0
