// The vendor's page: the vendor API key (kept in this tab's sessionStorage, sent as a bearer
// token), the tenant list with search and keyset pages, tenant creation, disable/enable, and
// invitations of tenant admins (a one-time link <origin>/#invite=<token>).

import { api, announce, busy, el, seg, setVendorKey, shortTime, showError, vendorKey } from './api.js';

const $ = (id) => document.getElementById(id);
const PAGE = 25;

// `after` of the page shown (null: the first), and the search prefix.
const list = { after: null, next: null, q: '' };

function call(method, path, body) {
  return api(method, path, body, { auth: 'vendor' });
}

function badge(status) {
  return el('span', { className: `badge ${status}` }, status);
}

async function loadTenants() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (list.q) params.set('q', list.q);
  if (list.after !== null) params.set('after', list.after);
  const page = await call('GET', `/api/v1/tenants?${params}`);
  const body = $('tenants-table').tBodies[0];
  if (page.items.length === 0) {
    body.replaceChildren(el('tr', {}, el('td', { colSpan: 5, className: 'empty' },
      list.q ? `No tenant id or name starts with "${list.q}".` : 'No tenants yet.')));
  } else {
    body.replaceChildren(...page.items.map(tenantRow));
  }
  list.next = page.next;
  $('next-page').hidden = page.next === null;
  $('first-page').hidden = list.after === null;
  return page;
}

function tenantRow(t) {
  const toggle = t.status === 'disabled'
    ? el('button', { type: 'button', className: 'secondary', 'aria-label': `Enable tenant ${t.id}` }, 'Enable')
    : el('button', { type: 'button', className: 'danger', 'aria-label': `Disable tenant ${t.id}` }, 'Disable');
  toggle.addEventListener('click', () => setStatus(toggle, t, t.status === 'disabled' ? 'enable' : 'disable'));
  const invite = el('button', { type: 'button', className: 'secondary', 'aria-label': `Invite an administrator of tenant ${t.id}` }, 'Invite admin');
  invite.addEventListener('click', () => {
    $('invite-tenant').value = t.id;
    $('invite-email').focus();
  });
  const link = el('a', { href: `/tenant#tenant=${encodeURIComponent(t.id)}` }, t.id);
  return el('tr', { dataset: { tenant: t.id } },
    el('td', {}, link),
    el('td', {}, t.name),
    el('td', {}, badge(t.status)),
    el('td', {}, shortTime(t.created_at)),
    el('td', {}, el('div', { className: 'actions' }, toggle, invite)));
}

async function setStatus(button, tenant, action) {
  if (action === 'disable' && !confirm(`Disable tenant ${tenant.id}? The proxies will refuse its requests.`)) return;
  const done = await busy(button, () => call('POST', `/api/v1/tenants/${seg(tenant.id)}/${action}`));
  if (!done) return;
  announce(`Tenant ${done.id} is now ${done.status}.`);
  await busy(null, loadTenants);
  const row = document.querySelector(`#tenants-table tr[data-tenant="${CSS.escape(done.id)}"] button`);
  if (row) row.focus();
}

async function useKey(key) {
  setVendorKey(key);
  const page = await busy($('key-form'), loadTenants);
  if (!page) {
    setVendorKey(null);
    return;
  }
  $('key-form').hidden = true;
  $('vendor-area').hidden = false;
  $('forget-key').hidden = false;
  announce(`Signed in with the vendor API key: ${page.items.length} tenant(s) on this page.`);
}

async function createTenant(form) {
  const id = form.elements.id.value.trim();
  const name = form.elements.name.value.trim();
  if (!id) {
    showError({ code: 'invalid_field', message: 'Enter the tenant id.' });
    form.elements.id.focus();
    return;
  }
  const body = name ? { id, name } : { id };
  body.vendor_key = form.elements.vendor_key.checked;
  const created = await busy(form, () => call('POST', '/api/v1/tenants', body));
  if (!created) return;
  form.reset();
  const key = created.vendor_key ? ` with its own vendor-managed key (configuration ${created.vendor_key.id})` : '';
  announce(`Created tenant ${created.id}${key}.`);
  $('invite-tenant').value = created.id;
  await busy(null, loadTenants);
}

async function invite(form) {
  const tenant = form.elements.tenant.value.trim();
  const email = form.elements.email.value.trim();
  if (!tenant || !email) {
    showError({ code: 'invalid_field', message: 'Enter the tenant id and the e-mail address.' });
    return;
  }
  const created = await busy(form, () =>
    call('POST', `/api/v1/tenants/${seg(tenant)}/invitations`, { email }));
  if (!created) return;
  $('invite-result-email').textContent = created.email;
  $('invite-result-tenant').textContent = created.tenant;
  $('invite-result-expires').textContent = shortTime(created.expires_at);
  $('invite-link').value = `${location.origin}/#invite=${encodeURIComponent(created.token)}`;
  $('invite-result').hidden = false;
  form.elements.email.value = '';
  announce(`Invitation created for ${created.email}.`);
  $('invite-link').focus();
  $('invite-link').select();
}

function start() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('api-key').value.trim();
    $('api-key').value = '';
    if (!key) {
      showError({ code: 'invalid_field', message: 'Paste the vendor API key.' });
      return;
    }
    useKey(key);
  });
  $('forget-key').addEventListener('click', () => {
    setVendorKey(null);
    location.reload();
  });
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    list.q = $('search').value.trim();
    list.after = null;
    busy(e.currentTarget, loadTenants);
  });
  $('next-page').addEventListener('click', (e) => {
    list.after = list.next;
    busy(e.currentTarget, loadTenants).then(() => $('tenants-table').focus());
  });
  $('first-page').addEventListener('click', (e) => {
    list.after = null;
    busy(e.currentTarget, loadTenants);
  });
  $('create-form').addEventListener('submit', (e) => { e.preventDefault(); createTenant(e.currentTarget); });
  $('invite-form').addEventListener('submit', (e) => { e.preventDefault(); invite(e.currentTarget); });
  $('copy-link').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($('invite-link').value);
      announce('Link copied.');
    } catch {
      $('invite-link').select();
      announce('Select the link and copy it (the clipboard is not available).');
    }
  });
  $('tenants-table').tabIndex = -1;
  const saved = vendorKey();
  if (saved) useKey(saved);
  else $('api-key').focus();
}

start();
