/* Photos pages. /gallery: upload (file input or drag and drop), live tiles from server-sent
   events (a poll takes over while the stream is down), the admin's "process" buttons.
   /gallery/{id}: reload once the analysis has finished. */
"use strict";

(function () {
  const C = window.Conveyor;
  const FINAL = ["completed", "failed"];
  const PARALLEL_UPLOADS = 3;
  const POLL_MS = 4000;



  // --- the grid --------------------------------------------------------------------------------

  function gallery() {
    const grid = document.getElementById("photo-grid");
    const empty = document.getElementById("photos-empty");
    const live = document.getElementById("live-status");
    const filter = grid.dataset.statusFilter || "";
    let streaming = false;

    function tileFor(id) {
      return grid.querySelector('li[data-photo-id="' + CSS.escape(id) + '"]');
    }

    function ensureTile(id, filename, status) {
      let li = tileFor(id);
      if (li) return li;
      if (filter && status && filter !== status) return null;
      li = document.createElement("li");
      li.className = "photo-tile";
      li.dataset.photoId = id;
      const link = document.createElement("a");
      link.className = "thumb-link";
      link.href = "/gallery/" + encodeURIComponent(id);
      link.dataset.role = "thumb-link";
      const placeholder = document.createElement("span");
      placeholder.className = "thumb-placeholder";
      placeholder.dataset.role = "thumb";
      placeholder.textContent = "…";
      link.append(placeholder);
      const meta = document.createElement("div");
      meta.className = "tile-meta";
      const name = document.createElement("a");
      name.className = "name";
      name.dataset.role = "name";
      name.href = link.href;
      name.textContent = filename || id;
      name.title = filename || id;
      const badge = document.createElement("span");
      badge.className = "badge state";
      badge.dataset.role = "state";
      const dims = document.createElement("span");
      dims.className = "muted small";
      dims.dataset.role = "dims";
      const err = document.createElement("span");
      err.className = "error-text small";
      err.dataset.role = "error";
      meta.append(name, badge, dims, err);
      li.append(link, meta);
      grid.prepend(li);
      empty.hidden = true;
      bump("#photo-total", 1);
      setStatus(li, status || "pending");
      return li;
    }

    /** Keep the counters (total, per status) in step with the tiles. */
    function bump(selector, delta) {
      const el = document.querySelector(selector);
      if (el) el.textContent = String(Math.max(0, Number(el.textContent || 0) + delta));
    }

    function setStatus(li, status) {
      const before = li.dataset.status;
      if (before === status) return;
      if (before) bump('.status-filter a[data-status="' + before + '"] .count', -1);
      bump('.status-filter a[data-status="' + status + '"] .count', 1);
      li.dataset.status = status;
      C.setBadge(li.querySelector('[data-role="state"]'), status);
    }

    function flash(li) {
      li.classList.remove("flash");
      void li.offsetWidth;  // restart the highlight animation
      li.classList.add("flash");
    }

    /** Fill a tile from the photo's JSON view (thumbnail, size, error). */
    function fill(li, photo) {
      setStatus(li, photo.ai_processing_status);
      const name = li.querySelector('[data-role="name"]');
      name.textContent = photo.original_filename;
      name.title = photo.original_filename;
      li.querySelector('[data-role="dims"]').textContent =
        photo.width ? photo.width + "×" + photo.height : "";
      const err = li.querySelector('[data-role="error"]');
      err.textContent = photo.ai_error_code || "";
      err.title = photo.ai_error_message || "";
      const thumb = li.querySelector('[data-role="thumb"]');
      if (photo.thumbnail_url && thumb.tagName !== "IMG") {
        const img = document.createElement("img");
        img.src = photo.thumbnail_url;
        img.alt = photo.original_filename;
        img.dataset.role = "thumb";
        thumb.replaceWith(img);
      } else if (!photo.thumbnail_url && photo.ai_processing_status === "failed" && thumb.tagName !== "IMG") {
        thumb.textContent = "no preview";
      }
    }

    const timers = {};
    function refresh(id) {
      clearTimeout(timers[id]);
      timers[id] = setTimeout(async function () {
        const r = await C.api("GET", "/api/v1/photos/" + encodeURIComponent(id));
        const li = tileFor(id);
        if (r.ok && r.data && li) fill(li, r.data);
      }, 150);
    }

    function onEvent(event) {
      if (event.pipeline !== "photos" || !event.item_id) return;
      const data = event.data || {};
      const status = data.ai_processing_status || data.state;
      if (event.kind === "item.created") {
        ensureTile(event.item_id, data.filename, status);
      } else if (event.kind === "item.state" && status) {
        const li = ensureTile(event.item_id, data.filename, status);
        if (!li) return;
        setStatus(li, status);
        const err = li.querySelector('[data-role="error"]');
        err.textContent = data.error_code || "";
        err.title = data.error_message || "";
        flash(li);
        if (FINAL.indexOf(status) >= 0) refresh(event.item_id);
      }
    }

    C.follow({ after: grid.dataset.lastEvent }, onEvent, function (state) {
      streaming = state === "live";
      live.textContent = streaming ? "live updates on" : state;
      live.classList.toggle("on", streaming);
    });

    // While the event stream is down, poll the tiles that are still being analysed.
    setInterval(function () {
      if (streaming) return;
      const busy = grid.querySelectorAll('li[data-status="pending"], li[data-status="processing"]');
      Array.prototype.slice.call(busy, 0, 24).forEach(function (li) { refresh(li.dataset.photoId); });
    }, POLL_MS);

    // --- uploads -----------------------------------------------------------------------------
    const dropzone = document.getElementById("photo-dropzone");
    const input = document.getElementById("photo-file");
    const list = document.getElementById("photo-uploads");
    const waiting = [];
    let active = 0;

    function setUpload(job, kind, text) {
      job.li.dataset.state = kind;
      job.status.className = "status status-" + kind;
      job.status.textContent = text;
    }

    async function upload(job) {
      setUpload(job, "uploading", "uploading…");
      const body = new FormData();
      body.append("file", job.file, job.file.name);
      const r = await C.api("POST", "/api/v1/photos", body, { "Idempotency-Key": job.key });
      if (r.status === 401) { window.location.href = "/login?next=%2Fgallery"; return; }
      if (!r.ok || !r.data) { setUpload(job, "error", r.message); return; }
      setUpload(job, "done", "uploaded, " + r.data.ai_processing_status);
      const li = ensureTile(r.data.id, job.file.name, r.data.ai_processing_status);
      if (li) refresh(r.data.id);
    }

    function pump() {
      while (active < PARALLEL_UPLOADS && waiting.length) {
        const job = waiting.shift();
        active += 1;
        upload(job).finally(function () { active -= 1; pump(); });
      }
    }

    function addFiles(files) {
      Array.prototype.forEach.call(files, function (file) {
        const job = C.uploadRow(list, file, dropzone);
        if (job.error) {
          setUpload(job, "error", job.error);
          return;
        }
        setUpload(job, "waiting", "waiting");
        waiting.push(job);
      });
      pump();
    }

    input.addEventListener("change", function () { addFiles(input.files); input.value = ""; });
    dropzone.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
    });
    ["dragenter", "dragover"].forEach(function (kind) {
      dropzone.addEventListener(kind, function (e) { e.preventDefault(); dropzone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (kind) {
      dropzone.addEventListener(kind, function (e) { e.preventDefault(); dropzone.classList.remove("over"); });
    });
    dropzone.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
    });

    // --- admin: process missing / all ---------------------------------------------------------
    const result = document.getElementById("process-result");
    document.querySelectorAll("#process-actions button[data-mode]").forEach(function (button) {
      button.addEventListener("click", async function () {
        const buttons = document.querySelectorAll("#process-actions button");
        buttons.forEach(function (b) { b.disabled = true; });
        result.className = "small";
        result.textContent = "queueing…";
        const r = await C.api("POST", "/api/v1/photos/process", { mode: button.dataset.mode });
        buttons.forEach(function (b) { b.disabled = false; });
        if (!r.ok || !r.data) {
          result.className = "small error-text";
          result.textContent = r.message;
          return;
        }
        const d = r.data;
        result.textContent = "Queued " + d.queued + " of " + d.total + " photo(s)" +
          (d.already_queued ? ", " + d.already_queued + " already queued" : "") +
          (d.mode === "missing" ? ", " + d.up_to_date + " up to date" : "") +
          " (" + d.provider + " v" + d.provider_version + ").";
      });
    });
  }

  // --- the detail page -------------------------------------------------------------------------

  function detail(root) {
    if (root.dataset.final === "1") return;
    const id = root.dataset.photoId;
    const badge = document.getElementById("photo-status");
    let reloading = false;

    function settle(status) {
      if (!status) return;
      C.setBadge(badge, status);
      if (FINAL.indexOf(status) >= 0 && !reloading) {
        reloading = true;
        window.location.reload();
      }
    }

    C.follow({ after: root.dataset.lastEvent, item_id: id }, function (event) {
      if (event.kind === "item.state" && event.data) settle(event.data.ai_processing_status || event.data.state);
    });
    setInterval(async function () {
      const r = await C.api("GET", "/api/v1/photos/" + encodeURIComponent(id));
      if (r.ok && r.data) settle(r.data.ai_processing_status);
    }, POLL_MS);
  }

  const page = document.body.dataset.page;
  if (page === "gallery") gallery();
  const root = document.getElementById("photo");
  if (page === "photo" && root) detail(root);
})();
