//! The README's first command, as a newcomer runs it: `doorstep demo`. Checks the summary
//! the demo prints (every parcel ends where the story says, with the messages and alerts
//! that make it true), then loads the delivered parcel's tracking page in a real headless
//! Chromium over WebDriver and checks that the customer sees "delivered" and the photo.
//! Then it signs in to the operations console with the key the demo printed. The
//! screenshots are kept as artifacts: `target/test-artifacts/demo-*.png`.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use doorstep_testkit::browser::{Browser, artifact};
use serde_json::{Value, json};

const DEMO: &str = env!("CARGO_BIN_EXE_doorstep");

/// The running demo, stopped with SIGINT (its Ctrl-C) when dropped.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
}

impl Demo {
    fn start(summary: &Path, extra: &[&str]) -> Demo {
        let mut child = Command::new(DEMO)
            .args(["demo", "--keep-running", "--summary-json"])
            .arg(summary)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo { child, lines, output: Vec::new() }
    }

    /// Waits for the line starting with `prefix`; fails with everything printed so far.
    fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no line starting {prefix:?} within {timeout:?} (demo exit: {status:?}); output:\n{}",
                        self.output.join("\n")
                    );
                }
            }
        }
    }

    /// Ctrl-C once the demo says it is serving (it listens for Ctrl-C from then on).
    fn interrupt_and_wait(&mut self) -> std::process::ExitStatus {
        self.wait_for_line(
            "Serving the tracking pages and the console until Ctrl-C.",
            Duration::from_secs(30),
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo did not stop within 20 s of Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shipment<'a>(summary: &'a Value, tracking: &str) -> &'a Value {
    summary["shipments"]
        .as_array()
        .expect("shipments")
        .iter()
        .find(|s| s["tracking_number"] == tracking)
        .unwrap_or_else(|| panic!("{tracking} in the summary: {summary:#}"))
}

fn alerts(row: &Value) -> Vec<&str> {
    row["alerts"].as_array().expect("alerts").iter().filter_map(Value::as_str).collect()
}

fn texts<'a>(row: &'a Value, channel: &str) -> Vec<&'a str> {
    row["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["channel"] == channel)
        .filter_map(|m| m["text"].as_str())
        .collect()
}

#[test]
fn the_demo_tells_each_story_truthfully_and_the_tracking_page_shows_the_proof_in_a_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary_path = dir.path().join("summary.json");
    let mut demo = Demo::start(&summary_path, &[]);
    let link_line = demo.wait_for_line("Tracking page with proof of delivery:", Duration::from_secs(120));
    let summary: Value = serde_json::from_slice(&std::fs::read(&summary_path).expect("summary written"))
        .expect("summary is JSON");

    // The happy path: handed over at the door with a photo, the carrier agrees.
    let anna = shipment(&summary, "1Z999AA10123456784");
    assert_eq!(anna["milestone"], "delivered", "{anna:#}");
    assert_eq!(anna["proof_photo"], true, "{anna:#}");
    // The shop's signed Shopify webhook created it, knowing its order.
    assert_eq!(anna["order"], "#1001", "{anna:#}");
    assert!(alerts(anna).is_empty(), "{anna:#}");
    assert_eq!(texts(anna, "sms").iter().filter(|t| t.contains("was delivered")).count(), 1, "{anna:#}");

    // The carrier said delivered before the van came: operations hear of it at once, the
    // customer only when the van hands it over at the door.
    let ben = shipment(&summary, "9400111899223197428490");
    assert_eq!(alerts(ben), ["carrier_delivered_van_never_arrived"], "{ben:#}");
    assert_eq!(ben["milestone"], "delivered", "{ben:#}");
    let ben_sms = texts(ben, "sms");
    let nearby = ben_sms.iter().position(|t| t.contains("is nearby")).expect("nearby before delivered");
    let delivered = ben_sms.iter().position(|t| t.contains("was delivered")).expect("delivered");
    assert!(nearby < delivered, "{ben_sms:?}");

    // Handed over at the wrong door: never "delivered" to the customer, two alerts.
    let cleo = shipment(&summary, "794843185271");
    assert_ne!(cleo["milestone"], "delivered", "{cleo:#}");
    assert_eq!(alerts(cleo), ["delivered_away_from_address", "carrier_delivered_device_away"], "{cleo:#}");
    assert!(
        cleo["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .all(|m| !m["text"].as_str().unwrap_or_default().contains("was delivered"))
    );

    // Two parcels at one stop: each its own scan and its own messages.
    for tracking in ["1Z999AA10123456791", "1Z999AA10123456792"] {
        let row = shipment(&summary, tracking);
        assert_eq!(row["milestone"], "delivered", "{row:#}");
        assert_eq!(texts(row, "sms").iter().filter(|t| t.contains("was delivered")).count(), 1, "{row:#}");
    }

    // Nobody home: an honest exception with the driver's reason.
    let emil = shipment(&summary, "9205590164917312751089");
    assert_eq!(emil["milestone"], "exception", "{emil:#}");
    // In words, with what happens next; never the reason code or the driver's note.
    for channel in ["email", "sms"] {
        let told = texts(emil, channel);
        assert!(
            told.iter()
                .any(|t| t.contains("Nobody was at home") || t.contains("try again on the next working day")),
            "{channel}: {emil:#}"
        );
        assert!(
            told.iter().any(|t| t.contains("We will try again on the next working day.")),
            "{channel}: {emil:#}"
        );
        assert!(
            told.iter().all(|t| !t.contains("recipient_absent") && !t.contains("rang twice")),
            "{emil:#}"
        );
    }

    // Every message carries its own tracking link; nobody is told anything twice.
    for row in summary["shipments"].as_array().expect("shipments") {
        let mut seen = std::collections::HashSet::new();
        for m in row["messages"].as_array().expect("messages") {
            let text = m["text"].as_str().expect("text");
            assert!(text.contains("/t/"), "a message without a tracking link: {text}");
            // The same words on the same channel twice would be a repeated message.
            let words = format!("{}:{}", m["channel"], text.split("http").next().unwrap_or_default());
            assert!(seen.insert(words), "sent twice: {text}");
        }
    }
    let wall = summary["wall_s"].as_f64().expect("wall time");
    eprintln!("demo wall time to the summary: {wall:.1} s");

    // The customer's view, in a real browser; then the operator's, with the key the demo
    // printed.
    let link = link_line.rsplit(' ').next().expect("link").to_owned();
    let console_line = demo.wait_for_line("Operations console:", Duration::from_secs(30));
    let console_url = console_line.split_whitespace().nth(2).expect("console URL").to_owned();
    let key = console_line.rsplit(' ').next().expect("key").trim_end_matches(')').to_owned();
    assert!(key.starts_with("dsk_"), "{console_line}");
    let browser = Browser::start(dir.path(), 800, 1000);
    browser.goto(&link);
    // The page is server-rendered; wait for the photo to finish loading.
    let script = "const img = document.querySelector('figure img'); \
                  return {headline: document.querySelector('h1').textContent, text: document.body.innerText, \
                          photo_complete: img ? img.complete : true, photo_width: img ? img.naturalWidth : 0};";
    let mut page = Value::Null;
    for _ in 0..50 {
        page = browser.execute(script, json!([]));
        if page["photo_complete"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let screenshot = artifact("demo-tracking-page.png");
    browser.screenshot(&screenshot);
    assert_eq!(page["headline"], "Delivered", "{page:#}");
    let text = page["text"].as_str().unwrap_or_default();
    assert!(text.contains("Verified at your door") && text.contains("1Z999AA10123456784"), "{text}");
    assert!(page["photo_width"].as_u64().unwrap_or(0) > 0, "the proof photo did not load: {page:#}");
    assert!(!text.contains("49.01"), "the page must never show the address or coordinates: {text}");
    eprintln!("tracking page screenshot: {}", screenshot.display());

    browser.goto(&console_url);
    browser.type_into("#api-key", &key);
    browser.click_and_wait("#sign-in");
    let text = browser.text();
    assert!(text.contains("carrier_delivered_van_never_arrived"), "the demo's alerts on the console: {text}");
    browser.screenshot(&artifact("demo-console.png"));
    drop(browser);

    let status = demo.interrupt_and_wait();
    assert!(status.success(), "the demo exits cleanly on Ctrl-C: {status:?}");
}

#[test]
fn the_demo_switched_to_mailgun_sns_and_teams_by_config_alone_tells_the_same_stories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary_path = dir.path().join("summary.json");
    let providers = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/providers/mailgun-sns-teams.toml");
    let mut demo = Demo::start(&summary_path, &["--providers", providers]);
    demo.wait_for_line("Tracking page with proof of delivery:", Duration::from_secs(120));
    let summary: Value = serde_json::from_slice(&std::fs::read(&summary_path).expect("summary written"))
        .expect("summary is JSON");
    let via = &summary["via"];
    assert!(via["sns"].as_u64() > Some(0) && via["mailgun"].as_u64() > Some(0), "{via}");
    assert!(via["teams"].as_u64() > Some(0), "operations alerts went to Teams: {via}");
    for other in ["twilio", "sendgrid", "slack"] {
        assert!(via[other].is_null(), "nothing through {other}: {via}");
    }
    let anna = shipment(&summary, "1Z999AA10123456784");
    assert_eq!(anna["milestone"], "delivered", "{anna:#}");
    assert_eq!(texts(anna, "sms").iter().filter(|t| t.contains("was delivered")).count(), 1, "{anna:#}");
    let cleo = shipment(&summary, "794843185271");
    assert_eq!(alerts(cleo), ["delivered_away_from_address", "carrier_delivered_device_away"], "{cleo:#}");
    let status = demo.interrupt_and_wait();
    assert!(status.success(), "the demo exits cleanly on Ctrl-C: {status:?}");
}
