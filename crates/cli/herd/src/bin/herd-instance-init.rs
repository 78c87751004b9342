//! `herd-instance-init --hostname NAME -- PROGRAM [ARGS]`: what `herd instance-init` does
//! (a new UTS namespace, the hostname, then `exec`), as a binary small enough that its own
//! start-up costs little. The process driver starts every instance through it when it is
//! installed beside `herd`; see `herd_driver_process::init`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    let args: Option<Vec<String>> = std::env::args_os().skip(1).map(|a| a.into_string().ok()).collect();
    match args.as_deref().and_then(herd_driver_process::init::parse_args) {
        Some((hostname, program)) => herd_driver_process::init::run(&hostname, &program),
        None => {
            eprintln!("usage: herd-instance-init --hostname NAME -- PROGRAM [ARGS]");
            std::process::ExitCode::from(2)
        }
    }
}
