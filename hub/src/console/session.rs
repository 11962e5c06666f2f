//! The console's sign-in sessions: a random id in an `HttpOnly`, `SameSite=Strict`
//! cookie, and in the hub's memory the API key it stands for (its public id and name,
//! never the token), a CSRF token for the session's forms, and an expiry.
//!
//! The cookie does not carry the key: a cookie leaks more easily than a pasted token
//! (browser profiles, a proxy's log), and a leaked session id dies with its expiry, with
//! logout, and with a restart of the hub, while the key lives on. Each request checks the
//! key again by its id, so a key revoked, or one whose `console` scope was taken away,
//! stops working from the next page on. The table is bounded ([`MAX_SESSIONS`]); a full
//! table first drops expired sessions, then the one closest to expiry.
//!
//! Pure: the clock is a parameter; randomness comes from the caller's `SecureRandom`.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;

use crate::notify::token::constant_time_eq;

/// The session cookie's name.
pub const COOKIE: &str = "doorstep_console";
/// How long a session lasts after sign-in, ms (a working day; then sign in again).
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 1024;
/// Random bytes in a session id and in a CSRF token (256 bits).
const RANDOM_BYTES: usize = 32;

/// One signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The API key's public id, checked again on every request.
    pub key_id: String,
    /// The API key's name, for the page and the audit log.
    pub key_name: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When the session ends, ms since the Unix epoch.
    pub expires_ms: i64,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), presented.as_bytes())
    }
}

/// Why a session could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomFailed;

/// The sessions of this hub process.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

fn random_token(rng: &dyn SecureRandom) -> Result<String, RandomFailed> {
    let mut bytes = [0u8; RANDOM_BYTES];
    rng.fill(&mut bytes).map_err(|_| RandomFailed)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl Sessions {
    /// Starts a session for the key `key_id` named `key_name`; returns its id (the
    /// cookie's value) and the session.
    pub fn create(
        &self,
        rng: &dyn SecureRandom,
        key_id: &str,
        key_name: &str,
        now_ms: i64,
    ) -> Result<(String, Session), RandomFailed> {
        let id = random_token(rng)?;
        let session = Session {
            key_id: key_id.to_owned(),
            key_name: key_name.to_owned(),
            csrf: random_token(rng)?,
            expires_ms: now_ms.saturating_add(SESSION_TTL_MS),
        };
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, s| s.expires_ms > now_ms);
        }
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table.iter().min_by_key(|(_, s)| s.expires_ms).map(|(id, _)| id.clone())
        {
            table.remove(&oldest);
        }
        table.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session with this id; an expired one is forgotten.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match table.get(id) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                table.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout, or its key is no longer good).
    pub fn remove(&self, id: &str) {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    /// Sessions held now, expired ones included until they are looked at.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id in a `Cookie` header's value, if the console's cookie is there.
pub(crate) fn session_id(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that signs a browser in: `Secure` when the page was reached
/// over TLS.
pub(crate) fn set_cookie(id: &str, secure: bool) -> String {
    let max_age = SESSION_TTL_MS / 1000;
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` value that signs a browser out.
pub(crate) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_its_expiry_and_not_after() {
        let rng = ring::rand::SystemRandom::new();
        let sessions = Sessions::default();
        let (id, made) = sessions.create(&rng, "abcdef012345", "oncall", 1_000).expect("create");
        assert_eq!(id.len(), 43);
        assert_ne!(made.csrf, id);
        assert_eq!(sessions.get(&id, 1_000 + SESSION_TTL_MS - 1), Some(made.clone()));
        assert_eq!(sessions.get(&id, 1_000 + SESSION_TTL_MS), None);
        assert!(sessions.is_empty(), "an expired session is forgotten when looked at");
        assert_eq!(sessions.get("not-a-session", 0), None);
    }

    #[test]
    fn logout_ends_the_session_and_tokens_are_compared_whole() {
        let rng = ring::rand::SystemRandom::new();
        let sessions = Sessions::default();
        let (id, made) = sessions.create(&rng, "abcdef012345", "oncall", 0).expect("create");
        assert!(made.csrf_matches(&made.csrf.clone()));
        assert!(!made.csrf_matches(&made.csrf[..10]));
        assert!(!made.csrf_matches(""));
        sessions.remove(&id);
        assert_eq!(sessions.get(&id, 1), None);
    }

    #[test]
    fn a_full_table_drops_the_session_closest_to_expiry() {
        let rng = ring::rand::SystemRandom::new();
        let sessions = Sessions::default();
        let (first, _) = sessions.create(&rng, "k", "n", 0).expect("create");
        for i in 1..MAX_SESSIONS {
            sessions.create(&rng, "k", "n", i64::try_from(i).expect("small")).expect("create");
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let (newest, _) = sessions.create(&rng, "k", "n", 5_000).expect("create");
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert_eq!(sessions.get(&first, 5_000), None);
        assert!(sessions.get(&newest, 5_000).is_some());
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_with_its_flags() {
        assert_eq!(session_id("a=1; doorstep_console=xyz; b=2"), Some("xyz"));
        assert_eq!(session_id("doorstep_console="), None);
        assert_eq!(session_id("other=1"), None);
        let set = set_cookie("xyz", false);
        assert!(set.starts_with("doorstep_console=xyz; Path=/console; HttpOnly; SameSite=Strict; Max-Age="));
        assert!(!set.contains("Secure"));
        assert!(set_cookie("xyz", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
