// Drives Latchkey's approvals page in a real headless Chromium (Debian `chromium` through
// npm `playwright-core`). Only requests to 127.0.0.1 are let through.
//
// Started by run.sh, which sets:
//   BASE               the server, http://127.0.0.1:PORT
//   BOB_TOKEN          an approver's token
//   DAVE_TOKEN         the requester's token
//   REQUEST_ID         dave's request that bob approves
//   SECOND_REQUEST_ID  another pending request of dave's, which he tries to approve himself
//   SHOTS              the directory for screenshots
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run tests/approvals/run.sh`);
  return value;
};
const BASE = env('BASE');
const BOB = env('BOB_TOKEN');
const DAVE = env('DAVE_TOKEN');
const REQUEST = env('REQUEST_ID');
const SECOND = env('SECOND_REQUEST_ID');
const SHOTS = env('SHOTS');

let passed = 0;
function check(condition, description) {
  if (!condition) throw new Error(`check failed: ${description}`);
  passed += 1;
  console.log(`ok ${passed} - ${description}`);
}

const shots = [];
async function shoot(page, name) {
  const path = join(SHOTS, name);
  await page.screenshot({ path, fullPage: true });
  shots.push(path);
}

async function signIn(page, token) {
  await page.fill('#token', token);
  await Promise.all([page.waitForNavigation(), page.click('form.login button[type=submit]')]);
}

// A page on another port of 127.0.0.1 (another origin) that posts a review form to the
// approvals page, as a hostile site would.
function startForeignSite(csrf) {
  const html = `<!doctype html><title>elsewhere</title>
<form id="f" method="post" action="${BASE}/approvals/requests/${SECOND}/approve">
<input type="hidden" name="csrf" value="${csrf}"><input type="hidden" name="comment" value="forged">
</form><script>document.getElementById('f').submit()</script>`;
  const server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const profile = mkdtempSync(join(tmpdir(), 'latchkey-approvals-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/lib/chromium/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
  viewport: { width: 1000, height: 760 },
});
const blocked = [];
await context.route('**/*', (route) => {
  const url = new URL(route.request().url());
  if (url.hostname === '127.0.0.1') return route.continue();
  blocked.push(url.href);
  return route.abort();
});
const consoleErrors = [];
let foreign;

try {
  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });

  // 1. The link from a webhook, without a session: sign in first, then the request.
  await page.goto(`${BASE}/approvals/requests/${REQUEST}`);
  check(new URL(page.url()).pathname === '/approvals/login', 'a request link without a session opens the sign-in form');
  check(await page.isVisible('text=lk token create'), 'the sign-in form says how to get a token');
  check(await page.isVisible('text=lk requests --pending'), 'the sign-in form names the CLI equivalent');
  await signIn(page, BOB);
  check(new URL(page.url()).pathname === `/approvals/requests/${REQUEST}`, 'after signing in bob lands on the linked request');
  check((await page.textContent('h1')).includes(REQUEST), 'the request page names the request');

  // 2. The list: dave's request with its reason and ticket, and a form to review it.
  await page.goto(`${BASE}/approvals`);
  const card = page.locator(`#request-${REQUEST}`);
  const text = await card.textContent();
  check(text.includes('User::"dave"'), 'bob sees the requester');
  check(text.includes('lk://prod/db'), 'bob sees the resource');
  check(text.includes('30m'), 'bob sees the duration');
  check(text.includes('INC-7: rotate the prod database password'), 'bob sees the reason');
  check(await card.locator('a[href="https://tickets.example.com/INC-7"]').count() === 1, 'the ticket is a link');
  check(text.includes('0/1'), 'bob sees the approvals so far');
  check(await card.locator('button.approve').count() === 1 && await card.locator('button.deny').count() === 1,
    'the request has approve and deny buttons');
  check(await page.locator(`#request-${SECOND}`).count() === 1, "dave's second request waits too");
  const headerColour = await page.evaluate(() => getComputedStyle(document.querySelector('header.top')).backgroundColor);
  check(headerColour === 'rgb(29, 34, 40)', `the stylesheet applies (header ${headerColour})`);
  await shoot(page, 'pending.png');

  // 3. bob approves with a comment.
  await page.fill(`#comment-${REQUEST}`, 'Checked INC-7 with dave on the bridge call');
  await Promise.all([page.waitForNavigation(), card.locator('button.approve').click()]);
  check(new URL(page.url()).pathname === '/approvals', 'the approval returns to the list');
  const flash = await page.textContent('.flash.ok');
  check(flash.includes(`You approved request ${REQUEST}`) && flash.includes('may use lk://prod/db for 30m'),
    `the outcome is shown: ${flash.trim()}`);
  check(await page.locator(`#request-${REQUEST}`).count() === 0, 'the approved request left the list');
  await shoot(page, 'approved.png');
  await page.reload();
  check(await page.locator('.flash').count() === 0, 'the outcome is shown once');

  // 4. Sign out, and dave signs in.
  await Promise.all([page.waitForNavigation(), page.click('form.logout button')]);
  check(new URL(page.url()).pathname === '/approvals/login', 'signing out returns to the sign-in form');
  check((await page.textContent('.flash')).includes('You are signed out'), 'the page says bob is signed out');
  await page.goto(`${BASE}/approvals`);
  check(new URL(page.url()).pathname === '/approvals/login', 'after signing out the page needs a session again');
  await signIn(page, DAVE);
  check(new URL(page.url()).pathname === '/approvals', 'dave is signed in');
  check(await page.locator('form.review').count() === 0, 'dave has nothing to review');
  check(await page.locator('button.approve').count() === 0, 'dave sees no approve button');
  const mine = await page.textContent('table.mine');
  check(mine.includes(REQUEST) && mine.includes('approved'), 'dave sees his request approved');
  check(mine.includes(SECOND) && mine.includes('pending'), 'dave sees his second request pending');
  await shoot(page, 'own-requests.png');

  await page.goto(`${BASE}/approvals/requests/${SECOND}`);
  check(await page.locator('form.review').count() === 0, "dave's own request has no review form");
  check(await page.isVisible('text=You cannot review this request'), 'the page says why');

  // 5. dave forges an approval of his own request from his page, with his valid form token.
  const csrf = await page.inputValue('form.logout input[name=csrf]');
  const [forged] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith(`/approvals/requests/${SECOND}/approve`)),
    page.evaluate(({ id, token }) => {
      const form = document.createElement('form');
      form.method = 'post';
      form.action = `/approvals/requests/${id}/approve`;
      for (const [name, value] of [['csrf', token], ['comment', 'approving myself']]) {
        const input = document.createElement('input');
        input.type = 'hidden';
        input.name = name;
        input.value = value;
        form.append(input);
      }
      document.body.append(form);
      form.submit();
    }, { id: SECOND, token: csrf }),
  ]);
  await page.waitForLoadState();
  check(forged.status() === 403, `the forged approval is refused (${forged.status()})`);
  check((await page.textContent('main')).includes(`You cannot approve your own access request \`${SECOND}\``),
    'the refusal says why');
  await shoot(page, 'refused.png');

  // 6. The same form posted from another origin is refused before anything else.
  foreign = await startForeignSite(csrf);
  const foreignUrl = `http://127.0.0.1:${foreign.address().port}/`;
  const [crossSite] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith(`/approvals/requests/${SECOND}/approve`)),
    page.goto(foreignUrl),
  ]);
  await page.waitForLoadState();
  check(crossSite.status() === 403, `a post from ${foreignUrl} is refused (${crossSite.status()})`);
  check((await page.textContent('main')).includes('sent from another site'), 'the refusal names the other site');

  check(blocked.length === 0, `nothing outside 127.0.0.1 was requested (${blocked.join(', ') || 'none'})`);
  const violations = consoleErrors.filter((m) => /Content Security Policy|Refused to/i.test(m));
  check(violations.length === 0, `no Content-Security-Policy violations (${violations.join(' | ') || 'none'})`);
  console.log(`${passed} browser checks passed`);
  for (const path of shots) console.log(`screenshot: ${path}`);
} catch (error) {
  console.error(error.stack ?? String(error));
  process.exitCode = 1;
} finally {
  foreign?.close();
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
