// Model versions: the list; one version's metrics, per-class table, confusion matrix, lineage,
// registry (aliases, tags, archive, delete), download, and prediction by drag-and-drop.
import { api, download } from "./api.js";
import { heatmap } from "./charts.js";
import { h, SLUG, table, when, short, pct, num, toast, errorText, dropZone } from "./dom.js";
import { stat } from "./datasets.js";

export async function modelsPage(view) {
  const archived = h("input", { type: "checkbox", id: "include-archived" });
  const list = h("div", { id: "model-list" });
  const title = h("h2", {}, "All versions");
  const load = async () => {
    const page = await api("/v1/models", { query: { limit: 100, include_archived: archived.checked || null } });
    title.textContent = `All versions (${page.total})`;
    list.replaceChildren(table(["Model", "Aliases", "Tags", "Strategy", "Base model", "Val acc", "Classes", "Created"], page.items.map((m) => [
      h("a", { href: `#/models/${m.id}` }, `${m.name} v${m.version}`),
      labels(m.aliases.map((a) => `@${a}`), "alias"),
      [labels(m.tags, "tag"), m.archived_at ? h("span", { class: "badge" }, "archived") : null],
      m.strategy, h("code", {}, m.base_model), pct(m.metrics?.val_accuracy), m.class_names.length, when(m.created_at),
    ]), { empty: "No model version here: a job that succeeds registers one." }));
  };
  archived.addEventListener("change", () => load().catch((e) => toast(errorText(e))));
  await load();
  // Open a version by reference: name@alias, name:version or an id (GET /v1/models/{ref}).
  const ref = h("input", { name: "ref", id: "model-ref", required: true, autocomplete: "off", maxlength: 201,
    placeholder: "digits@prod, digits:3 or a version id", pattern: `${SLUG}([@:]${SLUG})?`,
    title: "name@alias, name:version or a version id" });
  const lookup = h("form", { class: "lookup", id: "model-lookup" }, h("label", { for: "model-ref" }, "Open"), ref, h("button", { type: "submit" }, "Open"));
  lookup.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/models/${encodeURIComponent(ref.value.trim())}`;
  });
  view.replaceChildren(
    h("h1", {}, "Models"),
    h("section", { class: "card" }, h("h2", {}, "Open a version"), lookup,
      h("p", { class: "muted" }, "By alias (", h("code", {}, "name@alias"), "), by number (", h("code", {}, "name:version"), ") or by id.")),
    h("section", { class: "card" }, h("div", { class: "title-row" }, title,
      h("label", { class: "check", for: "include-archived" }, archived, "Show archived versions")), list),
  );
}

// Aliases and tags as chips (text only; the version page has the buttons that change them).
function labels(names, cls) {
  return h("span", { class: "chips" }, names.map((n) => h("span", { class: `chip ${cls}` }, n)));
}

export async function modelPage(view, signal, ref) {
  const [m, jobs] = await Promise.all([api(`/v1/models/${encodeURIComponent(ref)}`), api("/v1/jobs", { query: { limit: 500 } })]);
  const id = m.id; // the reference (name@alias, name:version) resolved to this version
  const opened = ref !== id ? h("span", { class: "muted", id: "opened-by" }, ` (opened as ${ref})`) : null;
  const registry = await registryCard(m, () => location.replace("#/models"));
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
    h("p", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / ", `${m.name} v${m.version}`, opened),
    h("div", { class: "title-row" }, h("h1", {}, `${m.name} v${m.version}`), downloadButton),
    registry.summary,
    h("div", { class: "stats" },
      stat("Val accuracy", pct(metrics.val_accuracy)), stat("Val images", metrics.num_val_images ?? "–"),
      stat("Epochs", metrics.epochs ?? "–"), stat("Training", metrics.train_seconds != null ? `${metrics.train_seconds.toFixed(1)} s` : "–"),
      ...(metrics.eval ? [stat("Eval accuracy", h("span", { id: "eval-accuracy" }, pct(metrics.eval.accuracy)))] : []),
      ...(metrics.proxy_a_distance ? [stat("Proxy A-distance", h("span", { id: "proxy-a-distance" }, `${num(metrics.proxy_a_distance.before, 2)} → ${num(metrics.proxy_a_distance.after, 2)}`))] : []),
      stat("Strategy", m.strategy), stat("Base model", m.base_model)),
    ...(metrics.val_leak_fraction ? [h("section", { class: "card warnings", id: "model-warnings", role: "alert" },
      h("p", {}, h("span", { class: "badge warn" }, "val_leakage"), ` ${pct(metrics.val_leak_fraction)} of the validation images have a copy in train: the val accuracy is optimistic.`))] : []),
    h("section", { class: "card" }, h("h2", {}, "Lineage"), lineage(m, children)),
    registry.card,
    predictCard(m),
    h("section", { class: "card" }, h("h2", {}, "Per class"), table(["Class", "Accuracy", "Val images", "Most confused with"], rows)),
    h("section", { class: "card" }, h("h2", {}, "Confusion matrix"),
      matrix.length ? h("div", { class: "scroll", id: "confusion" }, heatmap(m.class_names, matrix)) : h("p", { class: "empty" }, "No validation images.")),
    // replaceChildren() is the DOM's own: a null would show as the text "null".
    ...(metrics.eval ? [evalCard(m, metrics.eval)] : []),
    ...(metrics.proxy_a_distance || metrics.instance_weights ? [adaptationCard(metrics)] : []),
  );
}

// The job's eval dataset (eval_dataset_id) scored with the final model: as the val set above.
function evalCard(m, ev) {
  const matrix = ev.confusion_matrix || [];
  const perClass = ev.per_class_accuracy || {};
  const names = matrix.length === m.class_names.length ? m.class_names : Object.keys(perClass);
  const rows = names.map((c, i) => [c, pct(perClass[c]), (matrix[i] || []).reduce((a, b) => a + b, 0)]);
  return h("section", { class: "card", id: "eval" },
    h("h2", {}, `Eval dataset: ${pct(ev.accuracy)} on ${ev.num_images} images`),
    h("p", { class: "muted" }, "A labelled set scored every epoch and with the final model (the job's eval dataset), apart from the validation split."),
    table(["Class", "Accuracy", "Eval images"], rows),
    matrix.length && matrix.length === names.length
      ? h("div", { class: "scroll", id: "eval-confusion" }, heatmap(names, matrix)) : null);
}

// Domain adaptation: how far apart source and target features are (proxy A-distance), and the
// instance weights' spread.
function adaptationCard(metrics) {
  const pad = metrics.proxy_a_distance;
  const w = metrics.instance_weights;
  return h("section", { class: "card", id: "adaptation" }, h("h2", {}, "Domain adaptation"),
    pad ? [h("p", {}, "Proxy A-distance between source and target features (0: indistinguishable, 2: fully apart): ",
      h("strong", { id: "pad-before" }, num(pad.before, 3)), " before training, ", h("strong", { id: "pad-after" }, num(pad.after, 3)), " after.")] : null,
    w ? [h("h3", {}, "Instance weights"),
      table(["min", "p10", "median", "p90", "max", "Effective sample size"], [[num(w.min, 3), num(w.p10, 3), num(w.median, 3), num(w.p90, 3), num(w.max, 3),
        `${num(w.effective_sample_size, 1)} (${pct(w.effective_fraction)})`]])] : null);
}

// The registry for one version: its aliases (point one here, move one here, remove one), its
// tags, archive and delete. Every change goes through the API and the card redraws from the
// API's answer; a refusal (409 model_aliased, model_archived, ...) is shown in the card.
async function registryCard(m, onDeleted) {
  const path = (...parts) => `/v1/models/${parts.map(encodeURIComponent).join("/")}`;
  const summary = h("div", { class: "chips", id: "model-labels" });
  const error = h("p", { class: "error", id: "registry-error", role: "alert", hidden: true });
  const body = h("div", { class: "registry" });
  const card = h("section", { class: "card", id: "registry" }, h("h2", {}, "Registry"), error, body);
  let model = m;

  // Runs one change; on success redraws from the API (the alias list changes with the version).
  const act = async (button, change) => {
    error.hidden = true;
    if (button) button.disabled = true;
    try {
      const answer = await change();
      if (answer === "deleted") return onDeleted();
      await draw();
    } catch (e) {
      error.textContent = errorText(e); // e.g. "cannot delete digits:1: digits@prod point(s) at it; ... (model_aliased)"
      error.hidden = false;
      if (button) button.disabled = false;
    }
  };
  const button = (label, attrs, change) => {
    const b = h("button", { type: "button", ...attrs }, label);
    b.addEventListener("click", () => act(b, change));
    return b;
  };
  const chip = (text, cls, removeLabel, change) => h("span", { class: `chip ${cls}` }, text,
    button("×", { "aria-label": removeLabel, title: removeLabel }, change));
  const slugInput = (name, placeholder, list) => h("input", {
    name, placeholder, required: true, list, autocomplete: "off", maxlength: 100,
    pattern: SLUG, title: "letters, digits, . _ - (starting with a letter or digit)",
  });
  const form = (id, input, label, change) => {
    const f = h("form", { id }, input, h("button", { type: "submit" }, label));
    f.addEventListener("submit", (e) => {
      e.preventDefault();
      const value = input.value.trim();
      act(f.querySelector("button"), async () => { await change(value); input.value = ""; });
    });
    return f;
  };

  async function draw() {
    const [fresh, aliases, versions] = await Promise.all([
      api(path(model.id)),
      api(path(model.name, "aliases")),
      api("/v1/models", { query: { name: model.name, include_archived: true, limit: 500 } }),
    ]);
    model = fresh;
    const number = Object.fromEntries(versions.items.map((v) => [v.id, `v${v.version}`]));
    const others = aliases.filter((a) => a.model_id !== model.id);

    summary.replaceChildren(
      ...model.aliases.map((a) => h("span", { class: "chip alias", "data-alias": a }, `@${a}`)),
      ...model.tags.map((t) => h("span", { class: "chip tag", "data-tag": t }, t)),
      ...(model.archived_at ? [h("span", { class: "badge", id: "archived-badge" }, `archived ${when(model.archived_at)}`)] : []));

    const aliasInput = slugInput("alias", "e.g. prod", "alias-names");
    const tagInput = slugInput("tag", "e.g. reviewed");
    const history = h("div", { id: "alias-history" });
    const details = h("details", {}, h("summary", {}, "History of the aliases"), history);
    details.addEventListener("toggle", async () => {
      if (!details.open || history.childElementCount) return;
      try {
        const views = await Promise.all(aliases.map((a) => api(path(model.name, "aliases", a.alias))));
        const moves = views.flatMap((v) => v.history.map((e) => ({ alias: v.alias, ...e }))).sort((a, b) => b.at.localeCompare(a.at));
        const name = (mid) => (mid ? number[mid] || short(mid) : "–");
        history.replaceChildren(table(["Alias", "From", "To", "By", "When"],
          moves.map((e) => [e.alias, name(e.from_model_id), name(e.to_model_id), e.actor, when(e.at)]),
          { empty: "No alias was ever set on this model." }));
      } catch (e) {
        history.replaceChildren(h("p", { class: "error" }, errorText(e)));
      }
    });

    body.replaceChildren(
      h("div", {},
        h("h3", {}, "Aliases of this version"),
        h("div", { class: "chips", id: "alias-chips" }, model.aliases.length
          ? model.aliases.map((a) => chip(`@${a}`, "alias", `Remove the alias ${a}`, () => api(path(model.name, "aliases", a), { method: "DELETE" })))
          : h("span", { class: "muted" }, "none")),
        form("alias-form", aliasInput, "Point here", (alias) =>
          api(path(model.name, "aliases", alias), { method: "PUT", json: { model_id: model.id } })),
        h("datalist", { id: "alias-names" }, others.map((a) => h("option", { value: a.alias }))),
        h("p", { class: "muted" }, "A new alias is created; an existing one moves here. Predict by ",
          h("code", {}, `${model.name}@<alias>`), "."),
        others.length ? [h("h3", {}, `Other aliases of ${model.name}`),
          table(["Alias", "Points at", "Moved by", "When", ""], others.map((a) => [
            h("code", {}, a.ref), h("a", { href: `#/models/${a.model_id}` }, `v${a.version}`), a.updated_by, when(a.updated_at),
            button("Move here", { class: "small", "data-move": a.alias }, () =>
              api(path(model.name, "aliases", a.alias), { method: "PUT", json: { model_id: model.id } })),
          ]))] : null,
        details),
      h("div", {},
        h("h3", {}, "Tags"),
        h("div", { class: "chips", id: "tag-chips" }, model.tags.length
          ? model.tags.map((t) => chip(t, "tag", `Remove the tag ${t}`, () => api(path(model.id, "tags", t), { method: "DELETE" })))
          : h("span", { class: "muted" }, "none")),
        form("tag-form", tagInput, "Add tag", (tag) => api(path(model.id, "tags", tag), { method: "PUT" })),
        h("h3", {}, "Versions of ", model.name),
        h("p", { id: "versions" }, versions.items.slice().sort((a, b) => a.version - b.version).map((v, i) => [i ? " · " : null,
          v.id === model.id ? h("strong", {}, `v${v.version}`) : h("a", { href: `#/models/${v.id}` }, `v${v.version}`),
          v.archived_at ? h("span", { class: "muted" }, " (archived)") : null])),
        h("h3", {}, "This version"),
        h("div", { class: "row" },
          model.archived_at
            ? button("Unarchive", { class: "secondary", id: "unarchive" }, () => api(path(model.id, "unarchive"), { method: "POST" }))
            : button("Archive", { class: "secondary", id: "archive", title: "hide it from lists; it still predicts by id or name:version" },
              () => api(path(model.id, "archive"), { method: "POST" })),
          button("Delete…", { class: "danger", id: "delete" }, async () => {
            if (!confirm(`Delete ${model.name} v${model.version} and its files? Predictions by its id or ${model.name}:${model.version} stop working.`)) return null;
            await api(path(model.id), { method: "DELETE" });
            return "deleted";
          })),
        h("p", { class: "muted" }, "Archive hides it from lists and keeps it serving; delete removes it. Both are refused while an alias points at it.")),
    );
  }

  await draw();
  return { card, summary };
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
