// Models and routes: every route and pool in its current order with each
// candidate's state, and the favorites (promoted to the front of the free
// pools), reordered by dragging or with the up/down buttons (phones have
// no drag), saved with PUT /admin/api/settings.

import { api } from './api.js';
import { badge, button, duration, errorBox, h, notice, table } from './ui.js';

export async function render(page) {
  const message = h('div', { id: 'routes-message', class: 'messages' });
  const favorites = h('section', { id: 'favorites' }, h('h2', {}, 'Favorites'));
  const routes = h('section', { id: 'routes' }, h('h2', {}, 'Routes and pools'));
  page.append(h('h1', {}, 'Models and routes'), message, favorites, routes);
  let settings;
  let listed;
  try {
    [settings, listed] = await Promise.all([api('settings'), api('routes')]);
  } catch (e) {
    page.append(errorBox(e));
    return;
  }
  const editor = favoritesEditor(settings.settings?.favorites || [], message, async () => {
    const again = await api('routes');
    routes.replaceChildren(h('h2', {}, 'Routes and pools'), routeList(again, editor.add));
    return again;
  });
  favorites.append(editor.element);
  routes.append(routeList(listed, editor.add));
}

function favoritesEditor(initial, message, reload) {
  let items = [...initial];
  const list = h('ol', { id: 'favorites-list', class: 'reorder' });
  const save = h('button', { type: 'button', id: 'save-favorites', disabled: true }, 'Save order');
  const after = h('div', { id: 'free-after' });
  let dragged = null;

  const draw = () => {
    list.replaceChildren(
      ...items.map((name, i) => {
        const li = h(
          'li',
          { draggable: 'true', 'data-name': name },
          h('span', { class: 'grip', 'aria-hidden': 'true' }, '⋮⋮'),
          h('span', { class: 'name' }, name),
          h(
            'span',
            { class: 'actions' },
            h('button', { type: 'button', class: 'up', 'aria-label': `Move ${name} up`, disabled: i === 0, onclick: () => move(i, i - 1) }, '↑'),
            h('button', { type: 'button', class: 'down', 'aria-label': `Move ${name} down`, disabled: i === items.length - 1, onclick: () => move(i, i + 1) }, '↓'),
            h('button', { type: 'button', class: 'remove', 'aria-label': `Remove ${name}`, onclick: () => remove(i) }, '✕'),
          ),
        );
        li.addEventListener('dragstart', (e) => {
          dragged = i;
          e.dataTransfer.effectAllowed = 'move';
          e.dataTransfer.setData('text/plain', name);
          li.classList.add('dragging');
        });
        li.addEventListener('dragend', () => li.classList.remove('dragging'));
        li.addEventListener('dragover', (e) => {
          e.preventDefault();
          e.dataTransfer.dropEffect = 'move';
        });
        li.addEventListener('drop', (e) => {
          e.preventDefault();
          if (dragged !== null && dragged !== i) move(dragged, i);
          dragged = null;
        });
        return li;
      }),
    );
    if (!items.length) list.append(h('li', { class: 'muted empty' }, 'No favorites: add models from a free pool below (☆).'));
  };
  const changed = () => {
    save.disabled = false;
    draw();
  };
  const move = (from, to) => {
    if (to < 0 || to >= items.length) return;
    const [name] = items.splice(from, 1);
    items.splice(to, 0, name);
    changed();
  };
  const remove = (i) => {
    items.splice(i, 1);
    changed();
  };
  const add = (name) => {
    if (items.includes(name)) {
      notice(message, `${name} is a favorite already.`, 'error');
      return;
    }
    items.push(name);
    changed();
  };
  save.addEventListener('click', async () => {
    save.disabled = true;
    try {
      const answer = await api('settings', { method: 'PUT', body: { favorites: items } });
      items = [...(answer.settings?.favorites || [])];
      draw();
      const routes = await reload();
      const free = routes.routes.find((r) => r.name === 'free');
      after.replaceChildren(
        h('h3', {}, 'The free pool now'),
        free
          ? h('ol', { id: 'free-order' }, free.candidates.map((c) => h('li', {}, c.target)))
          : h('p', { class: 'muted' }, 'This gateway has no free pool.'),
      );
      notice(message, 'Favorites saved: the pools are rebuilt.');
    } catch (e) {
      save.disabled = false;
      notice(message, e.message, 'error');
    }
  });
  draw();
  return {
    add,
    element: h(
      'div',
      {},
      h('p', { class: 'hint' }, 'Favorites lead every free pool, in this order. Drag them, or use ↑ ↓, then save.'),
      list,
      save,
      after,
    ),
  };
}

function routeList(listed, addFavorite) {
  if (!listed.routes.length) return h('p', {}, 'No routes.');
  return h(
    'div',
    { class: 'cards' },
    listed.routes.map((r) =>
      h(
        'article',
        { class: 'card route', 'data-route': r.name },
        h('header', {}, h('h3', {}, r.name), h('span', { class: 'muted' }, ` ${r.strategy}${r.free ? ' · free' : ''}`)),
        r.candidates.length ? null : h('p', { class: 'muted' }, 'No candidate: no model fits this pool now.'),
        table(
          ['#', 'Candidate', 'State', 'Keys ready', ''],
          r.candidates.map((c, i) =>
            h(
              'tr',
              {},
              h('td', {}, i + 1),
              h('td', { class: 'target' }, c.target),
              h(
                'td',
                {},
                badge(c.state.replace('_', ' '), c.state),
                c.free_in_seconds !== undefined ? ` free in ${duration(c.free_in_seconds)} (${c.reason})` : '',
              ),
              h('td', {}, `${c.keys_ready} / ${c.keys}`),
              h('td', {}, r.free ? button('☆', () => addFavorite(c.target), { class: 'star', 'aria-label': `Add ${c.target} to favorites` }) : null),
            ),
          ),
        ),
      ),
    ),
  );
}
