//! `herd-instance-init --hostname NAME -- PROGRAM [ARGS]`: what `herd instance-init` does
//! (a new UTS namespace, the hostname, then `exec`), as a binary small enough that its own
//! start-up costs little. The process driver starts instances through it when it is
//! installed beside `herd`; see `herd_driver_process::init`.
//!
//! `herd-instance-init --spawner` is the process driver's spawner, which starts instances for
//! the server (see `herd_driver_process::spawner`): small and single-threaded, the one process
//! that starts a child for every instance.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    let args: Option<Vec<String>> = std::env::args_os().skip(1).map(|a| a.into_string().ok()).collect();
    if args.as_deref() == Some(&["--spawner".to_string()]) {
        return herd_driver_process::spawner::serve();
    }
    match args.as_deref().and_then(herd_driver_process::init::parse_args) {
        Some((hostname, program)) => herd_driver_process::init::run(&hostname, &program),
        None => {
            eprintln!(
                "usage: herd-instance-init --hostname NAME -- PROGRAM [ARGS]\n       herd-instance-init --spawner"
            );
            std::process::ExitCode::from(2)
        }
    }
}
