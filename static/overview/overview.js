/* Staff spend overview charts (Chart.js, vendored under static/vendor/chartjs). */
(function () {
  "use strict";
  if (typeof window.Chart === "undefined") { return; }
  var format = window.gatewayMoney(document.documentElement.lang);
  var money = { format: format };
  var colours = ["#1d4ed8", "#059669", "#b45309", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#9333ea", "#6b7280"];
  var node = document.getElementById("overview-daily-data");
  var daily = document.getElementById("overview-daily-chart");
  if (node && daily) {
    var data = JSON.parse(node.textContent);
    var datasets = data.series.map(function (s, i) {
      return { type: "bar", label: s.name, data: s.values.map(Number), backgroundColor: colours[i % colours.length],
        stack: "spend", yAxisID: "y", order: 2 };
    });
    datasets.push({ type: "line", label: data.total_label, data: data.cumulative.map(function (v) { return v === null ? null : Number(v); }), borderColor: "#111827",
      backgroundColor: "#111827", pointRadius: 0, borderWidth: 2, yAxisID: "total", order: 1 });
    window.overviewDailyChart = new window.Chart(daily, {
      data: { labels: data.days.map(function (d) { return d.slice(5); }), datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true },
          y: { stacked: true, beginAtZero: true, ticks: { callback: function (v) { return money.format(v); } },
            title: { display: true, text: data.axis_daily } },
          total: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false },
            ticks: { callback: function (v) { return money.format(v); } }, title: { display: true, text: data.axis_total } },
        },
        plugins: { tooltip: { callbacks: { label: function (c) { return c.dataset.label + ": " + money.format(c.parsed.y); } } } },
      },
    });
    daily.setAttribute("data-chart-ready", "true");
  }
  var refusalsNode = document.getElementById("overview-refusals-data");
  var refusals = document.getElementById("overview-refusals-chart");
  if (refusalsNode && refusals) {
    var rows = JSON.parse(refusalsNode.textContent);
    window.overviewRefusalsChart = new window.Chart(refusals, {
      type: "bar",
      data: { labels: rows.map(function (r) { return r.label; }),
        datasets: [{ label: "refused calls", data: rows.map(function (r) { return r.calls; }), backgroundColor: "#b91c1c" }] },
      options: { indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
  }
})();
