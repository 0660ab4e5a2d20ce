// The dashboard in headless Chromium (Debian's chromium, driven by
// puppeteer-core from build/npm): what a user does, step by step, with what
// the page shows printed as one JSON object on stdout for the test to check.
//
// usage: node dashboard_driver.js CONFIG_JSON
//   {"url": "http://127.0.0.12:18083/", "key": "...", "secret": "...",
//    "out": "DIR for screenshots", "kick": "client id or null",
//    "chromium": "/usr/bin/chromium", "timeout_ms": 20000,
//    "samples": chart samples to wait for on the overview (default 3)}
// Exit 0 with the report; 1 with a message on stderr when a step did not
// happen within its timeout. Every wait is for a condition on the page.
const puppeteer = require("puppeteer-core");
const path = require("path");

const cfg = JSON.parse(process.argv[2]);
const T = cfg.timeout_ms || 20000;
const report = { steps: [], page_errors: [], csp_violations: [] };

async function main() {
  const browser = await puppeteer.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
      "--no-default-browser-check", "--disable-extensions", "--proxy-server=direct://",
      "--proxy-bypass-list=*"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 860 });
    page.on("pageerror", (e) => report.page_errors.push(String(e)));
    await page.evaluateOnNewDocument(() => {
      document.addEventListener("securitypolicyviolation", (e) => {
        (window.__csp = window.__csp || []).push(e.violatedDirective + " " + e.blockedURI);
      });
    });
    const resp = await page.goto(cfg.url, { waitUntil: "load", timeout: T });
    report.headers = resp.headers();
    report.steps.push("loaded");

    // A wrong secret: refused, the log-in form stays.
    await page.type("#login-key", cfg.key);
    await page.type("#login-secret", "wrong-" + cfg.secret);
    await page.click("#login-submit");
    await page.waitForFunction(() => document.querySelector("#login-error").textContent !== "",
      { timeout: T });
    report.wrong_secret_error = await page.$eval("#login-error", (e) => e.textContent);
    report.login_visible_after_wrong = await page.$eval("#view-login", (e) => !e.hidden);

    // The right one: the overview with every node.
    await page.$eval("#login-secret", (e) => { e.value = ""; });
    await page.type("#login-secret", cfg.secret);
    await page.click("#login-submit");
    await page.waitForFunction(() => document.querySelectorAll("#nodes-table tbody tr").length >= 3,
      { timeout: T });
    report.steps.push("logged in");
    report.stored_auth = await page.evaluate(() => sessionStorage.getItem("starling.auth") !== null);
    // samples on the charts (3: the rates have been computed twice)
    await page.waitForFunction(
      (n) => Number(document.querySelector("#chart-in").dataset.points || 0) >= n,
      { timeout: T + 2000 * (cfg.samples || 3) }, cfg.samples || 3);
    report.nodes = await page.$$eval("#nodes-table tbody tr", (rows) => rows.map((r) => {
      const c = [...r.cells].map((td) => td.textContent);
      return { name: c[0], address: c[1], role: c[2], reachable: c[3], leader: c[4], clients: c[5] };
    }));
    report.summary = await page.$eval("#cluster-summary", (e) => e.textContent);
    report.totals = await page.$$eval("#totals dd", (dds) =>
      Object.fromEntries(dds.map((d) => [d.dataset.total, d.textContent])));
    report.chart_last_in = await page.$eval("#chart-in", (e) => Number(e.dataset.last));
    await page.screenshot({ path: path.join(cfg.out, "overview.png") });
    report.steps.push("overview");

    // Clients: the list, and the kick.
    await page.click('#nav a[data-view="clients"]');
    await page.waitForFunction(() => document.querySelector("#clients-status").textContent !== "",
      { timeout: T });
    report.clients_status = await page.$eval("#clients-status", (e) => e.textContent);
    report.clients_available = !/not available/.test(report.clients_status);
    if (report.clients_available) {
      report.client_ids = await page.$$eval("#clients-table tbody tr [data-kick]",
        (bs) => bs.map((b) => b.dataset.kick));
    }
    await page.screenshot({ path: path.join(cfg.out, "clients.png") });
    if (cfg.kick && report.clients_available) {
      const sel = `#clients-table [data-kick="${cfg.kick}"]`;
      await page.waitForSelector(sel, { timeout: T });
      await page.click(sel);
      await page.waitForFunction(
        (s) => !document.querySelector(s) && /kicked/.test(document.querySelector("#clients-status").textContent),
        { timeout: T }, sel);
      report.kicked = true;
      report.clients_status_after_kick = await page.$eval("#clients-status", (e) => e.textContent);
      await page.screenshot({ path: path.join(cfg.out, "kicked.png") });
    }
    report.steps.push("clients");

    // Publish through the page.
    // The view is shown by the page's hashchange handler, a task after the
    // click: typing before it runs focuses a hidden field, the keys go
    // nowhere, and the empty required topic stops the form's submit.
    await page.click('#nav a[data-view="publish"]');
    await page.waitForSelector("#view-publish:not([hidden])", { timeout: T });
    await page.type("#pub-topic", "dash/test");
    await page.type("#pub-payload", "from the dashboard");
    await page.click('#publish-form button[type="submit"]');
    await page.waitForFunction(() => document.querySelector("#publish-status").textContent !== "",
      { timeout: T });
    report.publish_status = await page.$eval("#publish-status", (e) => e.textContent);

    // The views of endpoints that may not exist on this node.
    for (const [view, status] of [["subscriptions", "#subs-status"], ["retained", "#retained-status"],
      ["banned", "#banned-status"]]) {
      await page.click(`#nav a[data-view="${view}"]`);
      await page.waitForFunction((s) => document.querySelector(s).textContent !== "", { timeout: T }, status);
      report[view + "_status"] = await page.$eval(status, (e) => e.textContent);
    }

    // Log out: the key is gone.
    await page.click("#logout");
    report.stored_auth_after_logout = await page.evaluate(
      () => sessionStorage.getItem("starling.auth") !== null);
    report.csp_violations = await page.evaluate(() => window.__csp || []);
    report.steps.push("logged out");
  } finally {
    await browser.close();
  }
}

const timer = setTimeout(() => {
  console.error("dashboard driver: gave up after 120 s; report so far: " + JSON.stringify(report));
  process.exit(1);
}, 120000);
main().then(() => {
  clearTimeout(timer);
  console.log(JSON.stringify(report));
}, (e) => {
  clearTimeout(timer);
  console.error("dashboard driver: " + e.stack + "\nreport so far: " + JSON.stringify(report));
  process.exit(1);
});
