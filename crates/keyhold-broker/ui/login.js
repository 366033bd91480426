// The sign-in page (email, password, TOTP code) and, when the URL holds #invite=<token>, the
// acceptance of a tenant admin invitation, which shows the TOTP secret once.

import { api, announce, busy, showError } from './api.js';

const $ = (id) => document.getElementById(id);

function inviteToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  return hash.get('invite');
}

async function acceptInvitation(token, form) {
  const password = form.elements.password.value;
  if (password.length < 12) {
    showError({ code: 'invalid_field', message: 'The password must be at least 12 characters.' });
    form.elements.password.focus();
    return;
  }
  if (password !== form.elements.password2.value) {
    showError({ code: 'invalid_field', message: 'The two passwords differ.' });
    form.elements.password2.focus();
    return;
  }
  const done = await busy(form, () => api('POST', '/api/v1/invitations/accept', { token, password }));
  if (!done) return;
  // The token is used up: take it out of the address bar and history.
  history.replaceState(null, '', location.pathname);
  form.hidden = true;
  $('invite-tenant').textContent = done.tenant;
  $('invite-email').textContent = done.email;
  $('totp-secret').textContent = done.totp_secret;
  $('otpauth-url').textContent = done.otpauth_url;
  $('invite-done').hidden = false;
  $('email').value = done.email;
  $('password').value = password;
  announce('Account created. Add the TOTP secret to your authenticator app, then sign in.');
  $('invite-done').focus();
}

async function signIn(form) {
  const body = {
    email: form.elements.email.value.trim(),
    password: form.elements.password.value,
    totp: form.elements.totp.value.trim(),
  };
  if (!body.email || !body.password || !/^[0-9]{6}$/.test(body.totp)) {
    showError({
      code: 'invalid_field',
      message: 'Enter your e-mail address, password and the 6-digit code.',
    });
    return;
  }
  const session = await busy(form, () => api('POST', '/api/v1/session', body));
  if (!session) return;
  announce(`Signed in as ${session.email}.`);
  location.assign('/tenant');
}

async function checkSession() {
  try {
    const session = await api('GET', '/api/v1/session');
    if (session && session.email) {
      $('already-email').textContent = session.email;
      $('already').hidden = false;
    }
  } catch {
    // Not signed in (401), or sessions are not available: the form is what to show.
  }
}

// The token of the invitation being accepted (kept after it leaves the address bar).
let token = null;

function route() {
  const fromHash = inviteToken();
  if (fromHash) {
    token = fromHash;
    $('invite').hidden = false;
    $('invite-form').hidden = false;
    $('invite-done').hidden = true;
    $('invite-password').focus();
  } else if (!token) {
    $('invite').hidden = true;
  }
}

function start() {
  route();
  if (!token) checkSession();
  window.addEventListener('hashchange', route);
  const inviteForm = $('invite-form');
  inviteForm.addEventListener('submit', (event) => {
    event.preventDefault();
    acceptInvitation(token, inviteForm);
  });
  const form = $('signin-form');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    signIn(form);
  });
}

start();
