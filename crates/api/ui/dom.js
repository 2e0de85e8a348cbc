// DOM helpers shared by every view: element builders (no innerHTML anywhere, so data from the
// API is always text), times shown in the browser's zone with UTC on hover, badges, tables,
// error boxes, copy buttons and the confirmation dialog.

/** An HTML element: attributes (`on…` functions become listeners), then children. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element, like `h`. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'value' && 'value' in el) {
      el.value = value;
    } else if (name === 'checked' || name === 'selected') {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** `<time>` in the browser's time zone, the UTC value in its title. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  const local = d.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  const utc = d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  return h('time', { datetime: iso, title: utc }, local);
}

/** An ISO time for an `<input type="datetime-local">` value, in local time. */
export function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

const TONE = {
  healthy: 'ok', sent: 'ok', active: 'ok',
  degraded: 'warn', retrying: 'warn', pending: 'info', paused: 'warn',
  unhealthy: 'bad', failed: 'bad',
  cancelled: 'muted',
};

/** A status word in a coloured pill (the word itself carries the meaning, not only colour). */
export function badge(word) {
  return h('span', { class: `badge ${TONE[word] || 'muted'}`, 'data-status': word }, word);
}

export function code(text) {
  return h('code', {}, text);
}

/** JSON pretty-printed in a scrollable block. */
export function jsonBlock(value, label) {
  return h('pre', { class: 'json', tabindex: 0, 'aria-label': label || 'JSON' },
    JSON.stringify(value, null, 2));
}

/** A definition list from [term, value] pairs; null values are skipped. */
export function facts(pairs) {
  return h('dl', { class: 'facts' },
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== '').map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** A table: columns are {label, cell(row)}; wrapped so a phone scrolls it, not the page. */
export function table(columns, rows, caption) {
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption || 'table' },
    h('table', {},
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
      h('tbody', {}, rows.map((row) => h('tr', {}, columns.map((c) => h('td', { 'data-label': c.label }, c.cell(row))))))));
}

/** What to show when a list is empty: what it is and what to do next. */
export function empty(title, next) {
  return h('div', { class: 'empty' }, h('p', { class: 'empty-title' }, title), next ? h('p', {}, next) : null);
}

/** An API error with its `detail`, field errors and request id; anything else as text. */
export function errorBox(err) {
  if (err && err.problem !== undefined) {
    const p = err.problem || {};
    return h('div', { class: 'error', role: 'alert' },
      h('p', {}, h('strong', {}, `${p.title || 'Error'} (${err.status || 'network'})`), ' ', p.detail || err.message),
      Array.isArray(p.errors) && p.errors.length
        ? h('ul', {}, p.errors.map((e) => h('li', {}, code(e.field), ': ', e.message)))
        : null,
      err.requestId ? h('p', { class: 'request-id' }, 'Request id: ', code(err.requestId)) : null);
  }
  return h('div', { class: 'error', role: 'alert' }, h('p', {}, String(err && err.message ? err.message : err)));
}

/** A notice that stays until dismissed. */
export function notice(kind, ...children) {
  const box = h('div', { class: `notice ${kind}`, role: 'status' }, ...children);
  box.append(h('button', { type: 'button', class: 'link dismiss', onclick: () => box.remove() }, 'Dismiss'));
  return box;
}

/** A button copying `text`; says so in a live region. */
export function copyButton(text, label) {
  const status = h('span', { class: 'copy-status', 'aria-live': 'polite' });
  const button = h('button', {
    type: 'button', class: 'small', 'aria-label': label || 'Copy',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        status.textContent = 'Copied';
      } catch {
        status.textContent = 'Select the text and copy it';
      }
      setTimeout(() => { status.textContent = ''; }, 2000);
    },
  }, 'Copy');
  return h('span', { class: 'copy' }, button, status);
}

/** A secret shown once, with a copy button. */
export function secretOnce(label, value) {
  return h('div', { class: 'secret-once' },
    h('p', {}, h('strong', {}, label), ' — shown only now; store it somewhere safe.'),
    h('p', { class: 'secret-row' }, h('code', { class: 'secret' }, value), copyButton(value, `Copy ${label}`)));
}

/** Asks before something that cannot be undone; resolves true when confirmed. */
export function confirmDialog(title, text, action) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' });
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    dialog.append(
      h('h2', { id: 'confirm-title' }, title),
      h('p', {}, text),
      h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: () => done(false) }, 'Cancel'),
        h('button', { type: 'button', class: 'danger', 'data-confirm': '', onclick: () => done(true) }, action)));
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A labelled form control; `control` gets the id the label points at. */
let fieldCount = 0;
export function field(label, control, help) {
  const id = control.id || `f${++fieldCount}`;
  control.id = id;
  const helpId = help ? `${id}-help` : null;
  if (helpId) control.setAttribute('aria-describedby', helpId);
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    control,
    help ? h('small', { id: helpId, class: 'help' }, help) : null);
}

/** A checkbox with its label after it. */
export function checkbox(label, attrs) {
  const id = `f${++fieldCount}`;
  return h('div', { class: 'field check' },
    h('input', { type: 'checkbox', id, ...attrs }),
    h('label', { for: id }, label));
}

export function select(name, options, value) {
  return h('select', { name },
    options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

/** Runs `work` with the button disabled and its label changed; errors go to `out`. */
export async function busy(button, label, out, work) {
  const before = button.textContent;
  button.disabled = true;
  button.textContent = label;
  try {
    return await work();
  } catch (err) {
    out.replaceChildren(errorBox(err));
    return undefined;
  } finally {
    button.disabled = false;
    button.textContent = before;
  }
}

/** The end of a UUID: ids here are UUIDv7, whose first digits are the time (alike for
 *  everything made in the same minute) and whose last are random. */
/** A form in a panel: a heading, its `content`, a submit button disabled while `onSubmit`
 *  runs (its errors shown below), and Cancel. */
export function formPanel({ id, title, submitLabel, busyLabel, onSubmit, onCancel }, ...content) {
  const out = h('div', { 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'primary' }, submitLabel);
  return h('form', {
    class: 'panel form',
    id,
    onsubmit: (e) => {
      e.preventDefault();
      busy(submit, busyLabel, out, onSubmit);
    },
  },
  h('h2', {}, title),
  content,
  h('div', { class: 'actions' }, submit, h('button', { type: 'button', onclick: onCancel }, 'Cancel')),
  out);
}

export function shortId(id) {
  return id ? `…${id.slice(-8)}` : '';
}

/** Parses a JSON textarea; empty means absent. Throws with the field named. */
export function parseJsonField(name, text) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${name}: not valid JSON (${e.message})`);
  }
}

export function list(text) {
  return text.split(',').map((x) => x.trim()).filter(Boolean);
}

/** A list paged with the API's cursors: `fetchPage(cursor)` → `{data, next_cursor}`,
 *  `render(data)` → the rows' element. Resolves once the first page is drawn. */
export async function paged(fetchPage, render, label) {
  const box = h('div', { class: 'paged' });
  const newer = [];
  let current;
  async function load(cursor) {
    let page;
    let body;
    try {
      page = await fetchPage(cursor);
      body = await render(page.data);
    } catch (err) {
      box.replaceChildren(errorBox(err));
      return;
    }
    current = cursor;
    const pager = h('nav', { class: 'pager', 'aria-label': `${label || 'List'} pages` },
      newer.length ? h('button', { type: 'button', class: 'newer', onclick: () => load(newer.pop()) }, '← Newer') : null,
      page.next_cursor ? h('button', { type: 'button', class: 'older', onclick: () => { newer.push(cursor); load(page.next_cursor); } }, 'Older →') : null);
    box.replaceChildren(body, pager.children.length ? pager : '');
  }
  await load(undefined);
  box.reload = () => load(current);
  return box;
}

// A message carried over a navigation (e.g. "Webhook deleted"), shown by the next view.
let pendingFlash = null;
export function flash(node) {
  pendingFlash = node;
}
export function takeFlash() {
  const node = pendingFlash;
  pendingFlash = null;
  return node;
}

export function go(hash) {
  window.location.hash = hash;
}
