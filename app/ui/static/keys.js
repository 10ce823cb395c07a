// API keys (admin keys only): list, create (the secret is shown once), revoke.
import { api } from "./api.js";
import { h, SLUG, table, when, toast, errorText } from "./dom.js";

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
  const name = h("input", { name: "name", required: true, pattern: SLUG, placeholder: "who or what uses it" });
  const boxes = SCOPES.map((s) => h("input", { type: "checkbox", value: s, checked: s === "read" }));
  const secret = h("div", { id: "new-key" });
  const form = h("form", { class: "grid-form", id: "key-form" },
    h("label", { class: "field" }, h("span", {}, "Name"), name),
    h("fieldset", { class: "field" }, h("legend", {}, "Scopes"), SCOPES.map((s, i) => h("label", { class: "check" }, boxes[i], s))),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!boxes.some((b) => b.checked)) {
      toast("Choose at least one scope.");
      return;
    }
    try {
      const created = await api("/v1/keys", { method: "POST", json: { name: name.value.trim(), scopes: boxes.filter((b) => b.checked).map((b) => b.value) } });
      await keysPage(view);
      view.querySelector("#new-key").replaceChildren(h("p", {}, "The new key, shown only now:"), h("code", { class: "secret" }, created.key));
    } catch (error) {
      toast(errorText(error));
    }
  });
  const revoke = (k) => {
    const b = h("button", { type: "button", class: "danger small", "data-revoke": k.prefix }, "Revoke");
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
      h("div", { id: "key-list" }, table(["Name", "Prefix", "Scopes", "Created", "Last used", "Revoked", ""], keys.map((k) => [
        k.name, h("code", {}, k.prefix), k.scopes.join(", "), when(k.created_at), when(k.last_used_at), when(k.revoked_at),
        k.revoked_at ? "" : revoke(k),
      ]), { empty: "No key." }))),
  );
}
