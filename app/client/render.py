"""How the CLI shows the API's answers in a terminal: rich tables and progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.client.sse import Event

STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def _when(value: str | None) -> str:
    # 2026-11-29T10:00:01.5Z -> 2026-11-29 10:00 (UTC): short enough for an 80-column table.
    return value.replace("T", " ")[:16] if value else "-"


def _table(title: str) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)


@contextmanager
def upload_progress(console: Console, path: Path) -> Iterator[Callable[[int, int], None]]:
    """A bar of bytes sent; the server then checks every image (a spinner-less wait)."""
    with Progress(
        TextColumn("uploading [bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(path.name, total=path.stat().st_size)

        def update(sent: int, total: int) -> None:
            progress.update(task, completed=sent, total=total)
            if sent >= total:
                progress.update(task, description=f"{path.name} (checking images)")

        yield update


def dataset(console: Console, ds: dict[str, Any]) -> None:
    unlabeled = ds.get("kind") == "unlabeled"
    classes = "unlabeled" if unlabeled else f"{ds['num_classes']} classes"
    console.print(
        f"dataset [bold]{ds['name']}[/bold] {ds['id']}: {ds['num_images']} images, "
        f"{classes}, {ds['format']}, {ds['size_bytes']:,} bytes"
    )
    report = ds.get("report") or {}
    if unlabeled:
        console.print("  a domain-adaptation target: no classes, splits or leakage")
    splits: dict[str, dict[str, int]] = report.get("splits") or {}
    table = _table("images per class")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    for name in report.get("classes") or []:
        table.add_row(name, *(str(splits[s].get(name, 0)) for s in splits))
    if not unlabeled:
        console.print(table)
    rejected = report.get("rejected") or []
    if rejected:
        skipped = _table(f"{len(rejected)} files skipped")
        skipped.add_column("path")
        skipped.add_column("reason")
        for item in rejected[:50]:
            skipped.add_row(escape(item["path"]), escape(item["reason"]))
        console.print(skipped)
        if len(rejected) > 50:
            console.print(f"... and {len(rejected) - 50} more (--json lists them all)")
    if "warnings" not in report:
        console.print("(uploaded before the quality report: no duplicates, leakage or statistics)")
        return
    duplicates_report(console, report.get("duplicates") or {}, report.get("leakage") or {})
    dedupe = report.get("dedupe") or {}
    if dedupe.get("mode", "none") != "none":
        console.print(f"dedupe={dedupe['mode']} removed {dedupe.get('removed', 0)} image(s)")
    statistics_report(console, report.get("statistics") or {})
    warnings_report(console, report["warnings"])


DUPLICATE_KINDS = {
    "within_class": "within a class",
    "across_classes": "across classes",
    "across_splits": "across splits",
}


def duplicates_report(console: Console, dup: dict[str, Any], leak: dict[str, Any]) -> None:
    """Counts of exact and near copies, example groups, and train/val leakage."""
    table = _table(f"duplicates (near: within {dup.get('max_distance', '?')} bits of a pHash)")
    table.add_column("kind")
    for column in ("groups", "images", "redundant", *DUPLICATE_KINDS.values()):
        table.add_column(column, justify="right")
    for kind in ("exact", "near"):
        counts = dup.get(kind)
        if counts:
            keys = ("groups", "images", "redundant", *DUPLICATE_KINDS)
            table.add_row(kind, *(str(counts.get(k, 0)) for k in keys))
    console.print(table)
    # The near groups include the exact ones; quote the exact ones only when near found none.
    source = dup.get("near") if (dup.get("near") or {}).get("groups") else dup.get("exact")
    examples = (source or {}).get("examples") or {}
    groups = [(label, g) for kind, label in DUPLICATE_KINDS.items() for g in examples.get(kind, [])]
    if groups:
        quoted = _table("example duplicate groups")
        quoted.add_column("kind")
        quoted.add_column("images")
        for label, group in groups:
            quoted.add_row(label, escape("\n".join(member["path"] for member in group)))
        console.print(quoted)

    total = leak.get("val_total", 0)
    if not total:
        console.print("leakage: no val/ split (jobs hold out part of train instead)")
        return
    if not leak.get("val_images"):
        console.print(f"leakage: none of the {total} validation images has a copy in train")
        return
    console.print(
        f"[yellow]leakage[/yellow]: {leak['val_images']} of {total} validation images "
        f"({leak['fraction']:.1%}) have a copy in train ({leak.get('exact', 0)} exact)"
    )
    leaked = _table("validation images with a copy in train")
    leaked.add_column("val")
    leaked.add_column("train")
    for item in leak.get("examples") or []:
        leaked.add_row(escape(item["val"]), escape("\n".join(item["train"])))
    console.print(leaked)


def statistics_report(console: Console, stats: dict[str, Any]) -> None:
    """Histograms (shorter side, colour mode) as bars of blocks, and the class balance."""
    sizes = stats.get("sizes") or {}
    for title, column, counts in (
        ("shorter side", "px", sizes.get("shorter_side_histogram") or {}),
        ("colour modes", "mode", stats.get("modes") or {}),
    ):
        if counts:
            console.print(_histogram(title, column, counts))
    balance = stats.get("class_balance") or {}
    if balance:
        table = _table("class balance")
        for column in ("split", "largest", "smallest", "imbalance"):
            table.add_column(column, justify="right" if column == "imbalance" else "left")
        for split, b in balance.items():
            table.add_row(
                split, escape(f"{b['largest']['class']} ({b['largest']['images']})"),
                escape(f"{b['smallest']['class']} ({b['smallest']['images']})"),
                f"{b['imbalance_ratio']}x",
            )  # fmt: skip
        console.print(table)
    spread = [(axis, sizes.get(axis) or {}) for axis in ("width", "height")]
    if all(s for _, s in spread):
        common = ", ".join(f"{c['size']} ({c['count']})" for c in sizes.get("most_common") or [])
        console.print(
            "sizes: "
            + ", ".join(f"{axis} {s['min']}/{s['median']}/{s['max']} px" for axis, s in spread)
            + f" (min/median/max); most common {common}"
        )


def _histogram(title: str, column: str, counts: dict[str, int], width: int = 30) -> Table:
    table = _table(title)
    table.add_column(column)
    table.add_column("images", justify="right")
    table.add_column("")
    top = max(counts.values()) or 1
    for label, n in counts.items():
        blocks = "█" * max(1, round(width * n / top))
        table.add_row(escape(label), str(n), f"[cyan]{blocks}[/]")
    return table


def warnings_report(console: Console, warnings: list[dict[str, Any]]) -> None:
    """The report's warnings, last and in colour: they change what a job's scores mean."""
    if not warnings:
        console.print("[green]no warnings[/green]")
        return
    console.print(f"[bold yellow]{len(warnings)} warning(s)[/bold yellow]")
    for w in warnings:
        console.print(f"  [yellow]{w['code']}[/yellow]: {escape(w['message'])}")
        shown = (w.get("examples") or [])[:5]
        if shown:
            left = max(w.get("count", 0), len(w["examples"])) - len(shown)
            more = f" and {left} more" if left > 0 else ""
            console.print(f"    e.g. {escape(', '.join(shown))}{more}")


def datasets(console: Console, page: dict[str, Any]) -> None:
    table = _table(f"datasets ({page['total']})")
    table.add_column("id", no_wrap=True, min_width=36)  # whole: it is what the user copies
    for column in ("name", "kind", "images", "classes", "created"):
        table.add_column(column)
    for ds in page["items"]:
        kind = ds.get("kind", "labelled")
        table.add_row(
            ds["id"], ds["name"], kind, str(ds["num_images"]),
            "-" if kind == "unlabeled" else str(ds["num_classes"]), _when(ds["created_at"]),
        )  # fmt: skip
    console.print(table)


def job(console: Console, j: dict[str, Any]) -> None:
    p = j["progress"]
    console.print(
        f"job [bold]{j['id']}[/bold] {_status(j['status'])}: {j['strategy']} on "
        f"{j['base_model']}, epoch {p['epoch']}/{p['total_epochs']} ({p['fraction']:.0%})"
    )
    for label, key in (
        ("target", "target_dataset_id"),
        ("labelled target", "labeled_target_dataset_id"),
        ("eval", "eval_dataset_id"),
    ):
        if j.get(key):
            console.print(f"  {label} dataset {j[key]}")
    latest = j.get("latest_metrics") or {}
    if latest:
        line = (
            f"  val accuracy {_pct(latest.get('val_accuracy'))}, "
            f"train loss {latest.get('train_loss', float('nan')):.4f}"
        )
        if latest.get("eval_accuracy") is not None:
            line += f", eval accuracy {_pct(latest['eval_accuracy'])}"
        extra = _extra(latest.get("extra") or {})
        console.print(line + (f", {extra}" if extra else ""))
    for w in j.get("warnings") or []:
        console.print(f"  [yellow]warning {w['code']}[/yellow]: {escape(w['message'])}")
    if j.get("error"):
        console.print(f"  [red]{j.get('error_code')}[/red]: {j['error']}")
    if j.get("model_id"):
        console.print(f"  model [bold]{j['model_id']}[/bold]")


def jobs(console: Console, page: dict[str, Any]) -> None:
    table = _table(f"jobs ({page['total']})")
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("status", "strategy", "base model", "progress", "val acc"):
        table.add_column(column)
    for j in page["items"]:
        latest = j.get("latest_metrics") or {}
        table.add_row(
            j["id"], _status(j["status"]), j["strategy"], j["base_model"],
            f"{j['progress']['fraction']:.0%}", _pct(latest.get("val_accuracy")),
        )  # fmt: skip
    console.print(table)


# A strategy's own per-epoch figures (EpochMetricsOut.extra), in short: dann's are accuracies
# and losses; anything else shows under its own name.
EXTRA_LABELS = {
    "domain_accuracy": "domain acc",
    "domain_loss": "domain loss",
    "classification_loss": "cls loss",
    "target_classification_loss": "target cls loss",
}


def _figure(key: str, value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return _pct(value) if key.endswith("accuracy") else f"{value:.4f}"


def _extra(extra: dict[str, Any]) -> str:
    """``domain acc 52.0%, domain loss 0.6931, ...``: one line for a job's latest epoch."""
    return ", ".join(f"{EXTRA_LABELS.get(k, k)} {_figure(k, v)}" for k, v in extra.items())


def metrics_table(console: Console, epochs: list[dict[str, Any]]) -> None:
    """One row per epoch; eval loss/acc when the job has an eval set, and the strategy's extra
    figures (dann: domain accuracy, ...) as columns when it reports any."""
    if not epochs:
        return
    with_eval = any(m.get("eval_accuracy") is not None for m in epochs)
    extras = list(dict.fromkeys(k for m in epochs for k in m.get("extra") or {}))
    table = _table("per epoch")
    columns = ["epoch", "phase", "train loss", "val loss", "val acc"]
    columns += ["eval loss", "eval acc"] if with_eval else []
    columns += [EXTRA_LABELS.get(k, k) for k in extras]
    for column in (*columns, "lr", "img/s", "s"):
        table.add_column(column, justify="right")
    for m in epochs:
        cells = [
            str(m["epoch"]), m["phase"], f"{m['train_loss']:.4f}", f"{m['val_loss']:.4f}",
            _pct(m["val_accuracy"]),
        ]  # fmt: skip
        if with_eval:
            cells += [_figure("eval_loss", m.get("eval_loss")), _pct(m.get("eval_accuracy"))]
        cells += [_figure(k, (m.get("extra") or {}).get(k)) for k in extras]
        table.add_row(
            *cells, f"{m['learning_rate']:.2g}", f"{m['images_per_second']:.0f}",
            f"{m['seconds']:.1f}",
        )  # fmt: skip
    console.print(table)


def models(console: Console, page: dict[str, Any]) -> None:
    table = _table(f"model versions ({page['total']})")
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("name", "version", "strategy", "base model", "val acc"):
        table.add_column(column)
    for m in page["items"]:
        table.add_row(
            m["id"], m["name"], str(m["version"]), m["strategy"], m["base_model"],
            _pct(m["metrics"].get("val_accuracy")),
        )  # fmt: skip
    console.print(table)


def model(console: Console, m: dict[str, Any]) -> None:
    metrics = m.get("metrics") or {}
    console.print(
        f"model [bold]{m['name']} v{m['version']}[/bold] {m['id']}: {m['strategy']} on "
        f"{m['base_model']}, val accuracy {_pct(metrics.get('val_accuracy'))} "
        f"({metrics.get('num_val_images', '?')} images)"
    )
    console.print(f"  lineage: dataset {m['dataset_id']} -> job {m['job_id']} -> this version")
    if m.get("parent_id"):
        console.print(f"  started from model {m['parent_id']}")
    classes = m["class_names"]
    per_class = metrics.get("per_class_accuracy") or {}
    matrix = metrics.get("confusion_matrix") or []
    table = _table("per class (rows: true class, columns: predicted)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    show_matrix = bool(matrix) and len(classes) <= 12  # wider matrices do not fit a terminal
    if show_matrix:
        for i in range(len(classes)):
            table.add_column(str(i), justify="right")
    for i, name in enumerate(classes):
        cells = [str(v) for v in matrix[i]] if show_matrix else []
        table.add_row(f"{i} {name}" if show_matrix else name, _pct(per_class.get(name)), *cells)
    console.print(table)
    leak = metrics.get("val_leak_fraction")
    if leak:
        console.print(
            f"[yellow]val leakage[/yellow]: {leak:.1%} of the validation images have a copy in "
            "train, so val accuracy is optimistic"
        )
    evaluation = metrics.get("eval")
    if evaluation:
        eval_report(console, classes, evaluation)
    pad = metrics.get("proxy_a_distance")
    if pad:
        console.print(
            f"proxy A-distance (source vs target features, 0 = indistinguishable, 2 = apart): "
            f"before {_figure('', pad.get('before'))}, after {_figure('', pad.get('after'))}"
        )
    weights = metrics.get("instance_weights")
    if weights:
        console.print(
            "instance weights: min/p10/median/p90/max "
            + "/".join(_figure("", weights.get(k)) for k in ("min", "p10", "median", "p90", "max"))
            + f", effective sample size {_figure('', weights.get('effective_sample_size'))}"
            + f" ({_pct(weights.get('effective_fraction'))} of the source)"
        )


def eval_report(console: Console, classes: list[str], evaluation: dict[str, Any]) -> None:
    """The job's eval dataset scored with the final model: accuracy, per class, the matrix."""
    console.print(
        f"eval dataset: accuracy [bold]{_pct(evaluation.get('accuracy'))}[/bold] "
        f"({evaluation.get('num_images', '?')} images)"
    )
    per_class = evaluation.get("per_class_accuracy") or {}
    matrix = evaluation.get("confusion_matrix") or []
    names = classes if len(matrix) == len(classes) else list(per_class)
    show_matrix = bool(matrix) and len(matrix) == len(names) and len(names) <= 12
    table = _table("eval per class (rows: true class, columns: predicted)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    if show_matrix:
        for i in range(len(names)):
            table.add_column(str(i), justify="right")
    for i, name in enumerate(names):
        cells = [str(v) for v in matrix[i]] if show_matrix else []
        label = f"{i} {name}" if show_matrix else name
        table.add_row(escape(label), _pct(per_class.get(name)), *cells)
    console.print(table)


def alias(console: Console, a: dict[str, Any]) -> None:
    console.print(f"[bold]{a['ref']}[/bold] -> v{a['version']} ({a['model_id']})")


def labels(console: Console, m: dict[str, Any]) -> None:
    aliases = ", ".join(f"@{a}" for a in m.get("aliases") or []) or "none"
    tags = ", ".join(m.get("tags") or []) or "none"
    console.print(f"model [bold]{m['name']} v{m['version']}[/bold] {m['id']}")
    console.print(f"  aliases: {aliases}; tags: {tags}")


def predictions(console: Console, result: dict[str, Any]) -> None:
    table = _table("predictions")
    for column in ("image", "class", "probability"):
        table.add_column(column)
    for item in result["predictions"]:
        for rank, score in enumerate(item["top_k"]):
            table.add_row(
                item["filename"] if rank == 0 else "",
                f"[bold]{score['label']}[/bold]" if rank == 0 else score["label"],
                f"{score['probability']:.3f}",
            )
    console.print(table)


class JobProgress:
    """Two live bars from the job's events: epochs, and steps of the current epoch with the last
    epoch's loss and accuracy; rich estimates the time left from their rates."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.epochs: TaskID | None = None
        self.steps: TaskID | None = None
        self.status = ""
        self.info = ""

    def __enter__(self) -> JobProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def update(self, event: Event) -> None:
        data = event.data
        if event.event == "status":
            self.status = data["status"]
            if self.epochs is None:
                total = data["progress"]["total_epochs"] or None
                self.epochs = self.progress.add_task("epochs", total=total, info=self.status)
                self.steps = self.progress.add_task("steps", total=None, info="")
            else:
                self.progress.update(self.epochs, info=self.status)
        elif event.event == "progress" and self.epochs is not None and self.steps is not None:
            done = self.progress.tasks[self.epochs].completed  # never backwards
            self.progress.update(
                self.epochs, total=data["total_epochs"], completed=max(data["epoch"] - 1, done)
            )
            self.progress.update(
                self.steps,
                total=data["total_steps"],
                completed=data["step"],
                description=f"epoch {data['epoch']}",
            )
        elif event.event == "metrics" and self.epochs is not None and self.steps is not None:
            self.info = f"loss {data['train_loss']:.4f}  val acc {_pct(data['val_accuracy'])}"
            if data.get("eval_accuracy") is not None:
                self.info += f"  eval acc {_pct(data['eval_accuracy'])}"
            domain = (data.get("extra") or {}).get("domain_accuracy")
            if domain is not None:
                self.info += f"  domain acc {_pct(domain)}"
            self.progress.update(self.epochs, completed=data["epoch"], info=self.info)
        elif event.event == "end" and self.epochs is not None and self.steps is not None:
            self.progress.update(self.epochs, info=f"{self.info}  {data['status']}")
            if data["status"] == "succeeded":  # the last step write may predate the last step
                for task in (self.epochs, self.steps):
                    self.progress.update(task, completed=self.progress.tasks[task].total)
                total_epochs = data["progress"]["total_epochs"]
                self.progress.update(self.steps, description=f"epoch {total_epochs}")
