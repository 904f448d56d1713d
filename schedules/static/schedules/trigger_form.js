/* The trigger admin form: shows the schedule fields that go with the chosen kind and preset, and
   keeps the preview under the Schedule fieldset up to date as the user types (POSTs the form to
   TriggerAdmin.preview_view, which checks the values as a save would and saves nothing). */
(function () {
  "use strict";

  var SHOWN = {
    kind: {
      cron: ["preset", "preset_time", "preset_day", "preset_minute", "cron", "timezone", "dst_policy"],
      once: ["delay_minutes", "run_at", "timezone"],
      interval: ["interval_seconds", "anchor_at", "timezone"],
    },
    preset: {
      "": [],
      hourly: ["preset_minute"],
      daily: ["preset_time"],
      weekdays: ["preset_time"],
      weekly: ["preset_day", "preset_time"],
      monthly: ["preset_day", "preset_time"],
    },
  };
  var PRESET_PARAMS = ["preset_time", "preset_day", "preset_minute"];
  var SCHEDULE_FIELDS = ["preset", "cron", "timezone", "delay_minutes", "run_at", "interval_seconds",
    "dst_policy", "anchor_at"].concat(PRESET_PARAMS);

  function row(name) {
    // The admin's fieldset rows carry field-<name> classes (a date-time field has two inputs).
    return document.querySelector(".form-row.field-" + name);
  }

  function value(name) {
    var field = document.getElementById("id_" + name);
    return field ? field.value : "";
  }

  function showFieldsFor() {
    var kind = value("kind");
    var wanted = SHOWN.kind[kind];
    if (!wanted) { return; }
    var preset = kind === "cron" ? value("preset") : "";
    SCHEDULE_FIELDS.forEach(function (name) {
      var element = row(name);
      if (!element) { return; }
      var shown = wanted.indexOf(name) !== -1;
      if (shown && PRESET_PARAMS.indexOf(name) !== -1) {
        shown = (SHOWN.preset[preset] || []).indexOf(name) !== -1;
      }
      if (shown && name === "cron" && preset) { shown = false; }
      // A field with an error stays in sight, whatever the kind.
      element.hidden = !shown && !element.classList.contains("errors");
    });
  }

  function livePreview(box) {
    var form = box.closest("form");
    var body = box.querySelector(".ws-preview-body");
    var status = box.querySelector(".ws-preview-status");
    var timer = null;
    var controller = null;
    var sent = 0;

    function refresh() {
      if (controller) { controller.abort(); }
      controller = new AbortController();
      var mine = ++sent;
      status.textContent = "Updating…";
      fetch(box.dataset.previewUrl, {
        method: "POST",
        body: new FormData(form),
        credentials: "same-origin",
        headers: { "X-Requested-With": "XMLHttpRequest" },
        signal: controller.signal,
      }).then(function (response) {
        if (!response.ok) { throw new Error("the server answered " + response.status); }
        return response.text();
      }).then(function (html) {
        if (mine !== sent) { return; }
        body.innerHTML = html;
        status.textContent = "Updated as you type; nothing is saved.";
        box.dataset.previewed = String(mine);
      }).catch(function (error) {
        if (error.name !== "AbortError") { status.textContent = "Preview unavailable: " + error.message; }
      });
    }

    function later(delay) {
      clearTimeout(timer);
      timer = setTimeout(refresh, delay);
    }

    form.addEventListener("input", function () { later(400); });
    form.addEventListener("change", function () { later(150); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var kind = document.getElementById("id_kind");
    if (kind) {
      showFieldsFor();
      kind.addEventListener("change", showFieldsFor);
      var preset = document.getElementById("id_preset");
      if (preset) { preset.addEventListener("change", showFieldsFor); }
    }
    var box = document.getElementById("trigger-preview");
    if (box && box.dataset.previewUrl && window.fetch) { livePreview(box); }
  });
})();
