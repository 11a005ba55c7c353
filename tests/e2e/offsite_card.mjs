// Opens the operator dashboard in Debian's Chromium (playwright-core), signs in, and prints as
// one JSON line what its "Off-site copies" card says once it shows `expected` (a text the
// card must contain). Run by tests/e2e/test_offsite.py; exits non-zero if it never does.
//
//   node tests/e2e/offsite_card.mjs BASE_URL TOKEN EXPECTED

import { chromium } from 'playwright-core';

const [base, token, expected] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const page = await browser.newPage();
  await page.goto(new URL('/dashboard', base).toString());
  await page.locator('#token-input').fill(token);
  await page.locator('#token-input').press('Enter');
  const card = page.locator('#offsite');
  await page.waitForFunction((want) => document.querySelector('#offsite').innerText.includes(want), expected, { timeout: 30000 });
  const state = await card.locator('[data-offsite-state]').getAttribute('data-offsite-state');
  console.log(JSON.stringify({ text: await card.innerText(), state }));
} finally {
  await browser.close();
}
