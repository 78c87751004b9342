//! `herd bench`: the benchmarks live in `herd-bench`; this module gives them the real server,
//! started in this process by [`crate::server::start`], and maps the command line onto them.

use crate::cli::BenchCmd;
use crate::output::Format;
use crate::server::{detected_host, start, DriverKind, ServerOptions};
use anyhow::Result;
use clap::ValueEnum;
use herd_bench::{BoxFuture, Driver, Launch, Server, ServerSpec};

/// Starts the server this binary runs (see [`in_process`]).
struct InProcess;

impl Launch for InProcess {
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Server>> {
        Box::pin(in_process(spec, crate::server::Transport::default()))
    }

    fn start_insecure_http(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Server>> {
        Box::pin(in_process(spec, crate::server::Transport::InsecureHttp))
    }

    fn host(&self) -> herd_model::spot::HostSpec {
        detected_host()
    }
}

/// The server of this binary in this process, on an ephemeral loopback port, QEMU under TCG.
async fn in_process(spec: ServerSpec, transport: crate::server::Transport) -> Result<Server> {
    let driver = match spec.driver {
        Driver::Process => DriverKind::Process,
        Driver::Sim => DriverKind::Sim,
        Driver::Qemu => DriverKind::Qemu,
    };
    let mut running = start(ServerOptions {
        data_dir: spec.data_dir,
        listen: "127.0.0.1:0".parse()?,
        driver,
        config: spec.config,
        accel: crate::cli::AccelChoice::Tcg,
        orphans: Default::default(),
        seal_key_file: None,
        transport,
    })
    .await?;
    let (url, token, ca) = (running.url(), running.token.clone(), running.ca_bundle.clone());
    Ok(Server::new(url, token, ca, async move { running.stop().await }))
}

fn driver(kind: DriverKind) -> Driver {
    match kind {
        DriverKind::Process => Driver::Process,
        DriverKind::Sim => Driver::Sim,
        DriverKind::Qemu => Driver::Qemu,
    }
}

/// Runs a benchmark and prints its result (`output`: the global `--output`, for the benchmarks
/// that print either JSON or a table).
pub async fn run(cmd: BenchCmd, output: Format) -> Result<()> {
    let launch = &InProcess;
    match cmd {
        BenchCmd::Provision { driver: d, count, runs } => {
            herd_bench::provision::provision(launch, driver(d), count, runs).await
        }
        BenchCmd::Backend { bind } => herd_bench::lb::backend(bind).await,
        BenchCmd::Spot(o) => {
            let report = tokio::task::spawn_blocking(move || herd_bench::spot::run(&o)).await??;
            print!("{report}");
            Ok(())
        }
        BenchCmd::HostFailure(o) => {
            let output = match output {
                Format::Json => herd_bench::host_failure::Output::Json,
                Format::Table => herd_bench::host_failure::Output::Table,
                other => anyhow::bail!(
                    "herd bench host-failure: --output must be json or table (got {})",
                    other.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
                ),
            };
            let o = herd_bench::host_failure::HostFailureOpts {
                testguest: std::path::absolute(&o.testguest)?,
                sample: std::path::absolute(&o.sample)?,
                ..o
            };
            tokio::task::spawn_blocking(move || herd_bench::host_failure::run(&o, output)).await?
        }
        BenchCmd::Placement(o) => {
            let report = tokio::task::spawn_blocking(move || herd_bench::placement::run(&o)).await??;
            print!("{report}");
            Ok(())
        }
        BenchCmd::Autoscale { rounds, interval } => herd_bench::autoscale::run(launch, rounds, interval).await,
        BenchCmd::Rolling { sim, process, drain_timeout, probe_threshold } => {
            let opts = herd_bench::rolling::Options { drain_timeout, probe_threshold };
            for (d, count) in [(Driver::Sim, sim), (Driver::Process, process)] {
                if count > 0 {
                    let r = herd_bench::rolling::measure(launch, d, count, &opts).await?;
                    println!("{}", serde_json::to_string(&r)?);
                }
            }
            Ok(())
        }
        BenchCmd::Remote { runs, testguest, sku } => {
            let testguest = std::path::absolute(testguest)?;
            tokio::task::spawn_blocking(move || {
                herd_bench::remote::run(herd_bench::remote::Options { runs, testguest, sku })
            })
            .await?
        }
        BenchCmd::VmNetHosts { seconds, runs, testguest, sku } => {
            let testguest = std::path::absolute(testguest)?;
            tokio::task::spawn_blocking(move || {
                herd_bench::bridged::across::run(herd_bench::bridged::across::Options { seconds, runs, sku, testguest })
            })
            .await?
        }
        BenchCmd::Qemu { rounds, counts, testguest, sku, json } => {
            herd_bench::qemu::run(launch, herd_bench::qemu::Options { rounds, counts, testguest, sku, json }).await
        }
        BenchCmd::Lb { duration, shapes, rounds, in_place, inside, load_cpus, lb_cpu, lb_cgroups, backends } => {
            let shapes = if shapes.is_empty() { herd_bench::lb::load::Shape::DEFAULT.to_vec() } else { shapes };
            let inside = inside.then_some(load_cpus);
            let o =
                herd_bench::lb::Options { duration, rounds, shapes, in_place, inside, lb_cpu, lb_cgroups, backends };
            herd_bench::lb::lb_bench(launch, o).await
        }
        BenchCmd::BridgedSetup { count, runs, inside } => {
            herd_bench::bridged::setup::run(launch, herd_bench::bridged::setup::Options { count, runs, inside }).await
        }
        BenchCmd::VmNet { seconds, runs, sku, testguest, inside } => {
            let o = herd_bench::bridged::vmnet::Options { seconds, runs, sku, testguest, inside };
            herd_bench::bridged::vmnet::run(launch, o).await
        }
        BenchCmd::Api { instances, requests } => herd_bench::provision::api(launch, instances, requests).await,
        BenchCmd::Tls { instances, requests, rounds } => {
            herd_bench::tls::run(launch, instances, requests, rounds).await
        }
    }
}
