/* Upload page: drag-and-drop or pick many covers, upload each with fetch, and keep the items
   table live from server-sent events (rows appear on item.created, badges change on item.state). */
"use strict";

(function () {
  const C = window.Conveyor;
  const PARALLEL_UPLOADS = 3;
  const dropzone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  const uploadList = document.getElementById("uploads");
  const table = document.getElementById("items");
  const tbody = table.querySelector("tbody");
  const empty = document.getElementById("items-empty");
  const live = document.getElementById("live-status");
  const waiting = [];
  let active = 0;



  // --- items table ---------------------------------------------------------------------------

  function rowFor(id) {
    return tbody.querySelector('tr[data-item-id="' + CSS.escape(id) + '"]');
  }

  function cell(role) {
    const td = document.createElement("td");
    if (role) td.dataset.role = role;
    return td;
  }

  function ensureRow(id, filename, state) {
    let tr = rowFor(id);
    if (tr) return tr;
    tr = document.createElement("tr");
    tr.dataset.itemId = id;
    const linkCell = cell();
    const link = document.createElement("a");
    link.href = "/previews/" + encodeURIComponent(id);
    link.dataset.role = "link";
    link.textContent = filename || id;
    linkCell.append(link);
    const stateCell = cell();
    const badge = document.createElement("span");
    badge.className = "badge state";
    badge.dataset.role = "state";
    const err = document.createElement("span");
    err.dataset.role = "error";
    stateCell.append(badge, " ", err);
    const conf = cell();
    conf.className = "num";
    conf.innerHTML = '<span class="muted" data-role="confidence">—</span>';
    const cost = cell("cost");
    cost.className = "num";
    cost.textContent = "—";
    const when = cell();
    when.className = "nowrap";
    when.textContent = new Date().toISOString().replace("T", " ").slice(0, 19);
    tr.append(linkCell, cell("artist"), cell("album"), stateCell, conf, cost, when);
    C.setBadge(badge, state || "UPLOADED");
    tbody.prepend(tr);
    empty.hidden = true;
    return tr;
  }

  function applyState(tr, data) {
    C.setBadge(tr.querySelector('[data-role="state"]'), data.state);
    if (data.confidence !== undefined && data.confidence !== null) {
      C.setConfidence(tr.querySelector('[data-role="confidence"]').parentElement, data.confidence);
    }
    const err = tr.querySelector('[data-role="error"]');
    if (data.error_code) {
      err.className = "error-text";
      err.textContent = data.error_code;
      err.title = data.error_message || "";
    } else if (data.state !== "FAILED") {
      err.textContent = "";
      err.title = "";
    }
    tr.classList.remove("flash");
    void tr.offsetWidth;  // restart the highlight animation
    tr.classList.add("flash");
  }

  const refreshTimers = {};

  /** Fetch the item's view once its state settles, to fill artist, album and cost. */
  function refreshDetails(id) {
    clearTimeout(refreshTimers[id]);
    refreshTimers[id] = setTimeout(async function () {
      const r = await C.api("GET", "/api/v1/upap/preview/" + encodeURIComponent(id));
      const tr = rowFor(id);
      if (!r.ok || !tr || !r.data) return;
      const meta = r.data.metadata || {};
      tr.querySelector('[data-role="artist"]').textContent = meta.artist || "";
      tr.querySelector('[data-role="album"]').textContent = meta.album || "";
      if (typeof r.data.cost_estimate === "number") {
        tr.querySelector('[data-role="cost"]').textContent = "$" + r.data.cost_estimate.toFixed(4);
      }
      if (r.data.original_filename) tr.querySelector('[data-role="link"]').textContent = r.data.original_filename;
    }, 300);
  }

  function onEvent(event) {
    if (event.pipeline !== "records" || !event.item_id) return;
    const data = event.data || {};
    if (event.kind === "item.created") {
      ensureRow(event.item_id, data.filename, data.state);
    } else if (event.kind === "item.state" && data.state) {
      applyState(ensureRow(event.item_id, null, data.state), data);
      refreshDetails(event.item_id);
    }
  }

  C.follow({ after: table.dataset.lastEvent }, onEvent, function (status) {
    live.textContent = status === "live" ? "live updates on" : status;
    live.classList.toggle("on", status === "live");
  });

  // --- uploads -------------------------------------------------------------------------------

  function addFiles(files) {
    Array.prototype.forEach.call(files, function (file) {
      const job = C.uploadRow(uploadList, file, dropzone);
      if (job.error) {
        fail(job, job.error);
        return;
      }
      setStatus(job, "waiting", "waiting");
      waiting.push(job);
    });
    pump();
  }

  function setStatus(job, kind, text) {
    job.li.dataset.state = kind;
    job.status.className = "status status-" + kind;
    job.status.textContent = text;
  }

  /** Show the error; offer a retry only where trying again can help (network, 429, 5xx). */
  function fail(job, message, retryable) {
    setStatus(job, "error", message);
    if (!retryable) return;
    const again = document.createElement("button");
    again.type = "button";
    again.className = "link small";
    again.textContent = "retry";
    again.addEventListener("click", function () {
      again.remove();
      setStatus(job, "waiting", "waiting");
      waiting.push(job);
      pump();
    });
    job.li.append(" ", again);
  }

  function pump() {
    while (active < PARALLEL_UPLOADS && waiting.length) {
      const job = waiting.shift();
      active += 1;
      upload(job).finally(function () { active -= 1; pump(); });
    }
  }

  async function upload(job) {
    setStatus(job, "uploading", "uploading…");
    const form = new FormData();
    form.append("file", job.file, job.file.name);
    const r = await C.api("POST", "/api/v1/upap/upload", form, { "Idempotency-Key": job.key });
    if (!r.ok || !r.data || !r.data.preview_id) {
      if (r.status === 401) { window.location.href = "/login?next=%2F"; return; }
      fail(job, r.message || "upload failed", r.status === 0 || r.status === 429 || r.status >= 500);
      return;
    }
    const id = r.data.preview_id;
    setStatus(job, "done", "uploaded ");
    const link = document.createElement("a");
    link.href = "/previews/" + encodeURIComponent(id);
    link.textContent = "open";
    job.status.append(link);
    ensureRow(id, job.file.name, "UPLOADED");
  }

  input.addEventListener("change", function () {
    if (input.files && input.files.length) addFiles(input.files);
    input.value = "";
  });

  ["dragenter", "dragover"].forEach(function (name) {
    dropzone.addEventListener(name, function (e) {
      e.preventDefault();
      dropzone.classList.add("over");
    });
  });
  ["dragleave", "dragend"].forEach(function (name) {
    dropzone.addEventListener(name, function () { dropzone.classList.remove("over"); });
  });
  dropzone.addEventListener("drop", function (e) {
    e.preventDefault();
    dropzone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });
  dropzone.addEventListener("keydown", function (e) {
    if ((e.key === "Enter" || e.key === " ") && e.target === dropzone) {
      e.preventDefault();
      input.click();
    }
  });
  // A file dropped outside the zone would make the browser navigate to it.
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });
})();
