// DEVELOPMENT ONLY (E2E_STUB_SESSION=1): stands in for the broker's tenant-admin routes inside
// the browser, for brokers built before they existed. It answers POST /api/v1/invitations/accept
// and GET/POST/DELETE /api/v1/session as docs/broker.md describes them, checks that every
// mutating API request carries the session's X-CSRF-Token, and forwards the rest to the real
// broker with the vendor key added. Nothing of this runs against a broker with sessions.

import { randomBytes } from 'node:crypto';
import { totp } from './lib.mjs';

export async function stubSession(context, { tenant, vendorApiKey, email = 'admin@example.test' }) {
  const secret = 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP';
  const csrf = randomBytes(16).toString('hex');
  let signedIn = false;
  const session = () => ({ csrf_token: csrf, tenant, email, expires_at: '2099-01-01T00:00:00Z' });
  const json = (route, status, body) =>
    route.fulfill({ status, contentType: 'application/json', body: JSON.stringify(body) });

  await context.route('**/api/v1/**', async (route) => {
    const request = route.request();
    const path = new URL(request.url()).pathname;
    const method = request.method();
    if (path === '/api/v1/invitations/accept' && method === 'POST') {
      const body = JSON.parse(request.postData() || '{}');
      if (!body.token || !body.password) return json(route, 400, { code: 'invalid_field', message: 'token, password' });
      return json(route, 200, {
        admin_id: 1, tenant, email, totp_secret: secret,
        otpauth_url: `otpauth://totp/Keyhold:${email}?secret=${secret}&issuer=Keyhold`,
      });
    }
    if (path === '/api/v1/session') {
      if (method === 'POST') {
        const body = JSON.parse(request.postData() || '{}');
        const now = Date.now() / 1000;
        const ok = [now - 30, now, now + 30].some((t) => totp(secret, t) === body.totp);
        if (!ok) return json(route, 401, { code: 'unauthorized', message: 'wrong code' });
        signedIn = true;
        return json(route, 200, session());
      }
      if (method === 'DELETE') {
        signedIn = false;
        return route.fulfill({ status: 204 });
      }
      return signedIn ? json(route, 200, session()) : json(route, 401, { code: 'unauthorized', message: 'not signed in' });
    }
    const headers = { ...request.headers() };
    if (!headers.authorization) {
      if (!signedIn && path !== '/api/v1/fleet-key') return json(route, 401, { code: 'unauthorized', message: 'not signed in' });
      if (!['GET', 'HEAD'].includes(method) && headers['x-csrf-token'] !== csrf) {
        return json(route, 403, { code: 'csrf_token_missing', message: 'X-CSRF-Token is missing or wrong' });
      }
      headers.authorization = `Bearer ${vendorApiKey}`;
    }
    return route.continue({ headers });
  });
}
