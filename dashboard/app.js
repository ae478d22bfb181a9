// The dashboard's shell: login, the navigation and which page is shown
// (the part after `#/` in the address, so that reloading keeps the page).

import { api, clearToken, setToken, token, whenRefused } from './api.js';
import { errorBox, h } from './ui.js';
import * as overview from './overview.js';
import * as providers from './providers.js';
import * as routes from './routes.js';
import * as log from './log.js';
import * as policies from './policies.js';
import * as playground from './playground.js';

const PAGES = { overview, providers, routes, log, policies, playground };

const $ = (id) => document.getElementById(id);

// Whether the gateway answered without a token (open on loopback, no
// admin_keys): then there is nothing to log out of.
let open = false;

function showLogin(message) {
  $('top').hidden = true;
  $('main').hidden = true;
  $('main').replaceChildren();
  $('login').hidden = false;
  $('login-message').textContent = message || '';
  $('login-message').className = message ? 'message error' : 'message';
  $('token').value = '';
  $('token').focus();
}

function showApp() {
  $('login').hidden = true;
  $('top').hidden = false;
  $('main').hidden = false;
  $('logout').hidden = open;
  route();
}

async function route() {
  const name = (location.hash.replace(/^#\/?/, '') || 'overview').split('?')[0];
  const page = PAGES[name] || overview;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === name);
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  $('nav').classList.remove('open');
  $('menu').setAttribute('aria-expanded', 'false');
  const main = $('main');
  const body = h('div', { class: 'page', id: `page-${name}` });
  main.replaceChildren(body);
  try {
    await page.render(body);
  } catch (e) {
    body.append(errorBox(e));
  }
  document.title = `freeway admin · ${name}`;
}

async function start() {
  whenRefused((error) => {
    clearToken();
    open = false;
    let why = '';
    if (error.status === 403) why = `This gateway does not open its admin API to this browser (${error.message}).`;
    else if (error.sentToken) why = `The admin token was refused (${error.message}). Log in again.`;
    showLogin(why);
  });
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    setToken(value);
    try {
      await api('status');
      open = false;
      showApp();
    } catch (e) {
      if (e.status !== 401 && e.status !== 403) showLogin(e.message);
    }
  });
  $('logout').addEventListener('click', () => {
    clearToken();
    showLogin('Logged out.');
  });
  $('menu').addEventListener('click', () => {
    const nav = $('nav');
    nav.classList.toggle('open');
    $('menu').setAttribute('aria-expanded', String(nav.classList.contains('open')));
  });
  window.addEventListener('hashchange', () => {
    if (!$('main').hidden) route();
  });
  // Try the API first: a gateway open on loopback needs no token.
  const had = token();
  try {
    await api('status');
    open = !had;
    showApp();
  } catch (e) {
    // A refused token already brought the login back, with its message.
    if (e.status !== 401 && e.status !== 403) showLogin(e.message);
  }
}

start();
