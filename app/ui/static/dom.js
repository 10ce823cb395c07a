// Small DOM helpers. Text always goes in as text nodes (class names and file paths are user
// text): nothing is ever parsed as HTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  // Nested arrays (a map that returns [separator, element] pairs) are flattened all the way.
  for (const c of children.flat(Infinity)) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

// Names, aliases and tags are slugs (app/naming.py). Browsers compile a pattern attribute with
// the regex `v` flag, where a bare "-" in a class is a syntax error (the pattern is then ignored
// and logged as an error): hence "\\-".
export const SLUG = "[A-Za-z0-9][A-Za-z0-9._\\-]{0,99}";

export const pct = (v) => (Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : "–");
export const num = (v, d = 4) => (Number.isFinite(v) ? v.toFixed(d) : "–");
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
export const short = (id) => (id ? id.slice(0, 8) : "–");
export const bytes = (n) => (n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`);

export function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

export function bar(fraction, label = "") {
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.round(Math.min(Math.max(fraction, 0), 1) * 100)}%`;
  return h("span", { class: "progress", role: "progressbar", "aria-valuenow": Math.round(fraction * 100), "aria-valuemin": 0, "aria-valuemax": 100, title: label }, fill);
}

export function setBar(el, fraction) {
  el.querySelector(".fill").style.width = `${Math.round(Math.min(Math.max(fraction, 0), 1) * 100)}%`;
  el.setAttribute("aria-valuenow", Math.round(fraction * 100));
}

export function table(columns, rows, { empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "scroll" },
    h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((cell) => h("td", {}, cell)))))));
}

export function toast(message, kind = "error") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = kind;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), 6000);
}

export function errorText(error) {
  return error && error.code ? `${error.message} (${error.code})` : String(error && error.message ? error.message : error);
}

// A drop zone over a hidden file input: click to choose, or drop files on it.
export function dropZone({ accept, multiple = false, label, onFiles, name = "file" }) {
  const input = h("input", { type: "file", accept, multiple, name, class: "visually-hidden" });
  const zone = h("label", { class: "drop" }, input, h("span", {}, label));
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // so that choosing the same file again is a change too
    if (files.length) onFiles(files);
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = [...e.dataTransfer.files];
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  return zone;
}
