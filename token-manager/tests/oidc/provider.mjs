// A real OpenID provider for keel-token-manager's client tests: oidc-provider from npm,
// on loopback, with its token endpoint laid out as Entra ID's
// (`/{tenant}/oauth2/v2.0/{authorize,devicecode,token}`, tenant "contoso"), clients for
// client credentials (secret, private-key JWT), authorization code with PKCE, and the
// device code flow.
// Usage: node provider.mjs <port> <public JWK of the certificate client, JSON>
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const certificateJwk = JSON.parse(process.argv[3]);
const issuer = `http://127.0.0.1:${port}/contoso/v2.0`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'app-secret',
      client_secret: 's3cret-for-the-provider',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    },
    {
      client_id: 'app-certificate',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'PS256',
      jwks: { keys: [certificateJwk] },
    },
    {
      // A native app signing users in (authorization code with PKCE; public client).
      client_id: 'app-native',
      application_type: 'native',
      grant_types: ['authorization_code', 'refresh_token'],
      redirect_uris: ['http://127.0.0.1/callback'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    },
    {
      // A device without a browser (device authorization grant; public client).
      client_id: 'app-device',
      application_type: 'native',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'none',
    },
  ],
  // Sign-in and consent through oidc-provider's development pages (any login), driven
  // over HTTP by the tests.
  scopes: ['openid', 'offline_access'],
  // As Entra ID: a client allowed the refresh_token grant gets refresh tokens without
  // `prompt=consent` (OpenID Connect Core drops offline_access without it; Entra does not).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://graph.example',
      getResourceServerInfo: () => ({
        scope: 'read write',
        accessTokenFormat: 'jwt',
        audience: 'https://graph.example',
        accessTokenTTL: 600,
      }),
      useGrantedResource: () => true,
    },
  },
  routes: {
    authorization: '/contoso/oauth2/v2.0/authorize',
    device_authorization: '/contoso/oauth2/v2.0/devicecode',
    token: '/contoso/oauth2/v2.0/token',
  },
});
// Discovery under the issuer's path, as Entra ID serves it
// ({issuer}/.well-known/openid-configuration); everything else as oidc-provider routes it.
const handle = provider.callback();
http
  .createServer((req, res) => {
    if (req.url === '/contoso/v2.0/.well-known/openid-configuration') {
      req.url = '/.well-known/openid-configuration';
    }
    handle(req, res);
  })
  .listen(port, '127.0.0.1', () => console.log('ready'));
