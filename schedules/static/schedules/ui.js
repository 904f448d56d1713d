// The web UI's few behaviours, plain JS served by the app: show the fields the chosen kind of
// schedule needs, a live preview of the schedule (debounced), JSON boxes that say whether they
// parse, and a history that refreshes itself while a run is unfinished.
(function () {
  "use strict";

  function debounce(fn, ms) {
    var timer;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  function value(form, name) {
    var field = form.elements[name];
    if (!field) return "";
    if (field instanceof RadioNodeList) return field.value;
    return field.value;
  }

  // data-show="mode=once" or "preset=daily,weekdays": shown only when that field has one of those values.
  function toggle(form) {
    form.querySelectorAll("[data-show]").forEach(function (part) {
      var rule = part.getAttribute("data-show").split("=");
      var show = rule[1].split(",").indexOf(value(form, rule[0])) !== -1;
      part.hidden = !show;
    });
  }

  function preview(form, target) {
    var url = form.getAttribute("data-preview-url");
    var sent = 0;
    return debounce(function () {
      var mine = ++sent;
      fetch(url, { method: "POST", body: new FormData(form), credentials: "same-origin",
                   headers: { "X-Requested-With": "fetch" } })
        // Redirected: the session ended (the sign-in page is not a preview).
        .then(function (answer) { return answer.ok && !answer.redirected ? answer.text() : Promise.reject(answer.status); })
        .then(function (html) { if (mine === sent) target.innerHTML = html; })
        .catch(function () { if (mine === sent) target.textContent = "The preview is unavailable right now."; });
    }, 300);
  }

  function checkJson(box) {
    var status = box.parentNode.querySelector(".json-status");
    if (!status) {
      status = document.createElement("p");
      status.className = "json-status";
      status.id = box.id + "_json";
      status.setAttribute("aria-live", "polite");
      box.insertAdjacentElement("afterend", status);
      var described = box.getAttribute("aria-describedby");
      box.setAttribute("aria-describedby", (described ? described + " " : "") + status.id);
    }
    var text = box.value.trim();
    if (!text) { status.textContent = ""; box.removeAttribute("aria-invalid"); return; }
    try {
      var parsed = JSON.parse(text);
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("must be a JSON object, e.g. {\"report\": \"weekly\"}");
      status.textContent = "Valid JSON object.";
      status.className = "json-status ok";
      box.removeAttribute("aria-invalid");
    } catch (error) {
      status.textContent = "Not valid: " + error.message;
      status.className = "json-status bad";
      box.setAttribute("aria-invalid", "true");
    }
  }

  function refreshHistory() {
    var body = document.getElementById("history-body");
    if (!body || !body.getAttribute("data-refresh-url")) return;
    var url = body.getAttribute("data-refresh-url");
    setTimeout(function () {
      fetch(url, { credentials: "same-origin" })
        .then(function (answer) { return answer.ok && !answer.redirected ? answer.text() : Promise.reject(answer.status); })
        .then(function (html) { body.outerHTML = html; refreshHistory(); })
        .catch(function () { /* the next page load shows it */ });
    }, 1500);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("schedule-form");
    if (form) {
      var target = document.getElementById("preview");
      var update = preview(form, target);
      toggle(form);
      form.addEventListener("change", function () { toggle(form); update(); });
      form.addEventListener("input", update);
      update();
    }
    document.querySelectorAll("textarea[data-json]").forEach(function (box) {
      box.addEventListener("input", function () { checkJson(box); });
      if (box.value.trim()) checkJson(box);
    });
    refreshHistory();
  });
})();
