//! The wall clock.

/// Milliseconds since the Unix epoch by the system clock (0 before 1970, which only a
/// unit with a flat RTC battery and no time sync would report).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
