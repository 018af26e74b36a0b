//! Who may use the console: a one-time login code, exchanged for a session
//! cookie, and a CSRF token per session that every form posts back.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use cookie::{Cookie, SameSite};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "aitokens_console";

/// A session unused for this long is gone (the login URL is then needed again,
/// which means restarting the console: the code is single-use).
pub const IDLE_EXPIRY: Duration = Duration::from_secs(30 * 60);

/// The login code works this long after the console starts.
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(10 * 60);

/// Tenants remembered per session for the tenant picker.
const MAX_RECENT_TENANTS: usize = 10;

/// The login code and the open sessions.
pub struct Sessions {
    /// The code printed at start; `None` once it has been exchanged.
    code: Mutex<Option<String>>,
    /// When the code was made.
    issued: Instant,
    open: Mutex<HashMap<String, Session>>,
}

/// One logged-in browser.
#[derive(Clone)]
pub struct Session {
    /// The value every form must post back as `csrf`.
    pub csrf: String,
    /// Tenants opened in this session, most recent first.
    pub tenants: Vec<String>,
    last_seen: Instant,
}

/// Why a login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// The URL had no `code`.
    Missing,
    /// The code is not the printed one, expired, or was used already.
    Stale,
}

impl Sessions {
    /// Sessions with a fresh login code, which is returned too.
    pub fn new() -> (Self, String) {
        let code = random_hex();
        let sessions = Self {
            code: Mutex::new(Some(code.clone())),
            issued: Instant::now(),
            open: Mutex::new(HashMap::new()),
        };
        (sessions, code)
    }

    /// Exchanges the login code for a new session: returns the session id.
    /// The code works once, within [`LOGIN_CODE_TTL`].
    pub fn login(&self, given: Option<&str>) -> Result<String, LoginRefusal> {
        let given = given
            .filter(|c| !c.is_empty())
            .ok_or(LoginRefusal::Missing)?;
        let mut code = lock(&self.code);
        if self.issued.elapsed() > LOGIN_CODE_TTL {
            *code = None;
        }
        let matches = code
            .as_deref()
            .is_some_and(|code| bool::from(code.as_bytes().ct_eq(given.as_bytes())));
        if !matches {
            return Err(LoginRefusal::Stale);
        }
        *code = None;
        let id = random_hex();
        let session = Session {
            csrf: random_hex(),
            tenants: Vec::new(),
            last_seen: Instant::now(),
        };
        lock(&self.open).insert(id.clone(), session);
        Ok(id)
    }

    /// The live session of a cookie header, refreshing its idle timer.
    pub fn find(&self, cookie_header: Option<&str>) -> Option<(String, Session)> {
        let id = cookie_header.and_then(|header| {
            Cookie::split_parse(header)
                .filter_map(Result::ok)
                .find(|c| c.name() == COOKIE)
                .map(|c| c.value().to_owned())
        })?;
        let mut open = lock(&self.open);
        let now = Instant::now();
        open.retain(|_, s| now.duration_since(s.last_seen) < IDLE_EXPIRY);
        let session = open.get_mut(&id)?;
        session.last_seen = now;
        Some((id, session.clone()))
    }

    /// Remembers that the session opened `tenant`.
    pub fn visited(&self, id: &str, tenant: &str) {
        if let Some(session) = lock(&self.open).get_mut(id) {
            session.tenants.retain(|t| t != tenant);
            session.tenants.insert(0, tenant.to_owned());
            session.tenants.truncate(MAX_RECENT_TENANTS);
        }
    }
}

impl Session {
    /// Whether a posted CSRF token is this session's (in constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// The `Set-Cookie` value for a new session: not readable by scripts, never
/// sent with a request another site starts, gone when the browser closes.
/// No Max-Age: the idle expiry is the server's ([`IDLE_EXPIRY`], renewed by
/// every request), which a fixed cookie lifetime would cut short.
pub fn set_cookie(id: &str) -> String {
    Cookie::build((COOKIE, id.to_owned()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .build()
        .to_string()
}

/// 32 random bytes, hex: login codes, session ids, CSRF tokens.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // No randomness from the OS means no safe secret: nothing to fall back on.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_code_works_once() {
        let (sessions, code) = Sessions::new();
        assert_eq!(sessions.login(None), Err(LoginRefusal::Missing));
        assert_eq!(sessions.login(Some("nope")), Err(LoginRefusal::Stale));
        let id = sessions.login(Some(&code)).expect("first use");
        assert_eq!(sessions.login(Some(&code)), Err(LoginRefusal::Stale));
        let header = format!("other=1; {COOKIE}={id}");
        let (found, session) = sessions.find(Some(&header)).expect("session");
        assert_eq!(found, id);
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(sessions.find(Some("aitokens_console=forged")).is_none());
    }

    #[test]
    fn the_login_code_expires() {
        let (mut sessions, code) = Sessions::new();
        sessions.issued = Instant::now()
            .checked_sub(LOGIN_CODE_TTL + Duration::from_secs(1))
            .expect("an instant 10 minutes ago");
        assert_eq!(sessions.login(Some(&code)), Err(LoginRefusal::Stale));
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let header = set_cookie("abc");
        assert!(header.contains("HttpOnly"), "{header}");
        assert!(header.contains("SameSite=Strict"), "{header}");
        assert!(!header.contains("Max-Age"), "{header}");
    }
}
