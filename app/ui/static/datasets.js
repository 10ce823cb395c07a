// Datasets: upload (drag-and-drop, with progress), the list, one dataset's report.
import { api, upload } from "./api.js";
import { barChart } from "./charts.js";
import { h, table, when, bytes, short, toast, errorText, dropZone, bar, setBar } from "./dom.js";

export async function datasetsPage(view, signal) {
  const page = await api("/v1/datasets", { query: { limit: 100 } });
  const name = h("input", { name: "name", id: "dataset-name", placeholder: "default: from the file name", pattern: "[A-Za-z0-9][A-Za-z0-9._-]{0,99}" });
  const status = h("p", { class: "muted", id: "upload-status" }, "A .zip or .tar with one folder per class (optionally under train/ and val/).");
  const progress = bar(0);
  progress.hidden = true;
  const zone = dropZone({
    accept: ".zip,.tar,.tgz,.gz",
    label: "Drop an archive here, or click to choose one",
    onFiles: async ([file]) => {
      const form = new FormData();
      form.append("file", file, file.name);
      if (name.value.trim()) form.append("name", name.value.trim());
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
      h("div", { class: "row" }, h("label", { for: "dataset-name" }, "Name"), name), zone, progress, status),
    h("section", { class: "card" }, h("h2", {}, `All datasets (${page.total})`),
      table(["Name", "Images", "Classes", "Size", "Uploaded"], page.items.map((d) => [
        h("a", { href: `#/datasets/${d.id}` }, d.name), d.num_images, d.num_classes, bytes(d.size_bytes), when(d.created_at),
      ]), { empty: "No dataset yet: upload one above." })),
  );
}

export async function datasetPage(view, signal, id) {
  const d = await api(`/v1/datasets/${id}`);
  const report = d.report || {};
  const splits = Object.keys(report.splits || {});
  const rows = (report.classes || []).map((c) => ({ label: c, values: Object.fromEntries(splits.map((s) => [s, report.splits[s][c] || 0])) }));
  const rejected = report.rejected || [];
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / ", d.name),
    h("h1", {}, d.name),
    h("div", { class: "stats" },
      stat("Images", d.num_images), stat("Classes", d.num_classes), stat("Size", bytes(d.size_bytes)),
      stat("Skipped files", rejected.length), stat("Uploaded", when(d.created_at))),
    h("section", { class: "card" }, h("h2", {}, "Images per class"), h("div", { id: "class-counts" }, barChart(rows, splits))),
    h("section", { class: "card" }, h("h2", {}, `Skipped files (${rejected.length})`),
      table(["File", "Why"], rejected.map((r) => [h("code", {}, r.path), r.reason]), { empty: "Every file was a usable image." })),
    h("section", { class: "card" }, h("h2", {}, "Train on it"),
      h("p", {}, h("a", { class: "button", href: "#/jobs", id: "train-link" }, "New job on this dataset")),
      h("p", { class: "muted" }, `id ${d.id} · sha256 ${short(d.sha256)}…`)),
  );
  view.querySelector("#train-link").addEventListener("click", () => sessionStorage.setItem("transferlab.dataset", d.id));
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("span", { class: "label" }, label), h("span", { class: "value" }, value));
}

export { stat };
