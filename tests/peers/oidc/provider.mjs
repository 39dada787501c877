// A real OpenID Connect provider (panva/oidc-provider) used as a test peer.
//
// Usage: node provider.mjs /path/to/config.json
//
// The config file is written by tests/support/oidc_provider.py; its schema is
// documented there and in parseConfig() below. The process prints exactly one
// line `READY <issuer>` on stdout once it accepts connections; everything else
// (diagnostics, errors) goes to stderr so the Python side can wait on stdout.
//
// Deliberate test-peer shortcuts (never do this in a real IdP):
//   * accounts and passwords come from the config file, in clear text;
//   * consent is automatic: every requested scope/claim/resource is granted;
//   * signing keys and cookie keys are generated fresh at every start, and all
//     state lives in oidc-provider's in-memory adapter.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import process from 'node:process';

import { Provider, interactionPolicy } from 'oidc-provider';

const { Check, base: basePolicy } = interactionPolicy;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

function parseConfig(path) {
  if (!path) {
    throw new Error('usage: node provider.mjs <config.json>');
  }
  const raw = JSON.parse(readFileSync(path, 'utf8'));
  const port = Number(raw.port);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`config.port must be a TCP port, got ${JSON.stringify(raw.port)}`);
  }

  const accounts = new Map(); // username -> normalised account
  const bySub = new Map(); // sub -> normalised account (oidc-provider looks accounts up by sub)
  for (const [username, acct] of Object.entries(raw.accounts ?? {})) {
    const { amr = [], acr, ...claims } = acct.claims ?? {};
    claims.sub ??= username;
    claims.preferred_username ??= username;
    const account = {
      username,
      password: String(acct.password ?? ''),
      claims,
      amr: [...amr],
      acr,
      stepUp: acct.step_up ? { acr: acct.step_up.acr, amr: [...(acct.step_up.amr ?? [])] } : undefined,
    };
    if (bySub.has(claims.sub)) {
      throw new Error(`two accounts share sub ${claims.sub}`);
    }
    accounts.set(username, account);
    bySub.set(claims.sub, account);
  }

  return {
    port,
    issuer: raw.issuer ?? `http://127.0.0.1:${port}`,
    clients: raw.clients ?? [],
    accounts,
    bySub,
    resourceServers: raw.resource_servers ?? {},
    extraAcrValues: raw.acr_values ?? [],
    extraClaims: raw.claims ?? {},
  };
}

const config = parseConfig(process.argv[2]);

// Fresh signing keys per run: tests must fetch the JWKS, exactly as a real RP
// would, instead of baking a key in. RS256 is the default ID token alg; the EC
// key lets clients registered with id_token_signed_response_alg=ES256 work.
function generateSigningKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rsa-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `ec-${randomBytes(6).toString('hex')}`, alg: 'ES256', use: 'sig' },
  ];
}

// Every acr an account can end up with must be advertised, otherwise
// oidc-provider drops the acr claim from ID tokens.
const acrValues = new Set(config.extraAcrValues);
for (const account of config.accounts.values()) {
  if (account.acr) acrValues.add(account.acr);
  if (account.stepUp?.acr) acrValues.add(account.stepUp.acr);
}

function requestedAcrValues(params) {
  return typeof params?.acr_values === 'string' ? params.acr_values.split(' ').filter(Boolean) : [];
}

// Decides the authentication context a successful password login yields. The
// step-up context is only granted when the RP explicitly asks for it, so the
// same account can be used for both the plain and the step-up scenario.
function authenticationContext(account, params) {
  const wanted = requestedAcrValues(params);
  if (account.stepUp && wanted.includes(account.stepUp.acr)) {
    const amr = [...account.amr];
    for (const method of account.stepUp.amr) {
      if (!amr.includes(method)) amr.push(method);
    }
    return { acr: account.stepUp.acr, amr };
  }
  return { acr: account.acr, amr: [...account.amr] };
}

// ---------------------------------------------------------------------------
// Interaction policy
// ---------------------------------------------------------------------------

const policy = basePolicy();
// Step-up: a session authenticated at a lower acr must re-authenticate when the
// RP now asks for an acr the session does not have. Only once per request
// (hence the `result.login` guard) - like a real IdP, if the account cannot
// reach that level the token simply carries the acr that was achieved.
policy.get('login').checks.add(new Check(
  'acr_values_step_up',
  'requested acr_values not satisfied by the current session',
  (ctx) => {
    const { oidc } = ctx;
    const wanted = requestedAcrValues(oidc.params);
    if (!wanted.length || !oidc.session.accountId || oidc.result?.login) {
      return Check.NO_NEED_TO_PROMPT;
    }
    return wanted.includes(oidc.session.acr) ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT;
  },
));

// ---------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------

function htmlEscape(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>${htmlEscape(title)}</title>
</head>
<body>
  <main>
${body}
  </main>
</body>
</html>
`;
}

// Auto-consent: grant whatever the authorization request asks for (OIDC
// scopes, claims-parameter claims, resource-server scopes). Running this on
// every request also covers an RP that later asks for more than the grant it
// already holds, so the consent prompt never fires.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const { Grant } = oidc.provider;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await Grant.find(grantId) : undefined;
  grant ??= new Grant({ accountId: oidc.session.accountId, clientId: oidc.client.clientId });

  const scopes = [...oidc.requestParamOIDCScopes];
  if (scopes.length) grant.addOIDCScope(scopes.join(' '));
  const claims = [...oidc.requestParamClaims];
  if (claims.length) grant.addOIDCClaims(claims);
  for (const [indicator, resourceServer] of Object.entries(oidc.resourceServers ?? {})) {
    const rsScopes = [...oidc.requestParamScopes].filter((s) => resourceServer.scopes.has(s));
    grant.addResourceScope(indicator, rsScopes.join(' '));
  }
  await grant.save();
  return grant;
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: { keys: generateSigningKeys() },
  cookies: { keys: [randomBytes(32).toString('hex')] },

  async findAccount(_ctx, sub) {
    const account = config.bySub.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      // acr/amr are not account claims: oidc-provider takes them from the
      // login result stored in the session (see interactionFinished below).
      async claims() {
        return { ...account.claims };
      },
    };
  },

  claims: {
    acr: null,
    amr: null,
    auth_time: null,
    iss: null,
    sid: null,
    // acr/amr/auth_time ride on the openid scope so they are in every ID
    // token, not only when the RP asks via acr_values/max_age/claims; the
    // broker's MFA policy reads amr/acr from it.
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'given_name', 'family_name', 'locale', 'zoneinfo'],
    groups: ['groups'],
    ...config.extraClaims,
  },
  acrValues: [...acrValues],
  // Put scope claims (email, groups, ...) into the ID token itself rather than
  // only at userinfo; brokers commonly read them from the ID token.
  conformIdTokenClaims: false,
  loadExistingGrant,

  pkce: { required: () => true }, // oidc-provider v9 only implements S256

  features: {
    devInteractions: { enabled: false },
    claimsParameter: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.type = 'html';
        ctx.body = page('Sign out', `    <h1>Sign out</h1>
    <p>Do you want to sign out of ${htmlEscape(ctx.host)}?</p>
    ${form}
    <button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
    <button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.type = 'html';
        ctx.body = page('Signed out', '    <h1>Signed out</h1>\n    <p>You have been signed out.</p>');
      },
    },
    resourceIndicators: {
      enabled: true,
      // Only issue audience-restricted (JWT) access tokens when the client
      // explicitly names a resource; plain code flows keep an opaque token
      // usable at userinfo.
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      async getResourceServerInfo(_ctx, resourceIndicator) {
        const configured = config.resourceServers[resourceIndicator] ?? {};
        return {
          audience: configured.audience ?? resourceIndicator,
          scope: configured.scope ?? '',
          accessTokenTTL: configured.access_token_ttl ?? 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: configured.alg ?? 'RS256' } },
        };
      },
    },
  },

  interactions: {
    policy,
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  // Explicit TTLs (short, test-friendly) also silence oidc-provider's
  // "you should change this" warnings on stderr.
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 3600,
    IdToken: 600,
    Interaction: 600,
    RefreshToken: 3600,
    Session: 3600,
  },

  async renderError(ctx, out) {
    ctx.type = 'html';
    const rows = Object.entries(out)
      .map(([k, v]) => `    <p><strong>${htmlEscape(k)}</strong>: <code>${htmlEscape(v)}</code></p>`)
      .join('\n');
    ctx.body = page('Error', `    <h1>Error</h1>\n${rows}`);
  },
});

// ---------------------------------------------------------------------------
// Interaction pages (login form; consent is handled by loadExistingGrant)
// ---------------------------------------------------------------------------

function loginPage(uid, details, { error, login } = {}) {
  const stepUp = requestedAcrValues(details.params).length
    ? `    <p>Requested authentication context: <code>${htmlEscape(details.params.acr_values)}</code></p>\n`
    : '';
  const errorHtml = error ? `    <p role="alert">${htmlEscape(error)}</p>\n` : '';
  return page('Sign in', `    <h1>Sign in</h1>
    <p>to continue to <code>${htmlEscape(details.params.client_id)}</code></p>
${stepUp}${errorHtml}    <form method="post" action="/interaction/${htmlEscape(uid)}/login" autocomplete="off">
      <p>
        <label for="login">Username</label>
        <input id="login" name="login" type="text" value="${htmlEscape(login ?? details.params.login_hint ?? '')}" required autofocus>
      </p>
      <p>
        <label for="password">Password</label>
        <input id="password" name="password" type="password" required>
      </p>
      <button type="submit">Sign in</button>
    </form>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const INTERACTION_PATH = /^\/interaction\/([^/]+)(\/login)?$/;

// Registered with provider.use() so it runs before oidc-provider's own router;
// oidc-provider has no route under /interaction, so we own that prefix.
provider.use(async (ctx, next) => {
  const match = INTERACTION_PATH.exec(ctx.path);
  if (!match) return next();
  const [, uid, isLogin] = match;
  ctx.set('cache-control', 'no-store');

  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== uid) {
    ctx.throw(400, 'interaction uid mismatch');
  }

  if (ctx.method === 'GET' && !isLogin) {
    if (details.prompt.name !== 'login') {
      // Consent is granted by loadExistingGrant, so anything else is
      // unexpected; finishing with an empty result lets oidc-provider re-run
      // its checks (and grant) instead of leaving the browser stranded.
      return provider.interactionFinished(ctx.req, ctx.res, {}, { mergeWithLastSubmission: true });
    }
    ctx.type = 'html';
    ctx.body = loginPage(uid, details);
    return undefined;
  }

  if (ctx.method === 'POST' && isLogin) {
    const form = await readForm(ctx.req);
    const login = form.get('login') ?? '';
    const account = config.accounts.get(login);
    if (!account || account.password !== (form.get('password') ?? '')) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginPage(uid, details, { error: 'Invalid username or password.', login });
      return undefined;
    }
    const { acr, amr } = authenticationContext(account, details.params);
    const result = {
      login: {
        accountId: account.claims.sub,
        ...(acr ? { acr } : {}),
        ...(amr.length ? { amr } : {}),
        remember: true,
      },
    };
    return provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  }

  ctx.throw(405, 'method not allowed');
  return undefined;
});

// Diagnostics go to stderr; the Python helper includes them in its failure
// messages, which makes a failing flow debuggable without re-running it.
for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error', 'end_session.error']) {
  provider.on(event, (...args) => {
    const err = args.find((a) => a instanceof Error);
    console.error(`[oidc-provider] ${event}: ${err?.stack ?? err ?? ''}${err?.error_description ? ` (${err.error_description})` : ''}`);
  });
}

// ---------------------------------------------------------------------------
// Listen
// ---------------------------------------------------------------------------

// oidc-provider validates static client metadata lazily, on first use; load
// every client now so a bad test config fails at start-up with a clear error
// instead of as an obscure invalid_client in the middle of a flow.
for (const { client_id: clientId } of config.clients) {
  try {
    if (!await provider.Client.find(String(clientId))) throw new Error('not found');
  } catch (err) {
    console.error(`[oidc-provider] invalid client ${clientId}: ${err.error_description ?? err.message}`);
    process.exit(1);
  }
}

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`READY ${config.issuer}\n`);
});

function shutdown(signal) {
  console.error(`[oidc-provider] ${signal} received, shutting down`);
  server.close(() => process.exit(0));
  // Keep-alive connections from test clients would otherwise hold close() open.
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// The Python helper holds our stdin open for its whole life; EOF means it died
// without calling stop(), and an orphaned provider would keep its port busy.
if (process.env.OIDC_PEER_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.resume();
}
