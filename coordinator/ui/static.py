"""The dashboard's stylesheet and its one script, served at /static/ (kept here as text
so the package needs no data files and nothing is fetched at install or run time)."""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232a; background: #f6f7f9; }
header { background: #1d2b3a; color: #fff; padding: 8px 16px; display: flex; gap: 16px;
  align-items: center; }
header nav a { color: #cfe0f3; margin-right: 12px; text-decoration: none; }
header nav a.here { color: #fff; border-bottom: 2px solid #7fb3ea; }
header .node { color: #9fb6cc; }
header .ro { margin-left: auto; color: #9fb6cc; font-size: 12px; }
header .ro a { color: #cfe0f3; }
.t { white-space: nowrap; }
main { padding: 8px 16px 32px; }
h1 { font-size: 20px; margin: 12px 0; word-break: break-all; }
h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; background: #fff; min-width: 50%; }
th, td { border: 1px solid #dde2e8; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
tr.attention td { background: #fff6e5; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.summary dt { color: #5b6673; } dl.summary dd { margin: 0; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px;
  margin-right: 4px; background: #e3e8ee; }
.badge.good { background: #d8f1df; color: #14532d; }
.badge.bad { background: #fbdcdc; color: #7f1d1d; }
.badge.warn { background: #ffe8b3; color: #6b4500; }
.badge.busy { background: #dde9f7; color: #1e3a5f; }
.hint, .count { color: #5b6673; font-size: 12px; }
.empty { color: #5b6673; font-style: italic; }
.error { color: #7f1d1d; font-weight: 600; }
.done { color: #14532d; font-weight: 600; }
p.actions a.action { margin-right: 12px; color: #7f1d1d; }
form.confirm { background: #fff; border: 1px solid #dde2e8; padding: 12px; max-width: 720px; }
form.filter label { margin-right: 12px; }
svg.chart { background: #fff; border: 1px solid #dde2e8; }
svg.chart rect { fill: #4f86c6; }
"""

# Every element with data-live="URL" is refreshed from URL (the server renders the same
# part alone there) as soon as this node applies a change to a round (/changes answers
# then: the node's change feed, the one WatchTxns serves), and every 5 s for what is not
# a round (the cluster's health, throughput). A failed fetch marks the part stale.
LIVE_JS = """
(function () {
  var last = -1;
  function refresh() {
    document.querySelectorAll('[data-live]').forEach(function (part) {
      fetch(part.getAttribute('data-live'), {cache: 'no-store'})
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
        .then(function (html) {
          part.innerHTML = html; part.removeAttribute('data-stale');
          document.body.setAttribute('data-refreshed', String(Date.now()));
        })
        .catch(function () { part.setAttribute('data-stale', 'true'); });
    });
  }
  function follow() {
    fetch('/changes?after=' + last, {cache: 'no-store'})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) {
        var index = parseInt(text, 10);
        if (index !== last) { if (last >= 0) { refresh(); } last = index; }
        follow();
      })
      .catch(function () { setTimeout(follow, 2000); });
  }
  if (document.querySelector('[data-live]')) { follow(); setInterval(refresh, 5000); }
})();
"""
