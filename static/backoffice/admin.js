/* Phone layout of admin tables: each cell carries its column's header as data-label, which the
   stylesheet shows before the value once the rows are stacked (below 768 px). */
(function () {
  "use strict";
  var tables = document.querySelectorAll("#result_list, .overview table");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.querySelectorAll("thead th");
    if (!heads.length) { return; }
    var labels = Array.prototype.map.call(heads, function (th) { return th.textContent.replace(/\s+/g, " ").trim(); });
    Array.prototype.forEach.call(table.querySelectorAll("tbody tr"), function (row) {
      Array.prototype.forEach.call(row.children, function (cell, i) {
        if (labels[i]) { cell.setAttribute("data-label", labels[i]); }
      });
    });
    table.classList.add("stacks");
  });
})();
