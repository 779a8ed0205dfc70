// Switchboard console: keeps the page current and finishes a login link.
// Pages are rendered by the directory; this only re-fetches them when the
// directory says something changed (the change feed, or the audit log on the
// events page) and swaps the <main> element.
(function () {
  "use strict";
  var login = document.getElementById("login");
  if (login && location.hash.indexOf("#code=") === 0) {
    // The code rides in the fragment, which browsers never send to servers.
    document.getElementById("code").value = decodeURIComponent(location.hash.slice(6));
    history.replaceState(null, "", location.pathname);
    login.submit();
    return;
  }
  var body = document.body;
  var zone = body.getAttribute("data-zone") || "";
  var feed = body.getAttribute("data-feed");
  if (!zone || !feed) return;
  var live = function (text) {
    var el = document.getElementById("live");
    if (el) el.textContent = text;
  };
  var main = function () { return document.querySelector("main"); };
  var busy = false;
  var lastRefresh = 0;
  function wait(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function refresh() {
    // Leave the page alone while someone is filling in a form on it.
    var a = document.activeElement;
    if (busy || document.querySelector("main details[open]") ||
        (a && a.tagName === "INPUT" && main().contains(a))) return Promise.resolve();
    busy = true;
    lastRefresh = Date.now();
    return fetch(location.pathname + location.search, { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.querySelector("main");
        if (next) main().replaceWith(next);
        live("updated " + new Date().toLocaleTimeString());
      })
      .finally(function () { busy = false; });
  }
  // What the feed last said, so a change seen but not yet shown (a form was
  // open) is not reported again at once: the next poll waits for a new one.
  var seen = null;
  function poll() {
    var m = main();
    var mark = feed === "events" ? "data-last-event" : "data-serial";
    if (seen === null) seen = m.getAttribute(mark);
    var url = feed === "events"
      ? "/v1/events?after=" + seen + "&wait=25&limit=1"
      : "/v1/feed?zone=" + encodeURIComponent(zone) + "&since=" + seen + "&timeout=25";
    return fetch(url, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (j) {
        var now = String(feed === "events" ? j.last : j.serial);
        if (now === seen) return null;
        seen = now;
        // At most one refresh every 1.5 s, however fast changes come.
        var gap = 1500 - (Date.now() - lastRefresh);
        return (gap > 0 ? wait(gap) : Promise.resolve()).then(refresh);
      })
      .catch(function () { live("directory unreachable; retrying"); return wait(2000); })
      .then(function () { return wait(50); })
      .then(poll);
  }
  poll();
  // Heartbeat ages and the like move without a change: a slow refresh too.
  setInterval(function () {
    if (Date.now() - lastRefresh > 25000) refresh();
  }, 30000);
})();
