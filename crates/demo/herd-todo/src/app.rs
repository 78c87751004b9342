//! Routes: maps each request to the store and renders JSON, text or the HTML page.
//!
//! `/api/version` and `/` must keep answering while the database is away: the first never
//! touches it, and the page shows "database unavailable" instead of the list (with `200`, so a
//! load balancer probing `/` keeps the instance in its pool; `/healthz` is the probe that
//! follows the database). Database failures are logged once per change of state, not once per
//! request, so an outage does not flood `app.log`.

use crate::db::{validate_title, Db, DbError, Todo};
use crate::http::{Request, Response};
use serde::Deserialize;
use std::sync::atomic::{AtomicU8, Ordering};

/// What we last saw of the database, for logging changes only.
const DB_UNKNOWN: u8 = 0;
const DB_UP: u8 = 1;
const DB_DOWN: u8 = 2;

pub struct App {
    version: u32,
    db: Db,
    db_state: AtomicU8,
    /// The port this app serves on: a peer instance serves on the same one.
    port: u16,
}

#[derive(Deserialize)]
struct NewTodo {
    title: String,
}

impl App {
    pub fn new(version: u32, db: Db, port: u16) -> Self {
        Self { version, db, db_state: AtomicU8::new(DB_UNKNOWN), port }
    }

    pub fn handle(&self, req: &Request) -> Response {
        let method = if req.method == "HEAD" { "GET" } else { req.method.as_str() };
        match (req.path.as_str(), method) {
            ("/api/version", "GET") => Response::text(200, format!("{}\n", self.version_line())),
            ("/api/todos", "GET") => match self.observe(self.db.list()) {
                Ok(items) => Response::json(200, &items),
                Err(_) => db_unavailable(),
            },
            ("/api/todos", "POST") => self.create(&req.body),
            ("/healthz", "GET") => match self.observe(self.db.ping()) {
                Ok(()) => Response::text(200, "ok\n"),
                Err(_) => Response::text(503, "database unavailable\n"),
            },
            ("/", "GET") => {
                let items = self.observe(self.db.list()).ok();
                Response::new(200, "text/html; charset=utf-8", render_page(&self.version_line(), items.as_deref()))
            }
            (p, "GET") if p.starts_with("/api/peer/") => self.peer(&p["/api/peer/".len()..]),
            ("/api/version" | "/healthz" | "/", _) => method_not_allowed("GET, HEAD"),
            ("/api/todos", _) => method_not_allowed("GET, HEAD, POST"),
            _ => Response::text(404, "not found\n"),
        }
    }

    fn create(&self, body: &[u8]) -> Response {
        let new: NewTodo = match serde_json::from_slice(body) {
            Ok(n) => n,
            Err(e) => return error(400, &format!("body: expected JSON {{\"title\": \"…\"}} ({e})")),
        };
        let title = match validate_title(&new.title) {
            Ok(t) => t,
            Err(msg) => return error(400, &msg),
        };
        match self.observe(self.db.add(title)) {
            Ok(item) => Response::json(201, &item),
            Err(_) => db_unavailable(),
        }
    }

    /// `GET /api/peer/<private IP>`: this instance fetches `/api/version` from the instance at
    /// that address (on its own port) and says what came back: instances reaching each other
    /// on their vnet. Only private IPv4 addresses are fetched (RFC 1918), with a 3 s limit.
    fn peer(&self, addr: &str) -> Response {
        let Ok(ip) = addr.parse::<std::net::Ipv4Addr>() else {
            return error(400, &format!("'{addr}' is not an IPv4 address"));
        };
        if !ip.is_private() {
            return error(400, &format!("{ip} is not a private address (10/8, 172.16/12, 192.168/16)"));
        }
        let target = std::net::SocketAddr::from((ip, self.port));
        match fetch_version(target) {
            Ok(line) => {
                Response::text(200, format!("{} fetched http://{target}/api/version: {line}\n", self.version_line()))
            }
            Err(e) => Response::text(
                502,
                format!("{} could not fetch http://{target}/api/version: {e}\n", self.version_line()),
            ),
        }
    }

    /// `Version N from <hostname>`: the computer name herd gave the instance, else the kernel's
    /// hostname (read per request: a guest may set it after we start).
    fn version_line(&self) -> String {
        format!("Version {} from {}", self.version, hostname())
    }

    /// Passes `r` through, logging when the database goes away or comes back.
    fn observe<T>(&self, r: Result<T, DbError>) -> Result<T, DbError> {
        let now = if r.is_ok() { DB_UP } else { DB_DOWN };
        let before = self.db_state.swap(now, Ordering::SeqCst);
        match &r {
            Err(e) if before != DB_DOWN => eprintln!("herd-todo: database unavailable: {e}"),
            Ok(_) if before == DB_DOWN => eprintln!("herd-todo: database reachable again"),
            Ok(_) if before == DB_UNKNOWN => eprintln!("herd-todo: database reachable"),
            _ => {}
        }
        r
    }
}

fn hostname() -> String {
    if let Some(name) = std::env::var("HERD_COMPUTER_NAME").ok().filter(|n| !n.trim().is_empty()) {
        return name.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, &serde_json::json!({ "error": message }))
}

fn db_unavailable() -> Response {
    error(503, "database unavailable").with_header("Retry-After", "1")
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::text(405, "method not allowed\n").with_header("Allow", allow)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML page: the version line, the list (or a note that the database is away) and a form
/// that posts JSON to `/api/todos`.
fn render_page(version_line: &str, items: Option<&[Todo]>) -> String {
    let list = match items {
        None => "<p><em>database unavailable</em></p>".to_string(),
        Some([]) => "<p>Nothing to do.</p>".to_string(),
        Some(items) => {
            let lis: String = items
                .iter()
                .map(|t| {
                    format!(
                        "<li>{} <small>#{} {}</small></li>",
                        escape_html(&t.title),
                        t.id,
                        escape_html(&t.created_at)
                    )
                })
                .collect();
            format!("<ul>{lis}</ul>")
        }
    };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>herd TODO</title></head>
<body>
<h1>TODO</h1>
<p id="version">{}</p>
{list}
<form onsubmit="fetch('/api/todos',{{method:'POST',headers:{{'Content-Type':'application/json'}},body:JSON.stringify({{title:this.t.value}})}}).then(()=>location.reload());return false">
<input name="t" placeholder="new item" maxlength="500"> <button>Add</button>
</form>
</body></html>
"#,
        escape_html(version_line)
    )
}

/// One `GET /api/version` to `target` (HTTP/1.0, 3 s limit): the first line of the body.
fn fetch_version(target: std::net::SocketAddr) -> Result<String, String> {
    use std::io::{Read, Write};
    let limit = std::time::Duration::from_secs(3);
    let mut s = std::net::TcpStream::connect_timeout(&target, limit).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /api/version HTTP/1.0\r\nHost: peer\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.take(64 * 1024).read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered '{}'", head.lines().next().unwrap_or_default()));
    }
    Ok(body.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_titles_and_shows_the_version() {
        let items = [Todo { id: 7, title: "<b>&'\"".into(), created_at: "t".into() }];
        let page = render_page("Version 2 from web000001", Some(&items));
        assert!(page.contains("<p id=\"version\">Version 2 from web000001</p>"), "{page}");
        assert!(page.contains("&lt;b&gt;&amp;&#39;&quot; <small>#7 t</small>"), "{page}");
        assert!(render_page("v", None).contains("database unavailable"));
        assert!(render_page("v", Some(&[])).contains("Nothing to do."));
    }

    /// The peer fetch reads the other instance's version line, and refuses what is not a
    /// private address.
    #[test]
    fn a_peer_is_asked_for_its_version() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\nVersion 2 from peer\n").unwrap();
        });
        assert_eq!(fetch_version(addr).unwrap(), "Version 2 from peer");
        t.join().unwrap();
        let app = App::new(1, Db::new(postgres::Config::new()), 80);
        let r = app.handle(&Request { method: "GET".into(), path: "/api/peer/127.0.0.1".into(), body: vec![] });
        assert_eq!(r.status, 400, "loopback is not a peer");
        let r = app.handle(&Request { method: "GET".into(), path: "/api/peer/web-1".into(), body: vec![] });
        assert_eq!(r.status, 400);
    }
}
