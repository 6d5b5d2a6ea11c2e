// ballast status page: fetches /status every 2 s and renders it. It builds
// the DOM with textContent only (request ids come from agents), and sends
// no credentials of its own: the session cookie set when the page was
// authorized travels with same-origin requests.
(function () {
  'use strict';
  var REFRESH_MS = 2000;
  var SVG = 'http://www.w3.org/2000/svg';
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmtRate(x) {
    if (!x) return '0';
    if (x >= 100) return x.toFixed(0);
    if (x >= 10) return x.toFixed(1);
    return x.toFixed(2);
  }
  function fmtPct(r) {
    if (r === null || r === undefined) return '—';
    var p = (r * 100).toFixed(1);
    return (p.slice(-2) === '.0' ? p.slice(0, -2) : p) + '%';
  }
  function fmtMS(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms < 1) return ms.toFixed(2) + ' ms';
    if (ms < 10) return ms.toFixed(1) + ' ms';
    if (ms < 1000) return ms.toFixed(0) + ' ms';
    return (ms / 1000).toFixed(2) + ' s';
  }
  function fmtTime(iso) {
    var d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function metric(value, label, bad) {
    var m = el('div', 'metric' + (bad ? ' bad' : ''));
    m.appendChild(el('span', 'v', value));
    m.appendChild(el('span', 'l', label));
    return m;
  }

  // spark draws points (oldest first) as a filled line scaled to its max.
  function spark(points, cls, caption) {
    var w = 240, h = 38, n = points.length, max = 0, i;
    for (i = 0; i < n; i++) if (points[i] > max) max = points[i];
    var box = el('div', 'spark');
    var cap = el('div', 'cap');
    cap.appendChild(el('span', null, caption));
    cap.appendChild(el('span', null, 'max ' + max + '/s'));
    box.appendChild(cap);
    var svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', caption + ', last ' + n + ' s');
    var d = 'M0,' + h;
    for (i = 0; i < n; i++) {
      var x = n > 1 ? (i * w) / (n - 1) : 0;
      var y = max > 0 ? h - 2 - ((h - 4) * points[i]) / max : h - 1;
      d += ' L' + x.toFixed(1) + ',' + y.toFixed(1);
    }
    d += ' L' + w + ',' + h + ' Z';
    var path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', d);
    path.setAttribute('class', cls);
    svg.appendChild(path);
    box.appendChild(svg);
    return box;
  }

  // classCause is a failure's class, and its cause when it has one.
  function classCause(f) { return f.cause ? f.class + ' / ' + f.cause : f.class; }

  // lastFailureRow spans an upstream's row with why it last failed: when,
  // the class and cause, the reason in words, and for ballast's own
  // shortage what to do about it. All text: /status words it safely, and
  // the page never parses it as markup.
  function lastFailureRow(f) {
    var tr = el('tr', 'last-failure'), td = el('td');
    td.colSpan = 8;
    td.appendChild(el('span', 'lf-label', 'last failure ' + fmtTime(f.time) + ' · ' + classCause(f) + (f.status ? ' · ' + f.status : '')));
    td.appendChild(el('span', 'lf-reason', f.reason));
    if (f.hint) td.appendChild(el('span', 'lf-hint', f.hint));
    tr.appendChild(td);
    return tr;
  }

  function upstreamTable(ups) {
    var t = el('table', 'ups');
    var head = el('tr');
    ['upstream', 'breaker', 'cool-down', 'req/s', 'success', 'p50 / p99', 'retries', 'in flight'].forEach(function (h) {
      head.appendChild(el('th', null, h));
    });
    var thead = el('thead');
    thead.appendChild(head);
    t.appendChild(thead);
    var body = el('tbody');
    (ups || []).forEach(function (u) {
      var tr = el('tr');
      tr.setAttribute('data-upstream', u.name);
      var name = el('td', null, u.name);
      name.appendChild(el('span', 'role', u.role));
      tr.appendChild(name);
      var b = el('td');
      b.appendChild(el('span', 'badge b-' + u.breaker, u.breaker.replace('_', ' ')));
      tr.appendChild(b);
      tr.appendChild(el('td', null, u.cooldown_remaining_s > 0 ? u.cooldown_remaining_s.toFixed(1) + ' s' : '—'));
      tr.appendChild(el('td', null, fmtRate(u.rate_rps)));
      tr.appendChild(el('td', null, fmtPct(u.success_ratio)));
      tr.appendChild(el('td', null, fmtMS(u.p50_ms) + ' / ' + fmtMS(u.p99_ms)));
      tr.appendChild(el('td', null, u.retries));
      tr.appendChild(el('td', null, u.inflight));
      body.appendChild(tr);
      if (u.last_failure) body.appendChild(lastFailureRow(u.last_failure));
    });
    t.appendChild(body);
    return t;
  }

  function routeCard(r) {
    var card = el('article', 'route health-' + r.health);
    card.setAttribute('data-route', r.name);
    card.setAttribute('data-health', r.health);
    var h = el('header');
    h.appendChild(el('h3', null, r.name));
    h.appendChild(el('span', 'badge health-' + r.health, r.health));
    card.appendChild(h);
    var m = el('div', 'metrics');
    m.appendChild(metric(fmtRate(r.rate_rps), 'req/s'));
    m.appendChild(metric(fmtPct(r.success_ratio), 'success', r.success_ratio !== null && r.success_ratio < 0.95));
    m.appendChild(metric(fmtMS(r.p50_ms), 'p50'));
    m.appendChild(metric(fmtMS(r.p99_ms), 'p99'));
    m.appendChild(metric(r.retries, 'retries'));
    m.appendChild(metric(r.inflight, 'in flight'));
    card.appendChild(m);
    var sp = el('div', 'sparks');
    sp.appendChild(spark(r.series.requests, 'area-rate', 'requests/s'));
    sp.appendChild(spark(r.series.failures, 'area-err', 'errors/s'));
    card.appendChild(sp);
    card.appendChild(upstreamTable(r.upstreams));
    var extras = [];
    extras.push(r.requests + ' requests, ' + r.failures + ' failed in the window; ' + r.total_requests + ' since start');
    if (r.limiter) {
      extras.push('limiter ' + (r.limiter.name || r.name) + ': ' +
        (r.limiter.effective_rps ? fmtRate(r.limiter.effective_rps) + ' req/s allowed, ' : '') +
        'queue ' + r.limiter.queue_depth + ', ' + r.limiter.limited + ' refused');
    }
    if (r.cache) extras.push('cache hit ratio ' + fmtPct(r.cache.hit_ratio) + ' (' + r.cache.hits + ' hits, ' + r.cache.misses + ' misses)');
    card.appendChild(el('div', 'extras', extras.join(' · ')));
    return card;
  }

  function summary(s) {
    var counts = { ok: 0, degraded: 0, failing: 0, idle: 0 }, rate = 0, inflight = 0;
    s.routes.forEach(function (r) { counts[r.health] = (counts[r.health] || 0) + 1; rate += r.rate_rps; inflight += r.inflight; });
    var box = $('summary');
    var pills = [[fmtRate(rate), 'req/s total'], [inflight, 'in flight'], [counts.ok, 'ok'],
      [counts.degraded, 'degraded'], [counts.failing, 'failing'], [counts.idle, 'idle'], [s.failures.length, 'recent failures']];
    box.replaceChildren.apply(box, pills.map(function (p) {
      var d = el('div', 'pill');
      d.appendChild(el('span', 'v', p[0]));
      d.appendChild(el('span', 'l', p[1]));
      return d;
    }));
  }

  function failures(list) {
    var body = $('failures').tBodies[0];
    if (!list.length) {
      var tr = el('tr'), td = el('td', 'empty', 'no failures recorded');
      td.colSpan = 9;
      tr.appendChild(td);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren.apply(body, list.map(function (f) {
      var tr = el('tr');
      tr.appendChild(el('td', null, fmtTime(f.time)));
      tr.appendChild(el('td', null, f.route));
      tr.appendChild(el('td', null, f.upstream || '—'));
      tr.appendChild(el('td', null, f.status || '—'));
      tr.appendChild(el('td', 'reason', f.reason));
      tr.appendChild(el('td', null, classCause(f)));
      tr.appendChild(el('td', 'detail', f.detail || ''));
      tr.appendChild(el('td', null, f.attempts));
      tr.appendChild(el('td', 'rid', f.request_id || ''));
      return tr;
    }));
  }

  function jobs(j) {
    var sec = $('jobs-section');
    if (!j) { sec.hidden = true; return; }
    sec.hidden = false;
    var t = el('table');
    var head = el('tr');
    ['state', 'id', 'route', 'attempts', 'next action', 'at', 'reason'].forEach(function (h) { head.appendChild(el('th', null, h)); });
    t.appendChild(head);
    [['running', j.running], ['waiting', j.waiting], ['failed', j.failed]].forEach(function (group) {
      (group[1] || []).forEach(function (x) {
        var tr = el('tr');
        [group[0], x.id, x.route, x.attempts, x.next_action, x.next_at ? fmtTime(x.next_at) : '—', x.reason || ''].forEach(function (v) {
          tr.appendChild(el('td', null, v));
        });
        t.appendChild(tr);
      });
    });
    $('jobs').replaceChildren(t);
  }

  function render(s) {
    summary(s);
    var routes = $('routes');
    if (!s.routes.length) routes.replaceChildren(el('p', 'empty', 'no routes'));
    else routes.replaceChildren.apply(routes, s.routes.map(routeCard));
    failures(s.failures || []);
    jobs(s.jobs);
    $('window').textContent = s.window_s;
    $('alerts').textContent = s.alerts
      ? 'alerts: ' + s.alerts.sent + ' sent, ' + s.alerts.failed + ' failed, ' + s.alerts.suppressed + ' deduplicated, ' +
        s.alerts.rate_limited + ' rate limited, ' + s.alerts.dropped + ' dropped'
      : 'alerts: off';
    $('updated').textContent = 'updated ' + fmtTime(s.time);
  }

  function setState(cls, text) {
    var st = $('state');
    st.className = 'state state-' + cls;
    st.textContent = text;
  }

  function refresh() {
    fetch('/status', { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (resp) {
        if (resp.status === 401) throw new Error('not authorized: reload / and sign in');
        if (!resp.ok) throw new Error('/status answered ' + resp.status);
        return resp.json();
      })
      .then(function (s) { render(s); setState('live', 'live'); })
      .catch(function (err) { setState('error', err.message || 'unreachable'); })
      .then(function () { setTimeout(refresh, REFRESH_MS); });
  }

  refresh();
})();
