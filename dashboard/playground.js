// Playground: send a chat to any model name through the gateway (as the
// client `admin`) and show the answer and how it was routed.

import { api } from './api.js';
import { badge, h, notice } from './ui.js';

export async function render(page) {
  const model = h('input', { id: 'pg-model', name: 'model', required: true, placeholder: 'free, auto, provider/model…', value: 'free', list: 'pg-models' });
  const models = h('datalist', { id: 'pg-models' });
  const prompt = h('textarea', { id: 'pg-prompt', name: 'prompt', rows: 4, required: true }, 'Say hello in five words.');
  const out = h('div', { id: 'pg-result' });
  const form = h(
    'form',
    { id: 'pg-form', class: 'stack' },
    h('label', { for: 'pg-model' }, 'Model'),
    model,
    models,
    h('label', { for: 'pg-prompt' }, 'Message'),
    prompt,
    h('button', { type: 'submit', id: 'pg-send' }, 'Send'),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const send = form.querySelector('button[type=submit]');
    send.disabled = true;
    out.replaceChildren(h('p', { class: 'muted' }, 'Waiting for the answer…'));
    try {
      const r = await api('playground', {
        method: 'POST',
        body: { model: model.value.trim(), messages: [{ role: 'user', content: prompt.value }] },
      });
      out.replaceChildren(result(r));
    } catch (err) {
      notice(out, err.message, 'error');
    } finally {
      send.disabled = false;
    }
  });
  page.append(h('h1', {}, 'Playground'), form, out);
  try {
    const routes = await api('routes');
    const names = new Set();
    for (const r of routes.routes) {
      names.add(r.name);
      for (const c of r.candidates) names.add(c.target);
    }
    models.replaceChildren(...[...names].sort().map((n) => h('option', { value: n })));
  } catch (e) {
    notice(out, e.message, 'error');
  }
}

function result(r) {
  const ok = r.status < 400;
  const text = ok
    ? r.answer?.choices?.map((c) => c.message?.content ?? '').join('\n') ?? JSON.stringify(r.answer)
    : r.answer?.error?.message ?? JSON.stringify(r.answer);
  return h(
    'div',
    { class: 'card' },
    h('p', {}, badge(String(r.status), ok ? 'ready' : 'error'), ' routed via ', h('strong', { id: 'pg-via' }, r.routed_via || 'nothing')),
    h('h3', {}, ok ? 'Answer' : 'Error'),
    h('pre', { id: 'pg-answer', class: ok ? '' : 'error' }, text),
    h('h3', {}, 'Routing headers'),
    h('dl', { class: 'headers' }, Object.entries(r.headers || {}).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('h3', {}, 'Attempts'),
    Array.isArray(r.attempts) && r.attempts.length
      ? h(
          'ol',
          { class: 'attempts', id: 'pg-attempts' },
          r.attempts.map((a) =>
            h('li', { class: a.reason === 'ok' ? 'ok' : 'failed' }, h('strong', {}, `${a.provider}/${a.model}`), ` key ${a.key} · ${a.status ? `HTTP ${a.status} · ` : ''}${a.reason} · ${a.latency_ms} ms`),
          ),
        )
      : h('p', { class: 'muted' }, r.attempts === null ? 'No trail: this gateway keeps no request log (state.path).' : 'No upstream was tried.'),
  );
}
