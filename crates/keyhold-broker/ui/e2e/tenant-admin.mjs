// The tenant admin's journey in a real browser, against a running broker:
//   accept the invitation (/#invite=<token>) → read the TOTP secret from the page → sign in with
//   password and TOTP → add a Vault KMS configuration (the token sealed in the browser) → make it
//   primary → check the table, the admins and the history; then the vendor page with the API key.
// Prints one JSON line: {"ok": true, "config_id": <id>, "tenant": …, "screenshots": […]}.
//
// Environment: BROKER_URL, VENDOR_API_KEY, TENANT, INVITE_TOKEN, VAULT_ADDR, VAULT_KEY,
// VAULT_TOKEN, SCREENSHOT_DIR; optional VAULT_MOUNT, ADMIN_PASSWORD, CHROMIUM, HEADED=1,
// E2E_TIMEOUT_MS.

import { randomBytes } from 'node:crypto';
import { firstPage, freshTotp, launch, need, realProblems, shot } from './lib.mjs';

const broker = need('BROKER_URL').replace(/\/+$/, '');
const vendorApiKey = need('VENDOR_API_KEY');
const tenant = need('TENANT');
const inviteToken = need('INVITE_TOKEN');
const vault = { address: need('VAULT_ADDR'), key: need('VAULT_KEY'), token: need('VAULT_TOKEN') };
const screenshots = need('SCREENSHOT_DIR');
const password = process.env.ADMIN_PASSWORD || `pw-${randomBytes(12).toString('hex')}`;

const { context, close, problems } = await launch();
const saved = [];
let configId = null;
try {
  const page = await firstPage(context);

  // 1. The invitation: set a password, read the TOTP secret shown once.
  await page.goto(`${broker}/#invite=${encodeURIComponent(inviteToken)}`);
  await page.getByLabel('New password').fill(password);
  await page.getByLabel('Repeat the password').fill(password);
  await page.getByRole('button', { name: 'Create my account' }).click();
  const secretBox = page.locator('#totp-secret');
  await secretBox.waitFor({ state: 'visible' });
  const secret = (await secretBox.textContent()).trim();
  if (!/^[A-Z2-7]+=*$/i.test(secret)) throw new Error(`the page shows no base32 TOTP secret: ${secret}`);
  const otpauth = (await page.locator('#otpauth-url').textContent()).trim();
  if (!otpauth.startsWith('otpauth://totp/')) throw new Error(`no otpauth URL: ${otpauth}`);
  if (page.url().includes('invite=')) throw new Error('the used token stays in the address bar');

  // 2. Sign in (the e-mail and password are filled in after the acceptance).
  await page.getByLabel('Authenticator code').fill(await freshTotp(secret));
  saved.push(await shot(page, screenshots, 'broker-sign-in.png'));
  await Promise.all([
    page.waitForURL(`${broker}/tenant`),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  await page.locator('#tenant-id', { hasText: tenant }).waitFor();
  await page.locator('#kms-table tbody tr').first().waitFor();
  await page.locator('#history-table tbody tr').first().waitFor();
  // The admin sees themselves among the tenant's admins, with no button to disable themselves.
  const me = page.locator('#admins-table tbody tr', { hasText: 'you' });
  await me.waitFor();
  if (await me.getByRole('button').count() !== 0) throw new Error('the signed-in admin can disable themselves');
  // Their own invitation, accepted, among the tenant's invitations (no revoke button left).
  await page.locator('#invitations-table tbody tr[data-state="used"]').waitFor();
  saved.push(await shot(page, screenshots, 'broker-tenant.png'));

  // 3. Add a Vault configuration; the token is sealed in the page (seal.js), never sent clear.
  await page.locator('#kms-type').selectOption('vault');
  await page.getByLabel('Server address').fill(vault.address);
  await page.getByLabel('Transit key name').fill(vault.key);
  if (process.env.VAULT_MOUNT) await page.getByLabel('Transit mount').fill(process.env.VAULT_MOUNT);
  await page.getByLabel('Vault token').fill(vault.token);
  await page.getByLabel('Status when added').selectOption('active');
  const form = page.locator('#kms-form');
  await form.scrollIntoViewIfNeeded();
  saved.push(await shot(page, screenshots, 'broker-add-kms.png'));
  const [posted] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && r.url().endsWith('/kms-configs')),
    form.getByRole('button', { name: 'Add configuration' }).click(),
  ]);
  const request = JSON.parse(posted.request().postData());
  if (JSON.stringify(request.settings).includes(vault.token)) throw new Error('the token went in clear settings');
  if (!/^khs1\.[0-9a-f]{16}\./.test(request.sealed || '')) throw new Error(`not sealed: ${request.sealed}`);
  if (posted.status() !== 201) throw new Error(`adding the configuration: ${posted.status()} ${await posted.text()}`);
  configId = (await posted.json()).id;

  // 4. Make it primary; the table must show it primary, and only it.
  const row = page.locator(`#kms-table tr[data-config-id="${configId}"]`);
  await row.waitFor();
  await page.getByRole('button', { name: `Make configuration ${configId} primary` }).click();
  await page.locator(`#kms-table tr[data-config-id="${configId}"][data-status="primary"]`).waitFor();
  const primaries = await page.locator('#kms-table tr[data-status="primary"]').count();
  if (primaries !== 1) throw new Error(`${primaries} primary configurations in the table`);
  if ((await row.locator('td.status').textContent()).trim() !== 'primary') throw new Error('status cell is not "primary"');
  await page.locator('#history-table tbody tr', { hasText: 'kms_config.primary' }).first().waitFor();
  await page.locator('#history-title').scrollIntoViewIfNeeded();
  saved.push(await shot(page, screenshots, 'broker-history.png'));

  // 5. The vendor page: paste the key once, list the tenants.
  const vendor = await context.newPage();
  await vendor.goto(`${broker}/vendor`);
  await vendor.getByLabel('Vendor API key').fill(vendorApiKey);
  await vendor.getByRole('button', { name: 'Use this key' }).click();
  await vendor.locator(`#tenants-table tr[data-tenant="${tenant}"]`).waitFor();
  saved.push(await shot(vendor, screenshots, 'broker-vendor.png'));

  const bad = realProblems(problems);
  if (bad.length) throw new Error(`the pages reported problems:\n${bad.join('\n')}`);
  console.log(JSON.stringify({ ok: true, config_id: configId, tenant, screenshots: saved }));
} catch (e) {
  console.error(`tenant-admin e2e failed: ${e.stack || e}`);
  if (problems.length) console.error(`browser console:\n${problems.join('\n')}`);
  try {
    for (const p of context.pages()) await shot(p, screenshots, `failure-${context.pages().indexOf(p)}.png`);
  } catch {
    // best effort
  }
  process.exitCode = 1;
} finally {
  await close();
}
