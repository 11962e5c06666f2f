(function () {
  // The tracking page keeps itself fresh: every few seconds it fetches itself again and
  // swaps in the new <main>, unless the customer is writing in a form (nothing typed is
  // ever lost) or the tab is hidden, at the pace the fresh page asks for, and stops once
  // it asks for none (delivered). Without JavaScript the page is simply not refreshed.
  var script = document.currentScript;
  var every = Number(script.dataset.seconds) * 1000;
  var url = script.dataset.url;
  function busy() {
    var active = document.activeElement;
    if (active && (active.tagName === 'TEXTAREA' || active.tagName === 'INPUT')) return true;
    var fields = document.querySelectorAll('textarea');
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].value !== fields[i].defaultValue) return true;
    }
    return false;
  }
  function tick() {
    if (document.visibilityState === 'visible' && !busy()) {
      fetch(url, { cache: 'no-store', credentials: 'omit' })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html || busy()) return;
          var page = new DOMParser().parseFromString(html, 'text/html');
          var fresh = page.querySelector('main');
          var current = document.querySelector('main');
          if (fresh && current) current.replaceWith(fresh);
          // The fresh page says how often it wants refreshing, or not at all (delivered).
          var next = page.querySelector('script[data-seconds]');
          every = next ? Number(next.dataset.seconds) * 1000 : 0;
        })
        .catch(function () {})
        .then(schedule);
      return;
    }
    schedule();
  }
  function schedule() {
    if (every > 0) setTimeout(tick, every);
  }
  if (url) schedule();
})();
