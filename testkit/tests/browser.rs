//! The browser harness itself: a page loads, a form is typed into and submitted, a
//! screenshot is written, and axe-core tells an accessible page from one that is not
//! (so a page test that finds no violation has really been checked).

use doorstep_testkit::browser::{Browser, artifact};
use serde_json::json;

fn data_url(html: &str) -> String {
    let mut url = String::from("data:text/html;charset=utf-8,");
    for b in html.bytes() {
        if b.is_ascii_alphanumeric() {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

#[test]
fn axe_finds_serious_violations_and_passes_a_clean_page() {
    let scratch = tempfile::tempdir().expect("scratch");
    let browser = Browser::start(scratch.path(), 400, 800);

    let clean = "<!doctype html><html lang=\"en\"><head><title>Parcel</title></head><body><main>\
                 <h1>Your parcel</h1><form><label for=\"note\">Note</label><input id=\"note\" name=\"note\">\
                 </form></main></body></html>";
    browser.goto(&data_url(clean));
    browser.type_into("#note", "back door");
    let typed = browser.execute("return document.querySelector('#note').value;", json!([]));
    assert_eq!(typed, json!("back door"));
    assert_eq!(browser.axe(), Vec::new(), "a labelled form with a language and a title");
    let shot = artifact("testkit-browser-clean.png");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 100);

    // Grey on white (1.6:1) and an unlabelled field: both serious in WCAG AA terms.
    let poor = "<!doctype html><html lang=\"en\"><head><title>Parcel</title></head><body><main>\
                <h1>Your parcel</h1><p style=\"color:#ccc;background:#fff\">Arrives today</p>\
                <input name=\"note\"></main></body></html>";
    browser.goto(&data_url(poor));
    let found: Vec<String> = browser.axe().into_iter().map(|v| v.id).collect();
    assert!(found.contains(&"color-contrast".to_owned()), "{found:?}");
    assert!(found.contains(&"label".to_owned()), "{found:?}");
}
