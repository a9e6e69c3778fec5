// MAIF's local OpenID Connect issuer for tests, built on the npm package `oidc-provider` (v9).
// Issues RFC 9068 JWT access tokens (typ at+jwt) through the client_credentials grant and serves
// discovery and JWKS on 127.0.0.1 only. Started and stopped by scripts/servers/oidc.sh.
//
// usage: node issuer.mjs PORT
// env:   ISSUER_KEYS_FILE  a JSON file {"keys": [private JWKs with kid and alg]}. The test suite writes it
//                          so it can also mint tokens with hostile claims under the issuer's real key;
//                          without it, fresh keys are generated at every start.
//        ISSUER_ALG        RS256 | PS256 | ES256 (default RS256): the access-token signing algorithm
//        TOKEN_TTL         access-token lifetime in seconds (default 300)
// Prints one JSON line {"ready":true,...} on stdout once listening.
// GET /_maif/stats returns {"jwks_requests": N}: how often the JWKS was fetched, so tests can prove that
// unknown-kid floods do not turn into floods of JWKS requests.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 4400);
const alg = process.env.ISSUER_ALG || 'RS256';
const ttl = Number(process.env.TOKEN_TTL || 300);
const issuer = `http://127.0.0.1:${port}`;

function generatedKey(type, options, kid, keyAlg) {
  const key = generateKeyPairSync(type, options).privateKey.export({ format: 'jwk' });
  return { ...key, kid, use: 'sig', alg: keyAlg };
}

function signingKeys() {
  if (process.env.ISSUER_KEYS_FILE) return JSON.parse(readFileSync(process.env.ISSUER_KEYS_FILE, 'utf8')).keys;
  return [
    generatedKey('rsa', { modulusLength: 2048 }, 'rsa-1', 'RS256'),
    generatedKey('rsa', { modulusLength: 2048 }, 'rsa-pss-1', 'PS256'),
    generatedKey('ec', { namedCurve: 'P-256' }, 'ec-1', 'ES256'),
  ];
}

function client(clientId, secret, scope) {
  return {
    client_id: clientId,
    client_secret: secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope,
  };
}

const TENANTS = { 'tenant-b-agent': 'tenant-b' };

const provider = new Provider(issuer, {
  jwks: { keys: signingKeys() },
  scopes: ['openid', 'maif:read', 'maif:write', 'maif:full', 'maif:admin'],
  clients: [
    client('agent-1', 'agent-1-secret', 'maif:read maif:write maif:full'),
    client('agent-2', 'agent-2-secret', 'maif:read maif:write'),
    client('other-service', 'other-secret', 'maif:read'),
    client('admin-1', 'admin-1-secret', 'maif:read maif:write maif:full maif:admin'),
    client('tenant-b-agent', 'tenant-b-secret', 'maif:read maif:write'),
  ],
  // A tenant claim for clients that belong to one (MAIF isolates tenants; the default tenant has none).
  extraTokenClaims: (ctx, token) => (TENANTS[token.clientId] ? { tenant: TENANTS[token.clientId] } : {}),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:maif:store',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'maif:read maif:write maif:full maif:admin',
        audience: resource, // aud == the requested resource
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg } },
      }),
    },
  },
});

let jwksRequests = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/_maif/stats') {
    ctx.body = { jwks_requests: jwksRequests };
    return;
  }
  if (ctx.path === '/jwks') jwksRequests += 1;
  await next();
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(JSON.stringify({ ready: true, issuer, pid: process.pid, alg }));
});
// Nothing to flush (the issuer's state is in memory and disposable): exit at once on a signal.
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
