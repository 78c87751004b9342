//! The in-process harness for the API's handler tests: one [`AppState`] built around an
//! in-memory SQLite store, the sim driver, a manual clock and an ephemeral sealer, and requests
//! sent through `herd_api::router` with `tower::ServiceExt::oneshot` (no listener, no
//! subprocess).
//!
//! Why one function builds the state: the state layer is being refactored (issue 15); when
//! `AppState` changes shape, [`Harness::new`] is the one place to follow it.

#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request};
use axum::Router;
use chrono::{TimeZone, Utc};
use futures::future::BoxFuture;
use herd_api::services::{ConsoleLogs, LoadBalancerView, MetricSourceCheck, ServiceError, SourceDraft, SourceRefusal};
use herd_api::{images::ImportConfig, ApiConfig, AppState};
use herd_driver::sim::{SimConfig, SimDriver};
use herd_model::clock::ManualClock;
use herd_store::SqliteStore;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// The API token every harness uses.
pub const TOKEN: &str = "test-api-token-0123456789abcdef";
/// The `/metrics`-only token.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";
/// The largest upload the harness's server accepts: large enough that a Content-Length below
/// it but above the disk's free space reaches the free-space check (507).
pub const MAX_UPLOAD: u64 = 1 << 50;

/// The names of the world [`Harness::world`] builds.
pub const G: &str = "rg";
pub const SET: &str = "web";
pub const URN: &str = "P:O:S:1.0.0";

/// One in-process server.
#[derive(Clone)]
pub struct Harness {
    pub state: AppState,
    pub router: Router,
    pub sim: Arc<SimDriver>,
    pub clock: ManualClock,
    /// Data dir (image gallery under `images/`) and import root (`roots/`).
    pub dir: Arc<tempfile::TempDir>,
}

/// What the server answered, with the request it answered.
#[derive(Debug, Clone)]
pub struct Resp {
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{} {} → {}: body is not JSON ({e}): {}", self.method, self.path, self.status, self.text())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status, naming the request and body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "{} {}: body {}", self.method, self.path, self.text());
        self
    }

    /// The error body's `(code, message, target)`, asserting its documented shape
    /// `{"error": {"code", "message", "target"?}}` and nothing else.
    #[track_caller]
    pub fn error(&self) -> (String, String, Option<String>) {
        let v = self.json();
        let obj =
            v.as_object().unwrap_or_else(|| panic!("{} {}: error body is not an object: {v}", self.method, self.path));
        assert_eq!(obj.len(), 1, "{} {}: the error body has only `error`: {v}", self.method, self.path);
        let e =
            v["error"].as_object().unwrap_or_else(|| panic!("{} {}: no `error` object: {v}", self.method, self.path));
        for k in e.keys() {
            assert!(
                ["code", "message", "target"].contains(&k.as_str()),
                "{} {}: unexpected field {k}: {v}",
                self.method,
                self.path
            );
        }
        let code = e.get("code").and_then(Value::as_str).unwrap_or_default().to_string();
        let message = e.get("message").and_then(Value::as_str).unwrap_or_default().to_string();
        assert!(
            !code.is_empty() && !message.is_empty(),
            "{} {}: code and message are required: {v}",
            self.method,
            self.path
        );
        let target = match e.get("target") {
            None => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(other) => panic!("{} {}: target is not a string: {other}", self.method, self.path),
        };
        (code, message, target)
    }

    /// Asserts the error names `target` as the offending field.
    #[track_caller]
    pub fn target(self, target: &str) -> Self {
        let (_, message, t) = self.error();
        assert_eq!(t.as_deref(), Some(target), "{} {}: message {message}", self.method, self.path);
        self
    }

    /// Asserts the error message contains `needle`.
    #[track_caller]
    pub fn says(self, needle: &str) -> Self {
        let (_, message, _) = self.error();
        assert!(message.contains(needle), "{} {}: message {message:?} lacks {needle:?}", self.method, self.path);
        self
    }

    pub fn etag(&self) -> String {
        self.headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_else(|| {
            self.json()["etag"].as_str().unwrap_or_else(|| panic!("{} {}: no etag", self.method, self.path)).to_string()
        })
    }
}

/// The API's service traits over the real components a server wires in (`herd`'s `services`):
/// the load-balancer controller (no data plane runs in process: no frontends), the sim
/// driver's console and the metric-source clients' own validation.
struct Lb(Arc<herd_lbctl::LbController>);

impl LoadBalancerView for Lb {
    fn frontends(&self) -> Vec<std::net::SocketAddr> {
        self.0.frontends()
    }

    fn metrics(&self) -> String {
        self.0.metrics()
    }
}

struct Consoles(Arc<SimDriver>);

impl ConsoleLogs for Consoles {
    fn console_log<'a>(
        &'a self,
        key: &'a herd_model::InstanceKey,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<String>, ServiceError>> {
        use herd_driver::Driver;
        Box::pin(async move { self.0.console_log(key, max_bytes).await.map_err(|e| ServiceError(Box::new(e))) })
    }
}

struct Sources;

impl MetricSourceCheck for Sources {
    fn check(&self, d: SourceDraft<'_>) -> Result<String, SourceRefusal> {
        let kind: herd_metric_sources::SourceKind = d.kind.parse().map_err(SourceRefusal::Kind)?;
        let (endpoint, settings, protected) = (d.endpoint.into(), d.settings.clone(), d.protected.clone());
        let spec = herd_metric_sources::SourceSpec { kind, endpoint, settings, protected };
        herd_metric_sources::validate(&spec).map(|()| kind.to_string()).map_err(SourceRefusal::Spec)
    }
}

impl Harness {
    /// The one place an [`AppState`] is built for these tests.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let image_dir = dir.path().join("images");
        let roots = dir.path().join("roots");
        std::fs::create_dir_all(&image_dir).unwrap();
        std::fs::create_dir_all(&roots).unwrap();
        let store: Arc<dyn herd_store::Store> = Arc::new(SqliteStore::in_memory().expect("in-memory store"));
        let sim = Arc::new(SimDriver::new(SimConfig {
            boot_min: Duration::ZERO,
            boot_max: Duration::ZERO,
            ..Default::default()
        }));
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        let health = Arc::new(herd_model::health::HealthBoard::default());
        let lb = Arc::new(herd_lbctl::LbController::new(
            store.clone(),
            health.clone(),
            herd_lbctl::Limits { drain_timeout: Duration::from_secs(1), max_connections_per_rule: None },
        ));
        let state = AppState {
            store: store.into(),
            wake: Arc::new(tokio::sync::Notify::new()),
            token: TOKEN.into(),
            clock: Arc::new(clock.clone()),
            config: Arc::new(ApiConfig {
                skus: Default::default(),
                zones: vec!["1".into(), "2".into(), "3".into()],
                max_capacity: herd_model::scale_set::MULTI_PLACEMENT_GROUP_MAX,
                image_dir,
                driver: "sim".into(),
                public_ip_block: 0,
                hosts: vec![],
                prices: Default::default(),
                images: ImportConfig {
                    import_roots: vec![roots.canonicalize().unwrap()],
                    max_upload_bytes: MAX_UPLOAD,
                },
                cluster_id: "test-cluster".into(),
                bridged: false,
                public_ip_pool: None,
            }),
            sealer: Arc::new(herd_store::seal::Sealer::ephemeral()),
            health,
            lb: Arc::new(Lb(lb)),
            consoles: Arc::new(Consoles(sim.clone())),
            sources: Arc::new(Sources),
            spot_priced: Arc::from(Vec::<String>::new()),
            metrics_token: Some(METRICS_TOKEN.into()),
            invalid_transitions: Default::default(),
            controllers: herd_api::ControllerBoard::new(|| vec![idle_controller()]),
            auth_limit: herd_api::auth_limit::AuthLimiter::new(Default::default(), Arc::new(clock.clone())),
            tls: Arc::new(
                herd_tls::ServedTls::cluster(
                    herd_tls::TlsFiles::new(&dir.path().join("tls-data"), None),
                    herd_tls::server_leaf("127.0.0.1:7900".parse().unwrap(), &[]).unwrap(),
                    "test-cluster",
                    Arc::new(clock.clone()),
                )
                .unwrap(),
            ),
            heartbeats: Arc::new(herd_model::host::NoHeartbeats),
            host_grace: chrono::Duration::seconds(herd_model::host::DEFAULT_HOST_GRACE_SECS as i64),
            joined: None,
            observed: Default::default(),
        };
        let router = herd_api::router(state.clone());
        Harness { state, router, sim, clock, dir: Arc::new(dir) }
    }

    /// Whether a handler woke the reconciler since the last call (takes the stored wake-up).
    pub fn woken(&self) -> bool {
        use futures::FutureExt;
        self.state.wake.notified().now_or_never().is_some()
    }

    /// The directory server-side imports may read (`[images] import_roots`).
    pub fn roots(&self) -> PathBuf {
        self.dir.path().join("roots").canonicalize().unwrap()
    }

    /// Sends one request through the router.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = self.router.clone().oneshot(req).await.expect("the router is infallible");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("response body");
        Resp { method, path, status, headers, body }
    }

    /// Sends one request as if it came from `from` (what the listener tells the router).
    pub async fn send_from(&self, from: std::net::SocketAddr, mut req: Request<Body>) -> Resp {
        req.extensions_mut().insert(axum::extract::ConnectInfo(herd_api::guard::ClientAddr(from)));
        self.send(req).await
    }

    /// A request with the API token and, when given, a JSON body.
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Resp {
        self.call_with(method, uri, body, &[]).await
    }

    pub async fn call_with(&self, method: Method, uri: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.call(Method::GET, uri, None).await
    }

    pub async fn put(&self, uri: &str, body: Value) -> Resp {
        self.call(Method::PUT, uri, Some(body)).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Resp {
        self.call(Method::POST, uri, Some(body)).await
    }

    pub async fn delete(&self, uri: &str) -> Resp {
        self.call(Method::DELETE, uri, None).await
    }

    /// A process image directory below the import root: `roots/<name>/init`, executable.
    pub fn image_dir(&self, name: &str) -> PathBuf {
        let d = self.roots().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let init = d.join("init");
        std::fs::write(&init, "#!/bin/sh\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// A group `rg` with an image, a network security group (`nsg1`, rule `web`), a vnet
    /// (`vnet1`/`default`, filtered by `nsg1`), a public IP (`pip1`), a load
    /// balancer (`lb1`: frontend `fe`, pool `pool1`, probe `probe1`), a metric source (`q`), a
    /// scale set `web` (2 instances, extension `setup`, automatic repairs on, joined to the
    /// subnet and pool) with an autoscale setting (`auto`), and one reconciler pass so the
    /// instance records exist. Every step goes through the API and must succeed.
    pub async fn world(&self) -> &Self {
        self.put(&format!("/v1/resourceGroups/{G}"), json!({})).await.expect(201);
        let img = self.image_dir("img");
        self.put(&format!("/v1/images/{URN}"), json!({"directory": img})).await.expect(201);
        self.put(
            &format!("/v1/resourceGroups/{G}/networkSecurityGroups/nsg1"),
            json!({"securityRules": [{"name": "web", "priority": 100, "direction": "Inbound", "access": "Allow",
                   "protocol": "Tcp", "destinationPortRange": "80"}]}),
        )
        .await
        .expect(200);
        self.put(
            &format!("/v1/resourceGroups/{G}/virtualNetworks/vnet1"),
            json!({"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                   "subnets": [{"name": "default", "addressPrefix": "10.0.0.0/24",
                                "networkSecurityGroup": {"id": net_id("networkSecurityGroups", "nsg1")}}]}),
        )
        .await
        .expect(200);
        self.put(&format!("/v1/resourceGroups/{G}/publicIPAddresses/pip1"), json!({})).await.expect(200);
        self.put(&format!("/v1/resourceGroups/{G}/loadBalancers/lb1"), lb_body()).await.expect(200);
        self.put(&format!("/v1/resourceGroups/{G}/virtualMachineScaleSets/{SET}"), set_body(2)).await.expect(201);
        self.put(
            &format!("/v1/resourceGroups/{G}/metricSources/q"),
            json!({"type": "http-json", "endpoint": "http://127.0.0.1:9/depth", "settings": {"pointer": "/depth"}}),
        )
        .await
        .expect(200);
        self.put(&format!("/v1/resourceGroups/{G}/autoscaleSettings/auto"), autoscale_body()).await.expect(201);
        self.reconcile().await;
        self
    }

    /// One reconciler pass: creates the instance records a handler reads. (Only setup: the
    /// tests assert what the handler itself does.)
    pub async fn reconcile(&self) {
        let rec = herd_reconciler::Reconciler::new(
            self.state.store.store().clone(),
            self.sim.clone(),
            self.state.clock.clone(),
            herd_reconciler::ReconcilerConfig::default(),
        );
        rec.pass().await.expect("reconciler pass");
    }

    /// Reconciler passes until every instance of `web` is Running (at most 10 passes; the sim
    /// driver boots in zero time, so two suffice).
    pub async fn until_running(&self) {
        for _ in 0..10 {
            let list = self.get(&set_uri("/virtualMachines")).await.expect(200).json();
            if list.as_array().is_some_and(|l| !l.is_empty() && l.iter().all(|i| i["state"] == "Running")) {
                return;
            }
            self.reconcile().await;
        }
        panic!("the instances of {SET} were not Running after 10 reconciler passes");
    }
}

pub fn set_uri(rest: &str) -> String {
    format!("/v1/resourceGroups/{G}/virtualMachineScaleSets/{SET}{rest}")
}

pub fn net_id(collection: &str, name: &str) -> String {
    format!("/resourceGroups/{G}/providers/Microsoft.Network/{collection}/{name}")
}

pub fn lb_body() -> Value {
    json!({
        "frontendIPConfigurations": [{"name": "fe", "publicIPAddress": {"id": net_id("publicIPAddresses", "pip1")}}],
        "backendAddressPools": [{"name": "pool1"}],
        "probes": [{"name": "probe1", "protocol": "Tcp", "port": 80}]
    })
}

pub fn set_body(capacity: i64) -> Value {
    json!({
        "sku": {"name": "Standard_B1ms", "capacity": capacity},
        "overprovision": false,
        "automaticRepairsPolicy": {"enabled": true},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": "web"},
            "storageProfile": {"imageReference": {"publisher": "P", "offer": "O", "sku": "S", "version": "latest"}},
            "networkProfile": {
                "healthProbe": {"id": format!("{}/probes/probe1", net_id("loadBalancers", "lb1"))},
                "networkInterfaceConfigurations": [{"name": "nic", "primary": true,
                "ipConfigurations": [{"name": "ipc",
                    "subnet": {"id": format!("{}/subnets/default", net_id("virtualNetworks", "vnet1"))},
                    "loadBalancerBackendAddressPools": [{"id": format!("{}/backendAddressPools/pool1", net_id("loadBalancers", "lb1"))}]
                }]}]},
            "extensionProfile": {"extensions": [{"name": "setup", "properties": {
                "publisher": "Herd.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.1",
                "settings": {"commandToExecute": "echo setup"}}}]}
        }
    })
}

pub fn autoscale_body() -> Value {
    json!({
        "targetResourceUri": format!("/resourceGroups/{G}/providers/Microsoft.Compute/virtualMachineScaleSets/{SET}"),
        "enabled": true,
        "profiles": [{"name": "default", "capacity": {"minimum": "1", "maximum": "4", "default": "2"}, "rules": [{
            "metricTrigger": {"metricName": "Percentage CPU", "timeGrain": "PT1M", "statistic": "Average",
                "timeWindow": "PT5M", "timeAggregation": "Average", "operator": "GreaterThan", "threshold": 70},
            "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}
        }]}]
    })
}

/// The one controller the harness's board shows: idle after one run.
pub fn idle_controller() -> herd_model::controller::ControllerStatus {
    serde_json::from_value(serde_json::json!({
        "name": "reconciler", "watches": ["vmss"], "resyncSeconds": 2.0, "phase": "idle",
        "waitingFor": "a change to vmss; resync by 2026-01-01T00:00:02Z", "nextRunBy": "2026-01-01T00:00:02Z",
        "runs": 1, "failures": 0, "consecutiveFailures": 0, "lastRunAt": "2026-01-01T00:00:00Z",
        "lastRunMs": 1.5, "lastSuccessAt": "2026-01-01T00:00:00Z", "lastError": null, "lastErrorAt": null,
    }))
    .expect("a controller status")
}
