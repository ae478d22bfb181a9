// Policies: the scripts in force, in order, the compile errors that kept
// the last reload out (file and line), when they were last (re)loaded and
// the settings they read.

import { api } from './api.js';
import { badge, h, when } from './ui.js';

export async function render(page) {
  page.append(h('h1', {}, 'Policies'));
  const answer = await api('policies');
  const st = answer.status;
  page.append(
    h(
      'section',
      { class: 'card' },
      h('p', {}, badge(st.ok ? 'in force' : 'last reload refused', st.ok ? 'ready' : 'error'), ` from ${st.source}`),
      h('p', {}, `Last (re)load: ${when(st.last_reload)} · reloads since start: ${st.reloads}`),
      h('h2', {}, 'Scripts, in order'),
      st.policies.length ? h('ol', { id: 'policy-list' }, st.policies.map((p) => h('li', {}, h('code', {}, p)))) : h('p', {}, 'None.'),
    ),
  );
  if (st.errors.length) {
    page.append(
      h(
        'section',
        { class: 'card', id: 'policy-errors' },
        h('h2', {}, 'Compile errors (the last good pipeline stays in force)'),
        h('ul', {}, st.errors.map((e) => h('li', { class: 'error' }, h('code', {}, `${e.file}${e.line ? `:${e.line}` : ''}`), ` ${e.message}`))),
      ),
    );
  }
  page.append(
    h(
      'section',
      { class: 'card' },
      h('h2', {}, 'Settings'),
      answer.changed.length ? h('p', { class: 'hint' }, `Changed live: ${answer.changed.join(', ')}`) : null,
      h('pre', { id: 'policy-settings' }, JSON.stringify(answer.settings, null, 2)),
    ),
  );
}
