//! The hub's TOML configuration: `Config::parse`, `Config::validate`, then the `[notify]`
//! section (`NotifySettings::from_hub`: providers, templates, quiet hours), everything the
//! hub reads from `hub.toml` at start.
//!
//! Holds: no panic; a parsed file serializes and parses back to the same configuration,
//! which validates the same way; validated settings keep their documented bounds.

#![no_main]

use doorstep_hub::config::{Config, MIN_SECRET_LEN};
use doorstep_hub::notify::config::NotifySettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::parse(text) else { return };
    let validated = config.validate();

    // The typed file round-trips through TOML (Debug, so that a NaN compares equal).
    if let Ok(written) = toml::to_string(&config) {
        let back = Config::parse(&written).unwrap_or_else(|e| panic!("{e}\n{written}"));
        assert_eq!(format!("{back:?}"), format!("{config:?}"), "\n{written}");
        assert_eq!(back.validate().is_ok(), validated.is_ok(), "\n{written}");
    }

    let settings = match validated {
        Ok(settings) => settings,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(settings.link_token_secret.len() >= MIN_SECRET_LEN);
    assert!(
        settings.public_base_url.starts_with("https://") || settings.public_base_url.starts_with("http://")
    );
    assert!(!settings.public_base_url.ends_with('/'));
    assert!((1..=100_000).contains(&settings.batch_max));
    assert!((1024..=64 * 1024 * 1024).contains(&settings.max_body_bytes));
    assert!(settings.verify_threads >= 1);
    match NotifySettings::from_hub(&settings) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(notify) => {
            // Every provider has a unique name, and every alert step names one of them.
            let names: std::collections::BTreeSet<&str> =
                notify.providers.all().iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names.len(), notify.providers.all().len());
            for step in &notify.escalation {
                assert!(names.contains(step.provider.name.as_str()));
            }
            assert!(notify.group_hold <= notify.group_window);
        }
    }
});
