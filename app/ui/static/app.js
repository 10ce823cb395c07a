// The dashboard: a hash router over four pages, and the sign-in with an API key.
import { api, auth } from "./api.js";
import { h, toast, errorText } from "./dom.js";
import { datasetsPage, datasetPage } from "./datasets.js";
import { jobsPage, jobPage } from "./jobs.js";
import { modelsPage, modelPage } from "./models.js";
import { keysPage } from "./keys.js";

const view = document.getElementById("view");
let current = null; // the AbortController of the page on screen: its streams and timers

const routes = [
  [/^#\/datasets\/([\w-]+)$/, datasetPage],
  [/^#\/datasets$/, datasetsPage],
  [/^#\/jobs\/([\w-]+)$/, jobPage],
  [/^#\/jobs$/, jobsPage],
  // A version by id, name:version or name@alias (the API resolves the reference).
  [/^#\/models\/([\w.:@%-]+)$/, modelPage],
  [/^#\/models$/, modelsPage],
  [/^#\/keys$/, keysPage],
];

function signIn(message = "") {
  const key = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off", placeholder: "tl_…", required: true });
  const note = h("p", { class: "error", role: "alert" }, message);
  const form = h("form", { class: "card narrow", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API key (", h("code", {}, "transferlab keys create"), " makes one; ",
      h("code", {}, "make serve"), " prints an admin key on its first start). It is kept in this tab only."),
    h("label", { for: "api-key" }, "API key"), key, note,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    auth.set(key.value.trim());
    try {
      await api("/v1/datasets", { query: { limit: 1 } });
      if (!location.hash || location.hash === "#/sign-in") location.hash = "#/datasets";
      else route();
    } catch (error) {
      auth.clear();
      note.textContent = error.status === 401 ? "That key is not valid (unknown, malformed or revoked)." : errorText(error);
    }
  });
  view.replaceChildren(form);
  key.focus();
}

async function route() {
  current?.abort();
  current = new AbortController();
  const signedIn = !!auth.get();
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  if (!signedIn) return signIn();
  const hash = location.hash || "#/datasets";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", hash.startsWith(`#/${a.dataset.nav}`));
  for (const [pattern, page] of routes) {
    const match = pattern.exec(hash);
    if (match) {
      view.replaceChildren(h("p", { class: "empty" }, "Loading…"));
      try {
        await page(view, current.signal, ...match.slice(1).map(decodeURIComponent));
      } catch (error) {
        if (current.signal.aborted) return;
        view.replaceChildren(h("div", { class: "card" }, h("h1", {}, "Something went wrong"), h("p", { class: "error" }, errorText(error))));
      }
      return;
    }
  }
  location.hash = "#/datasets";
}

window.addEventListener("hashchange", route);
window.addEventListener("unauthenticated", () => {
  if (document.getElementById("sign-in")) return; // the sign-in form says so itself
  auth.clear();
  toast("The API key was refused; sign in again.");
  route();
});
document.getElementById("sign-out").addEventListener("click", () => {
  auth.clear();
  route();
});
route();
