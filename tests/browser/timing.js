// Page-load times of the token cards in headless Chromium (Navigation
// Timing: request start to the load event), for tests/it/console.rs at
// 10,000 tokens. Environment: CONSOLE_LOGIN_URL, CONSOLE_TENANT. Prints one
// JSON line: milliseconds per page.
"use strict";

const { chromium } = require("playwright-core");
const { spawnSync } = require("node:child_process");

(async () => {
  const login = process.env.CONSOLE_LOGIN_URL;
  const tenant = process.env.CONSOLE_TENANT;
  const origin = new URL(login).origin;
  const executablePath = spawnSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).stdout.trim();
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
  });
  const page = await browser.newPage();
  const timing = async () =>
    page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      return Math.round((nav.loadEventEnd - nav.startTime) * 10) / 10;
    });
  const results = {};
  await page.goto(login);
  const list = `${origin}/tenants/${tenant}/tokens`;
  await page.goto(list); // warm-up
  await page.goto(list);
  results.first_page_ms = await timing();
  results.cards = await page.locator("article.card").count();
  await page.click("a[rel=next]");
  await page.waitForLoadState("load");
  results.next_page_ms = await timing();
  await page.goto(`${list}?q=t09999`);
  results.search_last_ms = await timing();
  await page.goto(`${list}?q=no-such-token`);
  results.search_none_ms = await timing();
  await browser.close();
  process.stdout.write(`${JSON.stringify(results)}\n`);
})().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
