// gridsweep dashboard: shared behaviour of every page (kept in a file: the pages allow no inline script).
"use strict";

window.gridsweep = (function () {
  const numberFormat = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 4 });

  // Numbers as the server renders them: 4 significant digits.
  function fmt(v) {
    if (v === null || v === undefined || v === "") return "—";
    return typeof v === "number" ? numberFormat.format(v) : String(v);
  }

  // A parameter value: a per-layer width list as 128-64.
  function param(v) {
    if (Array.isArray(v)) return v.map(param).join("-");
    return v === null || v === undefined ? "—" : String(v);
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!r.ok) throw new Error(url + " answered HTTP " + r.status);
    return r.json();
  }

  // A live fragment (#summary, #trial-summary) carries data-version; when it changes after a poll,
  // the rest of the page is told: htmx elements listen for "gs-refresh", charts for "gs:changed".
  const versions = {};
  function checkVersions() {
    for (const id of ["summary", "trial-summary"]) {
      const el = document.getElementById(id);
      if (!el) continue;
      const v = el.dataset.version;
      if (versions[id] !== undefined && versions[id] !== v) {
        if (window.htmx) window.htmx.trigger(document.body, "gs-refresh");
        document.dispatchEvent(new CustomEvent("gs:changed", { detail: { source: id } }));
      }
      versions[id] = v;
    }
  }

  function connection(ok) {
    const el = document.getElementById("conn");
    if (el) el.hidden = ok;
  }

  // A poll swaps its whole fragment in (outerHTML). A link or button held down inside it right
  // then would be replaced under the pointer, and its mouseup would land on the new one: no click
  // (seen with Cancel). So a poll's answer that lands mid-press is not swapped in; the next poll,
  // seconds later, brings the news. Only polls (GET): a POST's answer is the click's own result.
  let pressed = null;
  const release = () => { pressed = null; };
  document.addEventListener("pointerdown", (e) => { pressed = e.target; }, true);
  document.addEventListener("pointerup", release, true);
  document.addEventListener("pointercancel", release, true);
  window.addEventListener("blur", release);
  document.addEventListener("htmx:beforeSwap", (e) => {
    const target = e.detail.target;
    if (pressed && e.detail.requestConfig.verb === "get" && target && target.contains(pressed)) {
      e.detail.shouldSwap = false;
    }
  });

  document.addEventListener("DOMContentLoaded", checkVersions);
  document.addEventListener("htmx:afterSettle", checkVersions);
  document.addEventListener("htmx:afterRequest", (e) => connection(e.detail.successful || e.detail.xhr.status > 0));
  document.addEventListener("htmx:sendError", () => connection(false));

  return { fmt, param, getJSON };
})();
