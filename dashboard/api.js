// The admin API: every call sends the token kept in this tab's session
// storage (never localStorage: it must not outlive the tab) and turns an
// error answer into an ApiError carrying the gateway's own message.

const TOKEN = 'freeway.admin.token';

/** An error answer of the admin API (status 0: no answer at all). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let onRefused = () => {};

/** Calls `handler(error)` when the API refuses the token (401 or 403). */
export function whenRefused(handler) {
  onRefused = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN);
}

/** `method` `/admin/api/<path>` with an optional JSON body; the JSON answer. */
export async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`api/${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError(0, `the gateway did not answer: ${e.message}`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const message = json?.error?.message || text || response.statusText;
    const error = new ApiError(response.status, `${response.status}: ${message}`);
    error.sentToken = Boolean(t);
    if (response.status === 401 || response.status === 403) onRefused(error);
    throw error;
  }
  return json;
}
