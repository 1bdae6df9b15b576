// The sweep page's five plots, drawn from the JSON endpoints and redrawn when the sweep moves.
"use strict";

(function () {
  const root = document.getElementById("plots");
  if (!root) return;
  const { fmt, param, getJSON } = window.gridsweep;
  const C = window.gridsweepCharts;
  const api = "/api/v1/sweeps/" + root.dataset.sweepId;
  const metric = root.dataset.metric;
  const minimize = root.dataset.goal === "minimize";
  // Good to bad (RdYlGn); a metric to maximize reads the other way.
  const GOOD_TO_BAD = ["#1a7f4b", "#66bd63", "#d9ef8b", "#fee08b", "#fdae61", "#d73027"];
  const ramp = minimize ? GOOD_TO_BAD : GOOD_TO_BAD.slice().reverse();
  const el = (name) => document.getElementById("chart-" + name);
  const CHARTS = ["curves", "heatmap", "parallel", "importance", "history"];

  function openTrial(id) {
    if (id) window.location.assign("/trials/" + id);
  }

  // Lighter blue for lower ranks; the best config is drawn in orange on top.
  function rankColor(rank, maxRank) {
    const t = maxRank > 2 ? (rank - 2) / (maxRank - 2) : 0;
    const mix = (a, b) => Math.round(a + (b - a) * t);
    return "rgb(" + mix(59, 165) + "," + mix(91, 180) + "," + mix(219, 252) + ")";
  }

  // Running trials (rank null) are drawn dashed and grow as their epochs arrive.
  const RUNNING = "#8a94a6";

  function drawCurves(d) {
    const target = el("curves");
    const withPoints = d.trials.filter((t) => t.epochs.length);
    if (!withPoints.length) return C.empty(target, "no trial has reported an epoch yet");
    const best = new Set(d.best_trial_ids);
    const ranked = withPoints.filter((t) => t.rank !== null);
    const running = withPoints.filter((t) => t.rank === null);
    const maxRank = ranked.length ? Math.max(...ranked.map((t) => t.rank)) : 1;
    const byId = new Map(withPoints.map((t) => [String(t.trial_id), t]));
    let points = 0;
    // Worst first and running ones under the ranked, so that the best is drawn on top.
    const series = running.concat(ranked.slice().reverse()).map((t) => {
      const isBest = best.has(t.trial_id);
      const live = t.rank === null;
      const color = isBest ? C.BEST : live ? RUNNING : rankColor(t.rank, maxRank);
      const data = t.epochs.map((e, i) => [e, t.values[i]]).filter((p) => p[1] !== null);
      points += data.length;
      return {
        type: "line", id: String(t.trial_id), name: "#" + t.trial_id, data, showSymbol: live && data.length <= 30, symbolSize: 4,
        triggerLineEvent: true, z: isBest ? 10 : live ? 1 : 2,
        lineStyle: { width: isBest ? 3 : 1.3, color, opacity: isBest ? 1 : 0.8, type: live ? "dashed" : "solid" },
        itemStyle: { color }, emphasis: { focus: "series", lineStyle: { width: 3.5 } },
      };
    });
    const axes = root.dataset.axes.split(",");
    const top = ranked[0];
    const title = top
      ? "best: config " + top.config_index + " · " + Object.entries(top.params)
        .filter(([k]) => axes.includes(k)).map(([k, v]) => k + " " + param(v)).join(" · ")
      : running.length + " running trial" + (running.length === 1 ? "" : "s") + " (dashed), none finished yet";
    const c = C.draw(target, {
      grid: { left: 60, right: 18, top: 30, bottom: 38 },
      title: { text: title, left: 6, top: 0, textStyle: { fontSize: 12, fontWeight: 500, color: top ? C.BEST : RUNNING } },
      tooltip: {
        trigger: "item",
        formatter: (p) => {
          const t = byId.get(p.seriesId);
          const head = t.rank === null
            ? "trial #" + t.trial_id + " · running, epoch " + t.epochs[t.epochs.length - 1] + " of " + t.epochs_planned
            : "trial #" + t.trial_id + " · rank " + t.rank;
          return head + " · seed " + t.seed + "<br>epoch " + p.data[0] + ": " + metric + " " + fmt(p.data[1]) +
            (t.rank === null ? "" : "<br>score " + fmt(t.value) + (t.best_epoch ? " at epoch " + t.best_epoch : "")) +
            (t.stopped_epoch ? "<br>stopped early after epoch " + t.stopped_epoch : "");
        },
      },
      xAxis: { type: "value", name: "epoch", nameLocation: "middle", nameGap: 24, min: 1, minInterval: 1,
        axisLabel: { color: C.AXIS_TEXT }, splitLine: { show: false } },
      yAxis: C.valueAxis(metric + (d.units ? " (" + d.units + ")" : ""), withPoints.flatMap((t) => t.values),
        { nameLocation: "middle", nameGap: 42 }),
      series,
    }, points);
    target.dataset.series = String(series.length);
    target.dataset.running = String(running.length);
    c.off("click");
    c.on("click", (p) => openTrial(p.seriesId));
  }

  function drawHeatmap(d) {
    const target = el("heatmap");
    if (!target) return;
    if (!d.cells.length) return C.empty(target, "no trial yet");
    const ranked = d.cells.filter((c) => c.value !== null);
    // No cell scored yet: a message, never a colour scale from Infinity to -Infinity.
    if (!ranked.length) return C.empty(target, "no scored config yet");
    const unranked = d.cells.filter((c) => c.value === null);
    const log = C.scaleType(ranked.map((c) => c.value)) === "log";
    const shade = (v) => (log ? Math.log10(v) : v);
    const shades = ranked.map((c) => shade(c.value));
    let lo = Math.min(...shades);
    let hi = Math.max(...shades);
    if (!(hi > lo)) { lo -= 1e-9; hi += 1e-9; }
    const many = d.cells.length > 120;
    C.draw(target, {
      grid: { left: 80, right: 86, top: 14, bottom: 50 },
      tooltip: {
        formatter: (p) => {
          const c = p.data.cell;
          return d.x + " " + param(d.x_values[c.x]) + " · " + d.y + " " + param(d.y_values[c.y]) + "<br>best " + metric +
            " " + fmt(c.value) + "<br>" + c.n_ranked + " of " + c.n_configs + " configs scored" +
            (c.n_diverged ? ", " + c.n_diverged + " diverged" : "");
        },
      },
      xAxis: { type: "category", data: d.x_values.map(param), name: d.x, nameLocation: "middle", nameGap: 30,
        axisLabel: { color: C.AXIS_TEXT }, splitArea: { show: false } },
      yAxis: { type: "category", data: d.y_values.map(param), name: d.y, nameLocation: "middle", nameGap: 62,
        axisLabel: { color: C.AXIS_TEXT } },
      visualMap: {
        type: "continuous", min: lo, max: hi, seriesIndex: 0, dimension: 2, right: 4, top: "middle", itemHeight: 200,
        inRange: { color: ramp }, calculable: false, text: [fmt(log ? 10 ** hi : hi), fmt(log ? 10 ** lo : lo)],
        textStyle: { color: C.AXIS_TEXT, fontSize: 11 },
      },
      series: [
        {
          type: "heatmap", data: ranked.map((c) => ({ value: [c.x, c.y, shade(c.value)], cell: c })),
          label: { show: !many, formatter: (p) => fmt(p.data.cell.value), fontSize: 11, color: "#1f2430" },
          itemStyle: { borderColor: "#fff", borderWidth: 2 }, emphasis: { itemStyle: { borderColor: "#1f2430" } },
        },
        {
          type: "heatmap", data: unranked.map((c) => ({ value: [c.x, c.y, 0], cell: c })),
          itemStyle: { color: "#eef0f3", borderColor: "#fff", borderWidth: 2 },
          label: { show: true, fontSize: 11, color: "#b54708",
            formatter: (p) => (p.data.cell.n_diverged ? "diverged" : "") },
        },
      ],
    }, ranked.length);
    target.dataset.cells = String(d.cells.length);
  }

  function drawParallel(d) {
    const target = el("parallel");
    if (!d.value.length) return C.empty(target, "no scored config yet");
    const n = d.axes.length;
    // Grid values are discrete: each parameter is an axis of its values, in order (a log grid spaces evenly).
    const dims = d.axes.map((a, i) => ({ dim: i, name: a, type: "category", data: d.axis_values[i].map(param) }));
    dims.push({ dim: n, name: metric + (minimize ? " ↓" : " ↑"), type: "value", scale: true, inverse: minimize,
      nameTextStyle: { color: C.BEST, fontWeight: 600 }, axisLabel: { formatter: (v) => fmt(v) } });
    const row = (i) => d.params[i].map(param).concat([d.value[i]]);
    // Worst first, so that the best configs are drawn on top.
    const rows = d.value.map((_, i) => row(i)).reverse();
    let lo = Math.min(...d.value);
    let hi = Math.max(...d.value);
    if (!(hi > lo)) { lo -= 1e-9; hi += 1e-9; }
    C.draw(target, {
      parallel: { left: 46, right: 56, top: 36, bottom: 26, parallelAxisDefault: {
        nameLocation: "end", nameGap: 12, nameTextStyle: { color: "#404756", fontSize: 12 },
        axisLabel: { color: C.AXIS_TEXT, fontSize: 11 }, axisLine: { lineStyle: { color: "#9aa3b2" } } } },
      parallelAxis: dims,
      // Lines take the heatmap's colours; the metric's own axis is the legend.
      visualMap: { type: "continuous", show: false, min: lo, max: hi, dimension: n, seriesIndex: 0, inRange: { color: ramp } },
      tooltip: { formatter: (p) => d.axes.map((a, j) => a + " " + p.data[j]).join("<br>") + "<br><b>" + metric + " " + fmt(p.data[n]) + "</b>" },
      series: [
        { type: "parallel", data: rows, lineStyle: { width: 1.2, opacity: 0.6 }, emphasis: { lineStyle: { width: 3, opacity: 1 } } },
        { type: "parallel", data: [row(0)], lineStyle: { width: 3.5, opacity: 1, color: C.BEST }, z: 10 },
      ],
    }, rows.length);
    target.dataset.configs = String(d.n_configs);
  }

  function drawImportance(d) {
    const target = el("importance");
    const names = Object.keys(d.importances);
    if (!names.length) return C.empty(target, d.n_configs < 2 ? "needs two scored configs" : "no parameter varies");
    // Largest on top: ECharts draws a category axis bottom-up.
    const rows = names.map((k) => [k, d.importances[k]]).reverse();
    C.draw(target, {
      grid: { left: 110, right: 40, top: 10, bottom: 30 },
      tooltip: { formatter: (p) => p.name + ": " + fmt(p.value) + " of the importance (" + d.evaluator + ", " + d.n_configs + " configs)" },
      xAxis: { type: "value", min: 0, max: 1, axisLabel: { color: C.AXIS_TEXT } },
      yAxis: { type: "category", data: rows.map((r) => r[0]), axisLabel: { color: C.AXIS_TEXT } },
      series: [{ type: "bar", data: rows.map((r) => r[1]), itemStyle: { color: "#4c6ef5" },
        label: { show: true, position: "right", formatter: (p) => fmt(p.value), fontSize: 11 } }],
    }, rows.length);
    target.dataset.params = names.join(",");
  }

  function drawHistory(d) {
    const target = el("history");
    const n = d.trial_ids.length;
    if (!n) return C.empty(target, "no finished trial yet");
    const ok = [];
    const bad = [];
    const best = [];
    const values = d.value.filter((v) => v !== null);
    const top = values.length ? (minimize ? Math.max(...values) : Math.min(...values)) : 1;
    d.trial_ids.forEach((id, i) => {
      if (d.value[i] !== null) ok.push([i + 1, d.value[i], id]);
      else bad.push([i + 1, top, id, d.status[i]]);
      if (d.best_so_far[i] !== null) best.push([i + 1, d.best_so_far[i]]);
    });
    const c = C.draw(target, {
      grid: { left: 60, right: 18, top: 34, bottom: 38 },
      legend: { top: 0, right: 0, textStyle: { color: C.AXIS_TEXT, fontSize: 12 } },
      tooltip: {
        trigger: "item",
        formatter: (p) => (p.seriesIndex === 1 ? "best so far after " + p.data[0] + " trials: " + fmt(p.data[1])
          : "trial #" + p.data[2] + " (" + p.data[0] + "th to finish)<br>" + (p.data[3] || metric + " " + fmt(p.data[1]))),
      },
      xAxis: { type: "value", name: "finished trials", nameLocation: "middle", nameGap: 24, min: 1, max: Math.max(n, 2),
        minInterval: 1, axisLabel: { color: C.AXIS_TEXT }, splitLine: { show: false } },
      yAxis: C.valueAxis(metric, values, { nameLocation: "middle", nameGap: 42 }),
      series: [
        { type: "scatter", name: "trial", data: ok, symbolSize: n > 2000 ? 3 : 6, large: n > 2000,
          itemStyle: { color: "#4c6ef5", opacity: 0.55 } },
        { type: "line", name: "best so far", data: best, step: "end", showSymbol: false, z: 5,
          lineStyle: { color: C.BEST, width: 2.5 }, itemStyle: { color: C.BEST } },
        { type: "scatter", name: "failed / diverged / pruned", data: bad, symbol: "triangle", symbolSize: 8,
          itemStyle: { color: "#d92d20" } },
      ],
    }, ok.length + bad.length);
    c.off("click");
    c.on("click", (p) => openTrial(p.seriesIndex !== 1 && p.data[2]));
  }

  const pickX = document.getElementById("heatmap-x");
  const pickY = document.getElementById("heatmap-y");

  function load(name, url, drawFn) {
    const target = el(name);
    if (!target) return Promise.resolve();
    target.dataset.state = "loading";
    return getJSON(url).then(drawFn).catch((err) => C.failed(target, err));
  }

  function heatmapUrl() {
    return api + "/heatmap?x=" + encodeURIComponent(pickX.value) + "&y=" + encodeURIComponent(pickY.value);
  }

  function refresh() {
    return Promise.all([
      load("curves", api + "/curves?top=10", drawCurves),
      pickX && pickY && pickX.value !== pickY.value ? load("heatmap", heatmapUrl(), drawHeatmap) : null,
      load("parallel", api + "/configs", drawParallel),
      load("importance", api + "/importance", drawImportance),
      load("history", api + "/history", drawHistory),
    ]);
  }

  // Picking the other axis's parameter swaps the two.
  if (pickX && pickY) {
    let current = { x: pickX.value, y: pickY.value };
    const onPick = (me, other, key) => () => {
      if (me.value === other.value) other.value = current[key];
      current = { x: pickX.value, y: pickY.value };
      load("heatmap", heatmapUrl(), drawHeatmap);
    };
    pickX.addEventListener("change", onPick(pickX, pickY, "x"));
    pickY.addEventListener("change", onPick(pickY, pickX, "y"));
  }

  // One refresh at a time, and not more often than every 2 s (10 s for a big sweep, whose plot data
  // is larger); a change that arrives meanwhile triggers one more refresh.
  const minGapMs = Number(root.dataset.nTrials) > 2000 ? 10000 : 2000;
  let running = false;
  let again = false;
  let last = 0;
  function update() {
    if (running) { again = true; return; }
    const wait = last + minGapMs - Date.now();
    if (wait > 0) { running = true; setTimeout(() => { running = false; update(); }, wait); return; }
    running = true;
    again = false; // what changed so far is in this refresh
    last = Date.now();
    refresh().finally(() => {
      running = false;
      if (again) { again = false; update(); }
    });
  }
  C.ready().then(() => {
    document.addEventListener("gs:changed", update);
    update();
  }, (err) => CHARTS.forEach((name) => el(name) && C.failed(el(name), err)));
})();
