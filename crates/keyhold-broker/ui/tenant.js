// The tenant admin's page: KMS configurations (list, status changes, add with the credentials
// sealed in this browser), SIEM destinations, and the change history.
//
// Signed-in tenant admins use their session cookie (and its CSRF token). A vendor coming from
// the vendor page (/tenant#tenant=<id>, API key in this tab's sessionStorage) sees the same page
// with the vendor key.

import {
  ApiError, announce, api, busy, el, seg, setCsrfToken, shortTime, showError, vendorKey,
} from './api.js';
import { seal } from './seal.js';

const $ = (id) => document.getElementById(id);

// The fields of each KMS type (crates/keyhold-broker/src/validate.rs; `local` is for the
// vendor's demo only). `secret` fields are sealed, never sent in `settings`.
const KMS_TYPES = {
  vault: {
    settings: [
      { name: 'address', label: 'Server address', required: true, type: 'url', hint: 'https://vault.example.com:8200' },
      { name: 'key', label: 'Transit key name', required: true, hint: 'A derived aes256-gcm96 key.' },
      { name: 'mount', label: 'Transit mount', hint: 'Default: transit.' },
      { name: 'namespace', label: 'Namespace', hint: 'Vault Enterprise / OpenBao namespaces only.' },
      { name: 'tls_server_name', label: 'TLS server name', hint: 'When the certificate names another host than the address.' },
      { name: 'ca_cert_file', label: 'CA certificate file on the proxies', hint: 'A path the proxies can read; default: the system roots.' },
    ],
    secrets: [{ name: 'token', label: 'Vault token', required: true }],
  },
  aws: {
    settings: [
      { name: 'key_id', label: 'Key ARN', required: true, hint: 'arn:aws:kms:<region>:<account>:key/<id> (or a key id / alias with a region).' },
      { name: 'region', label: 'Region', hint: 'Optional with a key ARN.' },
      { name: 'endpoint_url', label: 'Endpoint URL', type: 'url', hint: 'A VPC or FIPS endpoint; default: the region\'s.' },
      { name: 'role_arn', label: 'Role to assume (ARN)' },
      { name: 'external_id', label: 'External id', hint: 'Only with a role to assume.' },
    ],
    secrets: [
      { name: 'access_key_id', label: 'Access key id' },
      { name: 'secret_access_key', label: 'Secret access key' },
      { name: 'session_token', label: 'Session token', hint: 'Temporary credentials only.' },
    ],
    secretsHint: 'Leave empty to use the proxies\' own AWS credentials (instance role).',
  },
  azure: {
    settings: [
      { name: 'key_id', label: 'Key identifier (URL)', required: true, type: 'url' },
      { name: 'tenant_id', label: 'Directory (tenant) id', required: true },
      { name: 'client_id', label: 'Application (client) id', required: true },
      { name: 'algorithm', label: 'Wrap algorithm', hint: 'Default: RSA-OAEP-256.' },
      { name: 'authority_host', label: 'Authority host', type: 'url' },
      { name: 'endpoint', label: 'Key Vault endpoint', type: 'url' },
    ],
    secrets: [{ name: 'client_secret', label: 'Client secret', required: true }],
  },
  gcp: {
    settings: [
      { name: 'key_name', label: 'Key resource name', required: true, hint: 'projects/…/locations/…/keyRings/…/cryptoKeys/…' },
      { name: 'endpoint', label: 'Endpoint', type: 'url' },
      { name: 'token_uri', label: 'Token URI', type: 'url' },
    ],
    secrets: [{ name: 'credentials_file', label: 'Service account key (JSON)', required: true, multiline: true }],
  },
  kmip: {
    settings: [
      { name: 'address', label: 'Server address (host:port)', required: true },
      { name: 'key_name', label: 'Key name', required: true },
      { name: 'ca_cert_file', label: 'CA certificate file on the proxies', required: true },
      { name: 'client_cert_file', label: 'Client certificate file on the proxies', required: true },
      { name: 'server_name', label: 'TLS server name' },
      { name: 'mac_key_name', label: 'MAC key name' },
      { name: 'mechanism', label: 'Mechanism' },
      { name: 'key_refresh_seconds', label: 'Key refresh (seconds)', type: 'number' },
      { name: 'pool_size', label: 'Connection pool size', type: 'number' },
    ],
    secrets: [{ name: 'client_key', label: 'Client private key (PEM)', required: true, multiline: true }],
  },
  pkcs11: {
    settings: [
      { name: 'module', label: 'PKCS#11 module path on the proxies', required: true },
      { name: 'key_label', label: 'Key label', required: true },
      { name: 'token_label', label: 'Token label' },
      { name: 'slot_id', label: 'Slot id', type: 'number' },
      { name: 'mechanism', label: 'Mechanism' },
      { name: 'max_sessions', label: 'Maximum sessions', type: 'number' },
    ],
    secrets: [{ name: 'pin', label: 'User PIN', required: true }],
  },
};

const SIEM_TYPES = {
  syslog: {
    settings: [
      { name: 'address', label: 'Address (host:port)', required: true },
      { name: 'tls', label: 'Use TLS', type: 'checkbox' },
      { name: 'server_name', label: 'TLS server name' },
      { name: 'ca_cert_file', label: 'CA certificate file on the proxies' },
      { name: 'app_name', label: 'APP-NAME', hint: 'Default: keyhold.' },
    ],
    secrets: [],
  },
  splunk: {
    settings: [
      { name: 'url', label: 'HEC URL', required: true, type: 'url' },
      { name: 'index', label: 'Index' },
      { name: 'sourcetype', label: 'Source type' },
      { name: 'ca_cert_file', label: 'CA certificate file on the proxies' },
    ],
    secrets: [{ name: 'secret', label: 'HEC token', required: true }],
  },
  webhook: {
    settings: [
      { name: 'url', label: 'URL', required: true, type: 'url' },
      { name: 'ca_cert_file', label: 'CA certificate file on the proxies' },
    ],
    secrets: [{ name: 'secret', label: 'Signing secret', required: true }],
  },
};

const ctx = { tenant: null, email: null, auth: 'session', fleetKey: null, historyNext: null };

function call(method, path, body) {
  return api(method, path, body, { auth: ctx.auth });
}

function base() {
  return `/api/v1/tenants/${seg(ctx.tenant)}`;
}

// ---- forms whose fields follow the type ---------------------------------------------------

function fieldControl(prefix, spec, secret) {
  const id = `${prefix}-${spec.name}`;
  const hintId = spec.hint ? `${id}-hint` : undefined;
  if (spec.type === 'checkbox') {
    return el('div', { className: 'field' },
      el('label', {}, el('input', { id, name: spec.name, type: 'checkbox' }), ` ${spec.label}`));
  }
  const common = {
    id,
    name: spec.name,
    required: Boolean(spec.required),
    'aria-describedby': hintId,
    autocomplete: 'off',
    spellcheck: false,
  };
  let input;
  if (spec.multiline) {
    input = el('textarea', common);
  } else if (secret) {
    input = el('input', { ...common, type: 'password', autocomplete: 'new-password' });
  } else {
    input = el('input', { ...common, type: spec.type === 'number' ? 'number' : spec.type === 'url' ? 'url' : 'text', inputMode: spec.type === 'number' ? 'numeric' : undefined });
  }
  input.dataset.kind = spec.type || 'text';
  const label = el('label', { htmlFor: id }, spec.label, spec.required ? ' (required)' : '');
  return el('div', { className: 'field' }, label, input,
    spec.hint ? el('p', { className: 'hint', id: hintId }, spec.hint) : null);
}

function renderFields(prefix, spec, settingsBox, secretsBox, secretSet) {
  settingsBox.replaceChildren(...spec.settings.map((f) => fieldControl(`${prefix}-s`, f, false)));
  const secrets = spec.secrets.map((f) => fieldControl(`${prefix}-x`, f, true));
  if (spec.secretsHint) secrets.unshift(el('p', { className: 'hint' }, spec.secretsHint));
  secretsBox.replaceChildren(...secrets);
  if (secretSet) secretSet.hidden = spec.secrets.length === 0;
}

/** Reads the type's fields: {settings, secrets, missing: [labels]}. */
function readFields(prefix, spec) {
  const settings = {};
  const secrets = {};
  const missing = [];
  for (const f of spec.settings) {
    const input = $(`${prefix}-s-${f.name}`);
    if (f.type === 'checkbox') {
      if (input.checked) settings[f.name] = true;
      continue;
    }
    const value = input.value.trim();
    if (!value) {
      if (f.required) missing.push(input);
      continue;
    }
    settings[f.name] = f.type === 'number' ? Number(value) : value;
  }
  for (const f of spec.secrets) {
    const input = $(`${prefix}-x-${f.name}`);
    const value = f.multiline ? input.value : input.value.trim();
    if (!value.trim()) {
      if (f.required) missing.push(input);
      continue;
    }
    secrets[f.name] = value;
  }
  return { settings, secrets, missing };
}

function refuseMissing(missing) {
  if (missing.length === 0) return false;
  const names = missing.map((i) => document.querySelector(`label[for="${i.id}"]`).firstChild.textContent);
  for (const input of missing) input.setAttribute('aria-invalid', 'true');
  showError({ code: 'invalid_field', message: `Required: ${names.join(', ')}.` });
  missing[0].focus();
  return true;
}

function clearSecrets(prefix, spec) {
  for (const f of spec.secrets) $(`${prefix}-x-${f.name}`).value = '';
}

async function fleetKey() {
  if (!ctx.fleetKey) ctx.fleetKey = await call('GET', '/api/v1/fleet-key');
  return ctx.fleetKey;
}

/** Seals the secret fields (a JSON object of strings) for this tenant; null when none. */
async function sealSecrets(purpose, secrets) {
  if (Object.keys(secrets).length === 0) return null;
  const key = await fleetKey();
  return seal(key.public_key, purpose, ctx.tenant, JSON.stringify(secrets));
}

// ---- tables ----------------------------------------------------------------------------------

function settingsText(settings) {
  return Object.entries(settings || {})
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('\n');
}

function badge(status) {
  return el('span', { className: `badge ${status}` }, status);
}

function emptyRow(columns, text) {
  return el('tr', {}, el('td', { colSpan: columns, className: 'empty' }, text));
}

function actionButton(text, label, onClick, className) {
  const button = el('button', { type: 'button', className, 'aria-label': label }, text);
  button.addEventListener('click', () => onClick(button));
  return button;
}

// How many EDEKs the proxies have seen naming a configuration (rotation tracking): tells when
// an old configuration (a vendor key after the hand-over) can be disabled.
function usageText(usage) {
  if (!usage || !usage.last_seen) return 'none seen';
  const versions = usage.key_versions.filter((v) => v.key_version)
    .map((v) => `v${v.key_version}: ${v.edeks_seen}`).join(', ');
  return `${usage.edeks_seen} EDEKs, last ${shortTime(usage.last_seen)}${versions ? ` (${versions})` : ''}`;
}

async function loadKms() {
  const [{ items }, usage] = await Promise.all([
    call('GET', `${base()}/kms-configs`),
    call('GET', `${base()}/kms-usage`).catch(() => ({ configs: [] })),
  ]);
  const usageById = new Map(usage.configs.map((u) => [u.id, u]));
  const body = $('kms-table').tBodies[0];
  if (items.length === 0) {
    body.replaceChildren(emptyRow(9, 'No KMS configuration yet: add one below.'));
    return items;
  }
  body.replaceChildren(...items.map((c) => {
    const actions = el('div', { className: 'actions' });
    if (c.status !== 'primary') {
      actions.append(actionButton('Make primary', `Make configuration ${c.id} primary`, (b) => kmsStatus(b, c.id, 'primary')));
    }
    if (c.status === 'disabled') {
      actions.append(actionButton('Enable', `Enable configuration ${c.id}`, (b) => kmsStatus(b, c.id, 'enable'), 'secondary'));
    } else {
      actions.append(actionButton('Disable', `Disable configuration ${c.id}`, (b) => kmsStatus(b, c.id, 'disable'), 'danger'));
    }
    return el('tr', { dataset: { configId: String(c.id), status: c.status } },
      el('td', {}, String(c.id)),
      el('td', {}, c.type === 'vendor' ? 'vendor key' : c.type),
      el('td', {}, c.managed_by),
      el('td', { className: 'mono' }, settingsText(c.settings)),
      el('td', { className: 'mono' }, c.sealed_key_id || '—'),
      el('td', { className: 'status' }, badge(c.status)),
      el('td', { className: 'usage' }, usageText(usageById.get(c.id))),
      el('td', {}, shortTime(c.created_at)),
      el('td', {}, actions));
  }));
  return items;
}

async function kmsStatus(button, id, action) {
  if (action === 'disable' && !confirm(`Disable KMS configuration ${id}? Keys it wrapped will no longer unwrap.`)) return;
  const done = await busy(button, () => call('POST', `${base()}/kms-configs/${id}/${action}`));
  if (!done) return;
  announce(`Configuration ${id} is now ${done.status}.`);
  await refresh(['kms', 'history']);
  // Keep the keyboard user near where they were.
  const row = document.querySelector(`#kms-table tr[data-config-id="${id}"]`);
  const next = row && row.querySelector('button');
  if (next) next.focus();
}

async function loadSiem() {
  const { items } = await call('GET', `${base()}/siem-configs`);
  const body = $('siem-table').tBodies[0];
  if (items.length === 0) {
    body.replaceChildren(emptyRow(7, 'No SIEM destination: audit events stay in the proxies\' local log.'));
    return;
  }
  body.replaceChildren(...items.map((s) => {
    const action = s.status === 'disabled'
      ? actionButton('Enable', `Enable SIEM destination ${s.name}`, (b) => siemStatus(b, s.name, 'enable'), 'secondary')
      : actionButton('Disable', `Disable SIEM destination ${s.name}`, (b) => siemStatus(b, s.name, 'disable'), 'danger');
    return el('tr', { dataset: { siemName: s.name } },
      el('td', {}, s.name),
      el('td', {}, s.type),
      el('td', { className: 'mono' }, settingsText(s.settings)),
      el('td', { className: 'mono' }, s.sealed_key_id || '—'),
      el('td', {}, badge(s.status)),
      el('td', {}, shortTime(s.created_at)),
      el('td', {}, el('div', { className: 'actions' }, action)));
  }));
}

async function siemStatus(button, name, action) {
  const done = await busy(button, () => call('POST', `${base()}/siem-configs/${seg(name)}/${action}`));
  if (!done) return;
  announce(`SIEM destination ${name} is now ${done.status}.`);
  await refresh(['siem', 'history']);
}

async function loadAdmins() {
  const { items } = await call('GET', `${base()}/admins`);
  const body = $('admins-table').tBodies[0];
  if (items.length === 0) {
    body.replaceChildren(emptyRow(5, 'No admin yet: the vendor invites them.'));
    return;
  }
  body.replaceChildren(...items.map((a) => {
    const status = a.disabled ? 'disabled' : 'active';
    let action;
    if (a.email === ctx.email) {
      action = el('span', { className: 'hint' }, 'you');
    } else if (a.disabled) {
      action = actionButton('Enable', `Enable admin ${a.email}`, (b) => adminStatus(b, a, 'enable'), 'secondary');
    } else {
      action = actionButton('Disable', `Disable admin ${a.email}`, (b) => adminStatus(b, a, 'disable'), 'danger');
    }
    return el('tr', { dataset: { adminId: String(a.admin_id), status } },
      el('td', {}, String(a.admin_id)),
      el('td', {}, a.email),
      el('td', {}, shortTime(a.created_at)),
      el('td', {}, badge(status)),
      el('td', {}, el('div', { className: 'actions' }, action)));
  }));
}

async function loadInvitations() {
  const { items } = await call('GET', `${base()}/invitations`);
  const body = $('invitations-table').tBodies[0];
  if (items.length === 0) {
    body.replaceChildren(emptyRow(5, 'No invitation yet.'));
    return;
  }
  body.replaceChildren(...items.map((i) => {
    const action = i.state === 'pending'
      ? actionButton('Revoke', `Revoke the invitation of ${i.email}`, (b) => revokeInvitation(b, i.email), 'danger')
      : '';
    return el('tr', { dataset: { state: i.state } },
      el('td', {}, i.email),
      el('td', {}, shortTime(i.created_at)),
      el('td', {}, shortTime(i.expires_at)),
      el('td', {}, badge(i.state)),
      el('td', {}, el('div', { className: 'actions' }, action)));
  }));
}

async function revokeInvitation(button, email) {
  if (!confirm(`Revoke the pending invitation of ${email}? Its link stops working.`)) return;
  const done = await busy(button, () => call('POST', `${base()}/invitations/revoke`, { email }));
  if (!done) return;
  announce(`Revoked ${done.revoked} invitation(s) of ${done.email}.`);
  await refresh(['admins', 'history']);
}

async function adminStatus(button, admin, action) {
  if (action === 'disable' && !confirm(`Disable admin ${admin.email}? Their sessions end now.`)) return;
  const done = await busy(button, () => call('POST', `${base()}/admins/${admin.admin_id}/${action}`));
  if (!done) return;
  announce(`Admin ${admin.email} is now ${done.disabled ? 'disabled' : 'active'}.`);
  await refresh(['admins', 'history']);
}

function historyRow(c) {
  return el('tr', {},
    el('td', {}, String(c.id)),
    el('td', {}, shortTime(c.at)),
    el('td', {}, c.actor),
    el('td', {}, el('code', {}, c.action)),
    el('td', { className: 'mono' }, JSON.stringify(c.detail)));
}

async function loadHistory(more = false) {
  const after = more && ctx.historyNext !== null ? `&after=${ctx.historyNext}` : '';
  const page = await call('GET', `${base()}/history?limit=100${after}`);
  const body = $('history-table').tBodies[0];
  const rows = page.items.map(historyRow);
  if (more) body.append(...rows);
  else body.replaceChildren(...(rows.length ? rows : [emptyRow(5, 'No changes yet.')]));
  ctx.historyNext = page.next;
  $('history-more').hidden = page.next === null;
}

async function refresh(parts = ['kms', 'siem', 'admins', 'history']) {
  try {
    const jobs = [];
    if (parts.includes('kms')) jobs.push(loadKms());
    if (parts.includes('siem')) jobs.push(loadSiem());
    if (parts.includes('admins')) jobs.push(loadAdmins(), loadInvitations());
    if (parts.includes('history')) jobs.push(loadHistory());
    await Promise.all(jobs);
  } catch (e) {
    signedOutOr(e);
  }
}

function signedOutOr(error) {
  if (error instanceof ApiError && error.status === 401 && ctx.auth === 'session') {
    location.assign('/');
    return;
  }
  showError(error);
}

// ---- adding ------------------------------------------------------------------------------------

async function addKms(form) {
  const type = $('kms-type').value;
  const spec = KMS_TYPES[type];
  const { settings, secrets, missing } = readFields('kms', spec);
  if (refuseMissing(missing)) return;
  const created = await busy(form, async () => {
    announce('Sealing the credentials in this browser…');
    const sealed = await sealSecrets('kms', secrets);
    const body = { type, settings };
    if (sealed) body.sealed = sealed;
    const status = $('kms-status').value;
    if (status) body.status = status;
    return call('POST', `${base()}/kms-configs`, body);
  });
  if (!created) return;
  clearSecrets('kms', spec);
  form.reset();
  renderKmsFields();
  announce(`Added KMS configuration ${created.id} (${created.type}, ${created.status}).`);
  await refresh(['kms', 'history']);
}

async function addSiem(form) {
  const type = $('siem-type').value;
  const spec = SIEM_TYPES[type];
  const name = $('siem-name').value.trim();
  const { settings, secrets, missing } = readFields('siem', spec);
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) missing.unshift($('siem-name'));
  if (refuseMissing(missing)) return;
  const created = await busy(form, async () => {
    const sealed = await sealSecrets('siem', secrets);
    const body = { name, type, settings };
    if (sealed) body.sealed = sealed;
    return call('POST', `${base()}/siem-configs`, body);
  });
  if (!created) return;
  clearSecrets('siem', spec);
  form.reset();
  renderSiemFields();
  announce(`Added SIEM destination ${created.name}.`);
  await refresh(['siem', 'history']);
}

function renderKmsFields() {
  renderFields('kms', KMS_TYPES[$('kms-type').value], $('kms-settings'), $('kms-secrets'));
}

function renderSiemFields() {
  renderFields('siem', SIEM_TYPES[$('siem-type').value], $('siem-settings'), $('siem-secrets'), $('siem-secret-set'));
}

// ---- start ---------------------------------------------------------------------------------

async function identify() {
  const hashTenant = new URLSearchParams(location.hash.slice(1)).get('tenant');
  if (hashTenant && vendorKey()) {
    ctx.auth = 'vendor';
    ctx.tenant = hashTenant;
    $('who').textContent = 'Vendor API key';
    $('back-vendor').hidden = false;
    return true;
  }
  try {
    const session = await api('GET', '/api/v1/session');
    setCsrfToken(session.csrf_token);
    ctx.tenant = session.tenant;
    ctx.email = session.email;
    $('who').textContent = `Signed in as ${session.email}`;
    $('sign-out').hidden = false;
    return true;
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 404)) {
      location.assign('/');
      return false;
    }
    showError(e);
    return false;
  }
}

async function start() {
  for (const [sel, render] of [['kms-type', renderKmsFields], ['siem-type', renderSiemFields]]) {
    $(sel).addEventListener('change', render);
    render();
  }
  $('kms-form').addEventListener('submit', (e) => { e.preventDefault(); addKms(e.currentTarget); });
  $('siem-form').addEventListener('submit', (e) => { e.preventDefault(); addSiem(e.currentTarget); });
  $('history-more').addEventListener('click', (e) => busy(e.currentTarget, () => loadHistory(true)));
  $('sign-out').addEventListener('click', async (e) => {
    await busy(e.currentTarget, () => api('DELETE', '/api/v1/session'));
    location.assign('/');
  });
  document.addEventListener('input', (e) => e.target.removeAttribute?.('aria-invalid'));

  if (!(await identify())) return;
  $('tenant-id').textContent = ctx.tenant;
  $('tenant-name').textContent = ctx.tenant;
  try {
    const tenant = await call('GET', base());
    $('tenant-name').textContent = tenant.name;
    $('tenant-status').replaceChildren(badge(tenant.status));
    document.title = `${tenant.name} — Keyhold broker`;
  } catch (e) {
    signedOutOr(e);
  }
  await refresh();
}

start();
