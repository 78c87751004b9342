//! Downloads an extension's `fileUris` on the host, before they are copied into the instance.
//!
//! Why on the host: a VM may have no route out and no download tool, and the host can apply one
//! size limit and one timeout to every file, with an error that names the URL (redacted by the
//! caller when it came from protected settings). `http`, `https` and `file` URLs are accepted.

use std::time::Duration;

/// Limits on one download.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// Largest file accepted, in bytes.
    pub max_bytes: u64,
    /// Whole-download deadline.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, timeout: Duration::from_secs(60) }
    }
}

/// The file name a URL is saved under: its last path segment, without query or fragment.
pub fn file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    let ok = !name.is_empty() && name != "." && name != ".." && !name.starts_with(".herd");
    ok.then(|| name.to_string())
}

/// Fetches `url` within `limits`.
pub async fn fetch(client: &reqwest::Client, url: &str, limits: &FetchLimits) -> Result<Vec<u8>, String> {
    let too_big = || format!("is larger than the limit of {} bytes", limits.max_bytes);
    if let Some(path) = url.strip_prefix("file://") {
        let path = path.to_string();
        let max = limits.max_bytes;
        return tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
            if meta.len() > max {
                return Err(format!("is larger than the limit of {max} bytes"));
            }
            std::fs::read(&path).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    let work = async {
        let mut resp = client.get(url).send().await.map_err(|e| describe(&e))?;
        if !resp.status().is_success() {
            return Err(format!("answered HTTP {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
            return Err(too_big());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
            if out.len() as u64 + chunk.len() as u64 > limits.max_bytes {
                return Err(too_big());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    match tokio::time::timeout(limits.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}s", limits.timeout.as_secs())),
    }
}

/// reqwest's error without the URL (the caller names it, redacted if need be).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.without_url_ref().to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        if self.is_connect() {
            "could not connect".into()
        } else if self.is_timeout() {
            "timed out".into()
        } else if self.is_body() || self.is_decode() {
            "the download broke off".into()
        } else {
            "request failed".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn names_come_from_the_last_segment() {
        assert_eq!(file_name("http://h:8000/a/installapp-v1.sh?sig=x").as_deref(), Some("installapp-v1.sh"));
        assert_eq!(file_name("http://h/dir/"), None);
        assert_eq!(file_name("file:///tmp/.herd-command"), None);
    }

    /// A one-shot HTTP server on loopback that answers with `body`.
    fn serve(body: Vec<u8>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(&body);
            }
        });
        format!("http://{addr}/file.sh")
    }

    #[tokio::test]
    async fn http_and_file_downloads_within_limits() {
        let client = reqwest::Client::new();
        let url = serve(b"echo hi\n".to_vec());
        assert_eq!(fetch(&client, &url, &FetchLimits::default()).await.unwrap(), b"echo hi\n");
        let url = serve(vec![b'x'; 2000]);
        let small = FetchLimits { max_bytes: 1000, timeout: Duration::from_secs(5) };
        assert!(fetch(&client, &url, &small).await.unwrap_err().contains("limit of 1000 bytes"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sh");
        std::fs::write(&p, b"true").unwrap();
        assert_eq!(fetch(&client, &format!("file://{}", p.display()), &small).await.unwrap(), b"true");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}/x", l.local_addr().unwrap());
        drop(l);
        assert!(fetch(&client, &closed, &small).await.unwrap_err().contains("connect"));
    }
}
