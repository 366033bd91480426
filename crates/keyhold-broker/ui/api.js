// The broker's API from the pages: JSON in and out, same-origin credentials (the tenant admin's
// session cookie), the CSRF token on every mutating request, or the vendor API key as a bearer
// token on the vendor page. Errors become {code, message} (docs/broker.md §4) and are announced
// in the page's aria-live region (#status).

const VENDOR_KEY = 'keyhold.vendorApiKey';
const SAFE = new Set(['GET', 'HEAD']);

let csrfToken = null;

/** An error answer of the broker, or a network failure (code "network"). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** The CSRF token of the signed-in session (from POST or GET /api/v1/session). */
export function setCsrfToken(token) {
  csrfToken = token || null;
}

/** The vendor API key of this tab (sessionStorage: gone when the tab closes). */
export function vendorKey() {
  try {
    return sessionStorage.getItem(VENDOR_KEY);
  } catch {
    return null;
  }
}

export function setVendorKey(key) {
  if (key) sessionStorage.setItem(VENDOR_KEY, key);
  else sessionStorage.removeItem(VENDOR_KEY);
}

/**
 * Calls the API. `auth`: "session" (cookie and CSRF header; the default) or "vendor" (bearer
 * key). Resolves to the parsed JSON body (null for an empty one); rejects with an ApiError.
 */
export async function api(method, path, body, { auth = 'session' } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (auth === 'vendor') {
    const key = vendorKey();
    if (!key) throw new ApiError(401, 'unauthorized', 'Enter the vendor API key first.');
    headers.Authorization = `Bearer ${key}`;
  } else if (!SAFE.has(method) && csrfToken) {
    headers['X-CSRF-Token'] = csrfToken;
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      redirect: 'error',
    });
  } catch (e) {
    throw new ApiError(0, 'network', `The broker cannot be reached (${e.message}).`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const code = data && typeof data.code === 'string' ? data.code : `http_${response.status}`;
    const message =
      data && typeof data.message === 'string'
        ? data.message
        : `${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, code, message);
  }
  return data;
}

/** A path segment, escaped (tenant ids may hold any character but `/` and controls). */
export function seg(value) {
  return encodeURIComponent(String(value));
}

function statusRegion() {
  return document.getElementById('status');
}

/** Announces a success or progress message (polite live region). */
export function announce(message) {
  const region = statusRegion();
  if (!region) return;
  region.classList.remove('error');
  region.textContent = message;
}

/** Shows an error as "code: message" in the live region; returns it for chaining. */
export function showError(error) {
  const region = statusRegion();
  const code = error && error.code ? error.code : 'error';
  const message = error && error.message ? error.message : String(error);
  if (region) {
    region.classList.add('error');
    region.textContent = '';
    const strong = document.createElement('strong');
    strong.textContent = `Error (${code}): `;
    region.append(strong, message);
  }
  return error;
}

/** Runs an async action for a form or button: disables it meanwhile, shows errors. */
export async function busy(control, action) {
  const target = control instanceof HTMLFormElement ? control.querySelector('[type=submit]') : control;
  if (target) target.disabled = true;
  try {
    return await action();
  } catch (e) {
    showError(e);
    return undefined;
  } finally {
    if (target) target.disabled = false;
  }
}

/** Creates an element: el('td', {className: 'x'}, 'text', child…). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k in node && k !== 'list') node[k] = v;
    else if (v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** A time in RFC 3339 UTC, shown shorter: 2026-12-01 18:00:00Z. */
export function shortTime(rfc3339) {
  return typeof rfc3339 === 'string' ? rfc3339.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '';
}
