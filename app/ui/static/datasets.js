// Datasets: upload (drag-and-drop, with progress), the list, one dataset's report.
import { api, upload } from "./api.js";
import { barChart, histogram } from "./charts.js";
import { h, SLUG, table, when, bytes, short, pct, toast, errorText, dropZone, bar, setBar } from "./dom.js";

export async function datasetsPage(view, signal) {
  const page = await api("/v1/datasets", { query: { limit: 100 } });
  const name = h("input", { name: "name", id: "dataset-name", placeholder: "default: from the file name", pattern: SLUG });
  const kind = h("select", { name: "kind", id: "dataset-kind" },
    h("option", { value: "labelled" }, "labelled: a folder per class"),
    h("option", { value: "unlabeled" }, "unlabeled: images only (a target domain)"));
  const dedupe = h("select", { name: "dedupe", id: "dataset-dedupe", title: "drop copies within a class before the dataset is stored" },
    h("option", { value: "none" }, "keep duplicates"),
    h("option", { value: "exact" }, "drop exact copies"),
    h("option", { value: "near" }, "drop near copies"));
  const hint = () => kind.value === "unlabeled"
    ? "A .zip or .tar of images in any folder layout: no classes. Domain-adaptation strategies (dann, instance_weighting) adapt to it."
    : "A .zip or .tar with one folder per class (optionally under train/ and val/).";
  const status = h("p", { class: "muted", id: "upload-status" }, hint());
  kind.addEventListener("change", () => { status.textContent = hint(); });
  const progress = bar(0);
  progress.hidden = true;
  const zone = dropZone({
    accept: ".zip,.tar,.tgz,.gz",
    label: "Drop an archive here, or click to choose one",
    onFiles: async ([file]) => {
      const form = new FormData();
      form.append("file", file, file.name);
      if (name.value.trim()) form.append("name", name.value.trim());
      if (kind.value !== "labelled") form.append("kind", kind.value);
      if (dedupe.value !== "none") form.append("dedupe", dedupe.value);
      progress.hidden = false;
      status.textContent = `Uploading ${file.name} (${bytes(file.size)})…`;
      try {
        const dataset = await upload("/v1/datasets", form, (sent, total) => {
          setBar(progress, sent / total);
          if (sent >= total) status.textContent = `Checking every image of ${file.name}…`;
        });
        location.hash = `#/datasets/${dataset.id}`;
      } catch (error) {
        progress.hidden = true;
        status.textContent = "";
        toast(errorText(error));
      }
    },
  });
  zone.id = "dataset-drop";
  view.replaceChildren(
    h("h1", {}, "Datasets"),
    h("section", { class: "card" }, h("h2", {}, "Upload a dataset"),
      h("div", { class: "row" }, h("label", { for: "dataset-name" }, "Name"), name,
        h("label", { for: "dataset-kind" }, "Kind"), kind, h("label", { for: "dataset-dedupe" }, "Dedupe"), dedupe),
      zone, progress, status),
    h("section", { class: "card" }, h("h2", {}, `All datasets (${page.total})`),
      table(["Name", "Kind", "Images", "Classes", "Size", "Uploaded"], page.items.map((d) => [
        h("a", { href: `#/datasets/${d.id}` }, d.name), h("span", { class: `chip ${d.kind === "unlabeled" ? "tag" : "alias"}`, "data-kind": d.kind || "labelled" }, d.kind || "labelled"),
        d.num_images, d.kind === "unlabeled" ? "–" : d.num_classes, bytes(d.size_bytes), when(d.created_at),
      ]), { empty: "No dataset yet: upload one above." })),
  );
}

export async function datasetPage(view, signal, id) {
  const d = await api(`/v1/datasets/${id}`);
  const report = d.report || {};
  const splits = Object.keys(report.splits || {});
  const rows = (report.classes || []).map((c) => ({ label: c, values: Object.fromEntries(splits.map((s) => [s, report.splits[s][c] || 0])) }));
  const rejected = report.rejected || [];
  const dup = report.duplicates;
  const leak = report.leakage;
  const unlabeled = d.kind === "unlabeled";
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / ", d.name),
    h("h1", {}, d.name),
    h("div", { class: "stats" },
      stat("Kind", h("span", { id: "dataset-kind-value" }, d.kind || "labelled")),
      stat("Images", d.num_images), stat("Classes", unlabeled ? "–" : d.num_classes), stat("Size", bytes(d.size_bytes)),
      stat("Skipped files", rejected.length),
      stat("Duplicate groups", dup ? Math.max(dup.near?.groups || 0, dup.exact?.groups || 0) : "–"),
      stat("Val leakage", leak && leak.val_total ? pct(leak.fraction) : "–"),
      stat("Uploaded", when(d.created_at))),
    warningsCard(report),
    unlabeled
      ? h("section", { class: "card" }, h("h2", {}, "Unlabeled"), h("p", { class: "muted" }, "Images without classes: no splits or leakage. Choose it as the target dataset of a domain-adaptation job (dann, instance_weighting)."))
      : h("section", { class: "card" }, h("h2", {}, "Images per class"), h("div", { id: "class-counts" }, barChart(rows, splits))),
    ...(dup ? [duplicatesCard(dup, leak || {}, report.dedupe)] : []),
    ...(report.statistics ? [statisticsCard(report.statistics)] : []),
    h("section", { class: "card" }, h("h2", {}, `Skipped files (${rejected.length})`),
      table(["File", "Why"], rejected.map((r) => [h("code", {}, r.path), r.reason]), { empty: "Every file was a usable image." })),
    h("section", { class: "card" }, h("h2", {}, unlabeled ? "Adapt to it" : "Train on it"),
      h("p", {}, h("a", { class: "button", href: "#/jobs", id: "train-link" }, unlabeled ? "New job (choose it as the target)" : "New job on this dataset")),
      h("p", { class: "muted" }, `id ${d.id} · sha256 ${short(d.sha256)}…`)),
  );
  view.querySelector("#train-link").addEventListener("click", () => sessionStorage.setItem(unlabeled ? "transferlab.target" : "transferlab.dataset", d.id));
}

// The report's warnings first and in colour: leakage or label conflicts change what a job's
// scores mean. A dataset uploaded before the report had them has none of these sections.
function warningsCard(report) {
  if (!report.warnings) {
    return h("section", { class: "card", id: "dataset-warnings" }, h("h2", {}, "Quality report"),
      h("p", { class: "muted" }, "This dataset was uploaded before the quality report: no duplicates, leakage or statistics for it."));
  }
  const warnings = report.warnings;
  if (!warnings.length) {
    return h("section", { class: "card", id: "dataset-warnings" }, h("h2", {}, "Warnings (0)"),
      h("p", { class: "muted" }, "None: no leakage, label conflicts, tiny or extreme images, or strong class imbalance."));
  }
  return h("section", { class: "card warnings", id: "dataset-warnings", role: "alert" }, h("h2", {}, `Warnings (${warnings.length})`),
    h("ul", {}, warnings.map((w) => h("li", { "data-code": w.code },
      h("span", { class: "badge warn" }, w.code), " ", w.message,
      w.examples.length ? h("details", {}, h("summary", {}, `${w.examples.length} example${w.examples.length > 1 ? "s" : ""}`),
        h("ul", { class: "paths" }, w.examples.map((p) => h("li", {}, h("code", {}, p))))) : null))));
}

const KINDS = { within_class: "within a class", across_classes: "across classes", across_splits: "across splits" };

function duplicatesCard(dup, leak, dedupe) {
  const counts = ["exact", "near"].filter((k) => dup[k]).map((k) => [
    k === "exact" ? "exact (same bytes)" : "near (incl. exact)", dup[k].groups, dup[k].images, dup[k].redundant,
    dup[k].within_class, dup[k].across_classes, h("span", { "data-kind": `${k}-across-splits` }, dup[k].across_splits),
  ]);
  // Example groups of each kind: the near ones (they include the exact copies) unless there are none.
  const source = dup.near?.groups ? dup.near : dup.exact || {};
  const groups = Object.entries(KINDS).flatMap(([kind, label]) =>
    ((source.examples || {})[kind] || []).map((g) => [label, h("span", { class: "paths" }, g.map((m, i) => [i ? h("br") : null, h("code", {}, m.path)]))]));
  const leakText = !leak.val_total
    ? "No val/ split: jobs hold out part of train instead, where copies within a class (above) can land on both sides."
    : leak.val_images
      ? `${leak.val_images} of ${leak.val_total} validation images (${pct(leak.fraction)}) have a copy in train (${leak.exact} of them exact): validation scores will be optimistic.`
      : `None of the ${leak.val_total} validation images has a copy in train.`;
  return h("section", { class: "card", id: "duplicates" },
    h("h2", {}, "Duplicates and leakage"),
    h("p", { class: "muted" }, `Near copies: ${dup.hash}, within ${dup.max_distance} bits.`),
    table(["Kind", "Groups", "Images", "Redundant", "Within a class", "Across classes", "Across splits"], counts),
    h("div", { id: "leakage" },
      h("h3", {}, "Train/val leakage"),
      h("p", { class: leak.val_images ? "warn-text" : "muted" }, leakText),
      leak.examples?.length ? table(["Validation image", "Copy in train"], leak.examples.map((e) => [
        h("code", {}, e.val), h("span", { class: "paths" }, e.train.map((p, i) => [i ? h("br") : null, h("code", {}, p)])),
      ])) : null),
    h("div", { id: "duplicate-groups" },
      h("h3", {}, "Example groups"),
      table(["Kind", "Images"], groups, { empty: "No duplicate images." })),
    dedupe && dedupe.mode !== "none"
      ? h("div", { id: "dedupe" }, h("h3", {}, `Removed by dedupe=${dedupe.mode} (${dedupe.removed})`),
        table(["Removed", "Kept"], dedupe.examples.map((r) => [h("code", {}, r.path), h("code", {}, r.kept)]), { empty: "Nothing: no copies within a class." }))
      : null,
  );
}

function statisticsCard(stats) {
  const sizes = stats.sizes || {};
  const spread = (s) => (s && s.min != null ? `${s.min} / ${s.median} / ${s.max} px` : "–");
  const balance = Object.entries(stats.class_balance || {}).map(([split, b]) => [
    split, `${b.largest.class} (${b.largest.images})`, `${b.smallest.class} (${b.smallest.images})`, `${b.imbalance_ratio}x`,
  ]);
  return h("section", { class: "card", id: "statistics" },
    h("h2", {}, "Statistics"),
    h("div", { class: "charts" },
      h("div", {}, h("h3", {}, "Shorter side (px)"), h("div", { id: "size-histogram" }, histogram(Object.entries(sizes.shorter_side_histogram || {}), { xLabel: "px" }))),
      h("div", {}, h("h3", {}, "Colour modes"), h("div", { id: "mode-histogram" }, histogram(Object.entries(stats.modes || {}), { xLabel: "mode" })))),
    h("h3", {}, "Class balance"),
    table(["Split", "Largest class", "Smallest class", "Imbalance"], balance, { empty: "No images." }),
    h("h3", {}, "Sizes"),
    table(["", "min / median / max"], [["Width", spread(sizes.width)], ["Height", spread(sizes.height)]]),
    h("p", { class: "muted" }, "Most common: ", (sizes.most_common || []).map((c) => `${c.size} (${c.count})`).join(", ") || "–"),
  );
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("span", { class: "label" }, label), h("span", { class: "value" }, value));
}

export { stat };
