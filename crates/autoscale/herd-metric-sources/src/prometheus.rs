//! Prometheus: an instant PromQL query (`GET /api/v1/query?query=...`) that yields one value.
//!
//! Why: many queues already export their depth to Prometheus (RabbitMQ, Kafka lag exporters,
//! SQS exporters), so one query reaches them all. The query must give a scalar or a vector of
//! at most one series: aggregate in PromQL (`sum(...)`, `max(...)`) rather than have herd pick
//! a series. An empty vector — the metric is absent — is "no data", as is a `NaN` value (a
//! ratio over nothing); several series, a range vector or a PromQL error are errors.
//! `protected.headers` carries auth for a Prometheus behind a proxy.

use std::time::Duration;

use herd_model::FieldError;
use reqwest::header::HeaderMap;
use reqwest::Url;
use serde_json::Value;

use crate::http_json::{client, get, json_type, parse_headers, status_error};
use crate::spec::{display_url, parse_http_url, shorten, Fields};
use crate::{ErrorKind, SourceError, SourceKind, SourceSpec};

/// A validated Prometheus source.
#[derive(Clone)]
pub(crate) struct Config {
    base: Url,
    query: String,
    headers: HeaderMap,
    secrets: Vec<String>,
}

/// Reads and checks a Prometheus spec.
pub(crate) fn parse(spec: &SourceSpec) -> Result<Config, FieldError> {
    let base = parse_http_url(&spec.endpoint, "put an Authorization header in protected.headers")?;
    if base.query().is_some() {
        return Err(FieldError::new(
            "endpoint",
            "must be Prometheus's base URL, like http://host:9090, without ?query",
        ));
    }
    let s = Fields::settings(spec)?;
    s.only(SourceKind::Prometheus, &["query"])?;
    let query = s.str_req("query", "a PromQL instant query giving one value, e.g. sum(queue_depth)")?;
    let p = Fields::protected(spec)?;
    p.only(SourceKind::Prometheus, &["headers"])?;
    let (headers, secrets) = parse_headers(&p)?;
    Ok(Config { base, query: query.trim().to_string(), headers, secrets })
}

/// Samples one PromQL query.
pub(crate) struct PrometheusSource {
    config: Config,
    url: Url,
    client: reqwest::Client,
    timeout: Duration,
    describe: String,
}

impl PrometheusSource {
    pub(crate) fn new(config: Config, timeout: Duration) -> Result<Self, SourceError> {
        let describe = format!("prometheus {} query \"{}\"", display_url(&config.base), shorten(&config.query, 80));
        let mut url = config.base.clone();
        let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
        url.set_path(&path);
        // Prometheus's own evaluation timeout, a little inside ours.
        // (Plain seconds: "4.5"; Prometheus's duration syntax has no fractions.)
        let secs = (timeout.as_secs_f64() * 0.9).max(0.001);
        url.query_pairs_mut().append_pair("query", &config.query).append_pair("timeout", &format!("{secs:.3}"));
        let client = client(timeout, &describe)?;
        Ok(Self { config, url, client, timeout, describe })
    }

    async fn sample_now(&self) -> Result<Option<f64>, SourceError> {
        let (status, body) = get(&self.client, self.url.clone(), &self.config.headers).await?;
        let doc: Option<Value> = serde_json::from_slice(&body).ok();
        // Prometheus answers errors (400 bad_data, 422 execution, 503 timeout) as JSON.
        if let Some(err) = doc.as_ref().filter(|d| d.get("status").and_then(Value::as_str) == Some("error")) {
            let etype = err.get("errorType").and_then(Value::as_str).unwrap_or("error");
            let text = err.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(SourceError::new(
                ErrorKind::Server,
                "",
                format!("HTTP {}: PromQL {etype}: {text}", status.as_u16()),
            ));
        }
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let doc = doc.ok_or_else(|| SourceError::new(ErrorKind::Protocol, "", "the response is not JSON"))?;
        let data = doc.get("data").unwrap_or(&Value::Null);
        let rtype = data.get("resultType").and_then(Value::as_str).unwrap_or("");
        let result = data.get("result").unwrap_or(&Value::Null);
        let bad = |m: String| SourceError::new(ErrorKind::NotANumber, "", m);
        let sample = match rtype {
            "scalar" => result,
            "vector" => match result.as_array().map(Vec::as_slice) {
                Some([]) => return Ok(None),
                Some([one]) => one.get("value").unwrap_or(&Value::Null),
                Some(many) => {
                    return Err(bad(format!(
                        "the query returned {} series; aggregate them to one, e.g. sum(...) or max(...)",
                        many.len()
                    )))
                }
                None => return Err(SourceError::new(ErrorKind::Protocol, "", "a vector result is not an array")),
            },
            "matrix" => return Err(bad("the query returned a range vector; use an instant query (no [5m])".into())),
            other => return Err(bad(format!("the query returned a {other} result, not a number"))),
        };
        // A sample is [timestamp, "value"].
        match sample.get(1) {
            Some(Value::String(s)) if s == "NaN" => Ok(None),
            Some(Value::String(s)) => {
                s.parse::<f64>().map(Some).map_err(|_| bad(format!("the value \"{}\" is not a number", shorten(s, 40))))
            }
            other => Err(SourceError::new(
                ErrorKind::Protocol,
                "",
                format!("a sample value is {}", other.map(json_type).unwrap_or("missing")),
            )),
        }
    }
}

bounded_metric_source!(PrometheusSource, config.secrets);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_fields() {
        let spec = |endpoint: &str, settings| SourceSpec {
            kind: SourceKind::Prometheus,
            endpoint: endpoint.into(),
            settings,
            protected: json!(null),
        };
        assert!(parse(&spec("http://127.0.0.1:9090", json!({"query": "sum(up)"}))).is_ok());
        assert_eq!(parse(&spec("http://h:9090", json!({}))).err().unwrap().field, "settings.query");
        assert_eq!(parse(&spec("http://h:9090?x=1", json!({"query": "up"}))).err().unwrap().field, "endpoint");
        assert_eq!(
            parse(&spec("http://h:9090", json!({"query": "up", "step": 1}))).err().unwrap().field,
            "settings.step"
        );
    }

    #[test]
    fn query_url_keeps_a_path_prefix() {
        let c = parse(&SourceSpec {
            kind: SourceKind::Prometheus,
            endpoint: "http://h:9090/prom/".into(),
            settings: json!({"query": "sum(a{b=\"c\"})"}),
            protected: json!(null),
        })
        .unwrap();
        let s = PrometheusSource::new(c, Duration::from_secs(2)).unwrap();
        assert!(
            s.url.as_str().starts_with("http://h:9090/prom/api/v1/query?query=sum%28a%7Bb%3D%22c%22%7D%29"),
            "{}",
            s.url
        );
        assert_eq!(s.describe, "prometheus http://h:9090/prom/ query \"sum(a{b=\"c\"})\"");
    }
}
