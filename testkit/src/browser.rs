//! A real headless Chromium driven over WebDriver (chromedriver), for the pages people
//! look at: the customer's tracking page and the operators' console.
//!
//! [`Browser::start`] spawns chromedriver on a free loopback port with a fresh Chromium
//! profile in a scratch directory; dropping the browser ends the session and the driver.
//! The calls are blocking (a small runtime of the browser's own), so a test can use them
//! beside an in-process hub running on another runtime's threads.
//!
//! Accessibility is checked with axe-core, the rule engine browsers' own audit tools use,
//! injected into the page as a script ([`Browser::axe`]). `scripts/test.sh` fetches a
//! pinned axe-core release from the npm registry into `.cache/axe-core/`; the check fails
//! with a message saying so when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// Debian's Chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The axe-core release `scripts/test.sh` fetches.
pub const AXE_VERSION: &str = "4.14.1";

/// One browser session. Blocking calls; panics with a readable message on failure (it
/// is a test harness).
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    runtime: tokio::runtime::Runtime,
}

/// An axe-core finding of impact "serious" or "critical".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule (`color-contrast`, `label`, ...).
    pub id: String,
    /// `serious` or `critical`.
    pub impact: String,
    /// What the rule wants, in axe's words.
    pub help: String,
    /// CSS selectors of the elements that break it.
    pub targets: Vec<String>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a phone-sized window
    /// (`width` x `height` CSS pixels). Fails with how to install them when missing.
    pub fn start(scratch: &Path, width: u32, height: u32) -> Self {
        Self::start_with(scratch, width, height, &[])
    }

    /// [`Browser::start`] with more Chromium switches, e.g. `--ignore-certificate-errors`
    /// for a test's own HTTPS server with a certificate made on the spot.
    pub fn start_with(scratch: &Path, width: u32, height: u32, extra: &[&str]) -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: run `bash scripts/test.sh` (it installs Debian's {package}) or `apt-get install {package}`"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the browser's runtime");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let profile = scratch.join(format!("chromium-profile-{port}"));
        let session = runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while http.get(format!("{base}/status")).send().await.is_err() {
                assert!(Instant::now() < deadline, "chromedriver did not start on {base}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut args: Vec<String> = [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect();
            args.push(format!("--window-size={width},{height}"));
            args.push(format!("--user-data-dir={}", profile.display()));
            let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args }}}});
            let reply: Value = http
                .post(format!("{base}/session"))
                .json(&capabilities)
                .send()
                .await
                .expect("new session")
                .json()
                .await
                .expect("session json");
            let id = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}"));
            format!("{base}/session/{id}")
        });
        Self { driver, http, session, runtime }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        self.runtime.block_on(async {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let reply = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = reply.status();
            let value: Value = reply.json().await.unwrap_or_else(|e| panic!("{method} {url}: not JSON: {e}"));
            assert!(status.is_success(), "{method} {url} answered {status}: {value}");
            value["value"].clone()
        })
    }

    /// Loads `url` and waits for it (WebDriver returns once the document has loaded).
    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// The current page's URL.
    pub fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its
    /// result.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// The page's visible text.
    pub fn text(&self) -> String {
        self.execute("return document.body.innerText;", json!([])).as_str().unwrap_or_default().to_owned()
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Types `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({ "text": text })));
    }

    /// Clicks the element `css` selects, as a user would (the browser follows a form's
    /// submission; the call returns once the next page has loaded).
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Clicks the element `css` selects and waits (up to 10 s) until the browser has
    /// loaded the next document: for a form's submit button or a link.
    pub fn click_and_wait(&self, css: &str) {
        self.execute("window.__doorstepBefore = true;", json!([]));
        self.click(css);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let done = self.execute(
                "return window.__doorstepBefore !== true && document.readyState === 'complete';",
                json!([]),
            );
            if done == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} loaded no new page within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG screenshot of the viewport at `path` (a test artifact).
    pub fn screenshot(&self, path: &Path) {
        let shot = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("base64 screenshot"))
            .expect("decode screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Runs axe-core's WCAG 2 A and AA rules on the current page and returns the serious
    /// and critical violations.
    pub fn axe(&self) -> Vec<Violation> {
        let path = axe_script();
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "axe-core is missing at {} ({e}): run `bash scripts/test.sh`, which fetches axe-core {AXE_VERSION} from the npm registry",
                path.display()
            )
        });
        self.execute(&source, json!([]));
        // axe.run is asynchronous: start it, then poll for its result.
        self.execute(
            "window.__axe = null; axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}})\
             .then(r => { window.__axe = r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, \
                 targets: v.nodes.map(n => n.target.join(' '))})); }, e => { window.__axe = String(e); });",
            json!([]),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = self.execute("return window.__axe;", json!([]));
            if let Some(s) = result.as_str() {
                panic!("axe-core failed: {s}");
            }
            if let Some(list) = result.as_array() {
                return list
                    .iter()
                    .map(|v| Violation {
                        id: v["id"].as_str().unwrap_or_default().to_owned(),
                        impact: v["impact"].as_str().unwrap_or_default().to_owned(),
                        help: v["help"].as_str().unwrap_or_default().to_owned(),
                        targets: v["targets"]
                            .as_array()
                            .map(|t| t.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                            .unwrap_or_default(),
                    })
                    .filter(|v| v.impact == "serious" || v.impact == "critical")
                    .collect();
            }
            assert!(Instant::now() < deadline, "axe-core did not finish within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let (http, session) = (&self.http, &self.session);
        let _ = self.runtime.block_on(async { http.delete(session).send().await });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where `scripts/test.sh` puts axe-core: `.cache/axe-core/<version>/axe.min.js` in the
/// workspace (found from the test's working directory up), or `DOORSTEP_AXE_JS`.
pub fn axe_script() -> PathBuf {
    if let Some(path) = std::env::var_os("DOORSTEP_AXE_JS") {
        return PathBuf::from(path);
    }
    let relative = Path::new(".cache/axe-core").join(AXE_VERSION).join("axe.min.js");
    let start = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    start
        .ancestors()
        .map(|dir| dir.join(&relative))
        .find(|path| path.exists())
        .unwrap_or_else(|| start.join(&relative))
}

/// Where a test keeps its screenshots: `target/test-artifacts/` (kept after the run, for
/// people to look at).
pub fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let start = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        // The workspace's target directory: beside the Cargo.lock above the test's crate.
        start.ancestors().find(|dir| dir.join("Cargo.lock").exists()).unwrap_or(&start).join("target")
    });
    target.join("test-artifacts").join(name)
}
