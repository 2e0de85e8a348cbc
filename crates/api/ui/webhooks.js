// Webhooks: the list (health, last delivery, filters), creating and editing one, and one
// webhook's page — pause/resume, delete, rotate the secret, send a test, recover, and its
// deliveries filtered by status and event.

import {
  h, time, badge, code, facts, table, empty, notice, paged, busy, confirmDialog, field, checkbox,
  select, secretOnce, jsonBlock, flash, go, toLocalInput, parseJsonField, list as splitList, formPanel,
} from './dom.js';
import { api, get, can } from './api.js';
import { heading, missing, attemptsSection, deliveriesTable, deliveryFilters } from './views.js';

function stateBadge(w) {
  return badge(w.active ? 'active' : 'paused');
}

async function lastDeliveries(rows) {
  if (!can('deliveries:read')) return new Map();
  const pairs = await Promise.all(rows.map(async (w) => {
    const page = await get(`/webhooks/${w.id}/deliveries`, { limit: 1 });
    return [w.id, page.data[0] || null];
  }));
  return new Map(pairs);
}

/** The create / edit form; `webhook` is null when creating. Resolves with the API's answer. */
function webhookForm(webhook, onDone, onCancel) {
  const url = h('input', { type: 'url', name: 'url', required: true, value: webhook ? webhook.url : '', placeholder: 'https://example.com/webhook', autocomplete: 'off' });
  const events = h('input', { name: 'events', required: true, value: webhook ? webhook.events.join(', ') : '*' });
  const description = h('input', { name: 'description', value: (webhook && webhook.description) || '' });
  const format = select('payload_format', [['envelope', 'envelope'], ['hubble', 'hubble']], webhook ? webhook.payload_format : 'envelope');
  const batch = h('input', { type: 'number', name: 'max_batch_size', min: 1, max: 1000, value: webhook ? webhook.max_batch_size : 1 });
  const rate = h('input', { type: 'number', name: 'rate_limit_per_second', min: 1, max: 10000, value: webhook && webhook.rate_limit_per_second ? webhook.rate_limit_per_second : '' });
  const filter = h('textarea', { name: 'filter', rows: 3, placeholder: '{"/device/tags/location": "warehouse-a"}' });
  filter.value = webhook && webhook.filter ? JSON.stringify(webhook.filter) : '';
  const active = webhook ? null : checkbox('Active: deliver as soon as it is created', { name: 'active', checked: true });
  return formPanel({
    id: webhook ? 'edit-webhook' : 'new-webhook',
    title: webhook ? 'Edit webhook' : 'New webhook',
    submitLabel: webhook ? 'Save changes' : 'Create webhook',
    busyLabel: 'Saving…',
    onCancel,
    onSubmit: async () => {
      const body = {
        url: url.value.trim(),
        events: splitList(events.value),
        description: description.value.trim() || (webhook ? null : undefined),
        payload_format: format.value,
        max_batch_size: Number(batch.value || 1),
        rate_limit_per_second: rate.value ? Number(rate.value) : (webhook ? null : undefined),
        filter: parseJsonField('filter', filter.value) ?? (webhook ? null : undefined),
      };
      if (active) body.active = active.querySelector('input').checked;
      const answer = webhook
        ? await api('PATCH', `/webhooks/${webhook.id}`, body)
        : await api('POST', '/webhooks', body);
      onDone(answer);
    },
  },
  field('Endpoint URL', url, 'Where deliveries are POSTed. https:// (http:// only when the service allows it).'),
  field('Events', events, 'Comma-separated event types: * for all, device.* for a prefix. See Event types.'),
  field('Description', description),
  h('div', { class: 'row' },
    field('Payload format', format, 'envelope: {id, event, timestamp, data}; hubble: a Hubble packet batch.'),
    field('Max batch size', batch, '1 = one event per request.'),
    field('Rate limit (deliveries/s)', rate, 'Empty = unlimited.')),
  field('Filter (JSON)', filter, 'JSON pointer → value over the event data; all must match. Empty = no filter.'),
  active);
}

export async function webhooksList({ query }) {
  if (!can('webhooks:read')) return h('section', {}, heading('Webhooks'), missing('webhooks:read', 'webhooks'));
  const filter = { health: query.get('health'), active: query.get('active'), event: query.get('event') };
  const formSlot = h('div');
  const headExtra = [];
  if (can('webhooks:write')) {
    const create = h('button', {
      type: 'button', class: 'primary', id: 'new-webhook-button',
      onclick: () => {
        formSlot.replaceChildren(webhookForm(null, (w) => {
          flash(notice('ok', h('p', {}, 'Webhook created.'), secretOnce('Signing secret', w.secret)));
          go(`#/webhooks/${w.id}`);
        }, () => formSlot.replaceChildren()));
        formSlot.querySelector('input').focus();
      },
    }, 'New webhook');
    headExtra.push(create);
  }
  const health = select('health', [['', 'any health'], ['healthy', 'healthy'], ['degraded', 'degraded'], ['unhealthy', 'unhealthy']], filter.health || '');
  health.id = 'filter-health';
  const state = select('active', [['', 'active or paused'], ['true', 'active'], ['false', 'paused']], filter.active || '');
  state.id = 'filter-active';
  const event = h('input', { id: 'filter-event', name: 'event', value: filter.event || '', placeholder: 'e.g. device.online' });
  const filters = h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      if (health.value) q.set('health', health.value);
      if (state.value) q.set('active', state.value);
      if (event.value.trim()) q.set('event', event.value.trim());
      go(`#/webhooks${q.toString() ? `?${q}` : ''}`);
    },
  },
  h('div', { class: 'field' }, h('label', { for: 'filter-health' }, 'Health'), health),
  h('div', { class: 'field' }, h('label', { for: 'filter-active' }, 'State'), state),
  h('div', { class: 'field' }, h('label', { for: 'filter-event' }, 'Receives event'), event),
  h('button', { type: 'submit' }, 'Filter'));

  const filtered = Boolean(filter.health || filter.active || filter.event);
  const listing = await paged(
    (cursor) => get('/webhooks', { ...filter, limit: 25, cursor }),
    async (rows) => {
      if (rows.length === 0) {
        if (filtered) return empty('No webhook matches these filters.', h('a', { href: '#/webhooks' }, 'Clear the filters'));
        return empty('No webhooks yet.', can('webhooks:write')
          ? 'Press “New webhook” to register an endpoint; events you publish are then delivered to it.'
          : 'A key with webhooks:write can register one (POST /api/v1/webhooks).');
      }
      const last = await lastDeliveries(rows);
      return table([
        { label: 'Endpoint', cell: (w) => h('div', {}, h('a', { href: `#/webhooks/${w.id}`, class: 'webhook-link' }, w.url), w.description ? h('div', { class: 'muted small' }, w.description) : null) },
        { label: 'Events', cell: (w) => code(w.events.join(', ')) },
        { label: 'Health', cell: (w) => badge(w.health_status) },
        { label: 'State', cell: stateBadge },
        {
          label: 'Last delivery',
          cell: (w) => {
            const d = last.get(w.id);
            if (!can('deliveries:read')) return '—';
            return d ? h('span', {}, h('a', { href: `#/deliveries/${d.id}` }, badge(d.status)), ' ', time(d.created_at)) : h('span', { class: 'muted' }, 'none yet');
          },
        },
        { label: 'Failures in a row', cell: (w) => String(w.consecutive_failures) },
      ], rows, 'Webhooks');
    },
    'Webhooks');
  return h('section', {}, heading('Webhooks', ...headExtra), formSlot, filters, listing);
}

export async function webhookDetail({ params, query, refresh }) {
  const [id] = params;
  const w = await get(`/webhooks/${id}`);
  const out = h('div', { class: 'results', 'aria-live': 'polite' });
  const formSlot = h('div');
  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Webhook actions' });

  if (can('webhooks:write')) {
    const edit = h('button', {
      type: 'button', id: 'edit',
      onclick: () => {
        formSlot.replaceChildren(webhookForm(w, () => { flash(notice('ok', 'Changes saved.')); refresh(); }, () => formSlot.replaceChildren()));
        formSlot.querySelector('input').focus();
      },
    }, 'Edit');
    const toggle = h('button', {
      type: 'button', id: w.active ? 'pause' : 'resume',
      onclick: () => busy(toggle, w.active ? 'Pausing…' : 'Resuming…', out, async () => {
        await api('PATCH', `/webhooks/${id}`, { active: !w.active });
        flash(notice('ok', w.active ? 'Paused: new deliveries are kept and sent after it is resumed.' : 'Resumed: its health is reset and parked deliveries go out.'));
        refresh();
      }),
    }, w.active ? 'Pause' : 'Resume');
    const test = h('button', {
      type: 'button', id: 'send-test',
      onclick: () => busy(test, 'Sending…', out, async () => {
        const r = await api('POST', `/webhooks/${id}/test`);
        out.replaceChildren(notice(r.success ? 'ok' : 'bad',
          h('p', { class: 'test-outcome', 'data-success': String(r.success) },
            h('strong', {}, r.success ? 'Test delivered' : 'Test failed'),
            `: ${r.response_status === null ? 'no HTTP answer' : `HTTP ${r.response_status}`} in ${r.latency_ms} ms. `,
            h('a', { href: `#/deliveries/${r.delivery_id}` }, 'See the delivery')),
          r.error ? h('p', {}, 'Error: ', r.error) : null,
          r.response_body ? h('pre', { class: 'excerpt' }, r.response_body) : null));
      }),
    }, 'Send test');
    const rotate = h('button', {
      type: 'button', id: 'rotate',
      onclick: () => {
        const hours = h('input', { type: 'number', min: 0, max: 168, value: 24, name: 'grace' });
        const close = () => formSlot.replaceChildren();
        formSlot.replaceChildren(formPanel({
          id: 'rotate-form',
          title: 'Rotate the signing secret',
          submitLabel: 'Rotate secret',
          busyLabel: 'Rotating…',
          onCancel: close,
          onSubmit: async () => {
            const r = await api('POST', `/webhooks/${id}/rotate-secret`, { grace_period_seconds: Math.round(Number(hours.value || 0) * 3600) });
            close();
            out.replaceChildren(notice('ok', secretOnce('New signing secret', r.secret),
              h('p', { class: 'grace' }, r.previous_secret_expires_at
                ? ['The previous secret keeps signing too (a second signature) until ', time(r.previous_secret_expires_at), '.']
                : 'The previous secret stopped signing at once (no grace period).')));
          },
        },
        h('p', {}, 'A new secret is generated. During the grace period every delivery is signed with both, so receivers can switch without missing one.'),
        field('Grace period (hours, 0–168)', hours)));
        hours.focus();
      },
    }, 'Rotate secret');
    const reveal = h('button', {
      type: 'button', id: 'show-secret',
      onclick: () => busy(reveal, 'Loading…', out, async () => {
        const r = await api('GET', `/webhooks/${id}/secret`);
        out.replaceChildren(notice('info', h('p', { class: 'secret-row' }, 'Current secret: ', h('code', { class: 'secret' }, r.secret)),
          r.previous_secret_expires_at ? h('p', { class: 'grace' }, 'The previous secret also signs until ', time(r.previous_secret_expires_at), '.') : null));
      }),
    }, 'Show secret');
    const remove = h('button', {
      type: 'button', class: 'danger', id: 'delete',
      onclick: async () => {
        if (!await confirmDialog('Delete this webhook?', `${w.url} stops receiving events; its pending deliveries are cancelled. Its delivery history is kept.`, 'Delete webhook')) return;
        await busy(remove, 'Deleting…', out, async () => {
          await api('DELETE', `/webhooks/${id}`);
          flash(notice('ok', `Webhook ${w.url} deleted.`));
          go('#/webhooks');
        });
      },
    }, 'Delete');
    actions.append(edit, toggle, test, rotate, reveal, remove);
  }
  if (can('deliveries:write')) {
    const since = h('input', { type: 'datetime-local', name: 'since', required: true, value: toLocalInput(new Date(Date.now() - 86400000)) });
    const recover = h('button', { type: 'submit' }, 'Recover');
    actions.append(h('form', {
      class: 'inline-form', id: 'recover-form',
      onsubmit: (e) => {
        e.preventDefault();
        busy(recover, 'Recovering…', out, async () => {
          const r = await api('POST', `/webhooks/${id}/recover`, { since: new Date(since.value).toISOString() });
          out.replaceChildren(notice('ok', `${r.queued} failed deliveries re-queued.`));
        });
      },
    }, field('Re-queue failed deliveries since', since), recover));
  }

  const statusFilter = { status: query.get('status'), event: query.get('event') };
  const deliveries = can('deliveries:read')
    ? await paged(
      (cursor) => get(`/webhooks/${id}/deliveries`, { ...statusFilter, limit: 25, cursor }),
      (rows) => (rows.length ? deliveriesTable(rows, false)
        : empty(statusFilter.status || statusFilter.event ? 'No delivery matches these filters.' : 'No deliveries yet.',
          `Publish an event this webhook subscribes to (${w.events.join(', ')})${can('webhooks:write') ? ', or press “Send test”' : ''}.`)),
      'Deliveries')
    : missing('deliveries:read', 'its deliveries');
  const chart = await attemptsSection(id);

  return h('section', { class: 'webhook' },
    heading('Webhook', badge(w.health_status), stateBadge(w)),
    h('p', { class: 'url' }, code(w.url)),
    actions, formSlot, out,
    facts([
      ['ID', code(w.id)],
      ['Events', code(w.events.join(', '))],
      ['Description', w.description],
      ['Health', [badge(w.health_status), ` ${w.consecutive_failures} failed attempts in a row`]],
      ['Disabled because', w.disabled_reason],
      ['Payload format', w.payload_format],
      ['Max batch size', String(w.max_batch_size)],
      ['Rate limit', w.rate_limit_per_second ? `${w.rate_limit_per_second}/s` : 'none'],
      ['Filter', w.filter ? jsonBlock(w.filter, 'Filter') : null],
      ['Custom headers', Object.keys(w.headers || {}).length ? Object.keys(w.headers).join(', ') : null],
      ['Created', time(w.created_at)],
      ['Updated', time(w.updated_at)],
    ]),
    chart,
    h('div', { class: 'view-head' }, h('h2', {}, 'Deliveries'),
      deliveries.reload ? h('button', { type: 'button', id: 'refresh', onclick: () => deliveries.reload() }, 'Refresh') : null),
    can('deliveries:read') ? deliveryFilters(`#/webhooks/${id}`, query) : null,
    deliveries);
}
