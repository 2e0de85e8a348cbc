// The dashboard's entry point: sign-in, the navigation and a hash router (#/webhooks/…), so
// every view has a URL that survives a reload and works with Back.

import { h, errorBox, takeFlash } from './dom.js';
import { session, signIn, signOut, resume, whenUnauthorized } from './api.js';
import { overview, deliveriesList, deliveryDetail, eventsList, eventDetail } from './views.js';
import { webhooksList, webhookDetail } from './webhooks.js';
import { sourcesView, eventTypesView } from './catalog.js';

const UUID = '([0-9a-fA-F-]{36})';
const ROUTES = [
  [/^\/?$/, overview, 'overview'],
  [/^\/webhooks$/, webhooksList, 'webhooks'],
  [new RegExp(`^/webhooks/${UUID}$`), webhookDetail, 'webhooks'],
  [/^\/deliveries$/, deliveriesList, 'deliveries'],
  [new RegExp(`^/deliveries/${UUID}$`), deliveryDetail, 'deliveries'],
  [/^\/events$/, eventsList, 'events'],
  [new RegExp(`^/events/${UUID}$`), eventDetail, 'events'],
  [/^\/sources$/, sourcesView, 'sources'],
  [/^\/event-types$/, eventTypesView, 'event-types'],
];

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let generation = 0;
let controller = null;

function parseHash() {
  const raw = window.location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  return { path, query: new URLSearchParams(query || '') };
}

function signInView(message) {
  const input = h('input', { id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const out = h('div', { 'aria-live': 'polite' }, message ? errorBox(message) : null);
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', {
    class: 'signin',
    onsubmit: async (e) => {
      e.preventDefault();
      button.disabled = true;
      out.replaceChildren();
      try {
        await signIn(input.value.trim());
        render(true);
      } catch (err) {
        out.replaceChildren(errorBox(err));
      } finally {
        button.disabled = false;
      }
    },
  },
  h('h1', { tabindex: -1 }, 'Sign in'),
  h('p', {}, 'Paste an API key (', h('code', {}, 'hr_…'), '). It stays in this browser tab’s session storage only and is sent to this service as ',
    h('code', {}, 'Authorization: Bearer'), '. Every action is an API call with this key, so its scopes apply. ',
    h('code', {}, 'make run'), ' prints one and keeps it in ', h('code', {}, '.data/first-api-key'), '.'),
  h('div', { class: 'field' }, h('label', { for: 'api-key' }, 'API key'), input),
  button,
  out);
  return form;
}

function drawChrome() {
  const signedIn = Boolean(session.orgId);
  nav.hidden = !signedIn;
  who.replaceChildren();
  if (signedIn) {
    who.append(
      h('span', { class: 'org', title: `organization ${session.orgId}, key ${session.keyId}` }, session.orgName || `org …${session.orgId.slice(-8)}`),
      h('button', { type: 'button', class: 'small', id: 'sign-out', onclick: () => { signOut(); window.location.hash = '#/'; render(true); } }, 'Sign out'));
  }
}

function markCurrent(section) {
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

/** Draws the view the hash names; `focus` moves keyboard focus to its heading. */
export async function render(focus) {
  const mine = ++generation;
  if (controller) controller.abort();
  controller = new AbortController();
  drawChrome();
  const signedIn = Boolean(session.orgId);
  main.setAttribute('aria-busy', 'true');
  delete main.dataset.ready;
  let view;
  if (!session.orgId) {
    view = signInView();
    document.title = 'Sign in · hookrelay';
  } else {
    const { path, query } = parseHash();
    const route = ROUTES.find(([pattern]) => pattern.test(path));
    if (!route) {
      view = h('section', {}, h('h1', { tabindex: -1 }, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Back to the overview')));
    } else {
      const [pattern, draw, section] = route;
      markCurrent(section);
      const params = path.match(pattern).slice(1);
      try {
        view = await draw({ params, query, signal: controller.signal, refresh: () => refresh(mine) });
      } catch (err) {
        view = h('section', {}, h('h1', { tabindex: -1 }, 'Something went wrong'), errorBox(err));
      }
    }
  }
  // Superseded by a newer navigation, or signed out meanwhile (the key stopped working).
  if (mine !== generation || (signedIn && !session.orgId)) return;
  const flashed = takeFlash();
  main.replaceChildren(...(flashed ? [flashed] : []), view);
  main.removeAttribute('aria-busy');
  main.dataset.ready = String(mine);
  const heading = main.querySelector('h1');
  if (heading) document.title = `${heading.textContent} · hookrelay`;
  if (focus && heading) heading.focus({ preventScroll: false });
  if (!document.documentElement.dataset.firstReadyMs) {
    document.documentElement.dataset.firstReadyMs = String(Math.round(performance.now()));
  }
}

/** Redraws the current view in place (polling), unless the user has moved on. */
function refresh(mine) {
  if (mine === generation) render(false);
}

whenUnauthorized(() => {
  signOut();
  main.replaceChildren(signInView(new Error('The API key is no longer accepted (revoked or expired). Sign in again.')));
  drawChrome();
});

window.addEventListener('hashchange', () => render(true));
// The skip link focuses the content without touching the hash (the hash is the router's).
document.querySelector('.skip').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});

(async () => {
  try {
    await resume();
  } catch (err) {
    main.replaceChildren(errorBox(err));
    return;
  }
  render(false);
})();
