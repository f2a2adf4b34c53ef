// Browser tests of the admin UI (/admin) in headless Chromium, driven by playwright-core.
//
// Run by tests/browser/run, which starts `tally serve`, sets the admin password, seeds the
// data these tests count on (see the counts below) and passes:
//   BASE_URL, ADMIN_KEY, ADMIN_PASSWORD, SCREENSHOT_DIR, STORE, CHROMIUM.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set (run these tests with tests/browser/run)`);
  return value;
}

const BASE = env('BASE_URL').replace(/\/$/, '');
const ADMIN_KEY = env('ADMIN_KEY');
const ADMIN_PASSWORD = env('ADMIN_PASSWORD');
const SHOTS = env('SCREENSHOT_DIR');
const STORE = process.env.STORE ?? 'unknown';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// What tests/browser/run seeds: acme, cust-000 .. cust-057 and xss-tenant.
const SEED = {
  tenants: 60,
  records: 120, // acme 3 (incl. one in the previous period), 58 customers × 2, xss-tenant 1
  events: 200, // acme 5, customers 58 × 3 + 20 (every third has a 4th), xss-tenant 1
  storageRecords: 30, // acme + the 29 even customers (on pro)
  exportsEvents: 29, // the 29 odd customers (on free)
  cust01Tenants: 10, // cust-010 .. cust-019
  cust01Records: 20,
  cust01Events: 33, // 10 × 3 + cust-012, cust-015, cust-018
  proSubscribers: 31, // acme, 29 even customers, xss-tenant
};
const PAGE_LEN = 50;
const SESSION_COOKIE = 'tally_admin_session';
const XSS_NOTE = '<script>window.__xss=1</script><img src=x onerror=alert(1)>';
const XSS_NAME = '<script>window.__xss=2</script><img src=x onerror=alert(2)>';

const LAUNCH_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

let browser;
/** The signed-in context most tests share (signed in once, with the admin password). */
let shared;

mkdirSync(SHOTS, { recursive: true });

async function newContext(options = {}) {
  const ctx = await browser.newContext({ baseURL: BASE, viewport: { width: 1280, height: 900 }, ...options });
  ctx.setDefaultTimeout(15_000);
  ctx.setDefaultNavigationTimeout(20_000);
  return ctx;
}

/**
 * A page that records what must never happen on an admin page: dialogs (dismissed and
 * counted), uncaught script errors, and console errors (a CSP violation shows as one).
 */
async function openPage(ctx) {
  const page = await ctx.newPage();
  page.problems = { dialogs: [], errors: [], console: [] };
  page.on('dialog', async (d) => {
    page.problems.dialogs.push(`${d.type()}: ${d.message()}`);
    await d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => page.problems.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') page.problems.console.push(m.text());
  });
  return page;
}

/** Fails when a dialog opened, a script ran into an error, or the console showed an error. */
function assertNoProblems(page) {
  assert.deepEqual(page.problems.dialogs, [], 'no dialog may open on an admin page');
  assert.deepEqual(page.problems.errors, [], 'no script error on an admin page');
  assert.deepEqual(page.problems.console, [], 'no console error (e.g. a CSP violation)');
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** Goes to `url` (relative to BASE) and expects a 200 page. */
async function visit(page, url) {
  const resp = await page.goto(url);
  assert.ok(resp, `no response for ${url}`);
  assert.equal(resp.status(), 200, `GET ${url} answered ${resp.status()}`);
  return resp;
}

/** Signs in on the sign-in page `page` shows (or opens it) and waits to leave it. */
async function signIn(page, secret, { from = '/admin/login' } = {}) {
  if (!new URL(page.url(), BASE).pathname.startsWith('/admin/login')) await page.goto(from);
  await page.fill('#password', secret);
  await Promise.all([
    page.waitForURL((u) => !u.pathname.startsWith('/admin/login')),
    page.click('#sign-in'),
  ]);
}

/** Clicks `selector` and waits for the page it leads to. */
async function follow(page, selector) {
  const before = page.url();
  await Promise.all([page.waitForURL((u) => u.href !== before), page.click(selector)]);
  await page.waitForLoadState('domcontentloaded');
}

/** Submits the filter form and waits for its result page. */
async function applyFilters(page) {
  await follow(page, '#apply-filters');
}

const texts = (page, selector) => page.$$eval(selector, (els) => els.map((e) => e.textContent.trim()));
const attrs = (page, selector, name) =>
  page.$$eval(selector, (els, n) => els.map((e) => e.getAttribute(n)), name);
const num = (s) => Number(s.replace(/,/g, ''));
const pathOf = (page) => new URL(page.url()).pathname;

/** Walks every page of a list from the current one, returning the data-id of every row. */
async function walkPages(page, rowSelector) {
  const ids = [];
  const pageSizes = [];
  for (let guard = 0; guard < 20; guard++) {
    const here = await attrs(page, rowSelector, 'data-id');
    ids.push(...here);
    pageSizes.push(here.length);
    if ((await page.locator('#next-page').count()) === 0) return { ids, pageSizes };
    await follow(page, '#next-page');
  }
  throw new Error('more than 20 pages: pagination does not end');
}

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
  shared = await newContext();
  const page = await openPage(shared);
  await signIn(page, ADMIN_PASSWORD);
  await page.close();
});

after(async () => {
  await browser?.close();
});

const T = { timeout: 120_000 };

test(`[${STORE}] an anonymous visit to a page redirects to sign-in, and a wrong password shows an error and stays there`, T, async () => {
  const ctx = await newContext();
  try {
    const page = await openPage(ctx);
    await page.goto('/admin/records');
    const url = new URL(page.url());
    assert.equal(url.pathname, '/admin/login');
    assert.equal(url.searchParams.get('next'), '/admin/records');
    await page.locator('#password').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#logout').count(), 0, 'no logout button before signing in');
    assert.equal(await page.locator('header nav').count(), 0, 'no navigation before signing in');
    await shot(page, '01-sign-in');

    await page.fill('#password', 'definitely-not-the-password');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/admin/login'),
      page.click('#sign-in'),
    ]);
    await page.waitForLoadState('domcontentloaded');
    assert.equal(resp.status(), 401);
    assert.equal(pathOf(page), '/admin/login');
    const error = page.locator('p.error[role=alert]');
    await error.waitFor({ state: 'visible' });
    assert.match(await error.textContent(), /wrong password or key/i);
    assert.ok(await page.locator('#password').isVisible(), 'the form is shown again');
    assert.equal((await ctx.cookies()).filter((c) => c.name === SESSION_COOKIE).length, 0, 'no session cookie');
    await shot(page, '02-sign-in-wrong-password');
    // The form still leads back to the page first asked for.
    assert.equal(await page.inputValue('input[name=next]'), '/admin/records');
    assert.deepEqual(page.problems.dialogs, []);
  } finally {
    await ctx.close();
  }
});

test(`[${STORE}] signing in with the admin password leads to the page first asked for`, T, async () => {
  const ctx = await newContext();
  try {
    const page = await openPage(ctx);
    await page.goto('/admin/records');
    assert.equal(pathOf(page), '/admin/login');
    await signIn(page, ADMIN_PASSWORD);
    assert.equal(pathOf(page), '/admin/records');
    await page.locator('#logout').waitFor({ state: 'visible' });
    assert.match(await page.locator('header .who').textContent(), /admin password/);
    assert.ok((await page.locator('tr.record-row').count()) > 0);
    assertNoProblems(page);
  } finally {
    await ctx.close();
  }
});

test(`[${STORE}] signing in with the admin key in the same password field works too`, T, async () => {
  const ctx = await newContext();
  try {
    const page = await openPage(ctx);
    await page.goto('/admin/login');
    await signIn(page, ADMIN_KEY);
    // /admin is the tenants list.
    assert.equal(pathOf(page), '/admin/tenants');
    await page.locator('#logout').waitFor({ state: 'visible' });
    assert.ok((await page.locator('tr.tenant-row').count()) > 0);
    const who = (await page.locator('header .who').textContent()).trim();
    assert.match(who, /admin key/, `the header says who signed in: got ${JSON.stringify(who)}`);
    assertNoProblems(page);
  } finally {
    await ctx.close();
  }
});

test(`[${STORE}] the session cookie is HttpOnly, SameSite=Strict and scoped to /admin`, T, async () => {
  const cookies = await shared.cookies();
  const session = cookies.find((c) => c.name === SESSION_COOKIE);
  assert.ok(session, `a ${SESSION_COOKIE} cookie is set: ${JSON.stringify(cookies.map((c) => c.name))}`);
  assert.equal(session.httpOnly, true, 'HttpOnly');
  assert.equal(session.sameSite, 'Strict', 'SameSite=Strict');
  assert.equal(session.path, '/admin');
  assert.ok(session.expires > Date.now() / 1000, 'it expires in the future (Max-Age)');
  assert.ok(session.value.length >= 32, 'a long random token');
  const page = await openPage(shared);
  try {
    await visit(page, '/admin/tenants');
    const visible = await page.evaluate(() => document.cookie);
    assert.ok(!visible.includes(SESSION_COOKIE), 'scripts cannot read the session cookie');
  } finally {
    await page.close();
  }
});

test(`[${STORE}] the records list filters by metric, searches by tenant prefix, sorts by a column and paginates`, T, async () => {
  const page = await openPage(shared);
  try {
    await visit(page, '/admin/records');
    assert.equal(await page.locator('tr.record-row').count(), PAGE_LEN, 'a full first page');
    assert.equal(await page.locator('header nav a[aria-current=page]').textContent(), 'Usage records');
    await shot(page, '03-records');

    // Filter by metric.
    await page.selectOption('#metric_code', 'storage_bytes');
    await applyFilters(page);
    assert.equal(new URL(page.url()).searchParams.get('metric_code'), 'storage_bytes');
    const metrics = await texts(page, 'tr.record-row td:nth-child(3)');
    assert.equal(metrics.length, SEED.storageRecords);
    assert.ok(metrics.every((m) => m === 'storage_bytes'), `only storage_bytes: ${metrics}`);
    assert.equal(await page.inputValue('#metric_code'), 'storage_bytes', 'the filter stays selected');
    await shot(page, '04-records-filtered-storage_bytes');

    // Search by tenant id prefix.
    await visit(page, '/admin/records');
    await page.fill('#q', 'cust-01');
    await applyFilters(page);
    const tenants = await texts(page, 'tr.record-row td:nth-child(2)');
    assert.equal(tenants.length, SEED.cust01Records);
    assert.ok(tenants.every((t) => t.startsWith('cust-01')), `only cust-01*: ${tenants}`);
    assert.equal(await page.inputValue('#q'), 'cust-01');

    // Sort by current_usage: descending on the first click, ascending on the second.
    await visit(page, '/admin/records');
    await follow(page, 'th a[data-sort=current_usage]');
    let url = new URL(page.url());
    assert.equal(url.searchParams.get('sort'), 'current_usage');
    assert.equal(url.searchParams.get('dir'), 'desc');
    assert.equal(await page.getAttribute('th:has(a[data-sort=current_usage])', 'aria-sort'), 'descending');
    const desc = (await texts(page, 'tr.record-row td:nth-child(4)')).map(num);
    assert.equal(desc.length, PAGE_LEN);
    assert.deepEqual(desc, [...desc].sort((a, b) => b - a), `descending: ${desc}`);
    assert.equal(desc[0], 6000, 'the largest usage (acme storage_bytes) comes first');
    await shot(page, '05-records-sorted-by-current_usage');
    // The next page goes on in the same order.
    await follow(page, '#next-page');
    const descNext = (await texts(page, 'tr.record-row td:nth-child(4)')).map(num);
    assert.ok(descNext.length > 0);
    assert.ok(descNext[0] <= desc.at(-1), `page 2 starts at or below page 1's last (${descNext[0]} > ${desc.at(-1)})`);
    assert.deepEqual(descNext, [...descNext].sort((a, b) => b - a));
    await follow(page, '#first-page');
    await follow(page, 'th a[data-sort=current_usage]');
    url = new URL(page.url());
    assert.equal(url.searchParams.get('dir'), 'asc');
    const asc = (await texts(page, 'tr.record-row td:nth-child(4)')).map(num);
    assert.deepEqual(asc, [...asc].sort((a, b) => a - b), `ascending: ${asc}`);

    // Pagination: next page has other rows, first page leads back, nothing lost or repeated.
    await visit(page, '/admin/records');
    assert.equal(await page.locator('#first-page').count(), 0, 'no "first page" link on the first page');
    const first = await attrs(page, 'tr.record-row', 'data-id');
    await follow(page, '#next-page');
    const second = await attrs(page, 'tr.record-row', 'data-id');
    assert.ok(second.length > 0);
    assert.ok(second.every((id) => !first.includes(id)), 'page 2 shows other records');
    await follow(page, '#first-page');
    assert.deepEqual(await attrs(page, 'tr.record-row', 'data-id'), first, '"first page" shows page 1 again');
    const { ids, pageSizes } = await walkPages(page, 'tr.record-row');
    assert.equal(new Set(ids).size, ids.length, 'no record on two pages');
    assert.equal(ids.length, SEED.records, `every record once (pages ${pageSizes})`);
    assertNoProblems(page);
  } finally {
    await page.close();
  }
});

test(`[${STORE}] the events list filters, searches, paginates and opens an event with its metadata and idempotency key`, T, async () => {
  const page = await openPage(shared);
  try {
    await visit(page, '/admin/events');
    assert.equal(await page.locator('tr.event-row').count(), PAGE_LEN);
    await shot(page, '06-events');

    await page.selectOption('#metric_code', 'exports');
    await applyFilters(page);
    const metrics = await texts(page, 'tr.event-row td:nth-child(3)');
    assert.equal(metrics.length, SEED.exportsEvents);
    assert.ok(metrics.every((m) => m === 'exports'), `only exports: ${metrics}`);

    await visit(page, '/admin/events');
    await page.fill('#q', 'cust-01');
    await applyFilters(page);
    const tenants = await texts(page, 'tr.event-row td:nth-child(2)');
    assert.equal(tenants.length, SEED.cust01Events);
    assert.ok(tenants.every((t) => t.startsWith('cust-01')), `only cust-01*: ${tenants}`);

    await visit(page, '/admin/events');
    assert.equal(await page.locator('#first-page').count(), 0);
    const first = await attrs(page, 'tr.event-row', 'data-id');
    await follow(page, '#next-page');
    const second = await attrs(page, 'tr.event-row', 'data-id');
    assert.ok(second.length > 0 && second.every((id) => !first.includes(id)), 'page 2 shows other events');
    await follow(page, '#first-page');
    assert.deepEqual(await attrs(page, 'tr.event-row', 'data-id'), first);
    const { ids, pageSizes } = await walkPages(page, 'tr.event-row');
    assert.equal(new Set(ids).size, ids.length, 'no event on two pages');
    assert.equal(ids.length, SEED.events, `every event once (pages ${pageSizes})`);

    // An event of acme, opened from the list.
    await visit(page, '/admin/events?tenant_id=acme');
    const rows = page.locator('tr.event-row');
    assert.equal(await rows.count(), 5);
    const id = await rows.first().getAttribute('data-id');
    await follow(page, 'tr.event-row >> nth=0 >> a >> nth=0');
    assert.equal(pathOf(page), `/admin/tenants/acme/events/${id}`);
    await page.locator('#metadata').waitFor({ state: 'visible' });
    const key = (await page.locator('#idempotency-key').textContent()).trim();
    assert.match(key, /^acme-(prev-)?\d$/, `the idempotency key is shown: ${key}`);
    const metadata = JSON.parse(await page.locator('#metadata').textContent());
    assert.equal(typeof metadata, 'object');
    assertNoProblems(page);
  } finally {
    await page.close();
  }
});

test(`[${STORE}] markup in event metadata and in a tenant name is shown as text and never runs`, T, async () => {
  const page = await openPage(shared);
  try {
    await visit(page, '/admin/events?tenant_id=xss-tenant');
    assert.equal(await page.locator('tr.event-row').count(), 1);
    await follow(page, 'tr.event-row >> nth=0 >> a >> nth=0');
    const metadata = await page.locator('#metadata').textContent();
    assert.ok(metadata.includes('<script>'), `the payload shows as text: ${metadata}`);
    assert.equal(JSON.parse(metadata).note, XSS_NOTE);
    assert.equal((await page.locator('#idempotency-key').textContent()).trim(), 'xss-1');
    assert.equal(await page.evaluate(() => window.__xss), undefined, 'the script did not run');
    assert.equal(await page.locator('img[src="x"]').count(), 0, 'no <img> was made from the payload');
    assert.equal(await page.locator('main script').count(), 0, 'no <script> element was made');
    await shot(page, '07-event-detail-xss');

    await visit(page, '/admin/tenants?q=xss');
    const names = await texts(page, 'tr.tenant-row td:nth-child(2)');
    assert.deepEqual(names, [XSS_NAME]);
    await visit(page, '/admin/tenants/xss-tenant');
    assert.ok((await page.locator('dl.facts').textContent()).includes(XSS_NAME));
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    assert.equal(await page.locator('img[src="x"]').count(), 0);
    // Give an onerror handler time to fire, had an <img> been made.
    await page.waitForTimeout(300);
    assertNoProblems(page);
  } finally {
    await page.close();
  }
});

test(`[${STORE}] the tenants list paginates and searches by id prefix`, T, async () => {
  const page = await openPage(shared);
  try {
    await visit(page, '/admin/tenants');
    const first = await texts(page, 'tr.tenant-row td:nth-child(1)');
    assert.equal(first.length, PAGE_LEN);
    assert.deepEqual(first, [...first].sort(), 'by tenant id');
    await shot(page, '08-tenants');
    await follow(page, '#next-page');
    const second = await texts(page, 'tr.tenant-row td:nth-child(1)');
    assert.equal(second.length, SEED.tenants - PAGE_LEN);
    assert.ok(second.every((t) => !first.includes(t)) && second[0] > first.at(-1), 'page 2 goes on after page 1');
    assert.equal(await page.locator('#next-page').count(), 0, 'the last page has no next');
    await follow(page, '#first-page');
    assert.deepEqual(await texts(page, 'tr.tenant-row td:nth-child(1)'), first);

    await page.fill('#q', 'cust-01');
    await applyFilters(page);
    const found = await texts(page, 'tr.tenant-row td:nth-child(1)');
    assert.equal(found.length, SEED.cust01Tenants);
    assert.ok(found.every((t) => t.startsWith('cust-01')), `${found}`);

    await page.fill('#q', 'nobody-has-this-prefix');
    await applyFilters(page);
    assert.equal(await page.locator('tr.tenant-row').count(), 0);
    await page.locator('#no-rows').waitFor({ state: 'visible' });
    assertNoProblems(page);
  } finally {
    await page.close();
  }
});

test(`[${STORE}] the tenant page of acme shows 420 of 1,000 api_calls as a bar and a 12-period chart`, T, async () => {
  const page = await openPage(shared);
  try {
    await visit(page, '/admin/tenants?q=acme');
    await follow(page, 'tr.tenant-row a:text-is("acme")');
    assert.equal(pathOf(page), '/admin/tenants/acme');
    assert.equal(await page.locator('#tenant-id').textContent(), 'acme');
    assert.equal((await page.locator('#plan').textContent()).trim(), 'pro');

    const bar = page.locator('svg.usage-bar[data-metric=api_calls]');
    assert.equal(await bar.count(), 1);
    assert.equal(await bar.getAttribute('data-current'), '420');
    assert.equal(await bar.getAttribute('data-limit'), '1000');
    assert.equal(await bar.getAttribute('data-enforcement'), 'hard');
    assert.equal(await bar.getAttribute('data-state'), 'under');
    const barBox = await bar.boundingBox();
    assert.ok(barBox && barBox.width > 0 && barBox.height > 0, `the bar is drawn: ${JSON.stringify(barBox)}`);
    const figure = page.locator('#metric-api_calls p.figure');
    assert.ok(await figure.isVisible());
    assert.match(await figure.innerText(), /420 of 1,000/);
    assert.equal(
      await page.locator('p.figure:visible', { hasText: '420 of 1,000' }).count(),
      1,
      '"420 of 1,000" is visible text',
    );

    const chart = page.locator('svg.usage-chart[data-metric=api_calls]');
    assert.equal(await chart.count(), 1);
    const values = await attrs(page, 'svg.usage-chart[data-metric=api_calls] rect[data-value]', 'data-value');
    assert.equal(values.length, 12, `12 columns: ${values}`);
    assert.equal(values.at(-1), '420', 'the current period is last');
    assert.equal(values.at(-2), '700', 'the previous period');
    const box = await chart.boundingBox();
    assert.ok(box && box.width > 100 && box.height > 20, `the chart is drawn: ${JSON.stringify(box)}`);
    const current = await page.locator('svg.usage-chart[data-metric=api_calls] rect.current').boundingBox();
    assert.ok(current && current.height > 0, 'the current column has a height');

    // storage_bytes is over its SOFT limit.
    const storage = page.locator('svg.usage-bar[data-metric=storage_bytes]');
    assert.equal(await storage.getAttribute('data-state'), 'over');
    assert.equal(await storage.getAttribute('data-enforcement'), 'soft');
    await shot(page, '09-tenant-acme');
    assertNoProblems(page);
  } finally {
    await page.close();
  }
});

test(`[${STORE}] the plans list and the plan page show limits, version history and subscribers`, T, async () => {
  const page = await openPage(shared);
  try {
    await visit(page, '/admin/plans');
    const codes = await texts(page, 'tr.plan-row td:nth-child(1)');
    assert.deepEqual(codes, ['free', 'pro']);
    await shot(page, '10-plans');
    await follow(page, 'tr.plan-row a:text-is("pro")');
    assert.equal(pathOf(page), '/admin/plans/pro');
    const limits = await page.$$eval('#limits tbody tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent.trim())),
    );
    assert.deepEqual(limits, [
      ['api_calls', '1,000', 'hard', 'month'],
      ['storage_bytes', '5,000', 'soft', 'month'],
    ]);
    const versions = await texts(page, 'tr.version-row td:nth-child(1)');
    assert.deepEqual([...versions].map(Number).sort(), [1, 2], `two versions: ${versions}`);
    const history = await texts(page, 'tr.version-row');
    assert.ok(history.some((h) => h.includes('500')), 'version 1 had api_calls 500');
    const subscribers = await texts(page, '#subscribers li');
    assert.equal(subscribers.length, SEED.proSubscribers);
    for (const t of ['acme', 'cust-000', 'xss-tenant']) assert.ok(subscribers.includes(t), `${t} subscribes`);
    assert.ok(!subscribers.includes('cust-001'), 'cust-001 is on free');
    await shot(page, '11-plan-pro');
    assertNoProblems(page);
  } finally {
    await page.close();
  }
});

test(`[${STORE}] with JavaScript disabled, signing in, filtering and paginating still work`, T, async () => {
  const ctx = await newContext({ javaScriptEnabled: false });
  try {
    const page = await openPage(ctx);
    await page.goto('/admin/records');
    assert.equal(pathOf(page), '/admin/login');
    await signIn(page, ADMIN_PASSWORD);
    assert.equal(pathOf(page), '/admin/records');
    assert.equal(await page.locator('tr.record-row').count(), PAGE_LEN);

    await page.selectOption('#metric_code', 'api_calls');
    await applyFilters(page);
    const metrics = await texts(page, 'tr.record-row td:nth-child(3)');
    assert.ok(metrics.length > 0 && metrics.every((m) => m === 'api_calls'), `${metrics}`);

    await visit(page, '/admin/events');
    const first = await attrs(page, 'tr.event-row', 'data-id');
    await follow(page, '#next-page');
    const second = await attrs(page, 'tr.event-row', 'data-id');
    assert.ok(second.length > 0 && second.every((id) => !first.includes(id)));
    await follow(page, '#first-page');
    assert.deepEqual(await attrs(page, 'tr.event-row', 'data-id'), first);
    assertNoProblems(page);
  } finally {
    await ctx.close();
  }
});

test(`[${STORE}] on a phone (390x844) the tenant page does not overflow sideways and the navigation is visible`, T, async () => {
  const ctx = await newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });
  try {
    const page = await openPage(ctx);
    await signIn(page, ADMIN_PASSWORD);
    for (const [url, name] of [
      ['/admin/tenants/acme', '12-phone-tenant-acme'],
      ['/admin/records', '13-phone-records'],
    ]) {
      await visit(page, url);
      const { scrollWidth, innerWidth } = await page.evaluate(() => ({
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: window.innerWidth,
      }));
      assert.ok(scrollWidth <= innerWidth + 1, `${url}: the page is ${scrollWidth}px wide in a ${innerWidth}px viewport`);
      const nav = page.locator('header nav');
      assert.ok(await nav.isVisible(), `${url}: the navigation is visible`);
      for (const link of await nav.locator('a').all()) {
        const b = await link.boundingBox();
        assert.ok(b && b.x >= 0 && b.x + b.width <= innerWidth + 1, `${url}: nav link inside the screen: ${JSON.stringify(b)}`);
      }
      assert.ok(await page.locator('#logout').isVisible(), `${url}: log out is reachable`);
      await shot(page, name);
    }
    const chart = await page.goto('/admin/tenants/acme').then(() =>
      page.locator('svg.usage-chart[data-metric=api_calls]').boundingBox(),
    );
    assert.ok(chart && chart.width > 0 && chart.x + chart.width <= 391, `the chart fits: ${JSON.stringify(chart)}`);
    assertNoProblems(page);
  } finally {
    await ctx.close();
  }
});

test(`[${STORE}] logging out returns to sign-in and the old session cookie no longer works anywhere`, T, async () => {
  const ctx = await newContext();
  const replay = await newContext();
  try {
    const page = await openPage(ctx);
    await signIn(page, ADMIN_PASSWORD);
    const old = (await ctx.cookies()).find((c) => c.name === SESSION_COOKIE);
    assert.ok(old, 'signed in');
    await follow(page, '#logout');
    assert.equal(pathOf(page), '/admin/login');
    await page.locator('#password').waitFor({ state: 'visible' });
    assert.equal((await ctx.cookies()).filter((c) => c.name === SESSION_COOKIE).length, 0, 'the cookie is cleared');
    await page.goto('/admin/records');
    assert.equal(pathOf(page), '/admin/login', 'signed out in this browser');

    // The old cookie, replayed from another browser, was ended on the server.
    await replay.addCookies([old]);
    const other = await openPage(replay);
    await other.goto('/admin/tenants');
    assert.equal(pathOf(other), '/admin/login', 'the ended session is refused');
    assert.equal(await other.locator('#logout').count(), 0);
  } finally {
    await ctx.close();
    await replay.close();
  }
});

test(`[${STORE}] a logout POST without the session's CSRF token is refused with 403 and ends nothing`, T, async () => {
  const ctx = await newContext();
  try {
    const page = await openPage(ctx);
    await signIn(page, ADMIN_PASSWORD);
    const session = (await ctx.cookies()).find((c) => c.name === SESSION_COOKIE);
    assert.ok(session);
    const headers = { Cookie: `${SESSION_COOKIE}=${session.value}` };
    const none = await ctx.request.post('/admin/logout', { headers, form: {}, maxRedirects: 0 });
    assert.equal(none.status(), 403, 'no token');
    assert.match(await none.text(), /CSRF/);
    const wrong = await ctx.request.post('/admin/logout', {
      headers,
      form: { csrf_token: 'a'.repeat(64) },
      maxRedirects: 0,
    });
    assert.equal(wrong.status(), 403, 'a wrong token');
    // The session still works.
    await visit(page, '/admin/plans');
    assert.equal(pathOf(page), '/admin/plans');
    assert.ok(await page.locator('#logout').isVisible());
  } finally {
    await ctx.close();
  }
});
