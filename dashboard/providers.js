// Providers and keys: the keys (add one, test it, disable or remove it;
// keys from the environment or the config are shown but not editable) and
// each provider's keys and models with their cooldowns, each resettable.

import { api } from './api.js';
import { badge, button, duration, errorBox, h, notice, table } from './ui.js';

export async function render(page) {
  const message = h('div', { id: 'providers-message', class: 'messages' });
  const keys = h('section', { id: 'keys' }, h('h2', {}, 'Keys'));
  const cooldowns = h('section', { id: 'cooldowns' }, h('h2', {}, 'Providers, keys and cooldowns'));
  page.append(h('h1', {}, 'Providers and keys'), message, keys, cooldowns);
  const refresh = async () => {
    page.replaceChildren();
    await render(page);
  };
  await Promise.all([keysSection(keys, message, refresh), cooldownSection(cooldowns, message, refresh)]);
}

async function keysSection(section, message, refresh) {
  let listed;
  try {
    listed = await api('keys');
  } catch (e) {
    section.append(errorBox(e));
    return;
  }
  const rows = listed.keys.map((k) => {
    const path = `keys/${encodeURIComponent(k.provider)}/${encodeURIComponent(k.fingerprint)}`;
    const actions = [
      button('Test', async () => {
        try {
          const r = await api(`${path}/test`, { method: 'POST' });
          if (r.ok) notice(message, `Key ${k.fingerprint} of ${k.provider} works: ${(r.models || []).length} models listed.`);
          else notice(message, `Key ${k.fingerprint} of ${k.provider} failed its test: ${r.error || 'no reason given'}`, 'error');
        } catch (e) {
          notice(message, e.message, 'error');
        }
      }),
    ];
    if (k.editable) {
      actions.push(
        button(k.disabled ? 'Enable' : 'Disable', async () => {
          try {
            await api(path, { method: 'PATCH', body: { disabled: !k.disabled } });
            await refresh();
            notice(document.getElementById('providers-message'), `Key ${k.fingerprint} ${k.disabled ? 'enabled' : 'disabled'}.`);
          } catch (e) {
            notice(message, e.message, 'error');
          }
        }),
        button('Remove', async () => {
          if (!window.confirm(`Remove key ${k.fingerprint} of ${k.provider}?`)) return;
          try {
            await api(path, { method: 'DELETE' });
            await refresh();
            notice(document.getElementById('providers-message'), `Key ${k.fingerprint} of ${k.provider} removed.`);
          } catch (e) {
            notice(message, e.message, 'error');
          }
        }, { class: 'danger' }),
      );
    }
    return h(
      'tr',
      { 'data-fingerprint': k.fingerprint },
      h('td', {}, k.provider),
      h('td', {}, h('code', {}, k.fingerprint)),
      h('td', {}, k.source === 'environment' && k.env ? `environment (${k.env})` : k.source),
      h('td', {}, k.disabled ? badge('disabled', 'cooling') : badge(k.state || 'ready', k.state === 'invalid' ? 'invalid' : 'ready')),
      h('td', {}, k.added ? new Date(k.added).toLocaleString() : '—'),
      h('td', { class: 'actions' }, actions),
    );
  });
  section.append(
    listed.keys.length
      ? table(['Provider', 'Fingerprint', 'Source', 'State', 'Added', ''], rows, { id: 'keys-table' })
      : h('p', { class: 'muted' }, 'No keys yet.'),
  );
  section.append(addForm(listed.providers || [], message, refresh));
}

function addForm(providers, message, refresh) {
  const select = h(
    'select',
    { id: 'add-provider', name: 'provider', required: true },
    providers.map((p) => h('option', { value: p.name }, p.enabled ? p.name : `${p.name} (off: ${(p.key_vars || []).join(' or ')})`)),
  );
  const key = h('input', { id: 'add-key', name: 'key', type: 'password', autocomplete: 'off', required: true, placeholder: 'the provider API key' });
  const signup = h('p', { class: 'hint' });
  const showSignup = () => {
    const p = providers.find((x) => x.name === select.value);
    signup.replaceChildren(p?.signup ? h('span', {}, 'Get a key at ', h('a', { href: p.signup, rel: 'noreferrer', target: '_blank' }, p.signup)) : '');
  };
  select.addEventListener('change', showSignup);
  showSignup();
  const form = h(
    'form',
    { id: 'add-key-form', class: 'inline-form' },
    h('h3', {}, 'Add a key'),
    h('label', { for: 'add-provider' }, 'Provider'),
    select,
    h('label', { for: 'add-key' }, 'Key'),
    key,
    h('button', { type: 'submit', id: 'add-key-button' }, 'Validate and add'),
    signup,
    h('p', { class: 'hint' }, 'The key is checked with one listing call, then stored encrypted; only its fingerprint is shown again.'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const submit = form.querySelector('button[type=submit]');
    submit.disabled = true;
    try {
      const added = await api('keys', { method: 'POST', body: { provider: select.value, key: key.value } });
      key.value = '';
      await refresh();
      notice(
        document.getElementById('providers-message'),
        `Key ${added.fingerprint} added to ${added.provider}: ${(added.models || []).length} models.`,
      );
    } catch (e) {
      notice(message, e.message, 'error');
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function cooldownSection(section, message, refresh) {
  let status;
  try {
    status = await api('status');
  } catch (e) {
    section.append(errorBox(e));
    return;
  }
  const reset = async (body, what) => {
    try {
      const r = await api('cooldowns/reset', { method: 'POST', body });
      await refresh();
      notice(document.getElementById('providers-message'), `${what}: ${r.cleared} cooldown${r.cleared === 1 ? '' : 's'} cleared.`);
    } catch (e) {
      notice(message, e.message, 'error');
    }
  };
  for (const p of status.providers) {
    const rows = [];
    for (const k of p.keys) {
      for (const m of k.models) {
        rows.push(
          h(
            'tr',
            { 'data-model': m.model, 'data-key': k.fingerprint || '' },
            h('td', {}, `${k.key} `, k.fingerprint ? h('code', {}, k.fingerprint) : '(no key)', k.invalid ? badge('invalid', 'invalid') : null),
            h('td', {}, m.model),
            h('td', {}, `${m.used.requests_day}${m.limit.in_force.rpd ? ` / ${m.limit.in_force.rpd}` : ''} today`),
            h('td', { class: 'cooling-cell' }, m.cooling ? badge(`cooling ${duration(m.cooling.in_seconds)} (${m.cooling.reason})`, 'cooling') : badge('ready', 'ready')),
            h(
              'td',
              { class: 'actions' },
              m.cooling && k.fingerprint
                ? button('Reset', () => reset({ provider: p.name, key: k.fingerprint, model: m.model }, `${p.name} ${m.model}`), { class: 'reset-model' })
                : null,
            ),
          ),
        );
      }
    }
    section.append(
      h(
        'article',
        { class: 'card', 'data-provider': p.name },
        h(
          'header',
          {},
          h('h3', {}, p.name),
          badge(p.circuit === 'closed' ? 'circuit closed' : 'circuit open', p.circuit === 'closed' ? 'ready' : 'cooling'),
          h('span', { class: 'muted' }, p.reset ? ` resets in ${duration(p.reset.in_seconds)} (${p.reset.zone})` : ' rolling 24 hours'),
          button('Reset all cooldowns', () => reset({ provider: p.name }, p.name), { class: 'reset-provider' }),
        ),
        // A key cooling on several models: all of them at once.
        p.keys
          .filter((k) => k.fingerprint && k.models.filter((m) => m.cooling).length > 1)
          .map((k) =>
            button(`Reset key ${k.key} on every model`, () => reset({ provider: p.name, key: k.fingerprint }, `${p.name} key ${k.key}`), {
              class: 'reset-key',
            }),
          ),
        table(['Key', 'Model', 'Used', 'State', ''], rows),
      ),
    );
  }
  if (!status.providers.length) section.append(h('p', {}, 'No provider is enabled.'));
}
