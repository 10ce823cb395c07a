// API keys (admin keys only): list, create (the secret is shown once), revoke.
import { api } from "./api.js";
import { h, table, when, toast, errorText } from "./dom.js";

const SCOPES = ["read", "train", "predict", "admin"];

export async function keysPage(view) {
  let keys;
  try {
    keys = await api("/v1/keys");
  } catch (error) {
    if (error.status !== 403) throw error;
    view.replaceChildren(h("h1", {}, "API keys"), h("p", { class: "card" }, "Managing keys needs a key with the admin scope."));
    return;
  }
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._-]{0,99}", placeholder: "who or what uses it" });
  const boxes = SCOPES.map((s) => h("input", { type: "checkbox", value: s, checked: s === "read" }));
  const secret = h("div", { id: "new-key" });
  const form = h("form", { class: "grid-form" },
    h("label", { class: "field" }, h("span", {}, "Name"), name),
    h("fieldset", { class: "field" }, h("legend", {}, "Scopes"), SCOPES.map((s, i) => h("label", { class: "check" }, boxes[i], s))),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const created = await api("/v1/keys", { method: "POST", json: { name: name.value.trim(), scopes: boxes.filter((b) => b.checked).map((b) => b.value) } });
      await keysPage(view);
      view.querySelector("#new-key").replaceChildren(h("p", {}, "The new key, shown only now:"), h("code", { class: "secret" }, created.key));
    } catch (error) {
      toast(errorText(error));
    }
  });
  const revoke = (k) => {
    const b = h("button", { type: "button", class: "danger small" }, "Revoke");
    b.addEventListener("click", async () => {
      if (!confirm(`Revoke the key ${k.name} (${k.prefix})? Programs using it stop working.`)) return;
      try { await api(`/v1/keys/${k.id}`, { method: "DELETE" }); await keysPage(view); } catch (error) { toast(errorText(error)); }
    });
    return b;
  };
  view.replaceChildren(
    h("h1", {}, "API keys"),
    h("section", { class: "card" }, h("h2", {}, "New key"), form, secret),
    h("section", { class: "card" }, h("h2", {}, "Keys"),
      table(["Name", "Prefix", "Scopes", "Last used", "Revoked", ""], keys.map((k) => [
        k.name, h("code", {}, k.prefix), k.scopes.join(", "), when(k.last_used_at), when(k.revoked_at), k.revoked_at ? "" : revoke(k),
      ]))),
  );
}
