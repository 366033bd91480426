// The vendor's journey in a real browser, against a running broker (needs no tenant admin
// sessions): paste the API key → search and page the tenant list → create a tenant → create an
// invitation (the link is shown) → open the tenant's page with the vendor key → add a Vault KMS
// configuration (token sealed in the browser) → make it primary → add a webhook SIEM destination
// (secret sealed) → disable and enable the tenant.
// Prints one JSON line: {"ok": true, "tenant": …, "config_id": …, "invite_link": …, "screenshots": […]}.
//
// Environment: BROKER_URL, VENDOR_API_KEY, SCREENSHOT_DIR; optional NEW_TENANT (default
// e2e-<random>), VAULT_ADDR, VAULT_KEY, VAULT_TOKEN (defaults: placeholders; the broker does not
// contact the KMS), CHROMIUM, HEADED=1, E2E_TIMEOUT_MS.

import { randomBytes } from 'node:crypto';
import { firstPage, launch, need, realProblems, shot } from './lib.mjs';

const broker = need('BROKER_URL').replace(/\/+$/, '');
const vendorApiKey = need('VENDOR_API_KEY');
const screenshots = need('SCREENSHOT_DIR');
const tenant = process.env.NEW_TENANT || `e2e-${randomBytes(4).toString('hex')}`;
const vault = {
  address: process.env.VAULT_ADDR || 'https://vault.example.test:8200',
  key: process.env.VAULT_KEY || tenant,
  token: process.env.VAULT_TOKEN || `hvs.${randomBytes(16).toString('hex')}`,
};

const { context, close, problems } = await launch();
const saved = [];
try {
  const page = await firstPage(context);
  await page.goto(`${broker}/vendor`);
  // A wrong key is refused and the form stays.
  await page.getByLabel('Vendor API key').fill('not-the-key-0000000000');
  await page.getByRole('button', { name: 'Use this key' }).click();
  await page.locator('#status.error', { hasText: 'unauthorized' }).waitFor();
  await page.getByLabel('Vendor API key').fill(vendorApiKey);
  await page.getByRole('button', { name: 'Use this key' }).click();
  await page.locator('#vendor-area').waitFor({ state: 'visible' });

  // Create a tenant, then find it with the search.
  await page.getByLabel('Tenant id', { exact: true }).first().fill(tenant);
  await page.getByLabel('Display name (optional)').fill(`E2E ${tenant}`);
  await page.getByRole('button', { name: 'Create tenant' }).click();
  await page.locator('#status', { hasText: `Created tenant ${tenant}` }).waitFor();
  await page.getByLabel('Id or name starts with').fill(tenant.slice(0, 6));
  await page.getByRole('button', { name: 'Search' }).click();
  await page.locator(`#tenants-table tr[data-tenant="${tenant}"]`).waitFor();

  // Invite an admin: the link is <origin>/#invite=<token>.
  await page.getByLabel("Administrator's e-mail address").fill(`admin@${tenant}.example`);
  await page.getByRole('button', { name: 'Create invitation' }).click();
  await page.locator('#invite-result').waitFor({ state: 'visible' });
  const inviteLink = await page.getByLabel('Invitation link').inputValue();
  if (!inviteLink.startsWith(`${broker}/#invite=`)) throw new Error(`invitation link: ${inviteLink}`);

  // Disable then enable the tenant (a confirmation dialog guards disabling).
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: `Disable tenant ${tenant}` }).click();
  await page.locator(`#tenants-table tr[data-tenant="${tenant}"] .badge.disabled`).waitFor();
  await page.getByRole('button', { name: `Enable tenant ${tenant}` }).click();
  await page.locator(`#tenants-table tr[data-tenant="${tenant}"] .badge.active`).waitFor();

  // The whole list, page by page when there are more than 25.
  await page.getByLabel('Id or name starts with').fill('');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.locator('#tenants-table tbody tr').first().waitFor();
  if (await page.getByRole('button', { name: 'Next page' }).isVisible()) {
    await page.getByRole('button', { name: 'Next page' }).click();
    await page.getByRole('button', { name: 'First page' }).waitFor();
    await page.getByRole('button', { name: 'First page' }).click();
  }
  saved.push(await shot(page, screenshots, 'broker-vendor.png'));

  // The tenant's page, with the vendor key.
  await page.getByRole('link', { name: tenant, exact: true }).click();
  await page.waitForURL(`${broker}/tenant#tenant=${tenant}`);
  await page.locator('#tenant-name', { hasText: `E2E ${tenant}` }).waitFor();
  // Created with its own vendor-managed key (the checkbox's default): the primary configuration.
  await page.locator('#kms-table tr[data-status="primary"]', { hasText: 'vendor key' }).waitFor();
  await page.locator('#kms-table tr[data-status="primary"] td.usage', { hasText: 'none seen' }).waitFor();

  await page.locator('#kms-type').selectOption('aws');
  await page.getByLabel('Secret access key').waitFor();
  await page.locator('#kms-type').selectOption('vault');
  await page.getByLabel('Server address').fill(vault.address);
  await page.getByLabel('Transit key name').fill(vault.key);
  await page.getByLabel('Vault token').fill(vault.token);
  await page.getByLabel('Status when added').selectOption('active');
  await page.locator('#kms-form').scrollIntoViewIfNeeded();
  saved.push(await shot(page, screenshots, 'broker-add-kms.png'));
  const [posted] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && r.url().endsWith('/kms-configs')),
    page.getByRole('button', { name: 'Add configuration' }).click(),
  ]);
  const request = JSON.parse(posted.request().postData());
  if (posted.request().postData().includes(vault.token)) throw new Error('the token was sent in clear');
  if (!/^khs1\.[0-9a-f]{16}\./.test(request.sealed || '')) throw new Error(`not sealed: ${request.sealed}`);
  if (posted.status() !== 201) throw new Error(`add: ${posted.status()} ${await posted.text()}`);
  const configId = (await posted.json()).id;
  if (await page.getByLabel('Vault token').inputValue()) throw new Error('the token stays in the form');

  await page.getByRole('button', { name: `Make configuration ${configId} primary` }).click();
  await page.locator(`#kms-table tr[data-config-id="${configId}"][data-status="primary"]`).waitFor();

  // A webhook SIEM destination with its secret sealed (purpose "siem").
  await page.getByLabel('Name', { exact: true }).fill('siem-hook');
  await page.locator('#siem-type').selectOption('webhook');
  await page.locator('#siem-s-url').fill('https://siem.example.test/hook');
  await page.getByLabel('Signing secret').fill('whsec-e2e');
  const [siemPosted] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && r.url().endsWith('/siem-configs')),
    page.getByRole('button', { name: 'Add destination' }).click(),
  ]);
  if (siemPosted.status() !== 201) throw new Error(`siem: ${siemPosted.status()} ${await siemPosted.text()}`);
  if (siemPosted.request().postData().includes('whsec-e2e')) throw new Error('the SIEM secret was sent in clear');
  await page.locator('#siem-table tr[data-siem-name="siem-hook"]').waitFor();

  await page.locator('#history-table tbody tr', { hasText: 'siem_config.add' }).waitFor();
  saved.push(await shot(page, screenshots, 'broker-tenant.png'));

  // The sign-in page renders (sessions may not exist on this broker: only the form is checked).
  const signIn = await context.newPage();
  await signIn.goto(`${broker}/`);
  await signIn.getByLabel('Authenticator code').waitFor();
  saved.push(await shot(signIn, screenshots, 'broker-sign-in.png'));
  await signIn.goto(`${broker}/#invite=example-token`);
  await signIn.getByLabel('Repeat the password').waitFor();

  const bad = realProblems(problems).filter((p) => !/status of 404/.test(p));
  if (bad.length) throw new Error(`the pages reported problems:\n${bad.join('\n')}`);
  console.log(JSON.stringify({ ok: true, tenant, config_id: configId, invite_link: inviteLink, screenshots: saved }));
} catch (e) {
  console.error(`vendor e2e failed: ${e.stack || e}`);
  if (problems.length) console.error(`browser console:\n${problems.join('\n')}`);
  try {
    for (const [i, p] of context.pages().entries()) await shot(p, screenshots, `failure-${i}.png`);
  } catch {
    // best effort
  }
  process.exitCode = 1;
} finally {
  await close();
}
