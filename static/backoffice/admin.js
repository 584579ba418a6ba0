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

/* Django's two-box selector (FilteredSelectMultiple, e.g. a group's members) labels its search
   icons with aria-label on a bare span, which assistive technology may ignore (axe:
   aria-prohibited-attr): give them the image role the label describes. Django builds the boxes
   on window load; this listener is added after its own, so it runs once they exist. */
window.addEventListener("load", function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll(".selector .search-label-icon[aria-label]"), function (icon) {
    icon.setAttribute("role", "img");
  });
});
