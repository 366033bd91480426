// What the e2e scripts share: the system's Chromium under playwright-core (never a downloaded
// browser), a fresh profile per run, RFC 6238 TOTP codes, and checks that the pages ran clean
// (no CSP violation, no uncaught error).

import { createHmac } from 'node:crypto';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** A required environment variable. */
export function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return value;
}

/**
 * Starts Chromium with a fresh profile. Returns {context, close, problems}: `problems` collects
 * console errors and page errors of every page of the context (CSP violations appear there).
 */
export async function launch() {
  const profile = await mkdtemp(join(tmpdir(), 'keyhold-e2e-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: process.env.HEADED !== '1',
    args: ARGS,
    viewport: { width: 1280, height: 900 },
    locale: 'en-US',
    timezoneId: 'UTC',
  });
  context.setDefaultTimeout(Number(process.env.E2E_TIMEOUT_MS || 15000));
  const problems = [];
  const watch = (page) => {
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  };
  if (process.env.E2E_STUB_SESSION === '1') {
    // Development only: see stub-session.mjs.
    const { stubSession } = await import('./stub-session.mjs');
    await stubSession(context, { tenant: need('TENANT'), vendorApiKey: need('VENDOR_API_KEY') });
  }
  context.pages().forEach(watch);
  context.on('page', watch);
  const close = async () => {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  };
  return { context, close, problems };
}

/** The page of a fresh context (launchPersistentContext opens one). */
export async function firstPage(context) {
  return context.pages()[0] || context.newPage();
}

/** Saves a full-page screenshot into `dir`; returns its path. */
export async function shot(page, dir, name) {
  await mkdir(dir, { recursive: true });
  const path = join(dir, name);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** Problems other than expected 401s of probes (GET /api/v1/session when signed out). */
export function realProblems(problems) {
  return problems.filter((p) => !/status of 401/.test(p));
}

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = text.toUpperCase().replace(/[\s=-]/g, '');
  const out = [];
  let bits = 0;
  let value = 0;
  for (const ch of clean) {
    const v = alphabet.indexOf(ch);
    if (v < 0) throw new Error(`not base32: ${JSON.stringify(ch)}`);
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

/** RFC 6238 TOTP (HMAC-SHA1, 30 s steps, 6 digits) of a base32 secret at `seconds`. */
export function totp(secretBase32, seconds = Date.now() / 1000, { step = 30, digits = 6 } = {}) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(seconds / step)));
  const mac = createHmac('sha1', base32Decode(secretBase32)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 10 ** digits;
  return String(code).padStart(digits, '0');
}

/** A TOTP code with at least `margin` seconds left in its step (waits for the next otherwise). */
export async function freshTotp(secretBase32, margin = 5) {
  const left = 30 - ((Date.now() / 1000) % 30);
  if (left < margin) await new Promise((r) => setTimeout(r, left * 1000 + 200));
  return totp(secretBase32);
}
