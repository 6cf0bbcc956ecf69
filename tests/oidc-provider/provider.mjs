// An OpenID Provider for Latchkey's sign-in tests, on 127.0.0.1 only.
//
//   PORT=9000 REDIRECT_PORT=8250 node provider.mjs
//
// Prints `listening http://127.0.0.1:PORT` once it accepts requests. The development
// login form takes any password; the user name is the account id.
//
// Accounts: alice (groups admins, devs), bob (devs), nogroups (no groups claim at all).
// Clients:
//   latchkey      confidential (secret `latchkey-secret`), authorization code + PKCE
//   latchkey-cli  public, authorization code + PKCE and the device flow
//   latchkey-ci   confidential (secret `ci-secret`), client credentials; with
//                 `resource=urn:latchkey` it receives an RS256 JWT access token, the
//                 stand-in for a CI platform's workload identity token.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 9000);
const redirectPort = Number(process.env.REDIRECT_PORT || 8250);
const issuer = `http://127.0.0.1:${port}`;
const redirectUri = `http://127.0.0.1:${redirectPort}/callback`;

const accounts = {
  alice: { email: 'alice@example.test', email_verified: true, name: 'Alice', groups: ['admins', 'devs'] },
  bob: { email: 'bob@example.test', email_verified: true, name: 'Bob', groups: ['devs'] },
  nogroups: { email: 'nogroups@example.test', email_verified: true, name: 'No Groups' },
};

const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 })
  .privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'latchkey',
      client_secret: 'latchkey-secret',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'latchkey-cli',
      token_endpoint_auth_method: 'none',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
    },
    {
      client_id: 'latchkey-ci',
      client_secret: 'ci-secret',
      redirect_uris: [],
      response_types: [],
      grant_types: ['client_credentials'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [{ ...signingKey, kid: 'test-signing-key', use: 'sig', alg: 'RS256' }] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // Put the scopes' claims (groups among them) in the ID token itself.
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    if (!accounts[id]) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...accounts[id] }; } };
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resource) {
        if (resource !== 'urn:latchkey') throw new Provider.errors.InvalidTarget();
        return {
          scope: 'secrets:read',
          audience: 'urn:latchkey',
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: { AccessToken: 600, ClientCredentials: 600, IdToken: 600, DeviceCode: 600, Interaction: 600, Session: 3600, Grant: 3600 },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
