// Overview: today's capacity per provider (bars to each limit, time to the
// reset), requests and fallbacks per hour over the last day (an SVG chart
// drawn here), and the most recent errors.

import { api } from './api.js';
import { badge, bar, duration, errorBox, h, s, table, when } from './ui.js';

export async function render(page) {
  page.append(h('h1', {}, 'Overview'));
  const capacity = h('section', { id: 'capacity' }, h('h2', {}, "Today's capacity"));
  const chart = h('section', { id: 'traffic' }, h('h2', {}, 'Requests and fallbacks, last 24 hours'));
  const errors = h('section', { id: 'errors' }, h('h2', {}, 'Recent errors'));
  page.append(capacity, chart, errors);
  await Promise.all([
    fill(capacity, async () => capacityOf(await api('status'))),
    fill(chart, async () => chartOf(await api('usage?by=hour&since=24h'))),
    fill(errors, async () => errorsOf(await api('requests?status=error&limit=10'))),
  ]);
}

async function fill(section, build) {
  try {
    section.append(await build());
  } catch (e) {
    section.append(errorBox(e));
  }
}

/** One card per provider: its models' requests today against their limits. */
function capacityOf(status) {
  if (!status.providers.length) return h('p', {}, 'No provider is enabled.');
  return h(
    'div',
    { class: 'cards' },
    status.providers.map((p) => {
      // Summed over the provider's keys, per model: what the provider can
      // still take today.
      const models = new Map();
      for (const key of p.keys) {
        for (const m of key.models) {
          const row = models.get(m.model) || { used: 0, limit: 0, known: true, cooling: null };
          row.used += m.used.requests_day;
          const limit = m.limit.in_force.rpd ?? key.shared.limit.in_force.rpd;
          if (limit === null || limit === undefined) row.known = false;
          else row.limit += limit;
          if (m.cooling) row.cooling = m.cooling;
          models.set(m.model, row);
        }
      }
      const reset = p.reset ? `resets in ${duration(p.reset.in_seconds)}` : 'rolling 24 hours';
      const invalid = p.keys.filter((k) => k.invalid).length;
      return h(
        'article',
        { class: 'card provider', 'data-provider': p.name },
        h(
          'header',
          {},
          h('h3', {}, p.name),
          badge(p.circuit === 'closed' ? 'up' : 'circuit open', p.circuit === 'closed' ? 'ready' : 'cooling'),
          h('span', { class: 'muted' }, ` ${p.keys.length} key${p.keys.length === 1 ? '' : 's'} · ${reset}`),
          invalid ? badge(`${invalid} invalid`, 'invalid') : null,
        ),
        h(
          'ul',
          { class: 'capacity' },
          [...models].map(([model, r]) =>
            h(
              'li',
              {},
              h('span', { class: 'model' }, model),
              bar(r.used, r.known ? r.limit : 0),
              h(
                'span',
                { class: 'figures' },
                r.known ? `${r.used} / ${r.limit} (${Math.max(0, r.limit - r.used)} left)` : `${r.used} used, no daily limit known`,
              ),
              r.cooling ? badge(`cooling ${duration(r.cooling.in_seconds)}: ${r.cooling.reason}`, 'cooling') : null,
            ),
          ),
        ),
      );
    }),
  );
}

/** Hourly requests (bars) and fallbacks (darker bars) over 24 hours. */
function chartOf(usage) {
  const now = new Date();
  const hours = [];
  for (let i = 23; i >= 0; i--) {
    const t = new Date(now.getTime() - i * 3600e3);
    hours.push(`${t.toISOString().slice(0, 13)}:00Z`);
  }
  const byHour = new Map(usage.groups.map((g) => [g.hour, g]));
  const total = usage.groups.reduce((n, g) => n + g.requests, 0);
  const fallbacks = usage.groups.reduce((n, g) => n + g.fallbacks, 0);
  const max = Math.max(1, ...hours.map((k) => byHour.get(k)?.requests || 0));
  const [W, H, left, bottom] = [480, 160, 28, 18];
  const step = (W - left) / hours.length;
  const y = (v) => H - bottom - ((H - bottom - 8) * v) / max;
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`,
    class: 'chart',
    role: 'img',
    'aria-label': `${total} requests and ${fallbacks} fallbacks in the last 24 hours`,
  });
  svg.append(s('line', { x1: left, y1: H - bottom, x2: W, y2: H - bottom, class: 'axis' }));
  svg.append(s('text', { x: left - 4, y: y(max) + 4, 'text-anchor': 'end', class: 'tick' }, max));
  svg.append(s('text', { x: left - 4, y: H - bottom, 'text-anchor': 'end', class: 'tick' }, 0));
  hours.forEach((k, i) => {
    const g = byHour.get(k);
    const x = left + i * step + 1;
    if (g) {
      const r = s('rect', { x, y: y(g.requests), width: step - 2, height: H - bottom - y(g.requests), class: 'requests' });
      r.append(s('title', {}, `${k}: ${g.requests} requests, ${g.fallbacks} fallbacks`));
      svg.append(r);
      if (g.fallbacks) {
        svg.append(s('rect', { x, y: y(g.fallbacks), width: step - 2, height: H - bottom - y(g.fallbacks), class: 'fallbacks' }));
      }
    }
    if (i % 6 === 0) {
      const label = new Date(k.replace(':00Z', ':00:00Z')).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      svg.append(s('text', { x: x + step / 2, y: H - 4, 'text-anchor': 'middle', class: 'tick' }, label));
    }
  });
  return h(
    'div',
    {},
    svg,
    h(
      'p',
      { class: 'legend' },
      h('span', { class: 'key requests' }),
      ` requests (${total}) `,
      h('span', { class: 'key fallbacks' }),
      ` fallbacks (${fallbacks})`,
      usage.capped ? ' · capped: only the newest rows were counted' : '',
    ),
  );
}

function errorsOf(page) {
  if (!page.requests.length) return h('p', { class: 'muted' }, 'No errors logged.');
  return table(
    ['Time', 'Client', 'Model', 'Status', 'Last attempt'],
    page.requests.map((r) => {
      const last = r.attempts?.[r.attempts.length - 1];
      return h(
        'tr',
        {},
        h('td', {}, when(r.time)),
        h('td', {}, r.client || '—'),
        h('td', {}, r.model),
        h('td', {}, badge(String(r.status), 'error')),
        h('td', {}, last ? `${last.provider}/${last.model}: ${last.reason}` : 'no attempt'),
      );
    }),
  );
}
