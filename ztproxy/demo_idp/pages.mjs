// The HTML pages of ztproxy's demo OpenID Provider (idp.mjs): sign-in, verification code,
// sign-out and errors. Every value that comes from a request, a client or a user is escaped.
// Field names (username, password, code) and the submit buttons are stable: browser tests and
// tests/support/user_agent.py fill them in.

export function escapeHtml(value) {
  return String(value ?? '').replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

export function page(title, body) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;padding:3rem 1rem}
main{max-width:22rem;margin:auto;background:#fff;padding:1.5rem 2rem;border-radius:8px;box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .2rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}
button{margin-top:1.2rem;width:100%;padding:.6rem;font-size:1rem;background:#2457d6;color:#fff;border:0;border-radius:4px}
.error{color:#b00020}.note{color:#555;font-size:.9rem}
</style></head>
<body><main>${body}</main></body></html>`;
}

export function loginPage(uid, client, { username = '', error } = {}) {
  return page('Sign in', `
<h1>Sign in</h1>
<p class="note">to continue to <strong>${escapeHtml(client?.clientName || client?.clientId)}</strong> (ztproxy demo IdP)</p>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label for="username">Username</label>
  <input id="username" name="username" value="${escapeHtml(username)}" autocomplete="username" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required>
  <button type="submit" name="submit" value="login">Sign in</button>
</form>`);
}

export function codePage(uid, username, { error } = {}) {
  return page('Verification code', `
<h1>Verification code</h1>
<p class="note">Signed in as <strong>${escapeHtml(username)}</strong>. This application needs a second
factor: enter the 6-digit code from your authenticator app.</p>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/otp" autocomplete="off">
  <label for="code">Code</label>
  <input id="code" name="code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code" required autofocus>
  <button type="submit" name="submit" value="verify">Verify</button>
</form>`);
}

export function messagePage(title, message) {
  return page(title, `<h1>${escapeHtml(title)}</h1><p>${escapeHtml(message)}</p>`);
}

// RP-initiated logout asks the user to confirm (the library's form carries an anti-CSRF token).
export async function logoutSource(ctx, form) {
  ctx.body = page('Sign out', `
<h1>Sign out</h1>
<p>Sign out of the ztproxy demo IdP and the applications you used with it?</p>
${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>`);
}

export async function postLogoutSuccessSource(ctx) {
  ctx.body = messagePage('Signed out', 'You are signed out of the ztproxy demo IdP.');
}

export async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Sign-in error', `<h1>Sign-in error</h1>
<p class="error">${escapeHtml(out.error)}: ${escapeHtml(out.error_description)}</p>
<p class="note">Go back to the application and try again.</p>`);
}
