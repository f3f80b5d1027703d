/* kinko: the drag-and-drop upload room and live upload status.
 *
 * Progressive enhancement: without this script the room's form POST works
 * as before.  With it, a drop zone sends one request per file to
 * POST /api/v1/uploads (at most two at a time, XMLHttpRequest for upload
 * progress), then polls GET /api/v1/uploads/<id> until a final status.
 * Every text comes from the page (#room-i18n, rendered by the server in the
 * user's language); the CSP forbids inline scripts and styles, so nothing
 * here sets a style attribute.
 */
(function () {
  "use strict";

  var MAX_PARALLEL = 2;
  var POLL_MS = 1500;            // while received / scanning
  var POLL_SLOW_MS = 10000;      // while clean: waits for the office, slowly
  var POLL_MAX_BACKOFF_MS = 30000;
  var POLL_GIVE_UP_MS = 10 * 60 * 1000;
  var TERMINAL = { vaulted: true, infected: true, refused: true, disposed: true };
  /* Resumable uploads (tus 1.0.0, /api/v1/tus/): files this large are sent
     in pieces of TUS_CHUNK bytes (every piece but the last); the upload's
     address is kept in localStorage under the file's name, size and date, so
     that after a dropped connection, or a reload and the same file chosen
     again, sending goes on from the server's offset (HEAD) instead of from
     the start.  Nothing of the file's content is kept in the browser. */
  var TUS_MIN = 8 * 1024 * 1024;
  var TUS_CHUNK = 8 * 1024 * 1024;
  var TUS_RETRY_MS = 1000;
  var TUS_RETRY_MAX_MS = 15000;
  var TUS_MAX_TRIES = 12;
  var TUS_KEEP_MS = 24 * 60 * 60 * 1000;   // the server's Upload-Expires
  var TUS_STORE = "kinko-tus:";

  function readI18n() {
    var block = document.getElementById("room-i18n");
    if (!block) { return null; }
    try { return JSON.parse(block.textContent || "{}"); } catch (e) { return null; }
  }

  /* "{name} ..." placeholders, filled with text (never HTML). */
  function fill(template, values) {
    return String(template).replace(/\{(\w+)\}/g, function (m, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? String(values[key]) : m;
    });
  }

  function formatBytes(n) {
    var units = ["B", "KB", "MB", "GB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? n.toFixed(0) + " " + units[i] : n.toFixed(1) + " " + units[i];
  }

  /* base64 of the UTF-8 bytes (tus Upload-Metadata values). */
  function base64Utf8(text) {
    var bytes = new TextEncoder().encode(String(text));
    var bin = "";
    for (var i = 0; i < bytes.length; i += 1) { bin += String.fromCharCode(bytes[i]); }
    return window.btoa(bin);
  }

  function tusKey(file) {
    return TUS_STORE + [file.name, file.size, file.lastModified || 0].join(":");
  }

  function tusLoad(file) {
    try {
      var saved = JSON.parse(window.localStorage.getItem(tusKey(file)) || "null");
      if (saved && saved.url && Date.now() - (saved.at || 0) < TUS_KEEP_MS) { return saved; }
    } catch (e) { /* no storage (private mode): start afresh */ }
    return null;
  }

  function tusSave(file, value) {
    try {
      if (value) {
        window.localStorage.setItem(tusKey(file), JSON.stringify(value));
      } else {
        window.localStorage.removeItem(tusKey(file));
      }
    } catch (e) { /* no storage: resuming after a reload is not possible */ }
  }

  function formatDuration(t, seconds) {
    seconds = Math.max(1, Math.round(seconds));
    if (seconds < 90) { return fill(t.seconds, { n: seconds }); }
    return fill(t.minutes, { n: Math.round(seconds / 60) });
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function statusClass(node, status) {
    node.className = "status s-" + status;
  }

  /* A GET of /api/v1/uploads/<id> with the session cookie. */
  function getJSON(url, csrf, onDone) {
    var xhr = new XMLHttpRequest();
    xhr.open("GET", url);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", csrf);
    xhr.onload = function () {
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      onDone(xhr.status, body);
    };
    xhr.onerror = function () { onDone(0, null); };
    xhr.send();
  }

  /* Polls one upload until a final status, backing off on errors. */
  function Poller(url, csrf, onStatus, onGiveUp) {
    var started = Date.now();
    var delay = POLL_MS;
    var timer = null;
    var stopped = false;

    function schedule(ms) {
      if (stopped) { return; }
      if (Date.now() - started > POLL_GIVE_UP_MS) { stopped = true; onGiveUp(); return; }
      timer = window.setTimeout(tick, ms);
    }

    function tick() {
      getJSON(url, csrf, function (code, body) {
        if (stopped) { return; }
        if (code === 200 && body && body.status) {
          delay = POLL_MS;
          onStatus(body);
          if (TERMINAL[body.status]) { stopped = true; return; }
          schedule(body.status === "clean" ? POLL_SLOW_MS : POLL_MS);
        } else if (code === 401 || code === 403 || code === 404) {
          stopped = true;       // signed out or gone: polling cannot help
          onGiveUp();
        } else {
          delay = Math.min(delay * 2, POLL_MAX_BACKOFF_MS);
          schedule(delay);
        }
      });
    }

    this.start = function () { schedule(POLL_MS); };
    this.stop = function () { stopped = true; if (timer) { window.clearTimeout(timer); } };
  }

  /* ---------------------------------------------------------------- room */

  function Room(zone, t) {
    var input = document.getElementById("room-files");
    var purpose = document.getElementById("purpose");
    var list = document.getElementById("room-list");
    var heading = document.getElementById("room-list-heading");
    var live = document.getElementById("room-live");
    var message = document.getElementById("room-message");
    var api = zone.getAttribute("data-api");
    var detail = zone.getAttribute("data-detail");
    var csrf = zone.getAttribute("data-csrf");
    var maxBytes = parseInt(zone.getAttribute("data-max-bytes") || "0", 10);
    var tusUrl = zone.getAttribute("data-tus");
    var queue = [];
    var active = 0;
    var announceTimer = null;
    var pending = [];

    /* Polite announcements, batched so that three files arriving at once
       are read as one message instead of interrupting each other. */
    function announce(text) {
      pending.push(text);
      if (announceTimer) { return; }
      announceTimer = window.setTimeout(function () {
        live.textContent = pending.join(" ");
        pending = [];
        announceTimer = null;
      }, 300);
    }

    function showMessage(text) {
      message.textContent = text;
      message.hidden = !text;
    }

    function Entry(file) {
      var self = this;
      this.file = file;
      this.state = "waiting";
      this.xhr = null;
      this.poller = null;
      this.status = null;

      this.li = el("li", "room-item");
      this.li.tabIndex = -1;
      var head = el("div", "room-item-head");
      this.name = el("span", "room-item-name", file.name);
      this.badge = el("span", "status s-waiting", t.waiting);
      head.appendChild(this.name);
      head.appendChild(this.badge);
      this.li.appendChild(head);

      this.progress = el("progress", "room-progress");
      this.progress.max = Math.max(file.size, 1);
      this.progress.value = 0;
      this.progress.setAttribute("aria-label", fill(t.progress_label, { name: file.name }));
      this.li.appendChild(this.progress);

      this.meta = el("p", "room-item-meta muted",
                     fill(t.done_of, { done: formatBytes(0), total: formatBytes(file.size) }));
      this.li.appendChild(this.meta);

      this.reason = el("p", "room-item-reason");
      this.reason.hidden = true;
      this.li.appendChild(this.reason);

      this.actions = el("div", "room-item-actions");
      this.cancelButton = el("button", "room-cancel", t.cancel);
      this.cancelButton.type = "button";
      this.cancelButton.setAttribute("aria-label", fill(t.cancel_label, { name: file.name }));
      this.cancelButton.addEventListener("click", function () { self.cancel(); });
      this.actions.appendChild(this.cancelButton);
      this.li.appendChild(this.actions);
    }

    Entry.prototype.setBadge = function (text, status) {
      this.badge.textContent = text;
      statusClass(this.badge, status);
    };

    /* label: the badge (not accepted / not sent); text: why. */
    Entry.prototype.fail = function (text, label) {
      this.state = "failed";
      this.setBadge(label, "refused");
      this.reason.textContent = text;
      this.reason.hidden = false;
      this.li.classList.add("room-item-failed");
      this.finishSending();
      announce(fill(t.announce, { name: this.file.name, status: text }));
    };

    /* The request is over (sent, failed or cancelled): no more cancel. */
    Entry.prototype.finishSending = function () {
      var hadFocus = document.activeElement === this.cancelButton;
      if (this.cancelButton.parentNode) { this.actions.removeChild(this.cancelButton); }
      if (hadFocus) { this.li.focus(); }
    };

    Entry.prototype.cancel = function () {
      if (this.state === "waiting") {
        var i = queue.indexOf(this);
        if (i >= 0) { queue.splice(i, 1); }
      } else if (this.state === "sending" && this.tus) {
        this.tusCancel();
      } else if (this.state === "sending" && this.xhr) {
        this.xhr.abort();  // onabort frees the slot
      } else {
        return;
      }
      this.state = "cancelled";
      this.setBadge(t.cancelled, "cancelled");
      this.li.classList.add("room-item-cancelled");
      this.meta.textContent = "";
      this.progress.hidden = true;
      this.finishSending();
      announce(fill(t.announce, { name: this.file.name, status: t.cancelled }));
    };

    Entry.prototype.onProgress = function (loaded, total) {
      var elapsed = (Date.now() - this.startedAt) / 1000;
      var parts = [fill(t.done_of, { done: formatBytes(loaded), total: formatBytes(total) })];
      this.progress.max = Math.max(total, 1);
      this.progress.value = loaded;
      var fresh = loaded - (this.base || 0);  // a resumed upload: only what moved now
      if (elapsed > 0.2 && fresh > 0) {
        var speed = fresh / elapsed;
        parts.push(fill(t.speed, { speed: formatBytes(speed) }));
        if (loaded < total) {
          parts.push(fill(t.left, { time: formatDuration(t, (total - loaded) / speed) }));
        }
      }
      this.meta.textContent = parts.join(" · ");
    };

    Entry.prototype.showUpload = function (body) {
      var changed = body.status !== this.status;
      this.status = body.status;
      var label = t.status[body.status] || body.status;
      this.setBadge(label, body.status);
      if (body.reason) {
        this.reason.textContent = body.reason;
        this.reason.hidden = false;
        this.li.classList.add("room-item-failed");
      }
      if (changed) {
        announce(fill(t.announce, { name: this.file.name, status: label }));
      }
    };

    Entry.prototype.sent = function (body) {
      var self = this;
      this.state = "sent";
      this.progress.value = this.progress.max;
      this.finishSending();
      var link = el("a", "room-item-link", t.details);
      link.href = detail.replace("UPLOAD_ID", encodeURIComponent(body.id));
      this.actions.appendChild(link);
      this.li.setAttribute("data-upload-id", body.id);
      this.showUpload(body);
      if (TERMINAL[body.status]) { return; }
      this.poller = new Poller(api + "/" + encodeURIComponent(body.id), csrf,
        function (b) { self.showUpload(b); },
        function () {
          self.reason.textContent = t.poll_stopped;
          self.reason.hidden = false;
        });
      this.poller.start();
    };

    Entry.prototype.send = function () {
      if (tusUrl && this.file.size >= TUS_MIN) { this.sendTus(); return; }
      var self = this;
      var xhr = new XMLHttpRequest();
      this.xhr = xhr;
      this.state = "sending";
      this.startedAt = Date.now();
      this.setBadge(t.uploading, "sending");
      active += 1;
      var released = false;
      function release() {
        if (released) { return; }
        released = true;
        active -= 1;
        self.xhr = null;
        pump();
      }
      xhr.open("POST", api);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("Content-Disposition",
                           "attachment; filename*=UTF-8''" + encodeURIComponent(this.file.name));
      xhr.setRequestHeader("X-Purpose", this.purpose);
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = function (ev) {
        if (ev.lengthComputable) { self.onProgress(ev.loaded, ev.total); }
      };
      xhr.onload = function () {
        release();
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status === 201 && body && body.id) {
          self.onProgress(self.file.size, self.file.size);
          self.sent(body);
        } else if (body && body.message) {
          self.fail(body.message, t.status.refused);
        } else {
          self.fail(t.server, t.not_sent);
        }
      };
      xhr.onerror = function () { release(); self.fail(t.network, t.not_sent); };
      xhr.onabort = function () { release(); };
      xhr.send(this.file);
    };

    /* ------------------------------------------- resumable (tus) sending */

    Entry.prototype.sendTus = function () {
      var self = this;
      this.tus = true;
      this.tries = 0;
      this.timer = null;
      this.state = "sending";
      this.startedAt = Date.now();
      this.base = 0;
      this.setBadge(t.uploading, "sending");
      active += 1;
      var released = false;
      this.release = function () {
        if (released) { return; }
        released = true;
        active -= 1;
        self.xhr = null;
        pump();
      };
      var saved = tusLoad(this.file);
      if (saved && saved.purpose === this.purpose) {
        this.location = saved.url;
        this.tusResume();
      } else {
        this.tusCreate();
      }
    };

    /* One tus request; onDone(status, xhr) — status 0 for a network error. */
    Entry.prototype.tusRequest = function (method, url, headers, onDone) {
      var self = this;
      var xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open(method, url);
      xhr.setRequestHeader("Tus-Resumable", "1.0.0");
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      Object.keys(headers).forEach(function (name) { xhr.setRequestHeader(name, headers[name]); });
      xhr.onload = function () {
        if (self.state !== "sending") { return; }
        self.xhr = null;
        onDone(xhr.status, xhr);
      };
      xhr.onerror = function () {
        if (self.state !== "sending") { return; }
        self.xhr = null;
        onDone(0, xhr);
      };
      xhr.onabort = function () { self.xhr = null; };
      return xhr;
    };

    Entry.prototype.tusFail = function (xhr) {
      tusSave(this.file, null);  // refused: that address cannot be resumed
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      this.release();
      if (body && body.message) {
        this.fail(body.message, t.status.refused);
      } else {
        this.fail(t.server, t.not_sent);
      }
    };

    /* A network error or a server hiccup: ask the server where it stands
       and go on from there, after 1, 2, 4 … seconds. */
    Entry.prototype.tusRetry = function (next) {
      var self = this;
      this.tries += 1;
      if (this.tries > TUS_MAX_TRIES) {
        this.release();
        this.fail(t.network, t.not_sent);  // the address stays: a later try resumes
        return;
      }
      this.setBadge(t.retrying, "sending");
      var delay = Math.min(TUS_RETRY_MS * Math.pow(2, this.tries - 1), TUS_RETRY_MAX_MS);
      this.timer = window.setTimeout(function () {
        self.timer = null;
        if (self.state !== "sending") { return; }
        next.call(self);
      }, delay);
    };

    Entry.prototype.tusCreate = function () {
      var self = this;
      this.location = null;
      var xhr = this.tusRequest("POST", tusUrl, {
        "Upload-Length": String(this.file.size),
        "Upload-Metadata": "filename " + base64Utf8(this.file.name) +
                           ",purpose " + base64Utf8(this.purpose)
      }, function (status) {
        if (status === 201 && xhr.getResponseHeader("Location")) {
          self.location = xhr.getResponseHeader("Location");
          tusSave(self.file, { url: self.location, purpose: self.purpose, at: Date.now() });
          self.offset = 0;
          self.tusPatch();
        } else if (status === 0 || status >= 500) {
          self.tusRetry(self.tusCreate);
        } else {
          self.tusFail(xhr);
        }
      });
      xhr.send();
    };

    /* HEAD: the server's offset is the truth; nothing it has is sent again. */
    Entry.prototype.tusResume = function () {
      var self = this;
      var xhr = this.tusRequest("HEAD", this.location, {}, function (status) {
        if (status === 200) {
          var done = xhr.getResponseHeader("Kinko-Upload-Id");
          self.offset = parseInt(xhr.getResponseHeader("Upload-Offset") || "0", 10);
          self.base = self.offset;
          self.startedAt = Date.now();
          self.setBadge(t.uploading, "sending");
          self.onProgress(self.offset, self.file.size);
          if (done) { self.tusDone(done); } else { self.tusPatch(); }
        } else if (status === 404 || status === 410) {
          tusSave(self.file, null);  // gone or expired: start again
          self.tusCreate();
        } else if (status === 0 || status >= 500) {
          self.tusRetry(self.tusResume);
        } else {
          self.tusFail(xhr);
        }
      });
      xhr.send();
    };

    Entry.prototype.tusPatch = function () {
      var self = this;
      var start = this.offset;
      var end = Math.min(start + TUS_CHUNK, this.file.size);
      var xhr = this.tusRequest("PATCH", this.location, {
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": String(start)
      }, function (status) {
        if (status === 204) {
          self.tries = 0;
          self.offset = parseInt(xhr.getResponseHeader("Upload-Offset") || String(end), 10);
          self.onProgress(self.offset, self.file.size);
          var done = xhr.getResponseHeader("Kinko-Upload-Id");
          if (done) {
            self.tusDone(done);
          } else if (self.offset >= self.file.size) {
            self.tusResume();
          } else {
            self.setBadge(t.uploading, "sending");
            self.tusPatch();
          }
        } else if (status === 409) {
          self.tusResume();  // the server has a different offset: ask it
        } else if (status === 404 || status === 410) {
          tusSave(self.file, null);
          self.tusCreate();
        } else if (status === 0 || status >= 500) {
          self.tusRetry(self.tusResume);
        } else {
          self.tusFail(xhr);
        }
      });
      xhr.upload.onprogress = function (ev) {
        self.onProgress(start + ev.loaded, self.file.size);
      };
      xhr.send(this.file.slice(start, end));
    };

    Entry.prototype.tusDone = function (uploadId) {
      var self = this;
      tusSave(this.file, null);
      this.release();
      this.onProgress(this.file.size, this.file.size);
      getJSON(api + "/" + encodeURIComponent(uploadId), csrf, function (code, body) {
        self.sent(code === 200 && body && body.id ? body
                  : { id: uploadId, status: "received" });
      });
    };

    Entry.prototype.tusCancel = function () {
      if (this.timer) { window.clearTimeout(this.timer); this.timer = null; }
      if (this.xhr) { this.xhr.abort(); this.xhr = null; }
      if (this.location) {
        // Termination: the server deletes what it had received.
        this.tusRequest("DELETE", this.location, {}, function () {}).send();
        this.xhr = null;
      }
      tusSave(this.file, null);
      this.release();
    };

    function pump() {
      while (active < MAX_PARALLEL && queue.length) {
        queue.shift().send();
      }
    }

    function addFiles(files) {
      if (!files || !files.length) { return; }
      if (!purpose.value) {
        showMessage(t.need_purpose);
        purpose.focus();
        return;
      }
      showMessage("");
      list.hidden = false;
      heading.hidden = false;
      for (var i = 0; i < files.length; i += 1) {
        var entry = new Entry(files[i]);
        entry.purpose = purpose.value;
        list.insertBefore(entry.li, list.firstChild);
        if (files[i].size === 0) {
          entry.fail(t.empty, t.status.refused);
        } else if (maxBytes && files[i].size > maxBytes) {
          entry.fail(t.too_large, t.status.refused);
        } else {
          queue.push(entry);
        }
      }
      pump();
    }

    function openPicker() {
      if (!purpose.value) {
        showMessage(t.need_purpose);
        purpose.focus();
        return;
      }
      input.click();
    }

    zone.hidden = false;
    zone.addEventListener("click", function (ev) {
      if (ev.target !== input) { openPicker(); }
    });
    zone.addEventListener("keydown", function (ev) {
      if (ev.target !== zone) { return; }
      if (ev.key === "Enter" || ev.key === " " || ev.key === "Spacebar") {
        ev.preventDefault();  // Space would scroll, Enter would submit the form
        openPicker();
      }
    });
    input.addEventListener("change", function () {
      addFiles(Array.prototype.slice.call(input.files || []));
      input.value = "";  // the same file may be chosen again
    });
    purpose.addEventListener("change", function () {
      if (purpose.value) { showMessage(""); }
    });

    var depth = 0;
    zone.addEventListener("dragenter", function (ev) {
      ev.preventDefault();
      depth += 1;
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragover", function (ev) {
      ev.preventDefault();
      if (ev.dataTransfer) { ev.dataTransfer.dropEffect = "copy"; }
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragleave", function () {
      depth = Math.max(0, depth - 1);
      if (depth === 0) { zone.classList.remove("dragover"); }
    });
    zone.addEventListener("drop", function (ev) {
      ev.preventDefault();
      depth = 0;
      zone.classList.remove("dragover");
      var files = ev.dataTransfer ? Array.prototype.slice.call(ev.dataTransfer.files || []) : [];
      addFiles(files);
    });
    /* A file dropped next to the zone must not navigate away from the room. */
    window.addEventListener("dragover", function (ev) { ev.preventDefault(); });
    window.addEventListener("drop", function (ev) { ev.preventDefault(); });
  }

  /* ------------------------------------------------- one upload's page */

  function UploadPage(node) {
    var live = document.getElementById("upload-live");
    var reason = document.getElementById("upload-reason");
    var labels = {};
    try { labels = JSON.parse(node.getAttribute("data-labels") || "{}"); } catch (e) { labels = {}; }
    var current = node.getAttribute("data-status");
    if (TERMINAL[current]) { return; }
    var poller = new Poller(node.getAttribute("data-poll"), node.getAttribute("data-csrf"),
      function (body) {
        if (body.status === current) { return; }
        current = body.status;
        var label = labels[body.status] || body.status;
        node.textContent = label;
        statusClass(node, body.status);
        if (reason && body.reason) {
          reason.textContent = body.reason;
          reason.hidden = false;
        }
        if (live) { live.textContent = label + (body.reason ? " " + body.reason : ""); }
      },
      function () {});
    poller.start();
  }

  function init() {
    var zone = document.getElementById("room-drop");
    var t = readI18n();
    if (zone && t) { Room(zone, t); }
    var status = document.getElementById("upload-status");
    if (status && status.getAttribute("data-poll")) { UploadPage(status); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
