// The request log: filters, pages (newest first), and each request's
// attempt trail, expanded on demand.

import { api } from './api.js';
import { badge, errorBox, h, table, when } from './ui.js';

const FILTERS = [
  ['since', 'Since', '24h, 7d or 2026-12-01T00:00:00Z'],
  ['client', 'Client', 'name'],
  ['model', 'Model', 'as asked'],
  ['provider', 'Provider', 'answered or tried'],
  ['status', 'Status', '200, 429, error, ok'],
];

export async function render(page) {
  const results = h('div', { id: 'log-results' });
  const inputs = Object.fromEntries(FILTERS.map(([name, , hint]) => [name, h('input', { id: `filter-${name}`, name, placeholder: hint })]));
  const form = h(
    'form',
    { id: 'log-filters', class: 'filters' },
    FILTERS.map(([name, label]) => h('label', {}, h('span', {}, label), inputs[name])),
    h('button', { type: 'submit' }, 'Filter'),
  );
  // Cursors of the pages before the one shown, to go back.
  let cursors = [];
  const load = async (cursor) => {
    const query = new URLSearchParams();
    for (const [name] of FILTERS) if (inputs[name].value.trim()) query.set(name, inputs[name].value.trim());
    query.set('limit', '25');
    if (cursor) query.set('cursor', cursor);
    results.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const answer = await api(`requests?${query}`);
      results.replaceChildren(pageOf(answer, cursor, cursors, load));
    } catch (e) {
      results.replaceChildren(errorBox(e));
    }
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    cursors = [];
    load(null);
  });
  page.append(h('h1', {}, 'Request log'), form, results);
  await load(null);
}

function pageOf(answer, cursor, cursors, load) {
  if (!answer.requests.length) return h('p', { class: 'muted', id: 'log-empty' }, 'No request matches.');
  const rows = [];
  for (const r of answer.requests) {
    const trail = h('tr', { class: 'trail', hidden: true }, h('td', { colspan: 7 }, attempts(r)));
    const n = Array.isArray(r.attempts) ? r.attempts.length : 0;
    const toggle = h('button', { type: 'button', class: 'expand', 'aria-expanded': 'false' }, `▸ ${n} attempt${n === 1 ? '' : 's'}`);
    toggle.addEventListener('click', () => {
      trail.hidden = !trail.hidden;
      toggle.setAttribute('aria-expanded', String(!trail.hidden));
      toggle.textContent = `${trail.hidden ? '▸' : '▾'} ${n} attempt${n === 1 ? '' : 's'}`;
    });
    rows.push(
      h(
        'tr',
        { class: 'request', 'data-id': r.id },
        h('td', {}, when(r.time)),
        h('td', {}, r.client || '—'),
        h('td', { class: 'model' }, r.model, r.route && r.route !== r.model ? h('span', { class: 'muted' }, ` (${r.route})`) : ''),
        h('td', {}, badge(String(r.status), r.status < 400 ? 'ready' : 'error')),
        h('td', { class: 'via' }, r.answered_by || '—'),
        h('td', {}, `${r.latency_ms} ms`, r.tokens_in !== null ? h('span', { class: 'muted' }, ` · ${r.tokens_in ?? 0}→${r.tokens_out ?? 0} tok`) : ''),
        h('td', {}, toggle),
      ),
      trail,
    );
  }
  const newer = cursors.length
    ? h('button', { type: 'button', id: 'log-newer', onclick: () => load(cursors.pop() || null) }, '← Newer')
    : null;
  const older = answer.next_cursor
    ? h('button', { type: 'button', id: 'log-older', onclick: () => {
      cursors.push(cursor);
      load(answer.next_cursor);
    } }, 'Older →')
    : null;
  return h(
    'div',
    {},
    table(['Time', 'Client', 'Model', 'Status', 'Answered by', 'Latency', 'Trail'], rows, { id: 'log-table' }),
    h('p', { class: 'pager' }, newer, older),
  );
}

function attempts(r) {
  if (!Array.isArray(r.attempts) || !r.attempts.length) return h('p', { class: 'muted' }, 'No upstream was tried.');
  return h(
    'ol',
    { class: 'attempts' },
    r.attempts.map((a) =>
      h(
        'li',
        { class: a.reason === 'ok' ? 'ok' : 'failed' },
        h('strong', {}, `${a.provider}/${a.model}`),
        ` key ${a.key} · `,
        a.status ? `HTTP ${a.status} · ` : '',
        a.reason,
        ` · ${a.latency_ms} ms`,
      ),
    ),
  );
}
