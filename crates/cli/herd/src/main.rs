//! The `herd` binary: `herd server` runs the control plane; every other subcommand is a client
//! of its HTTP API (see `docs/cli.md`).

#![forbid(unsafe_code)]

mod agent_cmd;
mod autoscale_cmds;
mod autoscale_setting;
mod bench_cmds;
mod cli;
mod cluster;
mod commands;
mod cost_cmds;
mod dev_cmds;
mod network_cmds;
mod output;
mod server;
mod services;
mod store_cmds;
mod tls_cmds;
mod wait;

fn main() -> std::process::ExitCode {
    // `herd instance-init` starts every process instance, so its start-up is paid once per
    // instance: its fixed form (`--hostname NAME -- PROGRAM [ARGS]`, as the process driver
    // writes it) is read by hand, before clap builds the whole CLI's command tree (most of the
    // 8 ms this took). Any other form goes through clap as usual, with its messages.
    let utf8: Option<Vec<String>> = std::env::args_os().skip(1).map(|a| a.into_string().ok()).collect();
    // `herd instance-init --spawner`: the process driver's spawner, when the small
    // `herd-instance-init` is not installed (see `herd_driver_process::spawner`).
    if utf8.as_deref().is_some_and(|a| a == ["instance-init", "--spawner"]) {
        return herd_driver_process::spawner::serve();
    }
    if let Some(a) = utf8.and_then(fixed_instance_init) {
        return instance_init(&a);
    }
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
    if let cli::Command::Dev(dev_cmds::DevCmd::HostInit { hostname }) = &cli.command {
        // PID 1 of a rig host: single-threaded, no runtime; returns only on a set-up error.
        if let Err(e) = herd_dev_cluster::host_init::run(hostname) {
            eprintln!("error: {e:#}");
        }
        return std::process::ExitCode::FAILURE;
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

/// `instance-init --hostname NAME -- PROGRAM [ARGS]` exactly, or `None`.
fn fixed_instance_init(args: Vec<String>) -> Option<cli::InstanceInitArgs> {
    let (cmd, rest) = args.split_first()?;
    let (hostname, program) = herd_driver_process::init::parse_args(rest).filter(|_| cmd == "instance-init")?;
    Some(cli::InstanceInitArgs { hostname, program })
}

/// Runs before any thread or runtime exists: new UTS namespace, hostname, then exec. (The
/// small `herd-instance-init` binary does the same, faster; see `herd_driver_process::init`.)
fn instance_init(a: &cli::InstanceInitArgs) -> std::process::ExitCode {
    herd_driver_process::init::run(&a.hostname, &a.program)
}

#[cfg(test)]
mod tests {
    use super::fixed_instance_init;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn only_the_process_drivers_exact_form_skips_clap() {
        let a = fixed_instance_init(args("instance-init --hostname web0 -- ./init --flag x")).unwrap();
        assert_eq!(a.hostname, "web0");
        assert_eq!(a.program, args("./init --flag x"));
        for other in [
            "instance-init --hostname web0 --",
            "instance-init --hostname web0 ./init",
            "instance-init --hostname=web0 -- ./init",
            "server --hostname web0 -- ./init",
            "",
        ] {
            assert!(fixed_instance_init(args(other)).is_none(), "{other}");
        }
    }
}
