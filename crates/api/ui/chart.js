// The attempts chart: one stacked bar per period (successful below, failed above) drawn as SVG
// at the width it is given, so labels stay legible on a phone. Each bar has a <title> for
// hover, and the same numbers are offered as a table for keyboard and screen-reader users.

import { h, s, table } from './dom.js';

function hourLabel(iso) {
  return new Date(iso).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/** A round top for the axis, even so that its middle line is a whole number too. */
function niceMax(n) {
  if (n <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(n));
  const top = [1, 2, 5, 10].map((step) => step * magnitude).find((v) => v >= n);
  return top % 2 ? top + 1 : top;
}

/** `metrics` is the metrics API's `metrics` array (oldest first). The SVG is redrawn at the
 *  figure's width whenever that changes (a rotated phone, a resized window). */
export function attemptsChart(metrics, width) {
  let drawnAt = Math.floor(width);
  const figure = h('figure', { class: 'chart-figure' }, bars(metrics, drawnAt), legendAndTable(metrics));
  new ResizeObserver(() => {
    const now = Math.floor(figure.clientWidth);
    if (now > 0 && Math.abs(now - drawnAt) > 4) {
      drawnAt = now;
      figure.firstChild.replaceWith(bars(metrics, now));
    }
  }).observe(figure);
  return figure;
}

function bars(metrics, width) {
  const w = Math.max(280, Math.floor(width));
  const height = 200;
  const pad = { left: 40, right: 8, top: 10, bottom: 26 };
  const plotW = w - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = niceMax(Math.max(0, ...metrics.map((m) => m.deliveries_attempted)));
  const slot = plotW / Math.max(1, metrics.length);
  const barW = Math.max(2, slot * 0.72);
  const y = (v) => pad.top + plotH - (v / max) * plotH;
  const labelEvery = Math.ceil(metrics.length / Math.max(2, Math.floor(plotW / 56)));

  const svg = s('svg', {
    class: 'chart', width: w, height, viewBox: `0 0 ${w} ${height}`, role: 'img',
    'aria-label': `Delivery attempts per hour: ${metrics.reduce((a, m) => a + m.deliveries_attempted, 0)} in all`,
  });
  for (const v of [0, max / 2, max]) {
    svg.append(
      s('line', { class: 'grid', x1: pad.left, x2: w - pad.right, y1: y(v), y2: y(v) }),
      s('text', { class: 'axis', x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, String(Math.round(v))));
  }
  metrics.forEach((m, i) => {
    const x = pad.left + i * slot + (slot - barW) / 2;
    const ok = m.deliveries_successful;
    const failed = m.deliveries_failed;
    const rate = m.success_rate === null ? 'no attempts' : `${m.success_rate}% successful`;
    const g = s('g', { class: 'bar' },
      s('title', {}, `${hourLabel(m.period_start)}: ${m.deliveries_attempted} attempts, ${ok} successful, ${failed} failed (${rate})`),
      // An invisible full-height target, so hovering an empty hour still shows its numbers.
      s('rect', { class: 'hit', x: pad.left + i * slot, y: pad.top, width: slot, height: plotH }));
    if (ok > 0) g.append(s('rect', { class: 'bar-ok', x, width: barW, y: y(ok), height: y(0) - y(ok) }));
    if (failed > 0) g.append(s('rect', { class: 'bar-failed', x, width: barW, y: y(ok + failed), height: y(ok) - y(ok + failed) }));
    svg.append(g);
    if (i % labelEvery === 0) {
      svg.append(s('text', { class: 'axis', x: pad.left + i * slot + slot / 2, y: height - 8, 'text-anchor': 'middle' }, hourLabel(m.period_start)));
    }
  });

  return svg;
}

function legendAndTable(metrics) {
  const legend = h('p', { class: 'legend' },
    h('span', { class: 'entry' }, h('span', { class: 'key ok' }), 'successful (2xx)'),
    h('span', { class: 'entry' }, h('span', { class: 'key failed' }), 'failed (other status, error or timeout)'));
  const asTable = h('details', { class: 'chart-table' },
    h('summary', {}, 'Show as a table'),
    table([
      { label: 'Hour', cell: (m) => hourLabel(m.period_start) },
      { label: 'Attempts', cell: (m) => m.deliveries_attempted },
      { label: 'Successful', cell: (m) => m.deliveries_successful },
      { label: 'Failed', cell: (m) => m.deliveries_failed },
      { label: 'p95 latency', cell: (m) => (m.latency_ms_p95 === null ? '—' : `${m.latency_ms_p95} ms`) },
    ], metrics.filter((m) => m.deliveries_attempted > 0), 'Attempts per hour'));
  return h('div', {}, legend, asTable);
}
