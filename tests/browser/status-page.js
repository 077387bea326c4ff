// The /status page in Debian's headless chromium (puppeteer-core drives the
// system browser; nothing is downloaded). Run by tests/integration/test_status.c:
//   node tests/browser/status-page.js URL TOKEN OUTDIR
// It loads the page with Basic credentials, waits for the page's own refresh to
// fill the tables, writes OUTDIR/page-ready and waits for OUTDIR/traffic-sent
// (the C test sends traffic in between), then waits for the numbers to change.
// Every request the page makes must stay on the page's origin. A screenshot goes
// to OUTDIR/status.png.
"use strict";
const fs = require("fs");
const path = require("path");
const puppeteer = require("puppeteer-core");

const [url, token, outdir] = process.argv.slice(2);
const T = 30000;

function fail(msg) {
  console.error("FAIL: " + msg);
  process.exit(1);
}

async function waitForFile(file, ms) {
  const until = Date.now() + ms;
  while (!fs.existsSync(file)) {
    if (Date.now() > until) fail("no " + file + " within " + ms + " ms");
    await new Promise((r) => setTimeout(r, 50));
  }
}

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    userDataDir: path.join(outdir, "chromium-profile"),
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const origin = new URL(url).origin;
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    await page.authenticate({ username: "admin", password: token });
    const resp = await page.goto(url, { waitUntil: "load", timeout: T });
    if (!resp || resp.status() !== 200) fail("page load: HTTP " + (resp && resp.status()));
    await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1, { timeout: T });
    const before = await page.evaluate(() => ({
      backends: [...document.querySelectorAll("#backends td.backend")].map((td) => td.textContent.trim()),
      states: [...document.querySelectorAll("#backends td.state")].map((td) => td.textContent),
      chat: [...document.querySelectorAll("#routes tr.route")].map((tr) => tr.children[3].textContent),
    }));
    console.log("before: " + JSON.stringify(before));
    if (before.backends.length < 1) fail("no backend rows");
    if (!before.states.every((s) => s === "up")) fail("backend states " + before.states);
    if (before.chat.length < 1) fail("no route rows");
    fs.writeFileSync(path.join(outdir, "page-ready"), "1");
    await waitForFile(path.join(outdir, "traffic-sent"), T);
    const want = Number(before.chat[0]);
    await page.waitForFunction(
      (w) => {
        const tr = document.querySelector("#routes tr.route");
        return tr && Number(tr.children[3].textContent) > w;
      },
      { timeout: T },
      want
    );
    const after = await page.evaluate(() => ({
      chat: document.querySelector("#routes tr.route").children[3].textContent,
      keys: [...document.querySelectorAll("#keys tr.key td:first-child")].map((td) => td.textContent),
      refreshes: Number(document.body.dataset.refreshes),
    }));
    console.log("after: " + JSON.stringify(after));
    if (after.keys.length < 1 || after.keys[0] === "") fail("no key rows after traffic");
    const shot = path.join(outdir, "status.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log("screenshot: " + shot);
    const foreign = requests.filter((u) => new URL(u).origin !== origin);
    if (foreign.length) fail("requests to another origin: " + foreign.join(" "));
    if (!requests.some((u) => u.endsWith("/status.json"))) fail("the page never fetched status.json");
    console.log("requests: " + requests.length + ", all to " + origin);
    console.log("PASS");
  } finally {
    await browser.close();
  }
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
