// ztproxy's demo OpenID Provider.
//
// The OpenID Provider is the `oidc-provider` library (https://github.com/panva/node-oidc-provider,
// an OpenID-certified implementation nobody on the ztproxy team wrote). This file only configures
// it and serves the pages a user sees while signing in (password, then a TOTP code when the
// client asks for MFA). Everything OAuth/OIDC - authorization and token endpoints, PKCE, ID
// tokens, refresh, userinfo, discovery, JWKS, RP-initiated and back-channel logout - is the
// library's code.
//
// Usage: node idp.mjs CONFIG.json   (written by ztproxy/demo_idp/__init__.py)
//
//   {"host": "127.0.0.1", "port": 9000, "issuer": "http://127.0.0.1:9000",
//    "node_modules": "/path/to/node_modules", "users_file": "users.json", "keys_file": "keys.json",
//    "control_token": "<random>", "exit_with_parent": true, "pwd_acr": "urn:ztproxy:pwd", "mfa_acr": "urn:ztproxy:mfa",
//    "ttl": {"AccessToken": 600, "IdToken": 600, "RefreshToken": 86400, "Session": 86400,
//            "Grant": 86400, "Interaction": 600},
//    "clients": [{"client_id": "...", "client_secret": "...", "redirect_uris": ["..."],
//                 "post_logout_redirect_uris": [], "backchannel_logout_uri": null}],
//    "services": [{"client_id": "...", "client_secret": "...", "scopes": ["orders.read"]}],
//    "resources": [{"indicator": "https://api.corp.example", "scopes": ["orders.read"],
//                   "token_format": "jwt", "token_ttl": 300}]}
//
// Choices a relying party can count on:
// - code flow only, PKCE S256 required, client_secret_basic or client_secret_post;
// - a refresh token with every authorization_code grant (no offline_access needed); refresh tokens
//   are NOT rotated (the same one is returned) and stop working when the user's OP session ends
//   (logout, Session TTL) or their grant expires (Grant TTL);
// - users are read from users_file on every lookup, so changes (groups, disabled) show at the next
//   refresh or userinfo call; a disabled or deleted user makes refresh fail with invalid_grant;
// - acr/amr: password only -> pwd_acr, ["pwd"]; password and TOTP -> mfa_acr, ["pwd", "otp"];
//   auth_time is always in the ID token; ID tokens carry sid (back-channel logout);
// - MFA is asked when the request names mfa_acr (acr_values, or an essential acr in the claims
//   parameter) and the user has a TOTP secret; a user without one signs in with the password only
//   and gets pwd_acr, so the relying party sees MFA is missing. If the user already has an OP
//   session (password) and only MFA is missing, only the TOTP code is asked (step-up); prompt=login
//   and an exceeded max_age ask for the password again;
// - no consent page: every client is first-party and gets the scopes and claims it asks for;
// - services (machine clients) get access tokens with the client credentials grant, for one
//   resource each time (RFC 8707 `resource`, required): a JWT (RFC 9068, typ at+jwt, ES256) or an
//   opaque token, as the resource says; any confidential client may introspect tokens (RFC 7662);
//   a DPoP proof with the request binds the token to its key (RFC 9449, cnf.jkt), and a service
//   marked certificate_bound gets tokens bound to the PEM certificate in an x-client-cert header
//   (RFC 8705, cnf.x5t#S256);
// - POST /-/control/logout {"username": ...} with "Authorization: Bearer <control_token>" ends the
//   user's OP sessions and sends back-channel logout tokens to every client they signed in to.
//
// State (sessions, codes, tokens) lives in memory (the library's development adapter); only the
// signing keys persist in keys_file, so a restart keeps issued ID tokens verifiable.

import { generateKeyPairSync, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, writeFileSync, renameSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import {
  codePage, loginPage, logoutSource, messagePage, postLogoutSuccessSource, renderError,
} from './pages.mjs';

const config = loadConfig(process.argv[2]);

// The npm packages live in the repository's node_modules, which the launcher finds and passes,
// so this file also runs from an installed (non-editable) ztproxy package.
const requireFromModules = createRequire(join(config.node_modules, 'package.json'));
const importFromModules = (name) => import(pathToFileURL(requireFromModules.resolve(name)).href);
const { default: Provider, interactionPolicy, errors } = await importFromModules('oidc-provider');
const { default: MemoryAdapter } = await import(
  pathToFileURL(join(config.node_modules, 'oidc-provider/lib/adapters/memory_adapter.js')).href);
const { authenticator } = requireFromModules('otplib');

// RFC 6238 5.2: accept the previous and next 30 s step too, for clock drift and typing time.
const totp = authenticator.clone({ window: 1 });
const MAX_WRONG_CODES = 5; // per sign-in attempt, then the attempt ends with access_denied
const MAX_BODY_BYTES = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Configuration, users and keys

function loadConfig(path) {
  if (!path) fail('usage: node idp.mjs CONFIG.json');
  let parsed;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot read config ${path}: ${err.message}`);
  }
  const required = ['host', 'port', 'issuer', 'node_modules', 'users_file', 'keys_file',
    'control_token', 'pwd_acr', 'mfa_acr', 'ttl', 'clients'];
  const missing = required.filter((key) => parsed[key] === undefined);
  if (missing.length) fail(`config ${path} is missing: ${missing.join(', ')}`);
  if (typeof parsed.control_token !== 'string' || parsed.control_token.length < 16) {
    fail('control_token must be a random string of at least 16 characters');
  }
  return parsed;
}

function fail(message) {
  console.error(`demo_idp: ${message}`);
  process.exit(2);
}

function log(event, fields = {}) {
  console.log(JSON.stringify({ event, ...fields }));
}

// Read on every call: tests and operators edit the file while the OP runs. The launcher replaces
// it atomically (rename), so a reader never sees half a file.
function readUsers() {
  return JSON.parse(readFileSync(config.users_file, 'utf8'));
}

// An enabled user, or undefined.
function findUser(username) {
  const users = readUsers();
  if (typeof username !== 'string' || !Object.hasOwn(users, username)) return undefined;
  const user = users[username];
  return user.disabled ? undefined : user;
}

function passwordMatches(user, password) {
  // Compare digests so the comparison takes the same time whatever the lengths.
  const digest = (value) => createHash('sha256').update(String(value)).digest();
  return timingSafeEqual(digest(user.password), digest(password));
}

// Extra per-user claims (users.json "claims") are released with the profile scope; their names
// are collected at start because the library needs the list of supported claims up front. They
// can never set what the protocol or the account itself decides.
const RESERVED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'nonce', 'azp', 'acr', 'amr',
  'auth_time', 'sid', 'events', 'at_hash', 'c_hash', 's_hash', 'email', 'email_verified', 'name', 'groups']);

function extraClaims(user) {
  return Object.fromEntries(Object.entries(user.claims || {}).filter(([name]) => !RESERVED_CLAIMS.has(name)));
}

function extraClaimNames() {
  let users;
  try {
    users = readUsers();
  } catch (err) {
    fail(`cannot read users file ${config.users_file}: ${err.message}`);
  }
  return [...new Set(Object.values(users).flatMap((user) => Object.keys(extraClaims(user))))];
}

// Keys persist in keys_file so a restart keeps the same kid/keys: relying parties that cached
// the JWKS keep verifying. RS256 first (the clients' ID token algorithm), ES256 also offered.
function loadOrCreateKeys() {
  if (existsSync(config.keys_file)) {
    const jwks = JSON.parse(readFileSync(config.keys_file, 'utf8'));
    if (!jwks.keys?.some((key) => key.kty === 'RSA')) fail(`${config.keys_file} has no RSA key`);
    return jwks;
  }
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const jwks = { keys: [{ ...rsa, alg: 'RS256', use: 'sig' }, { ...ec, alg: 'ES256', use: 'sig' }] };
  const partial = `${config.keys_file}.${process.pid}.tmp`;
  writeFileSync(partial, JSON.stringify(jwks), { mode: 0o600 });
  renameSync(partial, config.keys_file);
  return jwks;
}

// ---------------------------------------------------------------------------------------------
// Accounts: what the library asks us about a user

async function findAccount(ctx, sub) {
  const user = findUser(sub);
  // A disabled or deleted user has no account: the library then refuses refresh_token grants
  // (invalid_grant) and userinfo calls.
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      return {
        ...extraClaims(user),
        sub,
        email: user.email,
        email_verified: user.email_verified ?? true,
        name: user.name,
        groups: user.groups || [],
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// When to ask for MFA

// The acr values the request asks for: acr_values (OIDC Core 3.1.2.1) or an essential acr claim
// in the claims parameter (OIDC Core 5.5.1.1).
function requestedAcrs(params) {
  const acrs = new Set((params.acr_values || '').split(' ').filter(Boolean));
  if (params.claims) {
    let acr;
    try {
      acr = JSON.parse(params.claims)?.id_token?.acr;
    } catch {
      acr = undefined; // the library rejects malformed claims before this matters
    }
    if (acr?.essential) {
      if (typeof acr.value === 'string') acrs.add(acr.value);
      if (Array.isArray(acr.values)) acr.values.forEach((value) => acrs.add(value));
    }
  }
  return acrs;
}

function mfaNeeded(params, user) {
  return requestedAcrs(params).has(config.mfa_acr) && Boolean(user?.totp_secret);
}

// The library's login prompt, with its two "essential acr" checks replaced by ours: theirs would
// send a user who has no second factor back to the login page forever, ours lets them through
// with pwd_acr so the relying party can see MFA is missing.
function buildPolicy() {
  const { Check, base } = interactionPolicy;
  const policy = base();
  const login = policy.get('login');
  login.checks.remove('essential_acrs');
  login.checks.remove('essential_acr');
  // The session's user was disabled or deleted since: sign in again (the library would otherwise
  // go on without an account).
  login.checks.add(new Check('account_unavailable', 'the signed-in account is no longer available', (ctx) => (
    ctx.oidc.session.accountId && !ctx.oidc.account ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT)));
  login.checks.add(new Check('mfa_required', 'multi-factor authentication is required', (ctx) => {
    const { session, params } = ctx.oidc;
    if (!session.accountId || session.acr === config.mfa_acr) return Check.NO_NEED_TO_PROMPT;
    return mfaNeeded(params, findUser(session.accountId)) ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT;
  }));
  // First-party clients only: no consent page (see loadExistingGrant).
  policy.remove('consent');
  return policy;
}

// Every client is first-party: grant whatever OIDC scopes and claims the request asks for,
// reusing the session's grant for this client while it lasts.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const accountId = oidc.session.accountId;
  const clientId = oidc.client.clientId;
  const existingId = oidc.session.grantIdFor(clientId);
  let grant = existingId ? await oidc.provider.Grant.find(existingId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new oidc.provider.Grant({ accountId, clientId });
  }
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

// ---------------------------------------------------------------------------------------------
// Storage: the library's in-memory adapter, plus an index of sessions by user so the control
// endpoint can end them.

const sessionIdsByAccount = new Map();
const accountBySessionId = new Map();

class DemoAdapter extends MemoryAdapter {
  async upsert(id, payload, expiresIn) {
    await super.upsert(id, payload, expiresIn);
    if (this.model === 'Session' && payload.accountId) {
      this.#forget(id);
      accountBySessionId.set(id, payload.accountId);
      if (!sessionIdsByAccount.has(payload.accountId)) sessionIdsByAccount.set(payload.accountId, new Set());
      sessionIdsByAccount.get(payload.accountId).add(id);
    }
  }

  async destroy(id) {
    await super.destroy(id);
    if (this.model === 'Session') this.#forget(id);
  }

  #forget(id) {
    const accountId = accountBySessionId.get(id);
    if (accountId === undefined) return;
    accountBySessionId.delete(id);
    sessionIdsByAccount.get(accountId)?.delete(id);
  }
}

// ---------------------------------------------------------------------------------------------
// The provider

const services = config.services || [];
const resources = new Map((config.resources || []).map((resource) => [resource.indicator, resource]));

const provider = new Provider(config.issuer, {
  adapter: DemoAdapter,
  clients: [...config.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: client.redirect_uris,
    post_logout_redirect_uris: client.post_logout_redirect_uris || [],
    ...(client.backchannel_logout_uri ? {
      backchannel_logout_uri: client.backchannel_logout_uri,
      // OIDC Back-Channel Logout 2.1: ID tokens and logout tokens then carry sid.
      backchannel_logout_session_required: true,
    } : {}),
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    // client_secret_basic unless the client says otherwise; client_secret_post is accepted too.
    token_endpoint_auth_method: client.token_endpoint_auth_method || 'client_secret_basic',
    ...(client.jwks ? { jwks: client.jwks } : {}), // private_key_jwt: the client's public keys
    require_auth_time: true, // auth_time in every ID token, not only when max_age is sent
  })), ...services.map((service) => ({
    client_id: service.client_id,
    client_secret: service.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: service.scopes.join(' '),
    token_endpoint_auth_method: 'client_secret_basic',
    // RFC 8705 3: tokens bound to the certificate the service presented at the token endpoint.
    ...(service.certificate_bound ? { tls_client_certificate_bound_access_tokens: true } : {}),
  }))],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
  responseTypes: ['code'],
  pkce: { methods: ['S256'], required: () => true }, // RFC 9700 2.1.1: PKCE for every client
  acrValues: [config.pwd_acr, config.mfa_acr],
  scopes: ['openid', 'email', 'profile', 'groups', ...new Set([...resources.values()].flatMap((r) => r.scopes))],
  claims: {
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', ...extraClaimNames()],
    groups: ['groups'],
    sid: null,
    iss: null,
  },
  // Scope claims go into the ID token as well as userinfo, so a relying party has them at login.
  conformIdTokenClaims: false,
  findAccount,
  loadExistingGrant,
  interactions: {
    policy: buildPolicy(),
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Confidential clients authenticate every refresh (RFC 9700 4.14.2), so no rotation: replicas
  // of a relying party refreshing at the same time cannot trip reuse detection.
  rotateRefreshToken: false,
  features: {
    devInteractions: { enabled: false }, // our own pages: pages.mjs and the interactions below
    claimsParameter: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    // RFC 9449: a service that sends a DPoP proof gets a token bound to its key (cnf.jkt).
    dPoP: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      // The demo IdP speaks plain HTTP on loopback: the client certificate comes in a header, as
      // from a TLS terminator in front (URL-encoded PEM). Only tokens are bound with it.
      getCertificate(ctx) {
        const value = ctx.get('x-client-cert');
        return value ? decodeURIComponent(value) : undefined;
      },
      certificateAuthorized: () => true,
      certificateSubjectMatches: () => true,
    },
    resourceIndicators: {
      enabled: true,
      // A service names its API; a user's sign-in (openid, no resource) gets userinfo tokens as before.
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo(ctx, indicator) {
        const resource = resources.get(indicator);
        if (!resource) throw new errors.InvalidTarget();
        return {
          scope: resource.scopes.join(' '),
          audience: resource.indicator,
          accessTokenTTL: resource.token_ttl,
          accessTokenFormat: resource.token_format,
          ...(resource.token_format === 'jwt' ? { jwt: { sign: { alg: 'ES256' } } } : {}),
        };
      },
    },
  },
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
  jwks: loadOrCreateKeys(),
  cookies: {
    keys: [randomBytes(32).toString('base64url')],
    // Plain http on loopback: browsers drop SameSite=None cookies that are not Secure, and Lax is
    // all the flows here need (top-level redirects and same-origin form posts).
    long: { httpOnly: true, sameSite: 'lax', signed: true },
    short: { httpOnly: true, sameSite: 'lax', signed: true },
  },
  ttl: { ...config.ttl, AuthorizationCode: 60 },
  renderError,
});

provider.on('server_error', (ctx, err) => log('server_error', { path: ctx?.path, error: String(err?.stack || err) }));
provider.on('backchannel.error', (ctx, err, client, accountId, sid) => log('backchannel_logout_failed',
  { client_id: client.clientId, username: accountId, sid, error: err.message }));
provider.on('backchannel.success', (ctx, client, accountId, sid) => log('backchannel_logout_sent',
  { client_id: client.clientId, username: accountId, sid }));

// ---------------------------------------------------------------------------------------------
// Interactions: the sign-in pages the library sends users to (interactions.url above)

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    'x-frame-options': 'DENY',
    'referrer-policy': 'no-referrer',
  });
  res.end(html);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new errors.InvalidRequest('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readForm(req) {
  return new URLSearchParams(await readBody(req));
}

// Progress of this sign-in attempt towards the TOTP step (whose code to check, how many wrong
// codes so far), kept on the library's Interaction record, which the interaction cookie binds
// to this browser.
function pendingTotp(interaction) {
  const pending = interaction.result?.ztproxyTotp;
  if (pending) return pending;
  // Step-up: the user has a live OP session from a password login and nothing else (prompt=login,
  // max_age, another user's id_token_hint) asks for the password again, so only the code is asked.
  const { prompt, session } = interaction;
  if (session?.accountId && prompt.name === 'login' && prompt.reasons.every((reason) => reason === 'mfa_required')) {
    return { accountId: session.accountId, wrongCodes: 0 };
  }
  return undefined;
}

async function savePendingTotp(interaction, pending) {
  interaction.result = { ...interaction.result, ztproxyTotp: pending };
  await interaction.persist();
}

// auth_time becomes now: the latest authentication (for a step-up, the TOTP check).
async function finishLogin(req, res, accountId, { acr, amr }) {
  log('login_succeeded', { username: accountId, acr, amr });
  const ts = Math.floor(Date.now() / 1000);
  await provider.interactionFinished(req, res, { login: { accountId, acr, amr, ts, remember: true } });
}

async function showInteraction(req, res, interaction) {
  const client = await provider.Client.find(interaction.params.client_id);
  const pending = pendingTotp(interaction);
  if (pending) return send(res, 200, codePage(interaction.uid, pending.accountId));
  return send(res, 200, loginPage(interaction.uid, client, { username: interaction.params.login_hint }));
}

async function submitPassword(req, res, interaction) {
  const form = await readForm(req);
  const username = form.get('username') || '';
  const user = findUser(username);
  if (!user || !passwordMatches(user, form.get('password') || '')) {
    log('login_failed', { username, reason: 'bad_credentials' });
    const client = await provider.Client.find(interaction.params.client_id);
    return send(res, 200, loginPage(interaction.uid, client, { username, error: 'Wrong username or password.' }));
  }
  if (mfaNeeded(interaction.params, user)) {
    await savePendingTotp(interaction, { accountId: username, wrongCodes: 0 });
    return send(res, 200, codePage(interaction.uid, username));
  }
  return finishLogin(req, res, username, { acr: config.pwd_acr, amr: ['pwd'] });
}

async function submitCode(req, res, interaction) {
  const form = await readForm(req);
  const pending = pendingTotp(interaction);
  if (!pending) return send(res, 400, messagePage('Sign-in error', 'Enter your password first.'));
  const user = findUser(pending.accountId);
  if (!user?.totp_secret) {
    return send(res, 400, messagePage('Sign-in error', 'This account cannot use a verification code.'));
  }
  const code = (form.get('code') || '').trim();
  if (/^[0-9]{6}$/.test(code) && totp.check(code, user.totp_secret)) {
    return finishLogin(req, res, pending.accountId, { acr: config.mfa_acr, amr: ['pwd', 'otp'] });
  }
  const wrongCodes = pending.wrongCodes + 1;
  log('login_failed', { username: pending.accountId, reason: 'bad_totp', wrong_codes: wrongCodes });
  if (wrongCodes >= MAX_WRONG_CODES) {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'too many wrong verification codes',
    }, { mergeWithLastSubmission: false });
  }
  await savePendingTotp(interaction, { ...pending, wrongCodes });
  return send(res, 200, codePage(interaction.uid, pending.accountId, { error: 'Wrong code, try again.' }));
}

async function handleInteraction(req, res, url) {
  const [, , uid, action = ''] = url.pathname.split('/');
  let interaction;
  try {
    interaction = await provider.interactionDetails(req, res);
  } catch (err) {
    if (err instanceof errors.SessionNotFound) {
      return send(res, 400, messagePage('Sign-in expired',
        'This sign-in page has expired or was already used. Go back to the application and sign in again.'));
    }
    throw err;
  }
  if (interaction.uid !== uid) return send(res, 400, messagePage('Sign-in error', 'Unknown sign-in attempt.'));
  if (req.method === 'GET' && action === '') return showInteraction(req, res, interaction);
  if (req.method === 'POST' && action === 'login') return submitPassword(req, res, interaction);
  if (req.method === 'POST' && action === 'otp') return submitCode(req, res, interaction);
  return send(res, 404, messagePage('Not found', 'No such page.'));
}

// ---------------------------------------------------------------------------------------------
// Control endpoint for tests and the demo: end a user's OP sessions with the library's own
// back-channel logout (the same calls its end_session endpoint makes).

async function endSessionsOf(accountId) {
  const deliveries = [];
  for (const sessionId of [...(sessionIdsByAccount.get(accountId) || [])]) {
    const session = await provider.Session.find(sessionId);
    if (!session || session.accountId !== accountId) continue;
    for (const [clientId, { sid, grantId }] of Object.entries(session.authorizations || {})) {
      const client = await provider.Client.find(clientId);
      if (client?.backchannelLogoutUri) {
        try {
          await client.backchannelLogout(accountId, sid);
          log('backchannel_logout_sent', { client_id: clientId, username: accountId, sid });
          deliveries.push({ client_id: clientId, sid, delivered: true });
        } catch (err) {
          log('backchannel_logout_failed', { client_id: clientId, username: accountId, sid, error: err.message });
          deliveries.push({ client_id: clientId, sid, delivered: false, error: err.message });
        }
      }
      if (grantId) {
        // What end_session does for grants without offline_access: drop the grant's tokens.
        await Promise.all([provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode]
          .map((model) => model.revokeByGrantId(grantId)));
        await (await provider.Grant.find(grantId))?.destroy();
      }
    }
    await session.destroy();
  }
  return deliveries;
}

function authorized(req) {
  const expected = Buffer.from(`Bearer ${config.control_token}`);
  const given = Buffer.from(req.headers.authorization || '');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

async function handleControl(req, res, url) {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  if (!authorized(req)) return reply(401, { error: 'unauthorized' });
  if (req.method !== 'POST' || url.pathname !== '/-/control/logout') return reply(404, { error: 'not_found' });
  let username;
  try {
    ({ username } = JSON.parse(await readBody(req)));
  } catch {
    return reply(400, { error: 'invalid_request', error_description: 'expected JSON {"username": ...}' });
  }
  if (typeof username !== 'string' || !username) {
    return reply(400, { error: 'invalid_request', error_description: 'username must be a string' });
  }
  const backchannel = await endSessionsOf(username);
  log('sessions_ended', { username, backchannel });
  return reply(200, { username, backchannel });
}

// ---------------------------------------------------------------------------------------------
// HTTP server: our two small path prefixes, everything else is the library

const providerCallback = provider.callback();

const server = createServer((req, res) => {
  const url = new URL(req.url, config.issuer);
  let handler;
  if (url.pathname.startsWith('/interaction/')) handler = handleInteraction;
  else if (url.pathname.startsWith('/-/control/')) handler = handleControl;
  else return providerCallback(req, res);
  return handler(req, res, url).catch((err) => {
    log('server_error', { path: url.pathname, error: String(err?.stack || err) });
    if (!res.headersSent) send(res, err.statusCode || 500, messagePage('Error', err.expose ? err.message : 'Something went wrong.'));
    else res.end();
  });
});

server.on('error', (err) => {
  console.error(`demo_idp: cannot listen on ${config.host}:${config.port}: ${err.message}`);
  process.exit(1);
});

server.listen(config.port, config.host, () => log('idp_ready', { issuer: config.issuer }));

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (config.exit_with_parent) {
  // The launcher keeps our stdin open and never writes to it: end of input means it is gone.
  process.stdin.on('end', shutdown);
  process.stdin.resume();
}
