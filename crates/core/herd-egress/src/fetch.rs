//! Downloading an extension's `http(s)` `fileUris` under the data-safety rules, the same code
//! wherever the download happens.
//!
//! Why here: the file is fetched by the machine that runs the instance — the server for its
//! own instances, `herd agent` for a joined host's (its network position, not the server's) —
//! and both must apply exactly the same rules. The server's config sets them
//! ([`FetchRules`]: the size limit, the deadline, the operator's allow list and the ranges the
//! server adds, such as the virtual networks' address spaces); they travel with the script
//! run to the host, which enforces them with the default refusals of [`AddressPolicy`] built
//! in (a server can allow more only through `[extensions] allow_fetch_from`, as on its own
//! machine).
//!
//! - Every connection goes through [`Egress`]: checked on the address actually connected to,
//!   after DNS and on every redirect hop.
//! - The size limit counts bytes as they arrive (a `Content-Length` over the limit stops it at
//!   once; a missing or lying one does not help), and one deadline covers connect, redirects
//!   and body.
//! - Errors never repeat the URL (it may carry a SAS-like token in its query string, or come
//!   from protected settings): the caller names the file as it may be shown.

use crate::{AddressPolicy, Egress, Net};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The config setting that allows more addresses to `fileUris`, named in refusals.
pub const ALLOW_SETTING: &str = "[extensions] allow_fetch_from";

/// A range refused beyond the defaults, with why (`herd virtual network 'v'`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraRefusal {
    pub net: Net,
    pub why: String,
}

/// The rules one download is held to, as the server's config sets them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRules {
    /// Largest file accepted, in bytes.
    pub max_bytes: u64,
    /// Whole-download deadline.
    pub timeout: Duration,
    /// Ranges the operator allowed (`[extensions] allow_fetch_from`); they win over refusals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<Net>,
    /// Ranges refused on top of the defaults (loopback, link-local, unspecified).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<ExtraRefusal>,
}

impl Default for FetchRules {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, timeout: Duration::from_secs(60), allowed: vec![], refused: vec![] }
    }
}

impl FetchRules {
    /// The rules of `policy` (its allow list and added refusals) with these limits.
    pub fn new(max_bytes: u64, timeout: Duration, policy: &AddressPolicy) -> Self {
        Self {
            max_bytes,
            timeout,
            allowed: policy.allowed().to_vec(),
            refused: policy
                .added_refusals()
                .iter()
                .map(|(net, why)| ExtraRefusal { net: *net, why: why.clone() })
                .collect(),
        }
    }

    /// The address policy these rules describe: the defaults, the added refusals, the allow list.
    pub fn policy(&self) -> AddressPolicy {
        self.refused
            .iter()
            .fold(AddressPolicy::new(ALLOW_SETTING, self.allowed.clone()), |p, r| p.refuse(r.net, r.why.clone()))
    }
}

/// Downloads over `http(s)` within [`FetchRules`]; holds the HTTP client, so one serves many files.
#[derive(Clone)]
pub struct HttpFetch {
    rules: FetchRules,
    http: Egress,
}

impl HttpFetch {
    pub fn new(rules: FetchRules) -> Self {
        let http = Egress::new(rules.policy(), rules.timeout);
        Self { rules, http }
    }

    /// Fetches `url`; the error says why, without repeating the URL.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let limits = &self.rules;
        let too_big = || format!("is larger than the limit of {} bytes", limits.max_bytes);
        let work = async {
            let req = self.http.request(reqwest::Method::GET, url).map_err(|e| match e {
                // The parser's message may quote the URL.
                crate::EgressError::BadUrl(_) => "is not a valid URL".to_string(),
                other => other.to_string(),
            })?;
            let mut resp = req.send().await.map_err(|e| describe(&e))?;
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
            Err(_) => Err(timed_out(limits.timeout)),
        }
    }
}

/// The message of a download that ran out of time.
pub fn timed_out(t: Duration) -> String {
    format!("timed out after {}s", t.as_secs())
}

/// The file name a URL is saved under: its last path segment, without query or fragment.
pub fn file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    let ok = !name.is_empty() && name != "." && name != ".." && !name.starts_with(".herd");
    ok.then(|| name.to_string())
}

/// `url` without its query string and fragment (where a SAS-like token lives), for messages.
pub fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or_default()
}

/// reqwest's error without the URL (the caller names it, redacted if need be); a refusal by the
/// address policy is told as such.
fn describe(e: &reqwest::Error) -> String {
    if let Some(why) = crate::refusal_in(e) {
        return format!("refused: {why}");
    }
    let mut msg = if e.is_connect() {
        "could not connect".to_string()
    } else if e.is_timeout() {
        "timed out".into()
    } else if e.is_body() || e.is_decode() {
        "the download broke off".into()
    } else if e.is_redirect() {
        "a redirect was not followed".into()
    } else {
        "request failed".into()
    };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        // A redirect error's sources are herd's own texts; reqwest's url errors are not shown.
        let text = s.to_string();
        if !text.contains("://") {
            msg.push_str(&format!(": {text}"));
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests;
