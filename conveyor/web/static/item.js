/* Item page: submit the review (only the fields a person changed), archive, the accept
   shortcut (Ctrl+Enter / Cmd+Enter), and live state from server-sent events. */
"use strict";

(function () {
  const C = window.Conveyor;
  const root = document.getElementById("item");
  const previewId = root.dataset.previewId;
  const inQueue = root.dataset.queue === "1";
  const form = document.getElementById("review-form");
  const errorBox = document.getElementById("action-error");
  const banner = document.getElementById("state-banner");
  let busy = false;

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function showBanner(message) {
    banner.textContent = message;
    banner.hidden = !message;
  }

  function inputs() {
    return form ? Array.prototype.slice.call(form.querySelectorAll("input[name]")) : [];
  }

  function dirty() {
    return inputs().some(function (el) { return el.value !== el.defaultValue; });
  }

  /** The edits: only the fields whose value changed; "" clears a field. */
  function edits() {
    const body = {};
    inputs().forEach(function (el) {
      if (el.value === el.defaultValue) return;
      const raw = el.value.trim();
      if (el.name === "year") {
        body.year = raw === "" ? null : Number(raw);
      } else if (el.dataset.list) {
        const parts = raw.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
        body[el.name] = parts.length ? parts : null;
      } else {
        body[el.name] = raw === "" ? null : raw;
      }
    });
    return body;
  }

  function setBusy(value, label) {
    busy = value;
    if (!form) return;
    form.querySelectorAll("button").forEach(function (b) { b.disabled = value; });
    form.setAttribute("aria-busy", value ? "true" : "false");
    if (label !== undefined) showBanner(label);
  }

  async function review(archive) {
    const body = edits();
    if (body.year !== undefined && body.year !== null && !Number.isInteger(body.year)) {
      showError("Year must be a whole number.");
      return null;
    }
    if (archive) body.archive = true;
    showError("");
    const r = await C.api("POST", "/api/v1/upap/preview/" + encodeURIComponent(previewId) + "/review", body);
    if (!r.ok) {
      if (r.status === 401) { window.location.href = "/login"; return null; }
      showError("Review failed: " + r.message);
      return null;
    }
    return r.data || {};
  }

  /** The least confident item still waiting in the review queue (not this one). */
  async function nextInQueue() {
    const r = await C.api("GET", "/api/v1/upap/previews?review_queue=true&limit=5");
    const list = (r.ok && r.data && r.data.previews) || [];
    const next = list.find(function (p) { return p.preview_id !== previewId; });
    return next ? "/previews/" + encodeURIComponent(next.preview_id) + "?queue=1" : "/review";
  }

  async function accept() {
    if (busy || !form) return;
    setBusy(true, "Accepting…");
    const done = await review(true);
    if (!done) { setBusy(false, ""); return; }
    showBanner("Accepted: archiving after enrichment. Opening the next item…");
    window.location.href = await nextInQueue();
  }

  async function save() {
    if (busy || !form) return;
    setBusy(true, "Saving…");
    const done = await review(false);
    if (!done) { setBusy(false, ""); return; }
    window.location.reload();
  }

  async function archiveNow() {
    if (busy) return;
    if (dirty()) {
      showError("You have unsaved edits: press Accept & archive (Ctrl+Enter) to keep them, or Save review first.");
      return;
    }
    setBusy(true, "Archiving…");
    showError("");
    const r = await C.api("POST", "/api/v1/upap/archive", { preview_id: previewId });
    if (r.ok && r.data && r.data.record_id) {
      window.location.href = "/records/" + encodeURIComponent(r.data.record_id);
      return;
    }
    setBusy(false, "");
    showError("Archive failed: " + r.message);
  }

  if (form) {
    form.addEventListener("submit", function (e) { e.preventDefault(); accept(); });
    document.getElementById("save-button").addEventListener("click", save);
    document.getElementById("archive-button").addEventListener("click", archiveNow);
  }

  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey && form) {
      e.preventDefault();
      accept();
    }
  });

  C.follow({ item_id: previewId, after: root.dataset.lastEvent }, function (event) {
    if (event.kind !== "item.state" || busy) return;
    const data = event.data || {};
    C.setBadge(document.getElementById("item-state"), data.state);
    if (data.state === "ARCHIVED") {
      window.location.href = data.record_id ? "/records/" + encodeURIComponent(data.record_id)
                                            : window.location.pathname;
      return;
    }
    if (data.state === root.dataset.state) return;
    if (dirty()) {
      showBanner("The state changed to " + data.state + ". Reload to see the new fields (your edits are not saved yet).");
    } else {
      window.location.reload();
    }
  });
})();
