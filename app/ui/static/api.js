// The API from the page: every /v1 call sends the key the user signed in with, as a Bearer
// header. The key lives in sessionStorage (gone when the tab closes), never in a URL.
const KEY = "transferlab.key";

export const auth = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || { code: "http_error", message: `HTTP ${status}` };
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.details = error.details || {};
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = auth.get();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function fail(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: a proxy page */ }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("unauthenticated"));
  throw error;
}

export async function api(path, { method = "GET", json, body, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) if (v != null && v !== "") url.searchParams.set(k, v);
  const init = { method, headers: headers(json ? { "Content-Type": "application/json" } : {}) };
  if (json) init.body = JSON.stringify(json);
  if (body) init.body = body;
  const response = await fetch(url, init);
  if (!response.ok) await fail(response);
  return response.status === 204 ? null : response.json();
}

// An upload with progress: fetch() cannot report bytes sent, XMLHttpRequest can.
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* empty */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        if (xhr.status === 401) window.dispatchEvent(new CustomEvent("unauthenticated"));
        reject(new ApiError(xhr.status, body));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { code: "network", message: "the API could not be reached" } }));
    xhr.send(form);
  });
}

// A download behind the key: fetch the bytes, then hand the browser a blob: URL.
export async function download(path, fallbackName) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) await fail(response);
  const match = /filename="?([^";]+)"?/.exec(response.headers.get("content-disposition") || "");
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: match ? match[1] : fallbackName });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// Server-Sent Events read with fetch(), which sends the Authorization header (EventSource
// cannot). Reconnects with Last-Event-ID: at once when the server closed the stream (it does
// every TRANSFERLAB_EVENTS_MAX_S), after `retry` ms when it dropped; returns after the `end`
// event or when `signal` aborts.
export async function streamEvents(path, onEvent, signal) {
  let lastId = null;
  let retry = 2000;
  while (!signal.aborted) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers: h, signal });
      if (!response.ok) await fail(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = { event: "message", id: null, data: [] };
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const i = line.indexOf(":");
            const field = i < 0 ? line : line.slice(0, i);
            const text = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (field === "retry") retry = Number(text) || retry;
            else if (field === "data") event.data.push(text);
            else if (field === "event") event.event = text;
            else if (field === "id") event.id = text;
          }
          if (!event.data.length) continue;
          lastId = event.id ?? lastId;
          onEvent(event.event, JSON.parse(event.data.join("\n")));
          if (event.event === "end") return;
        }
      }
      continue; // closed by the server without `end`: resume at once
    } catch (error) {
      if (signal.aborted || error instanceof ApiError) throw error;
    }
    await new Promise((r) => setTimeout(r, retry));
  }
}
