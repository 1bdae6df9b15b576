// The trial page's per-epoch curve, redrawn while the trial runs.
"use strict";

(function () {
  const target = document.getElementById("chart-trial");
  if (!target) return;
  const { fmt, getJSON } = window.gridsweep;
  const C = window.gridsweepCharts;
  const metric = target.dataset.metric;
  const SERIES = [
    ["train_loss", "#4c6ef5", 0],
    ["val_loss", C.BEST, 0],
    ["val_error", "#1f9d55", 1],
    ["val_accuracy", "#1f9d55", 1],
    ["val_log_loss", "#1f9d55", 1],
    ["val_rmse", "#1f9d55", 1],
    ["val_mae", "#1f9d55", 1],
    ["val_r2", "#1f9d55", 1],
  ];

  function drawTrial(t) {
    const epochs = t.epochs;
    if (!epochs.length) return C.empty(target, t.status === "queued" ? "not started yet" : "no epoch reported");
    // Losses on the left; the sweep's metric on the right when it is not a loss.
    const shown = SERIES.filter(([k, , axis]) => axis === 0 || k === metric);
    let points = 0;
    const series = shown.map(([k, color, axis]) => {
      const data = epochs.map((e) => [e.epoch, e[k]]).filter((p) => p[1] !== null);
      points += data.length;
      return { type: "line", name: k, data, yAxisIndex: axis, showSymbol: epochs.length <= 40, symbolSize: 5,
        lineStyle: { width: k === metric ? 3 : 2, color }, itemStyle: { color } };
    });
    const losses = epochs.flatMap((e) => [e.train_loss, e.val_loss]);
    const yAxis = [C.valueAxis("loss", losses)];
    if (shown.some(([, , axis]) => axis === 1)) {
      yAxis.push(C.valueAxis(metric, epochs.map((e) => e[metric]), { type: "value", splitLine: { show: false } }));
    }
    // The epoch the trial is scored at (its weights are the model kept), and an early stop.
    const marks = [];
    if (t.best_epoch) {
      marks.push({ xAxis: t.best_epoch, lineStyle: { color: C.BEST, type: "dashed" },
        label: { formatter: "best epoch " + t.best_epoch, color: C.BEST } });
    }
    if (t.stopped_epoch) {
      marks.push({ xAxis: t.stopped_epoch, lineStyle: { color: "#8a94a6", type: "dotted" },
        label: { formatter: "stopped early", color: "#8a94a6", position: "insideEndTop" } });
    }
    if (marks.length && series.length) {
      series[series.length - 1].markLine = { symbol: "none", silent: true, data: marks };
    }
    if (t.status === "diverged" && series.length) {
      // Where the loss stopped being a number.
      series[0].markLine = { symbol: "none", silent: true, data: [{ xAxis: t.epochs_done }],
        lineStyle: { color: "#d92d20", type: "dashed" }, label: { formatter: "diverged", color: "#d92d20" } };
    }
    C.draw(target, {
      grid: { left: 60, right: 60, top: 36, bottom: 38 },
      legend: { top: 0, textStyle: { color: C.AXIS_TEXT } },
      tooltip: { trigger: "axis", valueFormatter: (v) => fmt(v) },
      // The whole planned run, so a running trial shows how far it got.
      xAxis: { type: "value", name: "epoch", nameLocation: "middle", nameGap: 24, min: 1, minInterval: 1,
        max: Math.max(t.params.epochs || 0, t.epochs_done, epochs[epochs.length - 1].epoch, 2),
        axisLabel: { color: C.AXIS_TEXT }, splitLine: { show: false } },
      yAxis,
      series,
    }, points);
  }

  function refresh() {
    return getJSON("/api/v1/trials/" + target.dataset.trialId).then(drawTrial).catch((err) => C.failed(target, err));
  }
  C.ready().then(() => {
    document.addEventListener("gs:changed", refresh);
    refresh();
  }, (err) => C.failed(target, err));
})();
