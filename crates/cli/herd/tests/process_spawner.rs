//! The process driver's spawner (see `herd_driver_process::spawner`) with the real launcher
//! binaries: instances it starts get their hostname, console and nothing else of the server;
//! it reports exit statuses; killing it leaves instances running and later starts still work
//! (through a new spawner, then directly); dropping the driver ends it.
//!
//! Here, not in the driver's crate, because the spawner is `herd-instance-init --spawner`,
//! a binary of this crate. Needs root (a UTS namespace per instance): skipped otherwise.

use herd_driver::{Driver, Fence, InstanceSpec, ObservedPower};
use herd_driver_process::ProcessDriver;
use herd_model::{image::ImageSource, sku::SkuSize, GroupName, InstanceId, InstanceKey, ScaleSetName};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Fixture {
    _tmp: tempfile::TempDir,
    image: PathBuf,
    tag: String,
    driver: Option<ProcessDriver>,
}

impl Fixture {
    /// A driver with the launcher beside the test's `herd` binary, so with a spawner; `None`
    /// when this machine cannot give instances a hostname (not root).
    fn new(name: &str, init: &str) -> Option<Self> {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir(&image).unwrap();
        let path = image.join("init");
        std::fs::write(&path, format!("#!/bin/sh\n{init}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tag = format!("spawner-test-{name}-{}", std::process::id());
        let driver = ProcessDriver::new(tmp.path().join("instances"), tag.clone())
            .unwrap()
            .with_stop_grace(Duration::from_secs(1))
            .with_launcher(PathBuf::from(env!("CARGO_BIN_EXE_herd")));
        if !driver.sets_hostname() {
            eprintln!("not root or no UTS namespaces here: the spawner is not used; skipped");
            return None;
        }
        Some(Self { _tmp: tmp, image, tag, driver: Some(driver) })
    }

    fn driver(&self) -> &ProcessDriver {
        self.driver.as_ref().unwrap()
    }

    fn spec(&self, id: u64) -> InstanceSpec {
        let key = key(id);
        let image = ImageSource::Directory { path: self.image.display().to_string() };
        InstanceSpec::new(key, &format!("spawn{id:06}"), image, SkuSize { vcpus: 1, memory_mib: 64 }, "127.128.9.1")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.driver().instance_dir(&key(id))
    }

    fn pid(&self, id: u64) -> u32 {
        herd_driver_process::record::read(&self.dir(id)).unwrap().pid.unwrap().pid
    }

    async fn power(&self, id: u64) -> Option<ObservedPower> {
        self.driver().list().await.unwrap().into_iter().find(|o| o.key == key(id)).map(|o| o.power)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pid in herd_driver_process::tagged_pids(&self.tag) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn key(id: u64) -> InstanceKey {
    InstanceKey { group: GroupName::new("rg").unwrap(), set: ScaleSetName::new("spawn").unwrap(), id: InstanceId(id) }
}

/// The command name of `pid`, if it exists.
fn comm(pid: u32) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string())
}

/// Field `n` (1-based, as in proc(5), from 3 on) of `/proc/<pid>/stat`, if the process exists.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

fn alive(pid: u32) -> bool {
    stat_field(pid, 3).is_some_and(|s| s != "Z")
}

fn ppid(pid: u32) -> u32 {
    stat_field(pid, 4).unwrap().parse().unwrap()
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let limit = herd_test_support::scaled(Duration::from_secs(15));
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_file(path: &Path) -> String {
    wait_for(&path.display().to_string(), || path.exists()).await;
    std::fs::read_to_string(path).unwrap()
}

/// The descriptors a process holds: number → what it points at.
fn fds(pid: u32) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().to_str()?.parse().ok()?, std::fs::read_link(e.path()).ok()?))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_spawned_instance_gets_its_hostname_console_and_no_server_descriptor() {
    let Some(fx) = Fixture::new(
        "fds",
        "hostname > hostname.tmp && mv hostname.tmp hostname.out\necho hello from init\nexec sleep 300",
    ) else {
        return;
    };
    let spawner = fx.driver().spawner_pid().expect("a spawner runs");
    // A descriptor the server holds *without* close-on-exec, opened after the spawner started:
    // anything this process starts itself inherits it; an instance of the spawner must not.
    let leak = std::fs::File::open("/dev/null").unwrap();
    nix::fcntl::fcntl(&leak, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();

    fx.driver().ensure(&fx.spec(1), Fence::FIRST).await.unwrap();
    let hostname = wait_file(&fx.dir(1).join("work/hostname.out")).await;
    assert_eq!(hostname.trim(), "spawn000001");
    let console = fx.dir(1).join("console.log");
    wait_for("the console line", || std::fs::read_to_string(&console).is_ok_and(|c| c.contains("hello from init")))
        .await;
    let pid = fx.pid(1);
    wait_for("init to exec sleep", || comm(pid).as_deref() == Some("sleep")).await;
    assert_eq!(ppid(pid), spawner, "started by the spawner, not by this process");
    assert_eq!(stat_field(pid, 5).unwrap(), pid.to_string(), "the leader of its own process group");
    let held = fds(pid);
    let numbers: Vec<u32> = held.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![0, 1, 2], "only stdio: {held:?}");
    assert_eq!(held[0].1, Path::new("/dev/null"));
    assert_eq!(held[1].1, console.canonicalize().unwrap());
    assert_eq!(held[2].1, held[1].1);
    // Nor any of the spawner's own environment: exactly the instance's.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.split(|b| *b == 0).any(|e| e == b"HERD_COMPUTER_NAME=spawn000001"));
    assert!(!environ.split(|b| *b == 0).any(|e| e.starts_with(b"CARGO")), "the test's environment leaked in");
    drop(leak);
    fx.driver().destroy(&key(1), Fence::FIRST).await.unwrap();
    assert!(!alive(pid));
}

#[tokio::test]
async fn exit_statuses_come_back_through_the_spawner() {
    let Some(fx) = Fixture::new("exit", "if [ \"$HERD_INSTANCE_ID\" = 1 ]; then echo bye; exit 3; fi\nexec sleep 300")
    else {
        return;
    };
    assert!(fx.driver().spawner_pid().is_some());
    fx.driver().ensure(&fx.spec(1), Fence::FIRST).await.unwrap();
    fx.driver().ensure(&fx.spec(2), Fence::FIRST).await.unwrap();
    let failed = |p: Option<ObservedPower>, what: &str| matches!(p, Some(ObservedPower::Failed(m)) if m.contains(what));
    let limit = Instant::now() + herd_test_support::scaled(Duration::from_secs(15));
    while !failed(fx.power(1).await, "init exited (exit status 3): bye") {
        assert!(Instant::now() < limit, "instance 1 is {:?}", fx.power(1).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = fx.pid(2);
    wait_for("instance 2's sleep", || comm(pid).as_deref() == Some("sleep")).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    while !failed(fx.power(2).await, "init exited (killed by signal 9)") {
        assert!(Instant::now() < limit, "instance 2 is {:?}", fx.power(2).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An init the kernel cannot execute (its interpreter is missing) is a failed start with the
    // reason, as the spawner's child reports it.
    std::fs::write(fx.dir(1).join("work/init"), "#!/nonexistent/interpreter\n").unwrap();
    let err = fx.driver().restart(&key(1), Fence::FIRST).await.unwrap_err().to_string();
    assert!(err.contains("cannot start init: No such file or directory"), "{err}");
    assert!(failed(fx.power(1).await, "failed to start: cannot start init"), "instance 1 is {:?}", fx.power(1).await);
}

#[tokio::test]
async fn killing_the_spawner_leaves_instances_running_and_starts_go_on() {
    let Some(fx) = Fixture::new("kill", "exec sleep 300") else {
        return;
    };
    let me = std::process::id();
    fx.driver().ensure(&fx.spec(1), Fence::FIRST).await.unwrap();
    let first = fx.pid(1);
    // Each kill is followed by a start: through a new spawner three times, then directly.
    let mut spawner = fx.driver().spawner_pid().expect("a spawner runs");
    for round in 0..4u64 {
        kill(Pid::from_raw(spawner as i32), Signal::SIGKILL).unwrap();
        wait_for("the driver to see its spawner gone", || fx.driver().spawner_pid().is_none()).await;
        let id = 2 + round;
        fx.driver().ensure(&fx.spec(id), Fence::FIRST).await.unwrap();
        assert_eq!(fx.power(id).await, Some(ObservedPower::Running));
        let pid = fx.pid(id);
        if round < 3 {
            let new = fx.driver().spawner_pid().expect("a new spawner");
            assert_ne!(new, spawner);
            assert_eq!(ppid(pid), new, "round {round}: started by the new spawner");
            spawner = new;
        } else {
            assert_eq!(fx.driver().spawner_pid(), None, "no more restarts");
            assert_eq!(ppid(pid), me, "started directly");
        }
    }
    assert!(alive(first), "an instance outlives the spawner that started it");
    assert_eq!(fx.power(1).await, Some(ObservedPower::Running));
    // And it is still stopped and destroyed as ever.
    for id in 1..=5 {
        fx.driver().destroy(&key(id), Fence::FIRST).await.unwrap();
    }
    assert!(!alive(first));
    assert!(herd_driver_process::tagged_pids(&fx.tag).is_empty());
}

#[tokio::test]
async fn dropping_the_driver_ends_its_spawner_but_not_its_instances() {
    let Some(mut fx) = Fixture::new("drop", "exec sleep 300") else {
        return;
    };
    fx.driver().ensure(&fx.spec(1), Fence::FIRST).await.unwrap();
    let instance = fx.pid(1);
    let spawner = fx.driver().spawner_pid().unwrap();
    drop(fx.driver.take());
    wait_for("the spawner to exit", || !alive(spawner)).await;
    assert!(alive(instance));
}

/// Both forms of the spawner (the small binary, and `herd instance-init --spawner` for when it
/// is not installed) answer Hello with their pid on the socket they get as stdin, and exit
/// cleanly when herd's end closes. Needs no root.
#[test]
fn both_spawner_forms_say_hello_and_end_with_their_socket() {
    use std::io::Read;
    let small = PathBuf::from(env!("CARGO_BIN_EXE_herd-instance-init"));
    for (program, args) in
        [(small, vec!["--spawner"]), (PathBuf::from(env!("CARGO_BIN_EXE_herd")), vec!["instance-init", "--spawner"])]
    {
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut child = std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .spawn()
            .unwrap();
        ours.set_read_timeout(Some(herd_test_support::scaled(Duration::from_secs(10)))).unwrap();
        // A frame: u32 length 5, then 'H' and the pid (little-endian).
        let mut frame = [0u8; 9];
        ours.read_exact(&mut frame).unwrap_or_else(|e| panic!("{}: no Hello: {e}", program.display()));
        assert_eq!(frame[..5], [5, 0, 0, 0, b'H']);
        assert_eq!(u32::from_le_bytes(frame[5..].try_into().unwrap()), child.id());
        drop(ours);
        let deadline = Instant::now() + herd_test_support::scaled(Duration::from_secs(10));
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{} did not end at EOF", program.display());
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{}: {status}", program.display());
    }
}
