/* Daily spend chart (Chart.js, vendored under static/vendor/chartjs). */
(function () {
  "use strict";
  var canvas = document.getElementById("daily-spend-chart");
  if (!canvas || typeof window.Chart === "undefined") { return; }
  var series = JSON.parse(document.getElementById("daily-spend-data").textContent);
  var labels = JSON.parse(document.getElementById("daily-spend-labels").textContent);
  var locale = labels.locale === "zh-hant" ? "zh-Hant" : labels.locale;
  var money = new Intl.NumberFormat(locale, { style: "currency", currency: "USD", maximumFractionDigits: 6 });
  var days = series.map(function (row) {
    var parts = row.day.split("-");
    return new Intl.DateTimeFormat(locale, { month: "short", day: "numeric", timeZone: "UTC" })
      .format(new Date(Date.UTC(+parts[0], +parts[1] - 1, +parts[2])));
  });
  window.portalDailyChart = new window.Chart(canvas, {
    type: "bar",
    data: {
      labels: days,
      datasets: [{
        label: labels.dataset,
        data: series.map(function (row) { return Number(row.cost_usd); }),
        backgroundColor: "#1d4ed8",
      }],
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: { y: { beginAtZero: true, ticks: { callback: function (v) { return money.format(v); } } } },
      plugins: { tooltip: { callbacks: { label: function (ctx) { return money.format(ctx.parsed.y); } } } },
    },
  });
  canvas.setAttribute("data-chart-ready", "true");
})();
