/* Conveyor web UI: shared helpers (JSON calls, state badges, server-sent events).
   No framework and no build step. The session cookie is HttpOnly: scripts never see it. */
"use strict";

window.Conveyor = (function () {
  /** A JSON or multipart call; resolves to {ok, status, data, message}. */
  async function api(method, url, body, extraHeaders) {
    const init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    Object.assign(init.headers, extraHeaders || {});
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      return { ok: false, status: 0, data: null, message: "network error: " + err.message };
    }
    let data = null;
    const text = await response.text();
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    return { ok: response.ok, status: response.status, data: data,
             message: response.ok ? "" : errorMessage(response, data, text) };
  }

  /** "413 upload_too_large: the file is larger than …" from any error body shape. */
  function errorMessage(response, data, text) {
    const prefix = String(response.status);
    const detail = data && (data.detail !== undefined ? data.detail : data);
    if (detail && typeof detail === "object" && !Array.isArray(detail) && detail.message) {
      return prefix + " " + (detail.code ? detail.code + ": " : "") + detail.message;
    }
    if (Array.isArray(detail)) {  // FastAPI validation errors
      return prefix + " " + detail.map(function (d) {
        const where = Array.isArray(d.loc) ? d.loc.filter(function (x) { return x !== "body"; }).join(".") : "";
        return (where ? where + ": " : "") + (d.msg || JSON.stringify(d));
      }).join("; ");
    }
    if (typeof detail === "string") return prefix + " " + detail;
    return prefix + " " + (response.statusText || (text || "").slice(0, 200) || "error");
  }

  const STATE_CLASSES = /\bstate-[a-z_]+\b/g;

  function setBadge(el, state) {
    if (!el) return;
    el.textContent = state;
    el.className = el.className.replace(STATE_CLASSES, "").trim() + " state-" + String(state).toLowerCase();
  }

  function percent(value) {
    return value === null || value === undefined ? "—" : Math.round(value * 100) + "%";
  }

  /** Fill a confidence cell (a <meter> and a number), building it if needed. */
  function setConfidence(cell, value) {
    if (!cell || value === null || value === undefined) return;
    let meter = cell.querySelector("meter");
    let num = cell.querySelector(".num");
    if (!meter) {
      cell.textContent = "";
      const wrap = document.createElement("span");
      wrap.className = "conf";
      wrap.dataset.role = "confidence";
      meter = document.createElement("meter");
      meter.min = 0; meter.max = 1; meter.low = 0.75; meter.high = 0.9; meter.optimum = 1;
      num = document.createElement("span");
      num.className = "num";
      wrap.append(meter, " ", num);
      cell.append(wrap);
    }
    meter.value = value;
    num.textContent = percent(value);
  }

  /** Follow /api/v1/events from `after`; reconnects itself from the last id it saw. */
  function follow(params, onEvent, onStatus) {
    let lastId = Number(params.after || 0);
    let source = null;
    let retry = null;
    function connect() {
      const query = new URLSearchParams();
      if (params.item_id) query.set("item_id", params.item_id);
      query.set("after", String(lastId));
      source = new EventSource("/api/v1/events?" + query.toString());
      source.onopen = function () { if (onStatus) onStatus("live"); };
      source.onerror = function () {
        if (onStatus) onStatus("reconnecting…");
        source.close();
        clearTimeout(retry);
        retry = setTimeout(connect, 2000);
      };
      ["item.created", "item.state", "job.completed", "job.failed", "job.retry"].forEach(function (kind) {
        source.addEventListener(kind, function (msg) {
          let event;
          try { event = JSON.parse(msg.data); } catch (_) { return; }
          if (typeof event.id === "number" && event.id > lastId) lastId = event.id;
          onEvent(event);
        });
      });
    }
    connect();
    window.addEventListener("pagehide", function () { if (source) source.close(); });
    return { close: function () { clearTimeout(retry); if (source) source.close(); } };
  }

  function size(bytes) {
    if (bytes >= 1048576) return (bytes / 1048576).toFixed(1) + " MB";
    return Math.max(1, Math.round(bytes / 1024)) + " KB";
  }

  function newKey() {  // an Idempotency-Key per file: a retried upload is the same upload
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
  }

  // One line of an upload list (name, size, status), prepended to ``list``; ``error`` is
  // set when the file is over the dropzone's data-max-bytes (0: let the server decide).
  function uploadRow(list, file, dropzone) {
    const li = document.createElement("li");
    li.className = "upload";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    const bytes = document.createElement("span");
    bytes.className = "muted small";
    bytes.textContent = size(file.size);
    const status = document.createElement("span");
    status.className = "status";
    status.dataset.role = "upload-status";
    li.append(name, " ", bytes, " ", status);
    list.prepend(li);
    const maxBytes = Number(dropzone.dataset.maxBytes || 0);
    const error = maxBytes && file.size > maxBytes
      ? "too large: " + size(file.size) + " (the limit is " + size(maxBytes) + ")" : null;
    return { file: file, li: li, status: status, key: newKey(), error: error };
  }

  return { api: api, setBadge: setBadge, setConfidence: setConfidence, percent: percent, follow: follow,
           size: size, uploadRow: uploadRow };
})();
