//! PostgreSQL: a user-given query such as `SELECT count(*) FROM jobs WHERE done = false`.
//!
//! The query must be one `SELECT` or `WITH` statement (checked before anything connects:
//! string literals, quoted identifiers, dollar quotes and comments are skipped, and a `;` may
//! only end it), and it runs in a `READ ONLY` transaction with a `statement_timeout`, so a
//! `WITH d AS (DELETE ...)` is refused by the server too. Still, give the source a role that
//! can only read: functions called by a query can have effects a read-only transaction allows.
//!
//! The result must be exactly one row with one column of type smallint, integer, bigint,
//! real, double precision or numeric (decoded from its binary form). Anything else — text,
//! two columns, no row, two rows — is a clear error, because guessing would scale a set on a
//! number the user did not mean. A `NULL` value (say `SELECT max(...)` over no rows) is "no
//! data" (`Ok(None)`).
//!
//! Auth: `settings.user` (or the user in `postgresql://user@host/db`) and
//! `protected.password` (scram-sha-256 or md5). TLS (`sslmode`) is not supported yet.

use std::error::Error as StdError;
use std::time::Duration;

use herd_model::FieldError;
use reqwest::Url;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::NoTls;

use crate::error::{chain_text, find_io_error, io_failure};
use crate::spec::{redact_url_text, shorten, Fields};
use crate::{ErrorKind, SourceError, SourceKind, SourceSpec};

/// A validated PostgreSQL source.
#[derive(Clone)]
pub(crate) struct Config {
    host: String,
    port: u16,
    db: String,
    user: String,
    password: Option<String>,
    query: String,
}

fn plain_name(field: &str, what: &str, s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.chars().any(|c| c.is_control() || matches!(c, '/' | '%' | '?' | '#' | '@')) {
        return Err(FieldError::new(field, format!("'{s}' is not a plain {what} name")));
    }
    Ok(())
}

/// Reads and checks a PostgreSQL spec.
pub(crate) fn parse(spec: &SourceSpec) -> Result<Config, FieldError> {
    let e = spec.endpoint.trim();
    let url = Url::parse(e).map_err(|err| {
        FieldError::new("endpoint", format!("'{}' is not postgresql://host:port/database: {err}", redact_url_text(e)))
    })?;
    if !matches!(url.scheme(), "postgresql" | "postgres") {
        return Err(FieldError::one_of("endpoint", &format!("{}://", url.scheme()), &["postgresql://"]));
    }
    if url.password().is_some() {
        return Err(FieldError::new(
            "endpoint",
            "a password does not belong in the endpoint, which is shown and logged: put it in protected.password",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(FieldError::not_supported(
            "endpoint",
            "connection parameters after '?' (TLS/sslmode included); use postgresql://host:port/database",
        ));
    }
    let host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| FieldError::new("endpoint", "has no host; expected postgresql://host:port/database"))?;
    let port = url.port().unwrap_or(5432);
    let db = url.path().trim_start_matches('/');
    if db.is_empty() {
        return Err(FieldError::new("endpoint", "names no database; expected postgresql://host:port/database"));
    }
    plain_name("endpoint", "database", db)?;
    let s = Fields::settings(spec)?;
    s.only(SourceKind::Postgresql, &["query", "user"])?;
    let p = Fields::protected(spec)?;
    p.only(SourceKind::Postgresql, &["password"])?;
    let user = match (s.str_nonempty_opt("user")?, url.username()) {
        (Some(u), "") => u.to_string(),
        (None, u) if !u.is_empty() => u.to_string(),
        (Some(_), _) => {
            return Err(FieldError::new("settings.user", "the endpoint names a user already; give it in one place"))
        }
        (None, _) => return Err(FieldError::new("settings.user", "required: the role the query runs as")),
    };
    plain_name("settings.user", "role", &user)?;
    let query = s.str_req("query", "one SELECT returning one number, e.g. SELECT count(*) FROM jobs")?;
    check_query(query).map_err(|m| FieldError::new("settings.query", m))?;
    Ok(Config {
        host,
        port,
        db: db.to_string(),
        user,
        password: p.str_nonempty_opt("password")?.map(str::to_string),
        query: query.trim().trim_end_matches(|c: char| c == ';' || c.is_whitespace()).to_string(),
    })
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The index just past the quoted text starting at `b[start]` (its quote character), where a
/// doubled quote stands for itself and, with `escapes`, a backslash escapes the next byte;
/// `None` if it never ends.
fn skip_quoted(b: &[u8], start: usize, escapes: bool) -> Option<usize> {
    let quote = b[start];
    let mut i = start + 1;
    loop {
        match b.get(i)? {
            b'\\' if escapes => i += 2,
            c if *c == quote && b.get(i + 1) == Some(&quote) => i += 2,
            c if *c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Accepts exactly one `SELECT` or `WITH` statement, optionally ending with `;`.
pub(crate) fn check_query(q: &str) -> Result<(), String> {
    let b = q.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut first: Option<String> = None;
    let mut ended = false; // a `;` was seen
    while i < n {
        let c = b[i];
        // Whitespace and comments may follow the final `;`; nothing else may.
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0usize;
            loop {
                if i + 1 >= n {
                    return Err("an unterminated /* comment".into());
                }
                if b[i] == b'/' && b[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        if ended {
            return Err("must be a single statement: nothing may follow the ';'".into());
        }
        if first.is_none() {
            if !c.is_ascii_alphabetic() {
                return Err("must be a single SELECT or WITH query".into());
            }
            let start = i;
            while i < n && is_ident(b[i]) {
                i += 1;
            }
            let word = q[start..i].to_ascii_uppercase();
            if word != "SELECT" && word != "WITH" {
                return Err(format!("must be a single SELECT or WITH query, not {word}"));
            }
            first = Some(word);
            continue;
        }
        match c {
            b';' => {
                ended = true;
                i += 1;
            }
            b'\'' => {
                // E'...' strings take backslash escapes.
                let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
                i = skip_quoted(b, i, escapes).ok_or("an unterminated string literal")?;
            }
            b'"' => i = skip_quoted(b, i, false).ok_or("an unterminated quoted identifier")?,
            b'$' if i == 0 || !is_ident(b[i - 1]) => {
                // $tag$ ... $tag$ (a dollar quote), or $1 (a parameter).
                let mut j = i + 1;
                while j < n && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
                    j += 1;
                }
                let tag_ok = j < n && b[j] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit);
                if !tag_ok {
                    i += 1;
                    continue;
                }
                let tag = &q[i..=j];
                match q[j + 1..].find(tag) {
                    Some(end) => i = j + 1 + end + tag.len(),
                    None => return Err(format!("an unterminated {tag} quote")),
                }
            }
            _ if is_ident(c) => {
                while i < n && is_ident(b[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    if first.is_none() {
        return Err("is empty: give one SELECT returning one number".into());
    }
    Ok(())
}

/// One number decoded from any numeric column type.
struct Num(f64);

impl<'a> FromSql<'a> for Num {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let fixed = |n: usize| -> Result<&[u8], Box<dyn StdError + Sync + Send>> {
            raw.get(..n).filter(|_| raw.len() == n).ok_or_else(|| format!("a {ty} value of {} bytes", raw.len()).into())
        };
        let v = match *ty {
            Type::INT2 => i16::from_be_bytes(fixed(2)?.try_into()?) as f64,
            Type::INT4 => i32::from_be_bytes(fixed(4)?.try_into()?) as f64,
            Type::INT8 => i64::from_be_bytes(fixed(8)?.try_into()?) as f64,
            Type::FLOAT4 => f32::from_be_bytes(fixed(4)?.try_into()?) as f64,
            Type::FLOAT8 => f64::from_be_bytes(fixed(8)?.try_into()?),
            Type::NUMERIC => decode_numeric(raw)?,
            _ => return Err(format!("type {ty} is not a number").into()),
        };
        Ok(Num(v))
    }

    fn accepts(ty: &Type) -> bool {
        numeric_type(ty)
    }
}

fn numeric_type(ty: &Type) -> bool {
    matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8 | Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC)
}

/// PostgreSQL's binary `numeric`: ndigits, weight, sign, dscale (all 16-bit), then ndigits
/// base-10000 digits, the first worth 10000^weight.
fn decode_numeric(raw: &[u8]) -> Result<f64, Box<dyn StdError + Sync + Send>> {
    let word = |k: usize| -> Result<u16, Box<dyn StdError + Sync + Send>> {
        raw.get(2 * k..2 * k + 2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .ok_or_else(|| "a truncated numeric value".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i32;
    let sign = word(2)?;
    match sign {
        0xC000 => return Ok(f64::NAN),
        0xD000 => return Ok(f64::INFINITY),
        0xF000 => return Ok(f64::NEG_INFINITY),
        0x0000 | 0x4000 => {}
        other => return Err(format!("a numeric value with sign {other:#x}").into()),
    }
    let mut v = 0f64;
    for k in 0..ndigits {
        let d = word(4 + k)? as f64;
        v += d * 10000f64.powi(weight - k as i32);
    }
    Ok(if sign == 0x4000 { -v } else { v })
}

/// A tokio-postgres error as a kind and a message that reads well.
fn pg_failure(e: &tokio_postgres::Error) -> SourceError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let (kind, msg) = match code {
            "28P01" | "28000" => (ErrorKind::Auth, format!("authentication failed: {}", db.message())),
            "3D000" => (ErrorKind::NotFound, db.message().to_string()),
            _ => (ErrorKind::Server, format!("{}: {} (SQLSTATE {code})", db.severity(), db.message())),
        };
        return SourceError::new(kind, "", msg);
    }
    if let Some(io) = find_io_error(e) {
        let (kind, msg) = io_failure(io);
        return SourceError::new(kind, "", msg);
    }
    let text = chain_text(e);
    if text.contains("password missing") {
        return SourceError::new(ErrorKind::Auth, "", "the server wants a password: set protected.password");
    }
    let kind = if text.contains("timeout") { ErrorKind::Timeout } else { ErrorKind::Protocol };
    SourceError::new(kind, "", text)
}

/// Aborts the connection task when the sample ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Samples one PostgreSQL query.
pub(crate) struct PostgresSource {
    config: Config,
    timeout: Duration,
    describe: String,
    secrets: Vec<String>,
}

impl PostgresSource {
    pub(crate) fn new(config: Config, timeout: Duration) -> Self {
        let host = if config.host.contains(':') { format!("[{}]", config.host) } else { config.host.clone() };
        let describe = format!(
            "postgresql {host}:{}/{} user {} query \"{}\"",
            config.port,
            config.db,
            config.user,
            shorten(&config.query, 80)
        );
        let secrets = config.password.iter().cloned().collect();
        Self { config, timeout, describe, secrets }
    }

    async fn sample_now(&self) -> Result<Option<f64>, SourceError> {
        let c = &self.config;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&c.host)
            .port(c.port)
            .dbname(&c.db)
            .user(&c.user)
            .application_name("herd-metric-sources")
            .connect_timeout(self.timeout)
            .options(format!("-c statement_timeout={}", self.timeout.as_millis().max(1)));
        if let Some(pw) = &c.password {
            cfg.password(pw);
        }
        let (mut client, connection) = cfg.connect(NoTls).await.map_err(|e| pg_failure(&e))?;
        let _task = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let tx = client.build_transaction().read_only(true).start().await.map_err(|e| pg_failure(&e))?;
        let stmt = tx.prepare(&c.query).await.map_err(|e| pg_failure(&e))?;
        let wrong = |m: String| SourceError::new(ErrorKind::NotANumber, "", m);
        if !stmt.params().is_empty() {
            return Err(SourceError::new(
                ErrorKind::Config,
                "",
                format!("the query has {} parameter(s) ($1...); write the values into it", stmt.params().len()),
            ));
        }
        match stmt.columns() {
            [col] if numeric_type(col.type_()) => {}
            [col] => {
                return Err(wrong(format!(
                    "column \"{}\" is {}, not a number: the query must return one integer, float or numeric \
                     column (cast it, e.g. ::bigint)",
                    col.name(),
                    col.type_()
                )))
            }
            cols => {
                return Err(wrong(format!(
                    "the query returns {} columns; it must return exactly one number",
                    cols.len()
                )))
            }
        }
        let params: &[&(dyn ToSql + Sync)] = &[];
        let portal = tx.bind(&stmt, params).await.map_err(|e| pg_failure(&e))?;
        let rows = tx.query_portal(&portal, 2).await.map_err(|e| pg_failure(&e))?;
        let row = match rows.as_slice() {
            [row] => row,
            [] => return Err(wrong("the query returned no row; it must return exactly one".into())),
            _ => return Err(wrong("the query returned more than one row; it must return exactly one".into())),
        };
        let value: Option<Num> = row.try_get(0).map_err(|e| wrong(chain_text(&e)))?;
        Ok(value.map(|n| n.0))
    }
}

bounded_metric_source!(PostgresSource, secrets);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_select_or_with_only() {
        for ok in [
            "SELECT count(*) FROM jobs WHERE done = false",
            "  select 1;  ",
            "SELECT 1; -- trailing comment",
            "SELECT 1 /* a ; b */ ;",
            "WITH q AS (SELECT 1 AS x) SELECT count(*) FROM q",
            "SELECT count(*) FROM t WHERE note = 'a;b' AND \"we;ird\" = 'it''s'",
            "SELECT count(*) FROM t WHERE s = E'\\';' ",
            "SELECT length($x$;$x$) ",
            "-- leading\nSELECT 1",
            "SELECT a$b FROM t",
        ] {
            assert_eq!(check_query(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "  ; ",
            "DELETE FROM jobs",
            "SELECT 1; DROP TABLE jobs",
            "SELECT 1;;",
            "SELECT 'unterminated",
            "SELECT $x$ never closed",
            "SELECT 1 /* open",
            "(SELECT 1)",
            "VALUES (1)",
            "INSERT INTO t SELECT 1",
        ] {
            assert!(check_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numeric_binary_decodes() {
        // 1234.5 = digits [1234, 5000], weight 0, positive, dscale 1.
        let raw = [0u8, 2, 0, 0, 0, 0, 0, 1, 0x04, 0xD2, 0x13, 0x88];
        assert_eq!(decode_numeric(&raw).unwrap(), 1234.5);
        // -20000 = digits [2], weight 1, negative.
        let raw = [0u8, 1, 0, 1, 0x40, 0, 0, 0, 0, 2];
        assert_eq!(decode_numeric(&raw).unwrap(), -20000.0);
        // 0 = no digits.
        assert_eq!(decode_numeric(&[0, 0, 0, 0, 0, 0, 0, 0]).unwrap(), 0.0);
        assert!(decode_numeric(&[0, 0, 0, 0, 0xC0, 0, 0, 0]).unwrap().is_nan());
        assert!(decode_numeric(&[0, 1, 0, 0]).is_err());
    }

    fn spec(endpoint: &str, settings: serde_json::Value) -> SourceSpec {
        SourceSpec { kind: SourceKind::Postgresql, endpoint: endpoint.into(), settings, protected: json!(null) }
    }

    #[test]
    fn spec_fields() {
        let q = json!({"query": "SELECT 1", "user": "app"});
        let c = parse(&spec("postgresql://127.0.0.1:5433/jobs", q.clone())).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.db.as_str(), c.user.as_str()), ("127.0.0.1", 5433, "jobs", "app"));
        let c = parse(&spec("postgres://app@[::1]/jobs", json!({"query": "SELECT 1;"}))).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user.as_str(), c.query.as_str()), ("::1", 5432, "app", "SELECT 1"));
        let field = |e: &str, s| parse(&spec(e, s)).err().map(|e: FieldError| e.field).unwrap_or_default();
        assert_eq!(field("postgresql://h/db", json!({"query": "SELECT 1"})), "settings.user");
        assert_eq!(field("postgresql://h/", q.clone()), "endpoint");
        assert_eq!(field("postgresql://h/db?sslmode=require", q.clone()), "endpoint");
        assert_eq!(field("mysql://h/db", q.clone()), "endpoint");
        assert_eq!(field("postgresql://h/db", json!({"query": "DELETE FROM x", "user": "a"})), "settings.query");
        let e = parse(&spec("postgresql://app:sekret@h/db", q)).err().unwrap();
        assert!(e.field == "endpoint" && !e.to_string().contains("sekret"), "{e}");
    }
}
