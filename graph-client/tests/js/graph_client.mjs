// Microsoft's own JavaScript clients from npm against keel-graph-client's emulator served
// over HTTPS: MSAL (@azure/msal-node 7.2.1) acquires a client-credentials token through
// the emulator's OpenID discovery; Microsoft's Graph client
// (@microsoft/microsoft-graph-client 3.0.7), with its default middleware chain, pages
// through every user with PageIterator and sends one JSON batch built and read with
// BatchRequestContent and BatchResponseContent; then follows a groups delta round
// (`members@delta` spread over pages of two) and a Planner plan's tasks delta on `beta`
// to their delta links with PageIterator.
//
// Usage (from this folder, after `npm ci`; the emulator's certificate trusted through
// NODE_EXTRA_CA_CERTS):
//   EMULATOR_BASE=https://127.0.0.1:<port> TENANT=<tenant id> CLIENT_ID=<app id> \
//   CLIENT_SECRET=<secret> EXPECTED_USERS=<n> NODE_EXTRA_CA_CERTS=<pem file> node graph_client.mjs
// Success: one JSON line on stdout,
// `{"users":n,"batch":{"1":200,"2":200,"3":400},"groups":g,"members":m,"tasks":t}`, exit 0.
// A failed check or an unexpected error: the reason on stderr, exit 1 (also after 30 s).
//
// The Graph client sends its bearer token only to https:// hosts it knows: the emulator's
// host name goes in `customHosts` (a host name without its port).
import { ConfidentialClientApplication } from '@azure/msal-node';
import {
  BatchRequestContent,
  BatchResponseContent,
  Client,
  PageIterator,
} from '@microsoft/microsoft-graph-client';

const TIMEOUT_MS = 30_000;

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function env(name) {
  const value = process.env[name];
  check(value !== undefined && value !== '', `${name} is not set`);
  return value;
}

/** A token from MSAL, which finds the token endpoint through the authority's discovery. */
async function token(base, tenant, clientId, clientSecret) {
  const msal = new ConfidentialClientApplication({
    auth: {
      clientId,
      clientSecret,
      authority: `${base}/${tenant}`,
      // The emulator is not one of Microsoft's clouds: trusted by name, no instance
      // discovery at login.microsoftonline.com.
      knownAuthorities: [new URL(base).host],
    },
  });
  const result = await msal.acquireTokenByClientCredential({
    scopes: ['https://graph.microsoft.com/.default'],
  });
  check(result && typeof result.accessToken === 'string' && result.accessToken !== '', 'MSAL returned no access token');
  check(result.tokenType === 'Bearer', `MSAL token type ${JSON.stringify(result.tokenType)}, not "Bearer"`);
  // No ID token in this grant, so MSAL leaves tenantId empty; the token says whose it is.
  const claims = JSON.parse(Buffer.from(result.accessToken.split('.')[1], 'base64url').toString());
  check(claims.tid === tenant, `the token is for tenant ${JSON.stringify(claims.tid)}, not ${tenant}`);
  check(claims.aud === 'https://graph.microsoft.com', `the token's audience is ${JSON.stringify(claims.aud)}`);
  check(result.expiresOn instanceof Date && result.expiresOn > new Date(), 'MSAL token already expired');
  // A second call is served from MSAL's cache, as MSAL does with a valid token.
  const again = await msal.acquireTokenByClientCredential({ scopes: ['https://graph.microsoft.com/.default'] });
  check(again.accessToken === result.accessToken, 'MSAL did not cache the token');
  return result.accessToken;
}

/** A batch step's answer, its body parsed. */
async function stepAnswer(batch, id) {
  const response = batch.getResponseById(id);
  check(response !== undefined, `the batch has no answer with id "${id}"`);
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    // BatchResponseContent serializes a step's body only when its headers name
    // "Content-Type" (that spelling) as application/json.
    throw new CheckFailed(`step ${id}: body is not JSON as the SDK reads it: ${JSON.stringify(text)}`);
  }
  return { status: response.status, body };
}

async function main() {
  const wireBase = env('EMULATOR_BASE').replace(/\/+$/, '');
  const tenant = env('TENANT');
  const clientId = env('CLIENT_ID');
  const clientSecret = env('CLIENT_SECRET');
  const expectedUsers = Number(env('EXPECTED_USERS'));
  check(Number.isInteger(expectedUsers) && expectedUsers > 0, 'EXPECTED_USERS is not a positive integer');

  check(wireBase.startsWith('https://'), 'EMULATOR_BASE must be https:// (MSAL refuses http authorities)');

  // a. The token, from MSAL.
  const accessToken = await token(wireBase, tenant, clientId, clientSecret);

  // b. The Graph client, with its default middleware chain.
  const client = Client.initWithMiddleware({
    authProvider: { getAccessToken: async () => accessToken },
    baseUrl: `${wireBase}/`,
    defaultVersion: 'v1.0',
    // Host names only: the SDK compares them with the URL's host without its port.
    customHosts: new Set([new URL(wireBase).hostname]),
  });

  // c. Every user, page by page (PageIterator follows @odata.nextLink).
  const firstPage = await client.api('/users?$top=100&$select=id,displayName').get();
  const ids = [];
  const pages = new PageIterator(client, firstPage, (user) => {
    ids.push(user.id);
    return true;
  });
  await pages.iterate();
  check(pages.isComplete(), 'PageIterator stopped before the last page');
  check(ids.every((id) => typeof id === 'string' && id !== ''), 'a user without an id');
  const distinct = new Set(ids).size;
  check(distinct === ids.length, `${ids.length} users listed, ${distinct} distinct`);
  check(distinct === expectedUsers, `${distinct} users listed, ${expectedUsers} expected`);
  const firstId = ids[0];

  // d. One JSON batch: a read, a read after it, and a bad URL. Step 3 depends on step 1
  // too: getContent() takes only dependencies that are none, serial, or all on one step.
  // (The SDK keeps the path and query of each step's URL, scheme and host stripped.)
  const content = new BatchRequestContent([
    { id: '1', request: new Request(`${wireBase}/users?$top=1`, { method: 'GET' }) },
    { id: '2', request: new Request(`${wireBase}/users/${firstId}`, { method: 'GET' }), dependsOn: ['1'] },
    { id: '3', request: new Request(`${wireBase}/no-such-segment`, { method: 'GET' }), dependsOn: ['1'] },
  ]);
  const batch = new BatchResponseContent(await client.api('/$batch').post(await content.getContent()));
  check(batch.getResponses().size === 3, `the batch answered ${batch.getResponses().size} steps, not 3`);
  const one = await stepAnswer(batch, '1');
  check(one.status === 200, `step 1: status ${one.status}: ${JSON.stringify(one.body)}`);
  check(
    Array.isArray(one.body.value) && one.body.value.length === 1 && one.body.value[0].id === firstId,
    `step 1: not the first user alone: ${JSON.stringify(one.body)}`,
  );
  const two = await stepAnswer(batch, '2');
  check(two.status === 200, `step 2: status ${two.status}: ${JSON.stringify(two.body)}`);
  check(two.body.id === firstId, `step 2: id ${JSON.stringify(two.body.id)}, not ${firstId}`);
  const three = await stepAnswer(batch, '3');
  check(three.status === 400, `step 3: status ${three.status}, not 400: ${JSON.stringify(three.body)}`);
  check(
    typeof three.body?.error?.code === 'string' && three.body.error.code !== '',
    `step 3: no error.code: ${JSON.stringify(three.body)}`,
  );

  // f. A groups delta round, two objects a page: a group's members@delta may come in
  // several pieces (merged by group id); the round ends with a delta link, which then
  // answers nothing new.
  const small = { headers: { Prefer: 'odata.maxpagesize=2' } };
  const firstDelta = await client
    .api('/groups/delta')
    .header('Prefer', 'odata.maxpagesize=2')
    .select(['displayName', 'members'])
    .get();
  const members = new Map();
  const groupPages = new PageIterator(
    client,
    firstDelta,
    (group) => {
      const set = members.get(group.id) ?? new Set();
      members.set(group.id, set);
      for (const member of group['members@delta'] ?? []) {
        if (member['@removed']) set.delete(member.id);
        else set.add(member.id);
      }
      return true;
    },
    small,
  );
  await groupPages.iterate();
  check(groupPages.isComplete(), 'the groups delta stopped before its last page');
  const deltaLink = groupPages.getDeltaLink();
  check(typeof deltaLink === 'string' && deltaLink.includes('deltatoken='), `no delta link: ${deltaLink}`);
  const memberCount = [...members.values()].reduce((n, set) => n + set.size, 0);
  const quiet = await client.api(deltaLink).get();
  check(Array.isArray(quiet.value) && quiet.value.length === 0, `the delta link answered changes: ${JSON.stringify(quiet.value)}`);
  check(typeof quiet['@odata.deltaLink'] === 'string', 'the quiet round has no delta link');

  // g. The first group's plan, its tasks by delta on beta.
  const firstGroup = [...members.keys()].sort()[0];
  const plans = await client.api(`/groups/${firstGroup}/planner/plans`).get();
  check(plans.value.length === 1, `group ${firstGroup} has ${plans.value.length} plans`);
  const firstTasks = await client.api(`/planner/plans/${plans.value[0].id}/tasks/delta`).version('beta').get();
  const tasks = new Set();
  const taskPages = new PageIterator(client, firstTasks, (task) => {
    check(typeof task['@odata.etag'] === 'string', 'a task without its ETag');
    tasks.add(task.id);
    return true;
  });
  await taskPages.iterate();
  check(typeof taskPages.getDeltaLink() === 'string', 'the tasks delta has no delta link');

  // e. The summary.
  console.log(
    JSON.stringify({
      users: distinct,
      batch: { 1: one.status, 2: two.status, 3: three.status },
      groups: members.size,
      members: memberCount,
      tasks: tasks.size,
    }),
  );
}

setTimeout(() => {
  console.error(`timed out after ${TIMEOUT_MS} ms`);
  process.exit(1);
}, TIMEOUT_MS).unref();

try {
  await main();
} catch (error) {
  if (error instanceof CheckFailed) {
    console.error(error.message);
  } else {
    // GraphError (an answer the SDK took for an error) has statusCode, code and body.
    const status = error?.statusCode !== undefined ? ` (HTTP ${error.statusCode}, code ${error.code})` : '';
    const cause = error?.cause?.message ? ` (${error.cause.message})` : '';
    console.error(`${error?.name ?? 'Error'}: ${error?.message ?? error}${status}${cause}`);
    if (error?.body) console.error(typeof error.body === 'string' ? error.body : JSON.stringify(error.body));
  }
  process.exitCode = 1;
}
