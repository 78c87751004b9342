//! `herd bench`: measurements with a peer baseline run side by side, so numbers read as ratios.
//!
//! - `provision`: API call → all instances running, against an in-process server. With the
//!   process driver the peer is the same number of bare process spawns (what any tool must pay).
//! - `api`: latency of `list-instances` on a large set; the peer is `/v1/server` on the same
//!   server (the cost of an HTTPS round trip with no work).
//! - `tls`: the same `list-instances` over HTTPS next to a server on `--insecure-http` (see
//!   [`tls`]).
//! - `lb`: throughput and p99 through herd's load balancer next to HAProxy (see [`lb`]).
//! - `qemu`: real VMs; the peer is hand-run QEMU booting the same image (see [`qemu`]).
//! - `autoscale`: reaction time, evaluation cost and simulation speed (see [`autoscale`]).
//! - `rolling`: a rolling upgrade against the sum of its batches' health waits (see [`rolling`]).
//! - `spot`: Spot eviction at scale through the server's own capacity code (see [`spot`]).
//! - `placement`: placing 10,000 instances over 500 hosts with fault domains, against the
//!   same without them (see [`placement`]).
//! - `bridged-setup`, `vm-net`: bridged networking against host-local networking and against
//!   hand-made bridges (see [`bridged`]).
//! - `host-failure`: a host cut off → its TCG VMs out of the load balancer's rotation, and →
//!   running again on another host, against their configured bounds (see [`host_failure`]).
//!
//! Why a crate of its own: the benchmarks are not part of the control plane, and they must
//! measure the server's own code path, never a copy. So they start the real server in-process
//! through [`Launch`], which the `herd` binary implements with its server wiring; this crate
//! depends on the libraries (client, state, capacity), never on the `herd` crate. Errors are
//! `anyhow` ones: every benchmark ends at the terminal of the user who ran it.

#![forbid(unsafe_code)]

pub mod autoscale;
pub mod bridged;
pub mod host_failure;
pub mod lb;
pub mod placement;
pub mod provision;
pub mod qemu;
pub mod remote;
pub mod rolling;
pub mod spot;
pub mod tls;

use anyhow::Result;
use herd_client::Client;
use serde_json::json;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A boxed future, as [`Launch`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which driver the server under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Process,
    Sim,
    Qemu,
}

/// What a benchmark asks of the server it starts: everything else (listening on an ephemeral
/// loopback port, TCG for QEMU, default orphan handling, no seal key file) is fixed.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub data_dir: PathBuf,
    pub driver: Driver,
    /// A `herd.toml` for the server.
    pub config: Option<PathBuf>,
}

/// Starts the real herd server in this process (implemented by the `herd` binary).
pub trait Launch: Send + Sync {
    /// The server as users run it: HTTPS under its cluster CA.
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Server>>;
    /// The same server on plain HTTP (`--insecure-http`), as the peer of the TLS benchmark.
    fn start_insecure_http(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Server>>;
    /// The host the server would detect (CPUs, memory), for sizing a benchmark's hosts.
    fn host(&self) -> herd_model::spot::HostSpec;
}

/// A server under test: its URL, token and CA bundle, and how to stop it.
pub struct Server {
    pub url: String,
    pub token: String,
    /// The cluster CA bundle its certificate chains to (`None` on plain HTTP).
    pub ca_bundle: Option<String>,
    stop: Option<BoxFuture<'static, ()>>,
}

impl Server {
    /// `stop` runs once, at [`Server::stop`].
    pub fn new(
        url: String,
        token: String,
        ca_bundle: Option<String>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self { url, token, ca_bundle, stop: Some(Box::pin(stop)) }
    }

    /// A client holding the server's token and trusting its CA.
    pub fn client(&self) -> Result<Client> {
        Client::with_token(&self.url, self.token.clone(), self.ca_bundle.as_deref())
    }

    /// Stops the server and waits for its tasks; later calls do nothing.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.await;
        }
    }
}

/// `config` (a server's TOML) with `[network] mode = "host-local"` unless it names a mode: a
/// new data dir of root defaults to bridged networking, which only a server inside a network
/// namespace of its own (a test's or a benchmark's) may use.
pub fn host_local_unless_set(config: &str) -> String {
    if config.contains("mode =") {
        return config.to_string();
    }
    match config.find("[network]\n") {
        Some(at) => {
            let end = at + "[network]\n".len();
            format!("{}mode = \"host-local\"\n{}", &config[..end], &config[end..])
        }
        None => format!("{config}\n[network]\nmode = \"host-local\"\n"),
    }
}

/// Starts a server on `driver` with the data dir `dir/data` and `config_text` as its
/// `dir/herd.toml` (host-local networking unless it says otherwise).
pub async fn start_in(launch: &dyn Launch, dir: &Path, driver: Driver, config_text: &str) -> Result<Server> {
    start_on(launch, dir, driver, config_text, Transport::Tls).await
}

/// How a benchmark's server serves its API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    InsecureHttp,
}

/// [`start_in`] on either transport.
pub async fn start_on(
    launch: &dyn Launch,
    dir: &Path,
    driver: Driver,
    config_text: &str,
    transport: Transport,
) -> Result<Server> {
    let config = dir.join("herd.toml");
    std::fs::write(&config, host_local_unless_set(config_text))?;
    let spec = ServerSpec { data_dir: dir.join("data"), driver, config: Some(config) };
    match transport {
        Transport::Tls => launch.start(spec).await,
        Transport::InsecureHttp => launch.start_insecure_http(spec).await,
    }
}

/// Deletes `path` and polls every `poll` until it is gone (404), at most `timeout` (then fails
/// saying "`what` did not finish"); returns how long that took.
pub async fn delete_and_wait(
    client: &Client,
    path: &str,
    timeout: std::time::Duration,
    poll: std::time::Duration,
    what: &str,
) -> Result<std::time::Duration> {
    client.delete(path).await?;
    let t = std::time::Instant::now();
    loop {
        match client.get(path).await {
            Err(e) if herd_client::is_not_found(&e) => return Ok(t.elapsed()),
            _ if t.elapsed() > timeout => anyhow::bail!("{what} did not finish"),
            _ => tokio::time::sleep(poll).await,
        }
    }
}

/// `d` in milliseconds.
pub(crate) fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (min, median, max) of `times` in milliseconds (sorts them).
pub(crate) fn spread(times: &mut [std::time::Duration]) -> (f64, f64, f64) {
    times.sort();
    if times.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (ms(times[0]), ms(times[times.len() / 2]), ms(times[times.len() - 1]))
}

/// Writes an image directory whose `init` is `#!/bin/sh` then `body`.
pub fn script_image(dir: &Path, body: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let init = dir.join("init");
    std::fs::write(&init, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Writes an image directory whose `init` just sleeps.
pub fn sleeper_image(dir: &Path) -> Result<()> {
    script_image(dir, "exec sleep 3600")
}

/// Kills every process carrying the process-driver tag of the server data dir `data`.
pub fn kill_instances(data: &Path) {
    let Ok(dir) = data.canonicalize() else { return };
    let Some(tag) = herd_driver::tag::tag_of(&dir) else { return };
    for pid in herd_driver_process::tagged_pids(&tag) {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// A server with resource group `bench` and the sleeper image `Herd:Bench:1:1.0.0`, in a
/// temporary directory; its process instances are killed when it is dropped.
pub(crate) struct Bench {
    dir: tempfile::TempDir,
    pub(crate) server: Server,
    pub(crate) client: Client,
}

impl Drop for Bench {
    /// A benchmark that fails half-way must not leave instance processes behind.
    fn drop(&mut self) {
        kill_instances(&self.dir.path().join("data"));
    }
}

impl Bench {
    async fn setup(launch: &dyn Launch, driver: Driver, max: u64) -> Result<Bench> {
        Self::setup_on(launch, driver, max, Transport::Tls).await
    }

    pub(crate) async fn setup_on(launch: &dyn Launch, driver: Driver, max: u64, transport: Transport) -> Result<Bench> {
        Self::setup_with(launch, driver, max, transport, "").await
    }

    /// [`Bench::setup_on`] with `extra` appended to the server's configuration (e.g. a
    /// `[network]` section).
    pub(crate) async fn setup_with(
        launch: &dyn Launch,
        driver: Driver,
        max: u64,
        transport: Transport,
        extra: &str,
    ) -> Result<Bench> {
        let dir = tempfile::tempdir()?;
        let concurrency = if driver == Driver::Sim { 4096 } else { 64 };
        let config =
            format!("max_capacity = {}\n[provisioning]\ndriver_concurrency = {concurrency}\n{extra}", max.max(1000));
        let server = start_on(launch, dir.path(), driver, &config, transport).await?;
        let client = server.client()?;
        client.put("/v1/resourceGroups/bench", &json!({})).await?;
        let img = dir.path().join("image");
        sleeper_image(&img)?;
        herd_client::image_upload::import_directory(&client, "Herd:Bench:1:1.0.0", &img, json!({})).await?;
        Ok(Bench { dir, server, client })
    }
}
