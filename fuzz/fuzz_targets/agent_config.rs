//! The agent's TOML configuration: `RawConfig::parse`, then `RawConfig::validate`, what
//! `doorstep-agent` does with `/etc/doorstep/agent.toml` at start.
//!
//! Holds: no panic; what validates is usable as the daemon uses it: ids valid, the GNSS
//! port set with a standard baud rate, the geofence and gate settings within their
//! documented ranges, a non-zero outbox budget, the uplink's fleet the device's own.

#![no_main]

use doorstep_agent::config::RawConfig;
use libfuzzer_sys::fuzz_target;

const BAUDS: [u32; 11] = [1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(raw) = RawConfig::parse(text) else { return };
    let config = match raw.validate() {
        Ok(config) => config,
        Err(e) => {
            // An error names what to fix.
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(!config.gps.path.as_os_str().is_empty());
    assert!(BAUDS.contains(&config.gps.baud), "{}", config.gps.baud);
    if let Some(scanner) = &config.scanner {
        assert!(BAUDS.contains(&scanner.baud) && !scanner.path.as_os_str().is_empty());
    }
    assert!(config.geofence.validate().is_ok(), "{:?}", config.geofence);
    assert!(config.gate.max_hdop.is_finite() && config.gate.max_hdop >= 1.0);
    assert!(config.gate.max_eph_m.is_finite() && config.gate.max_eph_m > 0.0);
    assert!(config.outbox.max_bytes > 0 && config.outbox.max_photo_bytes > 0);
    if let Some(uplink) = &config.uplink {
        assert_eq!(uplink.fleet, config.fleet);
        assert!(uplink.validate().is_ok());
    }
    let _ = (config.outbox_path(), config.status_path());
});
