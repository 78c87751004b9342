//! The TODO store in PostgreSQL, behind a tiny reconnecting pool.
//!
//! Why a pool of its own: the database lives outside the VMs and may be unreachable when the app
//! starts (the install script runs before anyone checks the database) or restart while it runs.
//! So nothing here connects at start-up; every operation borrows an idle connection, checking
//! it first with an empty query (an idle connection to a restarted server looks fine until
//! used), or opens a new one, creating the table if missing. A connection that failed is
//! dropped, so the next request simply reconnects. At most [`MAX_IDLE`] connections are kept.
//!
//! Timeouts bound every call: connecting (5 s), unacknowledged TCP data (10 s, so a vanished
//! host does not hang a request thread) and statements (10 s, server side); see `main`.

use postgres::{Client, Config, NoTls};
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept for reuse.
pub const MAX_IDLE: usize = 4;
/// Longest accepted title, in characters.
pub const MAX_TITLE_CHARS: usize = 500;
/// Time allowed for the liveness check of a pooled connection.
const VALID_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates the table once per new connection. The advisory lock serialises concurrent app
/// instances: two concurrent `CREATE TABLE IF NOT EXISTS` of the same table can otherwise fail
/// with a unique violation in the catalog.
const SCHEMA: &str = "BEGIN;
SELECT pg_advisory_xact_lock(7362846523);
CREATE TABLE IF NOT EXISTS todos (
    id BIGSERIAL PRIMARY KEY,
    title TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMIT;";

/// `created_at` as RFC 3339 UTC with milliseconds, formatted by the server (no date crate here).
const CREATED_AT: &str = r#"to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#;

/// One TODO item as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Todo {
    pub id: i64,
    pub title: String,
    pub created_at: String,
}

/// The database could not be used; the message is safe to log (it never holds the password).
#[derive(Debug)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        // The server's own message ("password authentication failed for user …") is more
        // useful than the client's summary ("db error"); neither ever holds the password.
        if let Some(db) = e.as_db_error() {
            return DbError(format!("{} {}: {}", db.severity(), db.code().code(), db.message()));
        }
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !msg.contains(&text) {
                msg = format!("{msg}: {text}");
            }
            source = s.source();
        }
        DbError(msg)
    }
}

/// The store: connection settings plus idle connections.
pub struct Db {
    config: Config,
    idle: Mutex<Vec<Client>>,
}

impl Db {
    pub fn new(config: Config) -> Self {
        Self { config, idle: Mutex::new(Vec::new()) }
    }

    /// Checks that the database answers.
    pub fn ping(&self) -> Result<(), DbError> {
        self.with_client(|c| c.simple_query("SELECT 1").map(|_| ()))
    }

    /// All items, oldest first.
    pub fn list(&self) -> Result<Vec<Todo>, DbError> {
        let sql = format!("SELECT id, title, {CREATED_AT} FROM todos ORDER BY id");
        self.with_client(|c| {
            let rows = c.query(sql.as_str(), &[])?;
            Ok(rows.iter().map(|r| Todo { id: r.get(0), title: r.get(1), created_at: r.get(2) }).collect())
        })
    }

    /// Stores a new item with `title` (already validated) and returns it.
    pub fn add(&self, title: &str) -> Result<Todo, DbError> {
        let sql = format!("INSERT INTO todos (title) VALUES ($1) RETURNING id, title, {CREATED_AT}");
        self.with_client(|c| {
            let r = c.query_one(sql.as_str(), &[&title])?;
            Ok(Todo { id: r.get(0), title: r.get(1), created_at: r.get(2) })
        })
    }

    /// Runs `f` on a live connection, returning the connection to the pool only on success.
    fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, DbError> {
        let mut client = self.checkout()?;
        let out = f(&mut client)?;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
        Ok(out)
    }

    fn checkout(&self) -> Result<Client, DbError> {
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match pooled {
                // A stale one (the server restarted?) is dropped; try the next.
                Some(mut c) => {
                    if !c.is_closed() && c.is_valid(VALID_TIMEOUT).is_ok() {
                        return Ok(c);
                    }
                }
                None => break,
            }
        }
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(SCHEMA)?;
        Ok(client)
    }
}

/// Checks a title from the API: trimmed, 1 to [`MAX_TITLE_CHARS`] characters, no control
/// characters. Returns the trimmed title or a message naming the field.
pub fn validate_title(title: &str) -> Result<&str, String> {
    let t = title.trim();
    let n = t.chars().count();
    if n == 0 || n > MAX_TITLE_CHARS {
        return Err(format!("title: must be 1 to {MAX_TITLE_CHARS} characters (got {n})"));
    }
    if t.chars().any(char::is_control) {
        return Err("title: must not contain control characters".into());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(validate_title("  buy milk \n"), Ok("buy milk"));
        assert!(validate_title("   ").unwrap_err().starts_with("title:"));
        assert!(validate_title(&"é".repeat(MAX_TITLE_CHARS)).is_ok());
        assert!(validate_title(&"x".repeat(MAX_TITLE_CHARS + 1)).is_err());
        assert!(validate_title("a\u{7}b").unwrap_err().contains("control"));
    }

    #[test]
    fn todos_serialize_in_camel_case() {
        let t = Todo { id: 1, title: "a".into(), created_at: "2024-01-01T00:00:00.000Z".into() };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"id":1,"title":"a","createdAt":"2024-01-01T00:00:00.000Z"}"#
        );
    }
}
