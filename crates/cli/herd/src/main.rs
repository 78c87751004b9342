//! The `herd` binary: `herd server` runs the control plane; every other subcommand is a client
//! of its HTTP API (see `docs/cli.md`).

#![forbid(unsafe_code)]

mod autoscale_cmds;
mod autoscale_setting;
mod bench_cmds;
mod cli;
mod cluster;
mod commands;
mod cost_cmds;
mod network_cmds;
mod output;
mod server;
mod services;
mod store_cmds;
mod tls_cmds;
mod wait;

fn main() -> std::process::ExitCode {
    let cli = cli::parse();
    if let cli::Command::InstanceInit(a) = &cli.command {
        return instance_init(a);
    }
    if let cli::Command::MetadataRelay { addr } = &cli.command {
        // The guest's connection is stdin/stdout: nothing may be printed.
        return if herd_metadata::relay_stdio(*addr).is_ok() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERD_LOG").unwrap_or_else(|_| "warn,herd=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs before any thread or runtime exists: new UTS namespace, hostname, then exec.
fn instance_init(a: &cli::InstanceInitArgs) -> std::process::ExitCode {
    use std::os::unix::process::CommandExt;
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS) {
        eprintln!("herd instance-init: cannot create a UTS namespace: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = nix::unistd::sethostname(&a.hostname) {
        eprintln!("herd instance-init: cannot set the hostname to '{}': {e}", a.hostname);
        return std::process::ExitCode::FAILURE;
    }
    let err = std::process::Command::new(&a.program[0]).args(&a.program[1..]).exec();
    eprintln!("herd instance-init: cannot start {}: {err}", a.program[0]);
    std::process::ExitCode::from(127)
}
