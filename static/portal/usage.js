/* Usage charts (Chart.js, vendored under static/vendor/chartjs): spend per day with the running
   total against the cost cap, and spend by model. Every figure is also in a table on the page. */
(function () {
  "use strict";
  if (typeof window.Chart === "undefined") { return; }
  function data(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }
  var labels = data("daily-spend-labels");
  var locale = labels.locale === "zh-hant" ? "zh-Hant" : labels.locale;
  var money = window.gatewayMoney(labels.locale);
  var moneyTicks = { callback: function (v) { return money(v); } };
  var tooltip = { callbacks: { label: function (ctx) { return ctx.dataset.label + ": " + money(ctx.chart.options.indexAxis === "y" ? ctx.parsed.x : ctx.parsed.y); } } };

  var daily = document.getElementById("daily-spend-chart");
  if (daily) {
    var series = data("daily-spend-data");
    var cap = data("cost-cap-data");
    var days = series.map(function (row) {
      var parts = row.day.split("-");
      return new Intl.DateTimeFormat(locale, { month: "short", day: "numeric", timeZone: "UTC" })
        .format(new Date(Date.UTC(+parts[0], +parts[1] - 1, +parts[2])));
    });
    var datasets = [
      { type: "bar", label: labels.daily, data: series.map(function (r) { return Number(r.cost_usd); }),
        backgroundColor: "#1d4ed8", yAxisID: "y", order: 3 },
      { type: "line", label: labels.cumulative,
        data: series.map(function (r) { return r.day > labels.today ? null : Number(r.cumulative_usd); }),
        borderColor: "#b45309", backgroundColor: "#b45309", pointRadius: 0, borderWidth: 2, yAxisID: "total", order: 1 },
    ];
    if (cap !== null) {
      datasets.push({ type: "line", label: labels.cap, data: series.map(function () { return Number(cap); }),
        borderColor: "#b91c1c", borderDash: [6, 4], pointRadius: 0, borderWidth: 2, yAxisID: "total", order: 2 });
    }
    window.portalDailyChart = new window.Chart(daily, {
      data: { labels: days, datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          y: { beginAtZero: true, position: "left", ticks: moneyTicks,
            title: { display: true, text: labels.daily_axis } },
          total: { beginAtZero: true, position: "right", ticks: moneyTicks, grid: { drawOnChartArea: false },
            title: { display: true, text: labels.total_axis } },
        },
        plugins: { tooltip: tooltip },
      },
    });
    daily.setAttribute("data-chart-ready", "true");
  }

  var byModel = document.getElementById("by-model-chart");
  if (byModel) {
    var rows = data("by-model-data");
    window.portalByModelChart = new window.Chart(byModel, {
      type: "bar",
      data: {
        labels: rows.map(function (r) { var m = r.model || "—"; return m.length > 26 ? "…" + m.slice(-25) : m; }),
        datasets: [{ label: labels.by_model, data: rows.map(function (r) { return Number(r.cost_usd); }), backgroundColor: "#1d4ed8" }],
      },
      options: {
        indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false,
        scales: { x: { beginAtZero: true, ticks: moneyTicks, title: { display: true, text: labels.by_model } } },
        plugins: { legend: { display: false }, tooltip: tooltip },
      },
    });
    byModel.setAttribute("data-chart-ready", "true");
  }
})();
