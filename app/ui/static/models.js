// Model versions: the list; one version's metrics, per-class table, confusion matrix, lineage,
// download, and prediction by drag-and-drop.
import { api, download } from "./api.js";
import { heatmap } from "./charts.js";
import { h, table, when, short, pct, toast, errorText, dropZone } from "./dom.js";
import { stat } from "./datasets.js";

export async function modelsPage(view) {
  const page = await api("/v1/models", { query: { limit: 100 } });
  view.replaceChildren(
    h("h1", {}, "Models"),
    h("section", { class: "card" }, h("h2", {}, `All versions (${page.total})`),
      table(["Model", "Strategy", "Base model", "Val acc", "Classes", "Created"], page.items.map((m) => [
        h("a", { href: `#/models/${m.id}` }, `${m.name} v${m.version}`), m.strategy, h("code", {}, m.base_model),
        pct(m.metrics?.val_accuracy), m.class_names.length, when(m.created_at),
      ]), { empty: "No model yet: a job that succeeds registers one." })),
  );
}

export async function modelPage(view, signal, id) {
  const [m, jobs] = await Promise.all([api(`/v1/models/${id}`), api("/v1/jobs", { query: { limit: 500 } })]);
  const metrics = m.metrics || {};
  const matrix = metrics.confusion_matrix || [];
  const perClass = metrics.per_class_accuracy || {};
  const children = jobs.items.filter((j) => j.base_model === `model:${id}`);

  const rows = m.class_names.map((c, i) => {
    const row = matrix[i] || [];
    const support = row.reduce((a, b) => a + b, 0);
    let worst = -1;
    row.forEach((v, j) => { if (j !== i && v > 0 && (worst < 0 || v > row[worst])) worst = j; });
    return [c, pct(perClass[c]), support, worst >= 0 ? `${m.class_names[worst]} (${row[worst]})` : "–"];
  });

  const downloadButton = h("button", { type: "button", id: "download" }, "Download");
  downloadButton.addEventListener("click", () => download(`/v1/models/${id}/download`, `${m.name}-v${m.version}.zip`).catch((e) => toast(errorText(e))));

  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / ", `${m.name} v${m.version}`),
    h("div", { class: "title-row" }, h("h1", {}, `${m.name} v${m.version}`), downloadButton),
    h("div", { class: "stats" },
      stat("Val accuracy", pct(metrics.val_accuracy)), stat("Val images", metrics.num_val_images ?? "–"),
      stat("Epochs", metrics.epochs ?? "–"), stat("Training", metrics.train_seconds != null ? `${metrics.train_seconds.toFixed(1)} s` : "–"),
      stat("Strategy", m.strategy), stat("Base model", m.base_model)),
    h("section", { class: "card" }, h("h2", {}, "Lineage"), lineage(m, children)),
    predictCard(m),
    h("section", { class: "card" }, h("h2", {}, "Per class"), table(["Class", "Accuracy", "Val images", "Most confused with"], rows)),
    h("section", { class: "card" }, h("h2", {}, "Confusion matrix"),
      matrix.length ? h("div", { class: "scroll", id: "confusion" }, heatmap(m.class_names, matrix)) : h("p", { class: "empty" }, "No validation images.")),
  );
}

function lineage(m, children) {
  const step = (label, content) => h("li", {}, h("span", { class: "label" }, label), content);
  const libs = Object.entries(m.lineage?.libraries || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  const steps = [
    m.parent_id
      ? step("Started from", h("a", { href: `#/models/${m.parent_id}` }, `model ${short(m.parent_id)}`))
      : step("Backbone", h("code", {}, m.base_model + (m.lineage?.pretrained ? " (pretrained)" : ""))),
    step("Dataset", m.dataset_id ? h("a", { href: `#/datasets/${m.dataset_id}` }, short(m.dataset_id)) : "deleted"),
    step("Job", m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, short(m.job_id)) : "–"),
    step("This version", h("strong", { title: libs }, `${m.name} v${m.version}`)),
    step("Jobs started from it", children.length
      ? h("span", {}, children.map((j, i) => [i ? ", " : "", h("a", { href: `#/jobs/${j.id}` }, `${short(j.id)} (${j.strategy}, ${j.status})`)]))
      : h("span", { class: "muted" }, "none yet")),
  ];
  const arrow = () => h("li", { class: "arrow", "aria-hidden": "true" }, "→");
  return h("ol", { class: "lineage", id: "lineage" }, steps.flatMap((s, i) => (i ? [arrow(), s] : [s])));
}

function predictCard(m) {
  const topK = h("input", { type: "number", min: 1, max: Math.max(1, m.class_names.length), value: Math.min(3, m.class_names.length), id: "top-k" });
  const results = h("div", { class: "predictions", id: "predictions" });
  const zone = dropZone({
    accept: "image/*", multiple: true, name: "files",
    label: "Drop images here, or click to choose",
    onFiles: async (files) => {
      const form = new FormData();
      for (const f of files) form.append("files", f, f.name);
      results.replaceChildren(h("p", { class: "muted" }, "Classifying…"));
      try {
        const answer = await api(`/v1/models/${m.id}/predict`, { method: "POST", body: form, query: { top_k: topK.value } });
        results.replaceChildren(...answer.predictions.map((p, i) => {
          const url = URL.createObjectURL(files[i]);
          const img = h("img", { src: url, alt: p.filename });
          img.addEventListener("load", () => URL.revokeObjectURL(url));
          return h("figure", { class: "prediction" }, img,
            h("figcaption", {}, h("strong", {}, p.filename),
              h("ol", {}, p.top_k.map((s) => {
                const fill = h("span", { class: "fill" });
                fill.style.width = `${(s.probability * 100).toFixed(1)}%`;
                return h("li", {}, h("span", { class: "cls" }, s.label), h("span", { class: "progress" }, fill), h("span", { class: "p" }, pct(s.probability)));
              }))));
        }));
      } catch (error) {
        results.replaceChildren();
        toast(errorText(error));
      }
    },
  });
  zone.id = "predict-drop";
  return h("section", { class: "card" }, h("h2", {}, "Predict"),
    h("div", { class: "row" }, h("label", { for: "top-k" }, "Top"), topK, h("span", { class: "muted" }, "classes per image")),
    zone, results);
}
