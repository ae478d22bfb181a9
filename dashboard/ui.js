// Small DOM helpers. Text always goes in as text (textContent), never as
// HTML: model names, error messages and answers come from upstreams.

/** An element: `h('td', {class: 'x'}, 'text', child, ...)`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG = 'http://www.w3.org/2000/svg';

/** An SVG element. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  append(el, children);
  return el;
}

/** An error box with the API's message: errors are shown, never swallowed. */
export function errorBox(error) {
  return h('p', { class: 'error', role: 'alert' }, error?.message || String(error));
}

/** Replaces `target`'s content with an error box for `error`. */
export function showError(target, error) {
  target.replaceChildren(errorBox(error));
}

/** A short notice at the top of the page, for the result of an action. */
export function notice(target, text, kind = 'ok') {
  const box = h('p', { class: kind === 'ok' ? 'ok' : 'error', role: kind === 'ok' ? 'status' : 'alert' }, text);
  target.replaceChildren(box);
}

/** `3h 12m`, `45s`. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400);
  const hr = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

/** A log time (RFC 3339) as local date and time. */
export function when(text) {
  const t = new Date(text);
  return Number.isNaN(t.getTime()) ? text : t.toLocaleString();
}

/** A table with a header row; on a phone each row becomes a small card
 * whose cells are labelled with their column (`data-label`). */
export function table(headers, rows, attrs = {}) {
  for (const row of rows.flat()) {
    [...row.children].forEach((cell, i) => {
      if (!cell.hasAttribute('colspan') && headers[i] && !cell.dataset.label) cell.dataset.label = headers[i];
    });
  }
  return h(
    'div',
    { class: 'scroll' },
    h(
      'table',
      attrs,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows),
    ),
  );
}

/** A bar from 0 to `limit`, filled to `used`. */
export function bar(used, limit) {
  const fill = h('span', { class: 'fill' });
  const pct = limit ? Math.min(100, (100 * used) / limit) : 0;
  fill.style.width = `${pct}%`;
  if (pct >= 90) fill.classList.add('high');
  return h('span', { class: 'bar', role: 'img', 'aria-label': limit ? `${used} of ${limit}` : `${used} used` }, fill);
}

/** A state as a coloured badge. */
export function badge(text, kind) {
  return h('span', { class: `badge ${kind || text}` }, text);
}

/** A button that disables itself while `action` runs. */
export function button(label, action, attrs = {}) {
  const b = h('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', async () => {
    b.disabled = true;
    try {
      await action();
    } finally {
      b.disabled = false;
    }
  });
  return b;
}
