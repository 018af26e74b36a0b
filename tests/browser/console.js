// Drives `aitokens console` in Debian's headless Chromium through the flows of
// issue 16, then prints one JSON line of results on stdout for
// tests/it/console.rs to assert. Run by that test, which starts `aitokens dev`
// and `aitokens console` and passes, in the environment:
//   CONSOLE_LOGIN_URL   the login URL the console printed
//   CONSOLE_VALUES      token values to use, comma-separated (4)
//   AITOKENS_BIN        the aitokens binary (resolves with the agent certificate)
//   AITOKENS_PROFILE    the dev profile (admin and agent certificates)
//   SCREENSHOT_DIR      where screenshots go
// Nothing here downloads a browser: executablePath is the system chromium.
"use strict";

const { chromium } = require("playwright-core");
const { execFileSync, spawnSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const loginUrl = must("CONSOLE_LOGIN_URL");
const values = must("CONSOLE_VALUES").split(",");
const bin = must("AITOKENS_BIN");
const profile = must("AITOKENS_PROFILE");
const shots = must("SCREENSHOT_DIR");
const origin = new URL(loginUrl).origin;
const tenant = "acme";
const markup = "<img src=x onerror=alert(1)>";

function must(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function chromiumPath() {
  const found = spawnSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" });
  const file = found.stdout.trim();
  if (found.status !== 0 || !file) throw new Error("chromium is not installed (apt-get install chromium)");
  return file;
}

const results = { steps: [], responses: 0, value_hits: [], dialogs: [], console_errors: [], screenshots: [], timings: {} };
const bodies = [];

function step(name) {
  results.steps.push(name);
  process.stderr.write(`browser step: ${name}\n`);
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

// The admin and agent CLI, outside the browser.
function cli(args, expectOk = true) {
  const run = spawnSync(bin, ["token", "--profile", profile, ...args], { encoding: "utf8" });
  if (expectOk && run.status !== 0) throw new Error(`aitokens token ${args.join(" ")}: ${run.stderr}`);
  return run;
}

function resolve(id) {
  return cli(["resolve", "--tenant", tenant, id], false);
}

async function shot(page, name) {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  results.screenshots.push(file);
}

function watch(page) {
  page.on("response", (response) => {
    results.responses += 1;
    bodies.push(
      response.body().then(
        (body) => ({ url: response.url(), body }),
        () => ({ url: response.url(), body: Buffer.alloc(0) }), // redirects have none
      ),
    );
  });
  page.on("dialog", async (dialog) => {
    results.dialogs.push(dialog.message());
    await dialog.dismiss();
  });
  page.on("console", (message) => {
    // A refused or failed request is asserted where it happens; anything
    // else logged as an error (a CSP violation, a script error) fails the test.
    const ignored = message.text().startsWith("Failed to load resource: the server responded with a status of");
    if (message.type() === "error" && !ignored) results.console_errors.push(message.text());
  });
  page.on("pageerror", (error) => results.console_errors.push(String(error)));
}

async function text(page, selector) {
  return (await page.locator(selector).first().textContent()).trim();
}

async function addToken(page, id, name, value, replaces) {
  if (!replaces) await page.goto(`${origin}/tenants/${tenant}/new`);
  await page.fill("#token_id", id);
  await page.fill("#display_name", name);
  await page.fill("#value", value);
  await page.click("form.stacked button[type=submit]");
  await page.waitForLoadState();
}

async function flows(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  watch(page);
  const [v1, v2, v3, v4] = values;

  step("log in with the printed URL");
  await page.goto(loginUrl);
  check(new URL(page.url()).pathname === "/", `after login at ${page.url()}`);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "aitokens_console");
  check(session && session.httpOnly && session.sameSite === "Strict", "session cookie HttpOnly, SameSite=Strict");

  step("pick the tenant");
  await page.fill("#tenant", tenant);
  await page.press("#tenant", "Enter");
  await page.waitForURL(`${origin}/tenants/${tenant}/tokens`);

  step("add a token through the form and see its card");
  await page.click("a.button:has-text('Add new token')");
  await page.waitForURL(/\/new$/);
  await addToken(page, "openai-prod", "OpenAI production", v1);
  check((await text(page, "p.flash")).startsWith("Created"), "created notice");
  await page.goto(`${origin}/tenants/${tenant}/tokens`);
  check((await text(page, "article.card[data-token-id=openai-prod] .display-name")) === "OpenAI production", "card");

  step("an error keeps the typed fields, empties the value, names what to do and the request id");
  await addToken(page, "openai-prod", "Duplicate", v4);
  check((await text(page, ".error")).includes("AlreadyExists"), "AlreadyExists shown");
  check((await text(page, ".error .request-id")).includes("console-"), "request id shown");
  check((await page.inputValue("#value")) === "", "value field emptied");
  check((await page.inputValue("#token_id")) === "openai-prod", "token id kept");

  step("a wrong field is named and marked, and the value field is emptied");
  await page.goto(`${origin}/tenants/${tenant}/new?replaces=no-such-token`);
  await addToken(page, "openai-typo", "Typo", v4, true);
  check((await text(page, ".error .fields")).includes("replaces"), "the field is named");
  check((await page.getAttribute("#replaces", "aria-invalid")) === "true", "the field is marked");
  check((await text(page, ".error")).includes("correct the field named above"), "what to do");
  check((await page.inputValue("#value")) === "", "value field emptied");

  step("rename it");
  await page.goto(`${origin}/tenants/${tenant}/tokens/openai-prod`);
  await page.fill("#token_id", "openai-main");
  await page.fill("#display_name", "OpenAI main");
  await page.click("form[action$='/rename'] button");
  await page.waitForURL(/\/tokens\/openai-main\?done=renamed$/);
  check((await text(page, "article.card .display-name")) === "OpenAI main", "renamed card");

  step("a rename conflict shows what changed");
  cli(["rename", "--tenant", tenant, "openai-main", "--display-name", "Changed elsewhere"]);
  await page.fill("#display_name", "My name");
  await page.click("form[action$='/rename'] button");
  check((await text(page, ".conflict")).includes("Changed elsewhere"), "conflict shows the new name");
  check((await page.inputValue("#display_name")) === "My name", "input kept");

  step("resolve with the agent certificate and see last resolved and the caller");
  const resolved = resolve("openai-main");
  check(resolved.status === 0 && resolved.stdout === `${v1}\n`, `resolve: ${resolved.stderr}`);
  await page.goto(`${origin}/tenants/${tenant}/tokens/openai-main`);
  check((await text(page, "dd.last-resolved")) !== "never", "last resolved set");
  check((await text(page, "dd.resolve-count")) === "1", "one resolve");
  const caller = await text(page, "table.usage td.caller");
  check(caller.length > 0, "caller listed");
  results.caller = caller;

  step("a binding made with the CLI is listed");
  cli(["bind", "--tenant", tenant, "openai-main", "--id", "billing", "--purpose", "monthly invoices"]);
  await page.reload();
  check((await text(page, "#bindings + ul")).includes("billing"), "binding listed");

  step("try to remove it and see the blockers");
  await page.click("a.button.danger:has-text('Remove')");
  await page.waitForURL(/\/remove$/);
  const blockers = await text(page, "ul.blockers");
  check(blockers.includes("RECENT_CALLER") && blockers.includes(caller), `blockers: ${blockers}`);
  check(blockers.includes("BINDING") && blockers.includes("monthly invoices"), `blockers: ${blockers}`);
  check(await page.locator("button:has-text('Remove anyway')").isDisabled(), "remove anyway disabled until the id is typed");
  await page.click("text=Cancel");

  step("disable and enable, with a confirmation");
  await page.click("a.button:has-text('Disable')");
  await page.click("form[action$='/state'] button");
  await page.waitForURL(/done=disabled$/);
  check((await text(page, ".badge.disabled")) === "Disabled", "disabled badge");
  check(resolve("openai-main").status === 1, "a disabled token does not resolve");
  await page.click("a.button:has-text('Enable')");
  await page.click("form[action$='/state'] button");
  await page.waitForURL(/done=enabled$/);
  check((await page.locator(".badge.disabled").count()) === 0, "badge gone");

  step("replace: create the new token with replaces");
  await page.click("a.button:has-text('Replace')");
  await page.waitForURL(/\/new\?replaces=openai-main$/);
  check((await page.inputValue("#replaces")) === "openai-main", "replaces prefilled");
  await addToken(page, "openai-next", "OpenAI next", v2, true);
  await page.waitForURL(/\/tokens\/openai-main\/replacement$/);
  check((await text(page, "#live")).includes("replaced by openai-next"), "replaced by shown");

  step("replace: the live view shows a caller that has not switched");
  check(resolve("openai-main").status === 0, "the old token still resolves");
  await page.locator("ul.not-switched li").first().waitFor({ timeout: 15000 });
  check((await text(page, "ul.not-switched")).includes(caller), "caller not switched yet");
  check(await page.locator("button:has-text('Remove old token')").isDisabled(), "remove old token disabled");
  await shot(page, "replace-flow");

  step("replace: remove the old token anyway, typing its id");
  await page.click("text=Remove anyway…");
  await page.waitForURL(/\/remove$/);
  await page.fill("#confirm", "openai-main");
  await page.click("button:has-text('Remove anyway')");
  check((await text(page, "p.flash")).includes("with force despite"), "forced removal reported");

  step("replace when nobody used the old token: Remove old token is enabled and removes it");
  await addToken(page, "anthropic-old", "Anthropic", v3);
  await page.click("a.button:has-text('Replace')");
  await addToken(page, "anthropic-new", "Anthropic (rotated)", v4, true);
  await page.waitForURL(/\/tokens\/anthropic-old\/replacement$/);
  const removeOld = page.locator("button:has-text('Remove old token')");
  check(!(await removeOld.isDisabled()), "remove old token enabled");
  await removeOld.click();
  await page.waitForLoadState();
  check((await text(page, "p.flash")).startsWith("Removed"), "old token removed");
  check(!(await text(page, "p.flash")).includes("force"), "without force");

  step("a display name with markup renders as text");
  await page.goto(`${origin}/tenants/${tenant}/tokens/anthropic-new`);
  await page.fill("#display_name", markup);
  await page.click("form[action$='/rename'] button");
  await page.waitForURL(/done=renamed$/);
  await page.goto(`${origin}/tenants/${tenant}/tokens`);
  check((await text(page, "article.card[data-token-id=anthropic-new] .display-name")) === markup, "markup as text");
  check((await page.locator("main img").count()) === 0, "no img element");

  step("the cards page: a replaced pair and a disabled token made with the CLI appear as cards");
  for (const [id, name, extra] of [
    ["mcp-github-v1", "GitHub MCP", []],
    ["mcp-github-v2", "GitHub MCP (rotated)", ["--replaces", "mcp-github-v1"]],
    ["slack-bot", "Slack bot", []],
  ]) {
    const created = spawnSync(
      bin,
      ["token", "--profile", profile, "create", "--tenant", tenant, id, "--display-name", name, ...extra],
      { input: values[3], encoding: "utf8" },
    );
    check(created.status === 0, `create ${id}: ${created.stderr}`);
  }
  cli(["disable", "--tenant", tenant, "slack-bot"]);
  await page.goto(`${origin}/tenants/${tenant}/tokens`);
  check((await text(page, "article.card[data-token-id=slack-bot] .badge.disabled")) === "Disabled", "badge");
  check((await text(page, "article.card[data-token-id=mcp-github-v1]")).includes("Replaced by"), "replaced by");
  check((await text(page, "article.card[data-token-id=mcp-github-v2]")).includes("Replaces"), "replaces");
  await page.fill("#q", "github");
  await page.press("#q", "Enter");
  await page.waitForURL(/\?q=github$/);
  check((await page.locator("article.card").count()) === 2, "search by id or name");
  await page.goto(`${origin}/tenants/${tenant}/tokens`);
  await shot(page, "cards");

  step("the audit trail with a filter");
  await page.goto(`${origin}/tenants/${tenant}/audit`);
  await page.fill("#resource", `tenants/${tenant}/tokens/openai-main`);
  await page.click("form.filters button");
  const rows = await page.locator("table.audit tr").count();
  check(rows > 3, `audit rows: ${rows}`);
  const methods = await text(page, "table.audit");
  check(methods.includes("RemoveToken") && !methods.includes("anthropic"), "filtered trail");

  step("readable at 360 px");
  await page.setViewportSize({ width: 360, height: 800 });
  await page.goto(`${origin}/tenants/${tenant}/tokens`);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 360, `page is ${width}px wide at 360`);
  await shot(page, "cards-360px");

  step("keyboard: the search field and the cards' links are reachable with Tab");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.tagName);
  check(focused === "A" || focused === "INPUT", `focus on ${focused}`);

  return context;
}

async function withoutJavaScript(browser, cookies) {
  step("without JavaScript: add, disable and enable through plain forms");
  const context = await browser.newContext({ javaScriptEnabled: false });
  await context.addCookies(cookies);
  const page = await context.newPage();
  watch(page);
  await addToken(page, "no-js", "Added without JavaScript", values[2]);
  check((await text(page, "p.flash")).startsWith("Created"), "created without JS");
  await page.click("a.button:has-text('Disable')");
  await page.click("form[action$='/state'] button");
  await page.waitForURL(/done=disabled$/);
  await page.click("a.button:has-text('Enable')");
  await page.click("form[action$='/state'] button");
  await page.waitForURL(/done=enabled$/);
  await context.close();
}

(async () => {
  fs.mkdirSync(shots, { recursive: true });
  fs.rmSync(path.join(shots, "failure.png"), { force: true });
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
  });
  let failure = null;
  try {
    const context = await flows(browser);
    await withoutJavaScript(browser, await context.cookies());
    await context.close();
  } catch (error) {
    failure = String(error && error.stack ? error.stack : error);
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
      }
    }
  }
  const settled = await Promise.all(bodies);
  for (const { url, body } of settled) {
    values.forEach((value, index) => {
      if (body.includes(Buffer.from(value))) results.value_hits.push({ url, value_index: index });
    });
  }
  results.scanned_bodies = settled.length;
  results.failure = failure;
  await browser.close();
  process.stdout.write(`${JSON.stringify(results)}\n`);
  process.exit(failure ? 1 : 0);
})();
