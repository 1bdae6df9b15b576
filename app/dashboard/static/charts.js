// Chart helpers shared by the sweep and trial pages (Apache ECharts, SVG renderer, no animation).
"use strict";

window.gridsweepCharts = (function () {
  const instances = new Map();
  const AXIS_TEXT = "#6b7280";
  const GRID_LINE = "#eef0f4";
  const BEST = "#e8590c";

  // The chart library (1 MB) is fetched early (a preload link) but run only after the page's
  // first paint, so that the table is on screen before the browser compiles it.
  const LIBRARY = "/static/vendor/echarts.min.js?v=6.1.0";
  let loading = null;
  function ready() {
    if (window.echarts) return Promise.resolve();
    if (!loading) {
      loading = new Promise((resolve, reject) => {
        requestAnimationFrame(() => setTimeout(() => {
          const s = document.createElement("script");
          s.src = LIBRARY;
          s.onload = resolve;
          s.onerror = () => reject(new Error("could not load " + LIBRARY));
          document.head.appendChild(s);
        }, 0));
      });
    }
    return loading;
  }

  function chart(el) {
    let c = instances.get(el);
    if (!c) {
      c = window.echarts.init(el, null, { renderer: "svg" });
      instances.set(el, c);
    }
    return c;
  }

  // Draw ``option`` into ``el``; ``points`` (how many data points were drawn) is kept on the element.
  function draw(el, option, points) {
    const c = chart(el);
    c.setOption(Object.assign({ animation: false, textStyle: { fontFamily: "system-ui, sans-serif" } }, option), true);
    el.dataset.points = String(points);
    el.dataset.state = "drawn";
    return c;
  }

  function empty(el, message) {
    draw(el, {
      title: { text: message, left: "center", top: "middle", textStyle: { color: AXIS_TEXT, fontSize: 13, fontWeight: 400 } },
    }, 0);
    el.dataset.state = "empty";
  }

  function failed(el, err) {
    const message = "could not load: " + err.message;
    if (window.echarts) empty(el, message);
    else { el.textContent = message; el.classList.add("chart-empty"); }
    el.dataset.state = "error";
  }

  // A log axis when values are positive and span more than ~1.5 orders of magnitude.
  function scaleType(values) {
    const v = values.filter((x) => typeof x === "number" && isFinite(x));
    if (!v.length) return "value";
    const lo = Math.min(...v);
    const hi = Math.max(...v);
    return lo > 0 && hi / lo > 30 ? "log" : "value";
  }

  function valueAxis(name, values, extra) {
    return Object.assign({
      type: scaleType(values),
      name: name,
      nameTextStyle: { color: AXIS_TEXT },
      scale: true,
      axisLabel: { color: AXIS_TEXT, formatter: (v) => window.gridsweep.fmt(v) },
      splitLine: { lineStyle: { color: GRID_LINE } },
    }, extra || {});
  }

  window.addEventListener("resize", () => instances.forEach((c) => c.resize()));

  return { ready, chart, draw, empty, failed, valueAxis, scaleType, AXIS_TEXT, GRID_LINE, BEST };
})();
