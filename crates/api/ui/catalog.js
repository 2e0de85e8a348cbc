// What feeds the organization and what it can publish: ingestion sources (ingest URL to copy,
// token shown once, pull state) and the event-type catalog with custom types and their schemas.

import {
  h, time, badge, code, table, empty, notice, paged, busy, confirmDialog, field, checkbox, select,
  secretOnce, jsonBlock, copyButton, flash, parseJsonField, list as splitList, formPanel,
} from './dom.js';
import { api, get, can } from './api.js';
import { heading, missing } from './views.js';

function pullState(p) {
  if (!p) return h('span', { class: 'muted' }, 'push only');
  return h('div', { class: 'pull' },
    h('div', {}, p.last_error ? badge('failed') : badge(p.last_polled_at ? 'active' : 'pending'), ' ', code(p.base_url)),
    h('div', { class: 'small' }, 'Last poll: ', time(p.last_polled_at), ' · next: ', time(p.next_poll_at)),
    p.consecutive_failures ? h('div', { class: 'small' }, `${p.consecutive_failures} failures in a row`) : null,
    p.last_error ? h('div', { class: 'small bad-text' }, 'Last error: ', p.last_error) : null);
}

function sourceForm(refresh, slot) {
  const kind = select('kind', [['hubble', 'Hubble packets (push or pull)'], ['signed', 'Signed JSON webhooks (HMAC)']], 'hubble');
  const name = h('input', { name: 'name', required: true, maxlength: 200 });
  const eventType = h('input', { name: 'event_type', placeholder: 'temperature_update', list: 'event-type-names' });
  const allowlist = h('input', { name: 'ip_allowlist', placeholder: '203.0.113.0/24, 198.51.100.7/32' });
  const token = h('input', { name: 'token', autocomplete: 'off', placeholder: 'generated when empty' });
  const pullBase = h('input', { type: 'url', name: 'pull_base_url', placeholder: 'Hubble API base URL' });
  const pullOrg = h('input', { name: 'pull_org_id' });
  const pullToken = h('input', { type: 'password', name: 'pull_api_token', autocomplete: 'off' });
  const signedOnly = h('div', { hidden: true }, field('Event type published', eventType, 'Each signed request is published as this type.'));
  const hubbleOnly = h('div', {},
    field('Hubble token (HTTP-X-HUBBLE-TOKEN)', token, 'The token Hubble generated when you registered the ingest URL; generated when empty.'),
    h('fieldset', {}, h('legend', {}, 'Pull from Hubble’s packets API (optional)'),
      field('Base URL', pullBase), field('Hubble org id', pullOrg), field('API token', pullToken)));
  kind.addEventListener('change', () => {
    signedOnly.hidden = kind.value !== 'signed';
    hubbleOnly.hidden = kind.value !== 'hubble';
  });
  const close = () => slot.replaceChildren();
  return formPanel({
    id: 'new-source',
    title: 'New source',
    submitLabel: 'Create source',
    busyLabel: 'Creating…',
    onCancel: close,
    onSubmit: async () => {
      const body = { kind: kind.value, name: name.value.trim() };
      const blocks = splitList(allowlist.value);
      if (blocks.length) body.ip_allowlist = blocks;
      if (kind.value === 'signed') body.event_type = eventType.value.trim();
      if (kind.value === 'hubble') {
        if (token.value.trim()) body.token = token.value.trim();
        if (pullBase.value.trim()) body.pull = { base_url: pullBase.value.trim(), org_id: pullOrg.value.trim(), api_token: pullToken.value };
      }
      const s = await api('POST', '/sources', body);
      flash(notice('ok', h('p', {}, `Source “${s.name}” created. Senders post to `, code(s.ingest_url), ' ', copyButton(s.ingest_url, 'Copy ingest URL')),
        s.token ? secretOnce('Token (HTTP-X-HUBBLE-TOKEN)', s.token) : null,
        s.secret ? secretOnce('HMAC secret', s.secret) : null));
      close();
      refresh();
    },
  },
  field('Kind', kind), field('Name', name), signedOnly, hubbleOnly,
  field('IP allowlist', allowlist, 'Comma-separated CIDR blocks allowed to call the ingest URL; empty = any address.'));
}

export async function sourcesView({ refresh }) {
  if (!can('sources:read')) return h('section', {}, heading('Sources'), missing('sources:read', 'sources'));
  const slot = h('div');
  const extra = [];
  if (can('sources:write')) {
    extra.push(h('button', {
      type: 'button', class: 'primary', id: 'new-source-button',
      onclick: () => { slot.replaceChildren(sourceForm(refresh, slot)); slot.querySelector('select').focus(); },
    }, 'New source'));
  }
  const out = h('div', { 'aria-live': 'polite' });
  const listing = await paged(
    (cursor) => get('/sources', { limit: 25, cursor }),
    (rows) => (rows.length
      ? table([
        { label: 'Name', cell: (s) => h('div', {}, h('strong', {}, s.name), h('div', { class: 'muted small' }, s.kind === 'signed' ? `signed → ${s.event_type}` : 'Hubble packets')) },
        { label: 'Ingest URL', cell: (s) => h('div', { class: 'ingest' }, code(s.ingest_url), ' ', copyButton(s.ingest_url, `Copy ingest URL of ${s.name}`)) },
        { label: 'Pull', cell: (s) => pullState(s.pull) },
        { label: 'Allowlist', cell: (s) => (s.ip_allowlist.length ? code(s.ip_allowlist.join(', ')) : 'any address') },
        { label: 'Created', cell: (s) => time(s.created_at) },
        can('sources:write') ? {
          label: 'Actions',
          cell: (s) => {
            const del = h('button', {
              type: 'button', class: 'danger small',
              onclick: async () => {
                if (!await confirmDialog(`Delete source “${s.name}”?`, 'Its ingest URL answers 404 from now on and pulling stops. Events it fed are kept.', 'Delete source')) return;
                await busy(del, 'Deleting…', out, async () => {
                  await api('DELETE', `/sources/${s.id}`);
                  flash(notice('ok', `Source “${s.name}” deleted.`));
                  refresh();
                });
              },
            }, 'Delete');
            return del;
          },
        } : null,
      ].filter(Boolean), rows, 'Sources')
      : empty('No sources yet.', can('sources:write')
        ? 'Press “New source” for a Hubble ingest URL (or a pull from Hubble’s API) or a signed inbound webhook.'
        : 'A key with sources:write can create one (POST /api/v1/sources).')),
    'Sources');
  return h('section', {}, heading('Sources', ...extra),
    h('p', { class: 'muted' }, 'What feeds this organization’s events. Tokens and secrets are shown only when created.'),
    slot, out, listing);
}

function eventTypeForm(refresh, slot) {
  const name = h('input', { name: 'name', required: true, placeholder: 'order.shipped', pattern: '[a-z0-9_]+(\\.[a-z0-9_]+)*', maxlength: 100 });
  const description = h('input', { name: 'description', maxlength: 1000 });
  const schema = h('textarea', { name: 'schema', rows: 6, placeholder: '{"type": "object", "required": ["order_id"]}' });
  const batchable = checkbox('Batchable (grouped for webhooks with max batch size > 1)', { name: 'batchable' });
  const close = () => slot.replaceChildren();
  return formPanel({
    id: 'new-event-type',
    title: 'New event type',
    submitLabel: 'Add event type',
    busyLabel: 'Saving…',
    onCancel: close,
    onSubmit: async () => {
      const body = { name: name.value.trim(), batchable: batchable.querySelector('input').checked };
      if (description.value.trim()) body.description = description.value.trim();
      const parsed = parseJsonField('schema', schema.value);
      if (parsed !== undefined) body.schema = parsed;
      await api('POST', '/event-types', body);
      flash(notice('ok', `Event type ${body.name} added.`));
      close();
      refresh();
    },
  },
  field('Name', name, 'Lowercase words of a–z, 0–9 and _ joined by dots.'),
  field('Description', description),
  field('JSON Schema for data (optional)', schema, 'Published data that does not satisfy it is refused with 422.'),
  batchable);
}

export async function eventTypesView({ refresh }) {
  if (!can('webhooks:read')) return h('section', {}, heading('Event types'), missing('webhooks:read', 'the catalog'));
  const { data } = await get('/webhooks/events/available');
  const slot = h('div');
  const out = h('div', { 'aria-live': 'polite' });
  const extra = [];
  if (can('webhooks:write')) {
    extra.push(h('button', {
      type: 'button', class: 'primary', id: 'new-event-type-button',
      onclick: () => { slot.replaceChildren(eventTypeForm(refresh, slot)); slot.querySelector('input').focus(); },
    }, 'New event type'));
  }
  const custom = data.filter((t) => t.custom);
  const builtIn = data.filter((t) => !t.custom);
  const columns = [
    { label: 'Name', cell: (t) => code(t.name) },
    { label: 'Description', cell: (t) => t.description || '—' },
    { label: 'Batchable', cell: (t) => (t.batchable ? 'yes' : 'no') },
  ];
  const customColumns = [...columns,
    { label: 'Schema', cell: (t) => (t.schema ? h('details', {}, h('summary', {}, 'JSON Schema'), jsonBlock(t.schema, `Schema of ${t.name}`)) : 'none') },
    can('webhooks:write') ? {
      label: 'Actions',
      cell: (t) => {
        const del = h('button', {
          type: 'button', class: 'danger small',
          onclick: async () => {
            if (!await confirmDialog(`Remove ${t.name}?`, 'Webhooks subscribed to it keep their subscription; new events of this type are refused.', 'Remove type')) return;
            await busy(del, 'Removing…', out, async () => {
              await api('DELETE', `/event-types/${encodeURIComponent(t.name)}`);
              flash(notice('ok', `Event type ${t.name} removed.`));
              refresh();
            });
          },
        }, 'Remove');
        return del;
      },
    } : null,
  ].filter(Boolean);
  return h('section', {}, heading('Event types', ...extra), slot, out,
    h('datalist', { id: 'event-type-names' }, data.map((t) => h('option', { value: t.name }))),
    h('h2', {}, 'Custom types'),
    custom.length ? table(customColumns, custom, 'Custom event types')
      : empty('No custom event types.', can('webhooks:write') ? 'Press “New event type” to add your own, with an optional JSON Schema for its data.' : 'A key with webhooks:write can add one.'),
    h('h2', {}, `Built-in catalog (${builtIn.length})`),
    table(columns, builtIn, 'Built-in event types'));
}
