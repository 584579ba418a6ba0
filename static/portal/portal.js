/* Member portal: copy buttons, confirmations, language switch. No framework, works offline. */
(function () {
  "use strict";

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "absolute";
    area.style.left = "-9999px";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } finally { document.body.removeChild(area); }
    return Promise.resolve();
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) { return; }
    var target = document.getElementById(button.getAttribute("data-copy-target"));
    if (!target) { return; }
    var text = "value" in target && target.tagName === "INPUT" ? target.value : target.textContent;
    var status = button.parentNode.querySelector(".copy-status");
    copyText(text).then(function () {
      button.classList.add("copied");
      if (status) { status.textContent = button.getAttribute("data-copied-label") || "✓"; }
      setTimeout(function () { button.classList.remove("copied"); }, 2000);
    });
  });

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });

  var key = document.getElementById("key-plaintext-value");
  if (key) { key.focus(); key.select(); }
})();
