// Charts drawn as SVG by hand: a line chart, horizontal bars, a heatmap. No library, so
// nothing to build or vendor; each is a few dozen lines and scales with its container.
const NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, children = []) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(typeof c === "string" ? document.createTextNode(c) : c);
  return el;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  return Math.ceil(value / step) * step;
}

// series: [{label, cls, points: [[x, y], ...]}]; xMax: e.g. the job's total epochs.
// Redraws into the same <svg> element; data-points says how many points the longest series has.
export function lineChart(root, series, { xMax = 1, yMax = null, yLabel = "", percent = false } = {}) {
  const W = 560, H = 230, L = 46, R = 12, T = 28, B = 30;
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const top = yMax ?? niceMax(Math.max(0, ...all.filter(Number.isFinite)));
  const xs = Math.max(xMax, ...series.flatMap((s) => s.points.map((p) => p[0])), 1);
  const x = (v) => L + ((v - (xs > 1 ? 1 : 0)) / Math.max(xs - 1, 1)) * (W - L - R);
  const y = (v) => T + (1 - Math.min(v, top) / top) * (H - T - B);
  root.replaceChildren();
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.setAttribute("role", "img");
  root.classList.add("chart");
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" },
      [percent ? `${Math.round(v * 100)}%` : v.toFixed(top < 2 ? 2 : 1)]));
  }
  const ticks = Math.min(xs, 10);
  for (let i = 0; i < ticks; i++) {
    const v = Math.round(1 + (i * (xs - 1)) / Math.max(ticks - 1, 1));
    root.append(svg("text", { x: x(v), y: H - B + 16, class: "tick", "text-anchor": "middle" }, [String(v)]));
  }
  root.append(svg("text", { x: W - R, y: H - 2, class: "axis", "text-anchor": "end" }, ["epoch"]));
  root.append(svg("text", { x: 4, y: 12, class: "axis" }, [yLabel]));
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    if (pts.length > 1) {
      root.append(svg("polyline", { points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), class: `line ${s.cls}` }));
    }
    for (const p of pts) root.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, class: `dot ${s.cls}` }, [svg("title", {}, [`${s.label}, epoch ${p[0]}: ${percent ? (p[1] * 100).toFixed(1) + "%" : p[1].toFixed(4)}`])]));
    root.append(svg("rect", { x: L + 40 + i * 110, y: 3, width: 10, height: 10, class: `swatch ${s.cls}` }));
    root.append(svg("text", { x: L + 54 + i * 110, y: 12, class: "legend" }, [s.label]));
  });
  root.dataset.points = String(Math.max(0, ...series.map((s) => s.points.length)));
  return root;
}

// rows: [{label, values: {train: n, val: m}}] -> stacked horizontal bars, one per class.
export function barChart(rows, splits) {
  const W = 560, rowH = 22, L = 120, R = 50, T = 22;
  const H = T + rows.length * rowH + 6;
  const max = Math.max(1, ...rows.map((r) => splits.reduce((a, s) => a + (r.values[s] || 0), 0)));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart bars", role: "img" });
  splits.forEach((s, i) => {
    root.append(svg("rect", { x: L + i * 80, y: 4, width: 10, height: 10, class: `swatch split-${i}` }));
    root.append(svg("text", { x: L + 14 + i * 80, y: 13, class: "legend" }, [s]));
  });
  rows.forEach((r, i) => {
    const yy = T + i * rowH;
    root.append(svg("text", { x: L - 6, y: yy + 15, class: "tick", "text-anchor": "end" }, [r.label.length > 16 ? r.label.slice(0, 15) + "…" : r.label]));
    let x0 = L, total = 0;
    splits.forEach((s, j) => {
      const n = r.values[s] || 0;
      const w = (n / max) * (W - L - R);
      root.append(svg("rect", { x: x0, y: yy + 3, width: Math.max(w, 0), height: rowH - 6, class: `bar split-${j}` }, [svg("title", {}, [`${r.label} (${s}): ${n}`])]));
      x0 += w;
      total += n;
    });
    root.append(svg("text", { x: x0 + 4, y: yy + 15, class: "tick" }, [String(total)]));
  });
  return root;
}

// A confusion matrix: rows are true classes, columns predictions; colour by the row's share.
export function heatmap(classes, matrix) {
  const n = classes.length;
  const cell = Math.max(18, Math.min(44, Math.floor(440 / Math.max(n, 1))));
  const L = 110, T = 96;
  const W = L + n * cell + 8, H = T + n * cell + 8;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart heatmap", role: "img", "data-classes": String(n) });
  const short = (s) => (s.length > 14 ? s.slice(0, 13) + "…" : s);
  classes.forEach((c, i) => {
    root.append(svg("text", { x: L - 6, y: T + i * cell + cell / 2 + 4, class: "tick", "text-anchor": "end" }, [short(c)]));
    root.append(svg("text", { x: 0, y: 0, class: "tick", transform: `translate(${L + i * cell + cell / 2 + 4},${T - 6}) rotate(-60)` }, [short(c)]));
  });
  root.append(svg("text", { x: 2, y: 12, class: "axis" }, ["true class ↓  predicted →"]));
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    row.forEach((v, j) => {
      const share = v / total;
      const cls = i === j ? "diag" : "off";
      root.append(svg("rect", { x: L + j * cell, y: T + i * cell, width: cell - 1, height: cell - 1, class: `cell ${cls}`, "fill-opacity": (0.06 + 0.94 * share).toFixed(3) },
        [svg("title", {}, [`true ${classes[i]}, predicted ${classes[j]}: ${v} (${(share * 100).toFixed(0)}%)`])]));
      if (cell >= 22) root.append(svg("text", { x: L + j * cell + cell / 2, y: T + i * cell + cell / 2 + 4, class: `count ${share > 0.5 ? "light" : ""}`, "text-anchor": "middle" }, [String(v)]));
    });
  });
  return root;
}

// bins: [[label, count], ...] in order -> vertical columns with the count above each. Drawn at
// its natural size (a column per bin), shrunk to fit a narrow container.
export function histogram(bins, { xLabel = "", yLabel = "images" } = {}) {
  const slot = 72, L = 8, R = 8, T = 40, B = 34, H = 190;
  const W = Math.max(220, L + R + bins.length * slot);
  const max = Math.max(1, ...bins.map((b) => b[1]));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart histogram", role: "img", "data-bins": String(bins.length) });
  root.append(svg("text", { x: 4, y: 12, class: "axis" }, [yLabel]));
  root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "grid" }));
  bins.forEach(([label, count], i) => {
    const h = (count / max) * (H - T - B);
    const x = L + i * slot;
    root.append(svg("rect", { x: x + slot * 0.15, y: H - B - h, width: slot * 0.7, height: Math.max(h, 0), class: "bar split-0" }, [svg("title", {}, [`${label}: ${count}`])]));
    root.append(svg("text", { x: x + slot / 2, y: H - B - h - 4, class: "tick", "text-anchor": "middle" }, [String(count)]));
    root.append(svg("text", { x: x + slot / 2, y: H - B + 15, class: "tick", "text-anchor": "middle" }, [label.length > 10 ? label.slice(0, 9) + "…" : label]));
  });
  root.append(svg("text", { x: W - R, y: H - 2, class: "axis", "text-anchor": "end" }, [xLabel]));
  return root;
}
