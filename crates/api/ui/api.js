// The public REST API, called with the signed-in key exactly as any client calls it
// (`Authorization: Bearer …`): the dashboard has no access of its own. The key lives in this
// tab's sessionStorage only, and its scopes (from GET /api/v1/keys/check) decide which
// controls are drawn, so a read-only key never sees a button that would answer 403.

const STORAGE_KEY = 'hookrelay.apiKey';

export const session = {
  token: sessionStorage.getItem(STORAGE_KEY),
  scopes: [],
  orgId: null,
  orgName: null,
  keyId: null,
};

/** Whether the signed-in key holds `scope`. */
export function can(scope) {
  return session.scopes.includes(scope);
}

/** A problem+json answer (or a network failure: status 0). */
export class ApiError extends Error {
  constructor(status, problem, requestId) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.requestId = requestId || (problem && problem.request_id) || null;
  }
}

/** Called when the key stops working (revoked, expired): back to sign-in. */
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

/** A query string from an object, leaving out empty values. */
export function qs(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') search.set(k, v);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

async function call(token, method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (err) {
    throw new ApiError(0, { title: 'Network error', detail: `the service did not answer (${err.message})` });
  }
  const requestId = response.headers.get('x-request-id');
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, json || { title: `HTTP ${response.status}`, detail: text.slice(0, 200) }, requestId);
  }
  return json;
}

/** One API call with the signed-in key. */
export async function api(method, path, body) {
  try {
    return await call(session.token, method, path, body);
  } catch (err) {
    if (err.status === 401) onUnauthorized(err);
    throw err;
  }
}

export const get = (path, params) => api('GET', path + qs(params));

/** Checks `token` and keeps it for this tab. */
export async function signIn(token) {
  const check = await call(token, 'GET', '/keys/check');
  session.token = token;
  session.scopes = check.scopes || [];
  session.orgId = check.org_id;
  session.keyId = check.key_id;
  // The organization's name reads better than its id, when the key may read it.
  session.orgName = session.scopes.includes('organization:read')
    ? (await call(token, 'GET', '/organization')).name
    : null;
  sessionStorage.setItem(STORAGE_KEY, token);
  return check;
}

/** Re-reads the stored key's scopes after a reload. */
export async function resume() {
  if (!session.token) return false;
  try {
    await signIn(session.token);
    return true;
  } catch (err) {
    if (err.status === 401) {
      signOut();
      return false;
    }
    throw err;
  }
}

export function signOut() {
  sessionStorage.removeItem(STORAGE_KEY);
  session.token = null;
  session.scopes = [];
  session.orgId = null;
  session.orgName = null;
  session.keyId = null;
}

/** Every page of a list, up to `maxPages` pages of 1000; `truncated` when more remained. */
export async function all(path, params, maxPages = 10) {
  const data = [];
  let cursor;
  for (let i = 0; i < maxPages; i += 1) {
    const page = await get(path, { ...params, limit: 1000, cursor });
    data.push(...page.data);
    if (!page.next_cursor) return { data, truncated: false };
    cursor = page.next_cursor;
  }
  return { data, truncated: true };
}
