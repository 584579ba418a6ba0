/* Money in charts by the rule of quota/display.py: cents from a dollar up, three significant digits
   below (at most six decimals); the symbol is the page language's ("$" in English, "US$" in
   Traditional Chinese), as in the text around the chart. */
(function () {
  "use strict";
  window.gatewayMoney = function (language) {
    var locale = /^zh/i.test(language || "") ? "zh-Hant" : "en-US";
    var symbol = locale === "zh-Hant" ? "US$" : "$";
    var cache = {};
    function formatter(places) {
      if (!cache[places]) {
        cache[places] = new Intl.NumberFormat(locale, { minimumFractionDigits: 2, maximumFractionDigits: places });
      }
      return cache[places];
    }
    return function (value) {
      var amount = Number(value), magnitude = Math.abs(amount);
      if (magnitude > 0 && magnitude < 0.000001) { return "< " + symbol + "0.000001"; }
      var places = magnitude >= 1 || magnitude === 0 ? 2 : Math.min(6, 2 - Math.floor(Math.log10(magnitude)));
      return (amount < 0 ? "-" : "") + symbol + formatter(places).format(magnitude);
    };
  };
})();
