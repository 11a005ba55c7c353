// Drives the operator dashboard in Debian's Chromium through playwright-core, as an operator
// would: enter the token, see the jobs, press "Back up now", watch the new job's runs all
// succeed, wait (through the API) until every new backup is verified and see the page say so
// (per database, in the job, in the backup history and among the restores and verifications),
// and check the page fits a 375-px-wide phone. Run by tests/e2e/test_dashboard.py.
//
//   node tests/e2e/dashboard_check.mjs BASE_URL TOKEN SCREENSHOT.png [--expect-refused]
//
// With --expect-refused the token is one the service refuses: the page must say so, ask again,
// and show no data. Prints one JSON line with what it saw; exits non-zero on any failure.

import { chromium } from 'playwright-core';

const [base, token, screenshot, mode] = process.argv.slice(2);
if (!base || !token || !screenshot) {
  console.error('usage: node dashboard_check.mjs BASE_URL TOKEN SCREENSHOT.png [--expect-refused]');
  process.exit(2);
}
const expectRefused = mode === '--expect-refused';
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const JOB_TIMEOUT_MS = Number(process.env.DASHBOARD_JOB_TIMEOUT_MS || 120000);
const VERIFY_TIMEOUT_MS = Number(process.env.DASHBOARD_VERIFY_TIMEOUT_MS || 180000);
const FINAL_VERIFY_STATES = ['verified', 'verify_failed', 'skipped'];

// The API as the test sees it (not through the page).
async function apiGet(path) {
  const response = await fetch(new URL(path, base), { headers: { Authorization: 'Bearer ' + token, Accept: 'application/json' } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(`GET ${path} answered ${response.status}: ${JSON.stringify(body)}`);
  return body;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Retries `probe` (which answers {ok, detail}) until it holds: the page polls every 3 s, so
// it may lag the API by one poll while other work (such as earlier verifications) moves on.
async function eventually(what, probe, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await probe();
    if (result.ok) return result;
    check(Date.now() < deadline, `${what}: ${result.detail}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

const report = { mode: expectRefused ? 'refused' : 'admin', screenshot };
const problems = [];   // page errors, failed requests, CSP violations
const consoleLines = [];

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in a container: Chromium's sandbox needs namespaces it may not have.
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    consoleLines.push(m.type() + ': ' + m.text());
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 40[13]/.test(m.text())) {
      problems.push('console error: ' + m.text());
    }
  });
  const requestUrls = [];
  page.on('request', (r) => requestUrls.push(r.url()));

  const response = await page.goto(new URL('/dashboard', base).href, { waitUntil: 'domcontentloaded' });
  check(response && response.status() === 200, `GET /dashboard answered ${response && response.status()}`);
  check((response.headers()['content-security-policy'] || '').includes("default-src 'none'"), 'the dashboard has no strict CSP');

  // The token form, empty, and nothing else.
  await page.locator('#token-form').waitFor({ state: 'visible', timeout: 10000 });
  check(await page.locator('#app').isHidden(), 'data sections are shown before a token was entered');
  await page.locator('#token-input').fill(token);
  await page.locator('#token-input').press('Enter');

  if (expectRefused) {
    const error = page.locator('#auth-error');
    await error.waitFor({ state: 'visible', timeout: 20000 });
    report.authError = (await error.textContent()).trim();
    check(/refused|403|401/i.test(report.authError), `unexpected auth message: ${report.authError}`);
    check(await page.locator('#token-form').isVisible(), 'the token form is not shown again');
    check(await page.locator('#app').isHidden(), 'data sections are visible after a refused token');
    report.jobCards = await page.locator('[data-job-id]').count();
    check(report.jobCards === 0, 'job rows are shown after a refused token');
    check(await page.evaluate(() => document.querySelectorAll('#jobs *, #dead-letters *, #storage *, #history-items *, #databases *, #operations *, #service-status *').length) === 0,
      'data remains in the page after a refused token');
    check(await page.evaluate(() => Object.keys(sessionStorage).length) === 0, 'a refused token was kept in sessionStorage');
  } else {
    // The jobs list renders and the page reports itself live.
    await page.locator('#live[data-live="ok"]').waitFor({ timeout: 30000 });
    await page.waitForFunction(() => {
      const jobs = document.getElementById('jobs');
      return jobs && jobs.children.length > 0 && !/Loading/.test(jobs.textContent);
    }, null, { timeout: 30000 });
    const before = new Set(await page.locator('#jobs [data-job-id]').evaluateAll((els) => els.map((e) => e.dataset.jobId)));
    report.jobsBefore = before.size;

    // "Back up now": the new job shows at once (before its first poll), then its runs finish.
    const clickedAt = Date.now();
    await page.locator('#backup-now').click();
    const newJob = await page.waitForFunction((known) => {
      const card = [...document.querySelectorAll('#jobs [data-job-id]')].find((e) => !known.includes(e.dataset.jobId));
      return card ? card.dataset.jobId : null;
    }, [...before], { timeout: 5000 });
    const jobId = await newJob.jsonValue();
    report.jobId = jobId;
    report.newJobShownAfterMs = Date.now() - clickedAt;
    const card = page.locator(`#jobs [data-job-id="${jobId}"]`);
    check(await card.locator('[data-run-state]').count() > 0, 'the new job shows no runs');

    const states = new Set();
    const deadline = Date.now() + JOB_TIMEOUT_MS;
    for (;;) {
      const runs = await card.locator('[data-run-state]').evaluateAll((els) => els.map((e) => e.dataset.runState));
      runs.forEach((s) => states.add(s));
      const placeholder = await card.getAttribute('data-placeholder');
      if (!placeholder && runs.length && runs.every((s) => s === 'succeeded')) {
        report.runs = runs.length;
        break;
      }
      check(!runs.includes('dead'), `a run of the new job is dead: ${runs.join(', ')}`);
      check(Date.now() < deadline, `the new job's runs did not all succeed within ${JOB_TIMEOUT_MS} ms: ${runs.join(', ')}`);
      await page.waitForTimeout(500);
    }
    report.statesSeen = [...states];
    report.jobSucceededAfterMs = Date.now() - clickedAt;
    check(await card.getAttribute('data-job-status') === 'completed', 'the finished job is not shown as completed');
    // Each succeeded run shows a size and a duration.
    const cells = await card.locator('[data-run-state="succeeded"]').first().locator('td').allTextContents();
    check(cells.some((t) => /\d (B|KiB|MiB|GiB)$/.test(t.trim())), `no human size in the run row: ${cells.join(' | ')}`);
    check(cells.some((t) => /\d (ms|s)$|min \d/.test(t.trim())), `no duration in the run row: ${cells.join(' | ')}`);

    // Every new backup is verified (restored into the scratch database and compared): wait for
    // that through the API, then see the page show it.
    let apiRuns = [];
    const verifyDeadline = Date.now() + VERIFY_TIMEOUT_MS;
    for (;;) {
      apiRuns = (await apiGet('/jobs/' + encodeURIComponent(jobId))).runs;
      if (apiRuns.every((r) => FINAL_VERIFY_STATES.includes(r.verifyState))) break;
      check(Date.now() < verifyDeadline, `the new job's backups were not verified within ${VERIFY_TIMEOUT_MS} ms: ` +
        apiRuns.map((r) => r.database + '=' + r.verifyState).join(', '));
      await page.waitForTimeout(500);
    }
    report.verifiedAfterMs = Date.now() - clickedAt;
    report.apiVerifyStates = Object.fromEntries(apiRuns.map((r) => [r.database, r.verifyState]));
    check(apiRuns.every((r) => r.verifyState === 'verified' && r.verifyOperation),
      `not every new backup was verified: ${JSON.stringify(apiRuns.map((r) => [r.database, r.verifyState, r.verifyTable, r.verifyDetail]))}`);
    report.verifiedRuns = apiRuns.map((r) => ({ database: r.database, runId: r.id, key: r.r2Key, operation: r.verifyOperation }));

    // Databases: each one's newest backup is this job's, shown verified with what matched.
    const pageWait = { timeout: 30000, polling: 250 };
    await page.waitForFunction((runs) => runs.every((r) => {
      const row = document.querySelector(`#database-verification tr[data-database="${CSS.escape(r.database)}"]`);
      return row && row.dataset.runId === r.runId && row.dataset.verifyState === 'verified';
    }), report.verifiedRuns, pageWait).catch(() => {});
    report.databases = await page.locator('#database-verification tbody tr').evaluateAll((rows) => rows.map((row) => ({
      database: row.dataset.database, runId: row.dataset.runId || null, state: row.dataset.verifyState,
      badge: (row.querySelector('[data-verify-badge]') || {}).textContent || null,
      text: row.innerText.replace(/\s+/g, ' ').trim(),
    })));
    for (const r of report.verifiedRuns) {
      const shown = report.databases.find((d) => d.database === r.database);
      check(shown, `the Databases section has no row for ${r.database}: ${JSON.stringify(report.databases)}`);
      check(shown.runId === r.runId && shown.state === 'verified' && shown.badge === 'verified',
        `the Databases section does not show ${r.database}'s new backup verified: ${JSON.stringify(shown)}`);
      check(/tables? and [\d,]+ rows? restored and matched/.test(shown.text), `no verification detail for ${r.database}: ${shown.text}`);
      check(shown.text.includes(r.key), `the Databases section does not name ${r.key}: ${shown.text}`);
    }
    await eventually('the page shows another overall status than GET /status', async () => {
      const shown = (await page.locator('#service-status').innerText()).trim();
      const api = (await apiGet('/status')).status;
      report.serviceStatus = shown;
      return { ok: shown === api, detail: `page "${shown}", API "${api}"` };
    });

    // The job's runs show their verification.
    await page.waitForFunction((id) => {
      const cells = [...document.querySelectorAll(`#jobs [data-job-id="${id}"] td[data-verify-state]`)];
      return cells.length > 0 && cells.every((c) => c.dataset.verifyState === 'verified');
    }, jobId, pageWait).catch(() => {});
    const runBadges = await card.locator('td[data-verify-state]').evaluateAll((cells) => cells.map((c) => [c.dataset.verifyState, c.textContent.trim()]));
    check(runBadges.length === apiRuns.length && runBadges.every(([s, t]) => s === 'verified' && t === 'verified'),
      `the job's runs do not all show "verified": ${JSON.stringify(runBadges)}`);
    report.runVerifyBadges = runBadges.length;

    // Restores and verifications: each verification, succeeded, of this job's backup.
    await page.waitForFunction((runs) => runs.every((r) => {
      const row = document.querySelector(`#operations-table tr[data-operation-id="${CSS.escape(r.operation)}"]`);
      return row && row.dataset.operationState === 'succeeded';
    }), report.verifiedRuns, pageWait).catch(() => {});
    report.operations = await page.locator('#operations-table tbody tr').evaluateAll((rows) => rows.map((row) => ({
      id: row.dataset.operationId, kind: row.dataset.operationKind, state: row.dataset.operationState,
      sourceKey: row.dataset.sourceKey, text: row.innerText.replace(/\s+/g, ' ').trim(),
    })));
    for (const r of report.verifiedRuns) {
      const op = report.operations.find((o) => o.id === r.operation);
      check(op, `the verification ${r.operation} of ${r.key} is not among the operations shown`);
      check(op.kind === 'verify' && op.state === 'succeeded' && op.sourceKey === r.key,
        `the verification of ${r.key} is shown wrongly: ${JSON.stringify(op)}`);
      check(/Verification/.test(op.text) && /succeeded/.test(op.text) && op.text.includes(r.key) && /rows matched/.test(op.text),
        `the verification row lacks its kind, state, backup or result: ${op.text}`);
    }
    await eventually('the operations shown differ from GET /operations', async () => {
      const api = (await apiGet('/operations?limit=20')).operations.map((o) => [o.id, o.kind, o.state, o.sourceKey]);
      const shown = await page.locator('#operations-table tbody tr').evaluateAll((rows) => rows.map((row) =>
        [row.dataset.operationId, row.dataset.operationKind, row.dataset.operationState, row.dataset.sourceKey]));
      return { ok: JSON.stringify(api) === JSON.stringify(shown), detail: `page ${JSON.stringify(shown)}, API ${JSON.stringify(api)}` };
    });

    // The history of the first database draws its size trend, and lists the new backup verified.
    await page.locator('#history-chart svg circle').first().waitFor({ timeout: 30000 });
    report.historyPoints = await page.locator('#history-chart svg circle').count();
    const historyDb = await page.locator('#history').getAttribute('data-database');
    const historyRun = report.verifiedRuns.find((r) => r.database === historyDb);
    check(historyRun, `the history shows ${historyDb}, which the new job did not back up`);
    if (await page.locator('#history-more').count() && /Show all/.test(await page.locator('#history-more').textContent())) {
      await page.locator('#history-more').click();
    }
    const historyRow = page.locator(`#history-items tr[data-key="${historyRun.key}"] td[data-verify-state]`);
    await page.waitForFunction((key) => {
      const cell = document.querySelector(`#history-items tr[data-key="${CSS.escape(key)}"] td[data-verify-state]`);
      return cell && cell.dataset.verifyState === 'verified';
    }, historyRun.key, pageWait).catch(() => {});
    check(await historyRow.count() === 1, `the history table has no row for ${historyRun.key}`);
    report.historyVerification = (await historyRow.textContent()).trim();
    check(report.historyVerification === 'verified' && await historyRow.getAttribute('data-verify-state') === 'verified',
      `the history row of ${historyRun.key} shows "${report.historyVerification}"`);
    const hoverText = await historyRow.locator('[data-verify-badge]').getAttribute('title');
    check(/restored and matched/.test(hoverText || ''), `the history badge gives no detail on hover: ${hoverText}`);
    report.deadLettersShown = await page.locator('#dead-letters').isVisible();
    const shown = await page.locator('#app').innerText();
    const stray = shown.match(/\b(null|undefined|NaN|\[object \w+\])/);
    check(!stray, `the page shows a stray "${stray && stray[0]}"`);

    // The token appears nowhere: not in the DOM, the address bar, or any request's URL.
    const html = await page.content();
    check(!html.includes(token), 'the token appears in the page');
    check(!page.url().includes(token), 'the token appears in the URL');
    check(!requestUrls.some((u) => u.includes(token)), 'the token appears in a request URL');
    check(!consoleLines.some((l) => l.includes(token)), 'the token appears in the console');
  }

  // A phone: nothing wider than 375 px.
  await page.setViewportSize({ width: 375, height: 812 });
  await page.waitForTimeout(400);
  const overflow = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll('body *')]
      .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > width + 0.5)
      .slice(0, 5)
      .map((e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ').join('.') : '')
        + ' right=' + Math.round(e.getBoundingClientRect().right));
    return { scrollWidth: document.documentElement.scrollWidth, bodyScrollWidth: document.body.scrollWidth, width, wide };
  });
  report.phone = overflow;
  check(overflow.scrollWidth <= overflow.width && overflow.bodyScrollWidth <= overflow.width && overflow.wide.length === 0,
    `horizontal overflow at 375 px: ${JSON.stringify(overflow)}`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, '') + '-phone.png', fullPage: true });

  await page.setViewportSize({ width: 1280, height: 900 });
  await page.waitForTimeout(300);
  await page.screenshot({ path: screenshot, fullPage: true });

  check(problems.length === 0, `problems in the page: ${problems.join('; ')}`);
  report.ok = true;
  console.log(JSON.stringify(report));
} catch (e) {
  report.ok = false;
  report.error = e.message;
  report.problems = problems;
  report.console = consoleLines.slice(-20);
  if (page) {
    await page.screenshot({ path: screenshot.replace(/\.png$/, '') + '-failure.png', fullPage: true }).catch(() => {});
  }
  console.log(JSON.stringify(report));
  process.exitCode = 1;
} finally {
  await browser.close();
}
