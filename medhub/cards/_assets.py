"""The site's stylesheet and script (plain CSS and JavaScript: no build step, no network)."""

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --accent:#1f5fbf; --warn:#8a4b00; --bg:#fbfcfe; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header.top { background: #16233b; color: #fff; padding: .8rem 1.5rem; display: flex; gap: 1.5rem;
             align-items: baseline; flex-wrap: wrap; }
header.top a { color: #fff; text-decoration: none; font-weight: 600; }
header.top nav a { font-weight: 400; margin-right: 1rem; opacity: .9; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
.disclaimer { background: #fff4e0; border: 1px solid #f0c36d; color: var(--warn); padding: .5rem .8rem;
              border-radius: 6px; margin: .8rem 0; }
.controls { display: flex; flex-wrap: wrap; gap: .6rem; align-items: center; margin: 1rem 0; }
.controls input[type=search] { flex: 1 1 320px; padding: .5rem .7rem; font-size: 1rem; border: 1px solid #b8c0cc;
                               border-radius: 6px; }
.controls select { padding: .45rem; border: 1px solid #b8c0cc; border-radius: 6px; background: #fff; }
#count { color: var(--muted); }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { border-bottom: 1px solid var(--line); padding: .4rem .6rem; text-align: left; vertical-align: top; }
th { background: #f1f4f9; font-weight: 600; }
tr[hidden] { display: none; }
a { color: var(--accent); }
code { background: #eef1f6; padding: 0 .25rem; border-radius: 3px; font-size: .92em; }
pre { background: #0f1726; color: #e6ebf5; padding: .8rem 1rem; border-radius: 6px; overflow-x: auto; }
pre code { background: none; color: inherit; padding: 0; }
.tag { display: inline-block; background: #e8eef9; color: #234; border-radius: 10px; padding: 0 .5rem;
       margin: 0 .2rem .2rem 0; font-size: .85em; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; background: #fff;
        border: 1px solid var(--line); border-radius: 6px; padding: .6rem .9rem; }
.meta dt { color: var(--muted); }
.meta dd { margin: 0; }
.badge { font-size: .8em; padding: 0 .4rem; border-radius: 4px; background: #e6f4ea; color: #1e6b35; }
.badge.recipe { background: #f3eadf; color: #7a4a12; }
.badge.reproduced { background: #e3ecff; color: #1f4fa8; }
.chart { max-width: 100%; height: auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
footer { color: var(--muted); font-size: .85em; margin-top: 2rem; }
"""

JS = """
(function () {
  'use strict';
  var data = window.MEDHUB;
  var byId = {};
  data.models.forEach(function (m) { byId[m.id] = m; });
  var search = document.getElementById('search');
  var selects = ['family', 'objective', 'data', 'task'].map(function (k) { return document.getElementById('f-' + k); });
  var rows = Array.prototype.slice.call(document.querySelectorAll('#models tbody tr'));
  var count = document.getElementById('count');

  function matches(m, words, filters) {
    for (var i = 0; i < words.length; i++) { if (m.search.indexOf(words[i]) < 0) { return false; } }
    if (filters.family && m.family !== filters.family) { return false; }
    if (filters.objective && m.objectives.indexOf(filters.objective) < 0) { return false; }
    if (filters.data && m.data.indexOf(filters.data) < 0) { return false; }
    if (filters.task && m.tasks.indexOf(filters.task) < 0) { return false; }
    return true;
  }

  function apply() {
    var words = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var filters = {};
    selects.forEach(function (s) { filters[s.dataset.key] = s.value; });
    var shown = 0;
    rows.forEach(function (row) {
      var ok = matches(byId[row.dataset.id], words, filters);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + ' of ' + rows.length + ' checkpoints';
  }

  var query = new URLSearchParams(window.location.search).get('q');
  if (query) { search.value = query; }
  search.addEventListener('input', apply);
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  apply();
})();
"""
