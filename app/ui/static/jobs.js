// Jobs: submit one, the list, and one job live: progress, loss and accuracy curves over SSE.
import { api, streamEvents } from "./api.js";
import { lineChart, svg } from "./charts.js";
import { h, table, when, short, pct, num, badge, bar, setBar, toast, errorText } from "./dom.js";
import { stat } from "./datasets.js";

const ACTIVE = ["queued", "running"];

function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

export async function jobsPage(view, signal) {
  const [jobs, datasets, strategies] = await Promise.all([
    api("/v1/jobs", { query: { limit: 100 } }),
    api("/v1/datasets", { query: { limit: 200 } }),
    api("/v1/strategies"),
  ]);
  const preselected = sessionStorage.getItem("transferlab.dataset");
  const preselectedTarget = sessionStorage.getItem("transferlab.target");
  sessionStorage.removeItem("transferlab.dataset");
  sessionStorage.removeItem("transferlab.target");
  const labelled = datasets.items.filter((d) => (d.kind || "labelled") === "labelled");
  const describe = (d) => d.kind === "unlabeled" ? `${d.name} (${d.num_images} images, unlabeled)` : `${d.name} (${d.num_images} images, ${d.num_classes} classes)`;
  const options = (items, none) => [none ? h("option", { value: "" }, none) : null, ...items.map((d) => h("option", { value: d.id }, describe(d)))];
  const dataset = h("select", { name: "dataset_id", required: true },
    labelled.map((d) => h("option", { value: d.id, selected: d.id === preselected }, describe(d))));
  const trainStrategies = strategies.filter((s) => s.kind === "train");
  const strategy = h("select", { name: "strategy" },
    trainStrategies.map((s) => h("option", { value: s.name, selected: s.name === (preselectedTarget ? "dann" : "finetune") }, s.name)));
  // Domain adaptation: the target is any dataset (unlabeled ones first: the usual case), the
  // labelled target and the eval set are labelled ones. Shown only for strategies that take them.
  const byKind = [...datasets.items].sort((a, b) => (a.kind === "unlabeled" ? 0 : 1) - (b.kind === "unlabeled" ? 0 : 1));
  const target = h("select", { name: "target_dataset_id", id: "target-dataset" }, options(byKind));
  if (preselectedTarget) target.value = preselectedTarget;
  const labelledTarget = h("select", { name: "labeled_target_dataset_id", id: "labeled-target-dataset" }, options(labelled, "none"));
  const evaluation = h("select", { name: "eval_dataset_id", id: "eval-dataset" }, options(labelled, "none"));
  const targetField = field("Target dataset", target);
  const labelledTargetField = field("Labelled target", labelledTarget);
  const adapt = () => {
    const chosen = trainStrategies.find((s) => s.name === strategy.value) || {};
    targetField.hidden = !chosen.needs_target;
    target.required = !!chosen.needs_target;
    labelledTargetField.hidden = !chosen.takes_labeled_target;
  };
  strategy.addEventListener("change", adapt);
  const base = h("input", { name: "base_model", value: "timm:resnet18", required: true, title: "timm:<name> or model:<version id>" });
  const pretrained = h("input", { type: "checkbox", name: "pretrained", checked: true });
  const epochs = h("input", { type: "number", name: "epochs", min: 1, max: 1000, value: 5 });
  const size = h("input", { type: "number", name: "image_size", min: 16, max: 1024, placeholder: "model default" });
  const batch = h("input", { type: "number", name: "batch_size", min: 1, max: 4096, value: 32 });
  const lr = h("input", { type: "number", name: "learning_rate", step: "any", min: 0, placeholder: "default" });
  const form = h("form", { class: "grid-form", id: "job-form" },
    field("Dataset", dataset), field("Strategy", strategy), targetField, labelledTargetField,
    field("Eval dataset", evaluation), field("Base model", base),
    h("label", { class: "field check" }, pretrained, h("span", {}, "Pretrained weights")),
    field("Epochs", epochs), field("Image size", size), field("Batch size", batch), field("Learning rate", lr),
    h("div", { class: "actions" }, h("button", { type: "submit", disabled: !labelled.length }, "Start job")));
  adapt();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const hyperparameters = { epochs: Number(epochs.value), batch_size: Number(batch.value) };
    if (size.value) hyperparameters.image_size = Number(size.value);
    if (lr.value) hyperparameters.learning_rate = Number(lr.value);
    try {
      const spec = {
        strategy: strategy.value, base_model: base.value.trim(), pretrained: pretrained.checked,
        dataset_id: dataset.value, hyperparameters,
      };
      if (!targetField.hidden && target.value) spec.target_dataset_id = target.value;
      if (!labelledTargetField.hidden && labelledTarget.value) spec.labeled_target_dataset_id = labelledTarget.value;
      if (evaluation.value) spec.eval_dataset_id = evaluation.value;
      const job = await api("/v1/jobs", { method: "POST", json: spec });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      toast(errorText(error));
    }
  });
  const list = h("div", { id: "job-list" });
  const render = (page) => list.replaceChildren(table(["Job", "Status", "Strategy", "Base model", "Progress", "Val acc", "Created"],
    page.items.map((j) => [
      h("a", { href: `#/jobs/${j.id}` }, short(j.id)), badge(j.status), j.strategy, h("code", {}, j.base_model),
      bar(j.progress.fraction, `${Math.round(j.progress.fraction * 100)}%`), pct(j.latest_metrics?.val_accuracy), when(j.created_at),
    ]), { empty: "No job yet." }));
  render(jobs);
  view.replaceChildren(
    h("h1", {}, "Jobs"),
    h("section", { class: "card" }, h("details", { open: !jobs.total || !!preselected || !!preselectedTarget }, h("summary", {}, h("h2", {}, "New job")),
      labelled.length ? form : h("p", {}, "Upload a labelled dataset first: ", h("a", { href: "#/datasets" }, "Datasets"), "."))),
    h("section", { class: "card" }, h("h2", {}, `All jobs (${jobs.total})`), list),
  );
  // While some job runs, refresh the list every 3 s (the job page itself is live over SSE).
  const timer = setInterval(async () => {
    if (!jobs.items.some((j) => ACTIVE.includes(j.status))) return;
    try { render(await api("/v1/jobs", { query: { limit: 100 } })); } catch { /* next tick */ }
  }, 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

export async function jobPage(view, signal, id) {
  let job = await api(`/v1/jobs/${id}`);
  const metrics = [];
  const title = h("h1", {}, `Job ${short(id)} `, badge(job.status));
  const progress = bar(job.progress.fraction);
  const progressText = h("span", { class: "muted", id: "progress-text" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel" }, "Cancel");
  const facts = h("div", { class: "stats", id: "job-facts" });
  const error = h("p", { class: "error", id: "job-error" });
  const warnings = h("div", { id: "job-warnings" });
  const loss = svg("svg", { id: "loss-chart" });
  const acc = svg("svg", { id: "accuracy-chart" });
  const domain = svg("svg", { id: "extra-chart" });
  const domainCard = h("div", { class: "card", id: "extra-card", hidden: true }, h("h2", {}, "Domain adaptation"),
    h("p", { class: "muted" }, "The domain discriminator's accuracy: near 50% once the features no longer tell source from target."), domain);
  const rows = h("div", { id: "metrics-table" });
  cancel.addEventListener("click", async () => {
    try { job = await api(`/v1/jobs/${id}/cancel`, { method: "POST" }); update(); } catch (e) { toast(errorText(e)); }
  });

  function update() {
    title.replaceChildren(`Job ${short(id)} `, badge(job.status));
    cancel.hidden = !ACTIVE.includes(job.status) || job.cancel_requested;
    const p = job.progress;
    setBar(progress, p.fraction);
    progressText.textContent = job.status === "running"
      ? `epoch ${p.epoch} of ${p.total_epochs}, step ${p.step} of ${p.total_steps}` + eta(job)
      : `${Math.round(p.fraction * 100)}%`;
    facts.replaceChildren(
      stat("Strategy", job.strategy), stat("Base model", job.base_model),
      stat("Dataset", job.dataset_id ? h("a", { href: `#/datasets/${job.dataset_id}` }, short(job.dataset_id)) : "deleted"),
      ...[["Target dataset", job.target_dataset_id], ["Labelled target", job.labeled_target_dataset_id], ["Eval dataset", job.eval_dataset_id]]
        .filter(([, ds]) => ds).map(([label, ds]) => stat(label, h("a", { href: `#/datasets/${ds}` }, short(ds)))),
      stat("Model", job.model_id ? h("a", { href: `#/models/${job.model_id}`, id: "model-link" }, short(job.model_id)) : "–"),
      stat("Running time", job.duration_seconds != null ? `${job.duration_seconds.toFixed(1)} s` : "–"),
      stat("Created", when(job.created_at)));
    error.textContent = job.error ? `${job.error_code || "error"}: ${job.error}` : "";
    const list = job.warnings || [];
    warnings.replaceChildren(...(list.length ? [h("div", { class: "warnings", role: "alert" }, h("ul", {},
      list.map((w) => h("li", { "data-code": w.code }, h("span", { class: "badge warn" }, w.code), " ", w.message))))] : []));
  }

  function draw() {
    const total = job.progress.total_epochs || job.spec?.hyperparameters?.epochs || 1;
    lineChart(loss, [
      { label: "train loss", cls: "s0", points: metrics.map((m) => [m.epoch, m.train_loss]) },
      { label: "val loss", cls: "s1", points: metrics.map((m) => [m.epoch, m.val_loss]) },
    ], { xMax: total, yLabel: "loss" });
    const withEval = metrics.some((m) => m.eval_accuracy != null) || !!job.eval_dataset_id;
    lineChart(acc, [
      { label: "val accuracy", cls: "s2", points: metrics.map((m) => [m.epoch, m.val_accuracy]) },
      ...(withEval ? [{ label: "eval accuracy", cls: "s3", points: metrics.map((m) => [m.epoch, m.eval_accuracy ?? NaN]) }] : []),
    ], { xMax: total, yMax: 1, yLabel: "accuracy", percent: true });
    // The strategy's own figures (dann: domain_accuracy, ...): accuracies charted, all tabled.
    const extras = [...new Set(metrics.flatMap((m) => Object.keys(m.extra || {})))];
    const extraAcc = extras.filter((k) => k.endsWith("accuracy"));
    domainCard.hidden = !extraAcc.length;
    if (extraAcc.length) {
      lineChart(domain, extraAcc.map((k, i) => ({ label: k.replaceAll("_", " "), cls: `s${4 + (i % 2)}`, points: metrics.map((m) => [m.epoch, m.extra?.[k] ?? NaN]) })),
        { xMax: total, yMax: 1, yLabel: "accuracy", percent: true });
    }
    const figure = (k, v) => (k.endsWith("accuracy") ? pct(v) : num(v));
    rows.replaceChildren(table(["Epoch", "Phase", "Train loss", "Val loss", "Val acc", ...(withEval ? ["Eval loss", "Eval acc"] : []),
      ...extras.map((k) => k.replaceAll("_", " ")), "LR", "Images/s", "Seconds"],
      metrics.map((m) => [m.epoch, m.phase, num(m.train_loss), num(m.val_loss), pct(m.val_accuracy),
        ...(withEval ? [num(m.eval_loss ?? NaN), pct(m.eval_accuracy ?? NaN)] : []),
        ...extras.map((k) => figure(k, m.extra?.[k] ?? NaN)),
        m.learning_rate.toPrecision(2), Math.round(m.images_per_second), num(m.seconds, 1)]),
      { empty: "No epoch finished yet." }));
  }

  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", short(id)),
    h("div", { class: "title-row" }, title, cancel),
    h("section", { class: "card" }, progress, progressText, error, warnings, facts),
    h("section", { class: "charts" },
      h("div", { class: "card" }, h("h2", {}, "Loss"), loss),
      h("div", { class: "card" }, h("h2", {}, job.eval_dataset_id ? "Validation and eval accuracy" : "Validation accuracy"), acc),
      domainCard),
    h("section", { class: "card" }, h("h2", {}, "Per epoch"), rows),
  );
  update();
  draw();
  // status, progress, metrics and end arrive live; a finished job's stream replays its epochs.
  streamEvents(`/v1/jobs/${id}/events`, (event, data) => {
    if (event === "status" || event === "end") job = data;
    else if (event === "progress") job = { ...job, progress: data, duration_seconds: data.duration_seconds };
    else if (event === "metrics") {
      metrics.push(data);
      draw();
    }
    update();
  }, signal).catch((e) => signal.aborted || toast(errorText(e)));
}

function eta(job) {
  const f = job.progress.fraction;
  if (!(f > 0.02) || !job.duration_seconds) return "";
  const left = (job.duration_seconds * (1 - f)) / f;
  return ` · about ${left < 90 ? `${Math.round(left)} s` : `${Math.round(left / 60)} min`} left`;
}
