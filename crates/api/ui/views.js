// Views over what happened: the overview (health, 24 h of attempts, queue depth), deliveries
// across webhooks, one delivery with its attempts, and the event log.

import {
  h, time, badge, code, jsonBlock, facts, table, empty, errorBox, notice, paged, busy, shortId, select, go,
} from './dom.js';
import { api, get, can, all } from './api.js';
import { attemptsChart } from './chart.js';

const STATUSES = ['pending', 'retrying', 'sent', 'failed', 'cancelled'];

function missing(scope, what) {
  return h('p', { class: 'muted' }, `This key lacks ${scope}, so ${what} is not shown.`);
}

function heading(text, ...extra) {
  return h('div', { class: 'view-head' }, h('h1', { tabindex: -1 }, text), ...extra);
}

/** How many deliveries are in `status`, counted from list pages (exact up to 1000). */
async function countStatus(status) {
  const page = await get('/deliveries', { status, limit: 1000 });
  return { n: page.data.length, more: Boolean(page.next_cursor) };
}

function count({ n, more }) {
  return more ? `${n}+` : String(n);
}

async function healthCard() {
  if (!can('webhooks:read')) return h('section', { class: 'card' }, h('h2', {}, 'Webhooks'), missing('webhooks:read', 'webhook health'));
  const { data, truncated } = await all('/webhooks', {});
  const tally = { healthy: 0, degraded: 0, unhealthy: 0, paused: 0 };
  for (const w of data) {
    tally[w.health_status] = (tally[w.health_status] || 0) + 1;
    if (!w.active) tally.paused += 1;
  }
  const link = (label, q, n, status) => h('li', {}, h('a', { href: `#/webhooks?${q}` }, badge(status), ' ', h('span', { class: 'num', 'data-count': status }, String(n)), ` ${label}`));
  return h('section', { class: 'card', 'aria-labelledby': 'card-webhooks' },
    h('h2', { id: 'card-webhooks' }, 'Webhooks by health'),
    data.length === 0
      ? empty('No webhooks yet.', h('span', {}, can('webhooks:write') ? h('a', { href: '#/webhooks' }, 'Create one') : 'A key with webhooks:write can create one', ' to start receiving events.'))
      : h('ul', { class: 'tally' },
        link('healthy', 'health=healthy', tally.healthy, 'healthy'),
        link('degraded', 'health=degraded', tally.degraded, 'degraded'),
        link('unhealthy', 'health=unhealthy', tally.unhealthy, 'unhealthy'),
        link('paused or disabled', 'active=false', tally.paused, 'paused')),
    h('p', { class: 'muted' }, `${data.length}${truncated ? '+' : ''} ${data.length === 1 ? 'webhook' : 'webhooks'} in all.`));
}

async function queueCard() {
  if (!can('deliveries:read')) return h('section', { class: 'card' }, h('h2', {}, 'Queue depth'), missing('deliveries:read', 'the queue'));
  const [pending, retrying] = await Promise.all([countStatus('pending'), countStatus('retrying')]);
  return h('section', { class: 'card', 'aria-labelledby': 'card-queue' },
    h('h2', { id: 'card-queue' }, 'Queue depth'),
    h('p', { class: 'big', 'data-queue': count({ n: pending.n + retrying.n, more: pending.more || retrying.more }) },
      count({ n: pending.n + retrying.n, more: pending.more || retrying.more })),
    h('ul', { class: 'tally' },
      h('li', {}, h('a', { href: '#/deliveries?status=pending' }, badge('pending'), ` ${count(pending)} waiting for a first or manual attempt`)),
      h('li', {}, h('a', { href: '#/deliveries?status=retrying' }, badge('retrying'), ` ${count(retrying)} waiting for their next retry`))),
    h('p', { class: 'muted' }, 'Undelivered deliveries (pending + retrying), counted from GET /api/v1/deliveries.'));
}

async function attemptsSection(webhookId) {
  if (!can('metrics:read')) return h('section', {}, h('h2', {}, 'Attempts, last 24 hours'), missing('metrics:read', 'the chart'));
  const m = await get('/metrics/webhooks', { days_back: 1, interval: 'hour', webhook_id: webhookId });
  const width = Math.min(document.getElementById('main').clientWidth - 40, 1100);
  const sum = m.summary;
  return h('section', { class: 'card wide', 'aria-labelledby': 'attempts-title' },
    h('h2', { id: 'attempts-title' }, 'Attempts, last 24 hours'),
    h('ul', { class: 'stats' },
      h('li', {}, h('span', { class: 'big', 'data-total': sum.total_deliveries }, String(sum.total_deliveries)), ' attempts'),
      h('li', {}, h('span', { class: 'big ok-text' }, String(sum.deliveries_successful)), ' successful'),
      h('li', {}, h('span', { class: 'big bad-text' }, String(sum.deliveries_failed)), ' failed'),
      h('li', {}, h('span', { class: 'big', 'data-success-rate': '' }, sum.success_rate === null ? '—' : `${sum.success_rate}%`), ' success rate')),
    sum.total_deliveries === 0
      ? empty('No attempts in the last 24 hours.', 'Publish an event (POST /api/v1/events) to a subscribed webhook, or send a test from a webhook’s page.')
      : attemptsChart(m.metrics, width));
}

async function failuresSection() {
  if (!can('deliveries:read')) return null;
  const page = await get('/deliveries', { status: 'failed', limit: 5 });
  return h('section', { 'aria-labelledby': 'failures-title' },
    h('h2', { id: 'failures-title' }, 'Latest failed deliveries'),
    page.data.length === 0
      ? empty('No failed deliveries.', 'Deliveries that run out of retries show up here.')
      : deliveriesTable(page.data, true),
    page.data.length ? h('p', {}, h('a', { href: '#/deliveries?status=failed' }, 'All failed deliveries →')) : null);
}

export async function overview() {
  // Each part stands alone: one failing (say, a scope missing) leaves the others drawn.
  const safe = (part) => part.catch((err) => h('section', { class: 'card' }, errorBox(err)));
  const parts = await Promise.all([healthCard(), attemptsSection(), queueCard(), failuresSection()].map(safe));
  return h('section', { class: 'overview' }, heading('Overview'),
    h('div', { class: 'cards' }, parts[0], parts[2]), parts[1], parts[3]);
}

/** Deliveries as a table; `withWebhook` adds the webhook column. */
export function deliveriesTable(rows, withWebhook) {
  const columns = [
    { label: 'Created', cell: (d) => time(d.created_at) },
    { label: 'Event', cell: (d) => code(d.event_count > 1 ? `${d.event} ×${d.event_count}` : d.event) },
    withWebhook ? { label: 'Webhook', cell: (d) => h('a', { href: `#/webhooks/${d.webhook_id}` }, shortId(d.webhook_id)) } : null,
    { label: 'Status', cell: (d) => badge(d.status) },
    { label: 'Attempts', cell: (d) => String(d.attempt_number) },
    { label: 'Response', cell: (d) => (d.response_status === null ? (d.last_error ? h('span', { class: 'muted', title: d.last_error }, 'error') : '—') : String(d.response_status)) },
    { label: 'Details', cell: (d) => h('a', { href: `#/deliveries/${d.id}`, class: 'delivery-link', 'data-delivery': d.id, 'aria-label': `Delivery ${shortId(d.id)} details` }, 'View') },
  ].filter(Boolean);
  return table(columns, rows, 'Deliveries');
}

/** The status / event filter form shared by delivery lists; submitting rewrites the hash. */
export function deliveryFilters(base, query) {
  const status = select('status', [['', 'any status'], ...STATUSES.map((s) => [s, s])], query.get('status') || '');
  status.id = 'filter-status';
  const event = h('input', { id: 'filter-event', name: 'event', value: query.get('event') || '', placeholder: 'e.g. device.online' });
  return h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      const q = new URLSearchParams(query);
      for (const [k, v] of [['status', status.value], ['event', event.value.trim()]]) {
        if (v) q.set(k, v); else q.delete(k);
      }
      const text = q.toString();
      go(`${base}${text ? `?${text}` : ''}`);
    },
  },
  h('div', { class: 'field' }, h('label', { for: 'filter-status' }, 'Status'), status),
  h('div', { class: 'field' }, h('label', { for: 'filter-event' }, 'Event type'), event),
  h('button', { type: 'submit' }, 'Filter'));
}

export async function deliveriesList({ query }) {
  if (!can('deliveries:read')) return h('section', {}, heading('Deliveries'), missing('deliveries:read', 'deliveries'));
  const filter = { status: query.get('status'), event: query.get('event'), webhook_id: query.get('webhook_id') };
  const list = await paged(
    (cursor) => get('/deliveries', { ...filter, limit: 25, cursor }),
    (rows) => (rows.length ? deliveriesTable(rows, true)
      : empty('No deliveries match.', 'Deliveries appear when a published event matches a webhook’s subscription; change the filters or publish an event.')),
    'Deliveries');
  const refresh = h('button', { type: 'button', id: 'refresh', onclick: () => list.reload() }, 'Refresh');
  return h('section', {}, heading('Deliveries', refresh),
    h('p', { class: 'muted' }, 'Every webhook’s deliveries, newest first.'),
    deliveryFilters('#/deliveries', query), list);
}

/** The headers a delivery goes out with, rebuilt from the webhook: signatures are computed per
 *  attempt and not stored, so they are named, not shown. */
function headersSent(d, webhook) {
  const rows = [
    ['Content-Type', 'application/json'],
    ['User-Agent', 'hookrelay/<version>'],
    ['webhook-id', d.id],
    ['webhook-timestamp', 'Unix seconds of the attempt'],
    ['webhook-signature', 'v1,<base64 HMAC-SHA256> (v1a,<Ed25519> for ed25519 webhooks)'],
    ['X-Webhook-ID', d.id],
    ['X-Event-Type', d.event],
    ['X-Webhook-Timestamp', 'Unix seconds of the attempt'],
    ['X-Webhook-Signature', 'sha256=<hex HMAC-SHA256 of the body>'],
  ];
  if (webhook && webhook.payload_format === 'hubble') rows.push(['HTTP-X-HUBBLE-TOKEN', 'the webhook secret']);
  for (const [k, v] of Object.entries((webhook && webhook.headers) || {})) rows.push([k, `${v} (custom header, value write-only)`]);
  return table([
    { label: 'Header', cell: (r) => code(r[0]) },
    { label: 'Value', cell: (r) => r[1] },
  ], rows, 'Headers sent');
}

function responseExcerpt(body, encoding) {
  if (body === null || body === undefined || body === '') return h('span', { class: 'muted' }, '—');
  return h('div', {},
    encoding === 'base64' ? h('small', { class: 'muted' }, 'binary answer, base64: ') : null,
    h('pre', { class: 'excerpt', tabindex: 0 }, body));
}

export async function deliveryDetail({ params, signal, refresh }) {
  const [id] = params;
  const d = await get(`/deliveries/${id}`);
  const webhook = can('webhooks:read') ? await get(`/webhooks/${d.webhook_id}`).catch(() => null) : null;
  const out = h('div', { 'aria-live': 'polite' });
  const actions = h('div', { class: 'actions' });
  if (can('deliveries:write')) {
    const retry = h('button', {
      type: 'button', id: 'retry', class: 'primary',
      onclick: () => busy(retry, 'Retrying…', out, async () => {
        const r = await api('POST', `/deliveries/${id}/retry`);
        out.replaceChildren(notice('ok', `Queued for another attempt (${r.queued}). This page updates when it is sent.`));
        poll(true);
      }),
    }, 'Retry now');
    actions.append(retry);
  }
  const refreshButton = h('button', { type: 'button', id: 'refresh', onclick: () => refresh() }, 'Refresh');
  actions.append(refreshButton);

  // While the delivery is still on its way, watch it and redraw when it changes.
  function poll(force) {
    if (!force && !['pending', 'retrying'].includes(d.status)) return;
    let left = 60;
    const tick = async () => {
      if (signal.aborted || left-- <= 0) return;
      try {
        const now = await get(`/deliveries/${id}`);
        if (now.status !== d.status || now.attempt_number !== d.attempt_number || (now.attempts || []).length !== (d.attempts || []).length) {
          refresh();
          return;
        }
      } catch {
        return;
      }
      setTimeout(tick, 1000);
    };
    setTimeout(tick, 1000);
  }
  poll(false);

  const attempts = d.attempts || [];
  return h('section', { class: 'delivery' },
    heading(`Delivery ${shortId(d.id)}`, badge(d.status)),
    actions, out,
    facts([
      ['ID', code(d.id)],
      ['Event', d.event_id ? h('a', { href: `#/events/${d.event_id}` }, code(d.event)) : code(`${d.event} (batch of ${d.event_count})`)],
      ['Webhook', h('a', { href: `#/webhooks/${d.webhook_id}` }, webhook ? webhook.url : shortId(d.webhook_id))],
      ['Status', badge(d.status)],
      ['Attempts', String(d.attempt_number)],
      ['Response status', d.response_status === null ? '—' : String(d.response_status)],
      ['Last error', d.last_error],
      ['Created', time(d.created_at)],
      ['Delivered', d.delivered_at ? time(d.delivered_at) : null],
      ['Next attempt', d.next_attempt_at && ['pending', 'retrying'].includes(d.status) ? time(d.next_attempt_at) : null],
    ]),
    h('h2', {}, 'Attempts'),
    attempts.length === 0
      ? empty('No attempt yet.', 'The first attempt is made as soon as a worker picks the delivery up.')
      : table([
        { label: '#', cell: (a) => String(a.attempt_number) },
        { label: 'Started', cell: (a) => time(a.started_at) },
        { label: 'Status', cell: (a) => (a.response_status === null ? badge('failed') : h('span', { class: `badge ${a.response_status < 300 && a.response_status >= 200 ? 'ok' : 'bad'}`, 'data-attempt-status': a.response_status }, String(a.response_status))) },
        { label: 'Latency', cell: (a) => `${a.latency_ms} ms` },
        { label: 'Error', cell: (a) => a.error || '—' },
        { label: 'Response excerpt', cell: (a) => responseExcerpt(a.response_body, a.response_body_encoding) },
      ], attempts, 'Attempts'),
    h('h2', {}, 'Body sent'),
    jsonBlock(d.payload, 'Body sent'),
    h('h2', {}, 'Headers sent'),
    h('p', { class: 'muted' }, 'Signatures and timestamps are computed for each attempt and not stored; custom header values are write-only.'),
    headersSent(d, webhook));
}

export async function eventsList({ query }) {
  if (!can('deliveries:read')) return h('section', {}, heading('Events'), missing('deliveries:read', 'the event log'));
  const type = h('input', { id: 'filter-type', name: 'event', value: query.get('event') || '', placeholder: 'e.g. device.online' });
  const filters = h('form', {
    class: 'filters',
    onsubmit: (e) => { e.preventDefault(); go(type.value.trim() ? `#/events?event=${encodeURIComponent(type.value.trim())}` : '#/events'); },
  }, h('div', { class: 'field' }, h('label', { for: 'filter-type' }, 'Event type'), type), h('button', { type: 'submit' }, 'Filter'));
  const list = await paged(
    (cursor) => get('/events', { event: query.get('event'), limit: 25, cursor }),
    (rows) => (rows.length
      ? table([
        { label: 'Created', cell: (e) => time(e.created_at) },
        { label: 'Type', cell: (e) => code(e.event) },
        { label: 'From', cell: (e) => (e.source_id ? h('span', { title: e.source_id }, `source ${shortId(e.source_id)}`) : 'API') },
        { label: 'Event', cell: (e) => h('a', { href: `#/events/${e.id}`, 'data-event': e.event, 'aria-label': `Event ${shortId(e.id)} details` }, shortId(e.id)) },
      ], rows, 'Events')
      : empty('No events yet.', 'Publish one with POST /api/v1/events, or feed one through a source.')),
    'Events');
  return h('section', {}, heading('Events', h('button', { type: 'button', id: 'refresh', onclick: () => list.reload() }, 'Refresh')),
    h('p', { class: 'muted' }, 'What this organization published, newest first.'), filters, list);
}

export async function eventDetail({ params }) {
  const e = await get(`/events/${params[0]}`);
  const deliveries = e.deliveries || [];
  return h('section', {},
    heading(`Event ${shortId(e.id)}`),
    facts([
      ['ID', code(e.id)],
      ['Type', code(e.event)],
      ['Created', time(e.created_at)],
      ['Ordering key', e.ordering_key],
      ['From', e.source_id ? `source ${e.source_id}` : 'the API'],
    ]),
    h('h2', {}, 'Data'),
    jsonBlock(e.data, 'Event data'),
    h('h2', {}, 'Deliveries'),
    deliveries.length === 0
      ? empty('No webhook received this event.', 'An event is delivered to the active webhooks whose events (and filter) match it when it is published.')
      : table([
        { label: 'Webhook', cell: (d) => h('a', { href: `#/webhooks/${d.webhook_id}` }, shortId(d.webhook_id)) },
        { label: 'Status', cell: (d) => badge(d.status) },
        { label: 'Attempts', cell: (d) => String(d.attempt_number) },
        { label: 'Response', cell: (d) => (d.response_status === null ? '—' : String(d.response_status)) },
        { label: 'Details', cell: (d) => h('a', { href: `#/deliveries/${d.id}` }, 'View') },
      ], deliveries, 'Deliveries of this event'));
}

export { heading, missing, attemptsSection, errorBox };
