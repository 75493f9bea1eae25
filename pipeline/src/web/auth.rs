//! Vetters' accounts and sessions: argon2id password hashes in `web_users` (written by
//! `lensnet user add`), sessions kept in the server's memory behind a random token in an
//! HttpOnly, SameSite=Strict cookie (Secure unless configured off), a CSRF token per session for
//! every form (and a double-submit cookie for the login form, before there is a session), and a
//! limit on failed logins per user name and per client address.
//!
//! Sessions live in one server process: a restart logs everyone out, which is the safe side.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sqlx::PgPool;

/// A web account's role: readers may log in and look; vetters may also label candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    Vetter,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Vetter => "vetter",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "vetter" => Some(Role::Vetter),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("user name `{0}`: use 1 to 64 letters, digits, `_`, `.` or `-`")]
    BadName(String),
    #[error("the password must have at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("user `{0}` exists already (give --update to set a new password or role)")]
    Exists(String),
    #[error("no user `{0}`")]
    NoUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
}

/// Shortest password `user add` accepts.
pub const MIN_PASSWORD: usize = 10;

/// A random token (hex of 32 bytes) for sessions and CSRF.
pub fn token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// An argon2id hash (PHC string) of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `lensnet user add`: creates the account (or, with `update`, sets its password and role).
pub async fn add_user(pool: &PgPool, name: &str, role: Role, password: &str, update: bool) -> Result<(), AuthError> {
    if !valid_name(name) {
        return Err(AuthError::BadName(name.into()));
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(AuthError::ShortPassword);
    }
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw)).await.map_err(|e| AuthError::Hash(e.to_string()))??;
    let done = if update {
        sqlx::query(
            "INSERT INTO web_users (name, role, password_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash, disabled = false, updated_at = now()",
        )
    } else {
        sqlx::query("INSERT INTO web_users (name, role, password_hash) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
    }
    .bind(name)
    .bind(role.as_str())
    .bind(&hash)
    .execute(pool)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(AuthError::Exists(name.into()));
    }
    Ok(())
}

/// `lensnet user disable`: the account can no longer log in (its labels stay).
pub async fn disable_user(pool: &PgPool, name: &str) -> Result<(), AuthError> {
    let n = sqlx::query("UPDATE web_users SET disabled = true, updated_at = now() WHERE name = $1").bind(name).execute(pool).await?.rows_affected();
    if n == 0 {
        return Err(AuthError::NoUser(name.into()));
    }
    Ok(())
}

/// Accounts: (name, role, disabled, created).
pub async fn list_users(pool: &PgPool) -> Result<Vec<(String, String, bool, String)>, AuthError> {
    Ok(sqlx::query_as("SELECT name, role, disabled, to_char(created_at, 'YYYY-MM-DD HH24:MI') FROM web_users ORDER BY name").fetch_all(pool).await?)
}

/// The account of `name` if the password matches and it is enabled. Unknown names cost a hash
/// verification too, so that timing does not tell which names exist.
pub async fn check_login(pool: &PgPool, name: &str, password: &str) -> Result<Option<Role>, AuthError> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let row: Option<(String, String, bool)> =
        sqlx::query_as("SELECT role, password_hash, disabled FROM web_users WHERE name = $1").bind(name).fetch_optional(pool).await?;
    let (role, hash, disabled) = match row {
        Some(r) => r,
        None => {
            let dummy = DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default()).clone();
            ("reader".into(), dummy, true)
        }
    };
    let pw = password.to_string();
    let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash)).await.unwrap_or(false);
    Ok(if ok && !disabled { Role::parse(&role) } else { None })
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every form of this session carries.
    pub csrf: String,
    pub expires: Instant,
}

/// Sessions and failed-login counts of one server.
#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Sessions {
    pub fn create(&self, user: &str, role: Role, ttl: Duration) -> (String, Session) {
        let s = Session { user: user.into(), role, csrf: token(), expires: Instant::now() + ttl };
        let t = token();
        let mut map = self.by_token.lock().expect("sessions");
        let now = Instant::now();
        map.retain(|_, v| v.expires > now);
        map.insert(t.clone(), s.clone());
        (t, s)
    }

    pub fn get(&self, token: &str) -> Option<Session> {
        let map = self.by_token.lock().expect("sessions");
        map.get(token).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, token: &str) {
        self.by_token.lock().expect("sessions").remove(token);
    }

    /// Whether the user name or the address has used up its failed logins of the last minute.
    pub fn limited(&self, user: &str, addr: IpAddr, per_minute: u32) -> bool {
        let mut f = self.failures.lock().expect("failures");
        let cutoff = Instant::now() - Duration::from_secs(60);
        let mut over = false;
        for key in [format!("user:{user}"), format!("ip:{addr}")] {
            if let Some(v) = f.get_mut(&key) {
                v.retain(|t| *t > cutoff);
                over |= v.len() >= per_minute as usize;
            }
        }
        f.retain(|_, v| !v.is_empty());
        over
    }

    pub fn failed(&self, user: &str, addr: IpAddr) {
        let mut f = self.failures.lock().expect("failures");
        for key in [format!("user:{user}"), format!("ip:{addr}")] {
            f.entry(key).or_default().push(Instant::now());
        }
    }
}

/// Constant-time comparison of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && !a.is_empty() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn failed_logins_are_limited_per_name_and_per_address() {
        let s = Sessions::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!s.limited("ann", a, 3));
            s.failed("ann", a);
        }
        assert!(s.limited("ann", a, 3));
        assert!(s.limited("ann", b, 3), "the name is limited from any address");
        assert!(s.limited("bob", a, 3), "the address is limited for any name");
        assert!(!s.limited("bob", b, 3));
    }

    #[test]
    fn sessions_expire_and_tokens_compare_exactly() {
        let s = Sessions::default();
        let (t, sess) = s.create("ann", Role::Vetter, Duration::from_secs(60));
        assert_eq!(s.get(&t).unwrap().user, "ann");
        assert!(same_token(&sess.csrf, &s.get(&t).unwrap().csrf));
        assert!(!same_token(&sess.csrf, &token()));
        assert!(!same_token("", ""));
        s.remove(&t);
        assert!(s.get(&t).is_none());
        let (t, _) = s.create("ann", Role::Vetter, Duration::from_millis(0));
        assert!(s.get(&t).is_none(), "expired");
    }
}
