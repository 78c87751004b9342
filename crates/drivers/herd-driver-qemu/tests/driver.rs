//! The QEMU driver end to end: real QEMU under TCG booting herd's test guest
//! (`images/testguest`, built into `$HERD_TESTGUEST_OUT`, default `target/testguest`, by
//! `./scripts/test.sh`; each run brings it up to date with the cached `build.sh`). Every
//! deadline here is multiplied by `HERD_TEST_TIME_SCALE`.
//!
//! Six tests, each with its own instance root, tag and reach addresses (`127.200.<test>.<n>`),
//! so they run in parallel:
//!
//! - `two_vms_boot_serve_run_scripts_and_are_destroyed`: two agent VMs boot side by side to
//!   Running with their computer names as hostnames; a script starts httpd and the forwarded
//!   port 80 answers from the host; a script with two files and a secret in its command returns
//!   its output tails and exit code, a failing one its non-zero code, a slow one times out;
//!   the secret never shows in any host `/proc/*/cmdline` (sampled throughout by a thread), nor
//!   in any guest one, and `.herd-command` is gone afterwards; stats; destroy leaves nothing.
//! - `stop_start_restart_and_reimage_keep_the_data_disk`: stop is an ACPI power-off (the
//!   guest's shutdown line is on the console, well before the timeout), then Stopped; ensure
//!   and restart boot it again; a reimage onto 1.0.1 changes the image version and the seed's
//!   instance id but keeps the data disk (same file, same size, same bytes written through the
//!   guest).
//! - `adoption_orphans_and_host_reboots`: a driver dropped while its VMs boot, a new one on the
//!   same root finishes watching them (agent and console readiness); another adopts the same
//!   QEMU without starting a second; an instance whose directory vanished is an orphan that
//!   list reports and destroy kills; after a (simulated) host reboot the VM is started again,
//!   after a crash under the same boot it is left Failed.
//! - `port_conflicts_and_unsupported_specs_fail_clearly`: a reach address port held by this
//!   process makes the start fail naming the address, port and pid (and list says Failed);
//!   once free, the start works, and a guest not ready within the boot timeout is Failed;
//!   directory images and missing image files are refused up front.
//! - `disk_image_boots_its_own_bootloader_on_an_overlay_and_reimages`: the test guest's boot
//!   disk (`disk.qcow2`: SYSLINUX on an MBR disk, no `-kernel`) as an `ImageSource::Disk` boots
//!   to Running with the computer name as hostname and version 1.0.0; a guest write to its OS
//!   disk lands in the per-VM overlay only (the image keeps its bytes, size and mtime); a
//!   reimage onto 1.0.1's disk gives 1.0.1 on a fresh overlay; destroy leaves nothing.
//! - `an_extension_run_cut_by_a_crash_is_adopted_or_killed_never_doubled`: a run whose call
//!   was abandoned after the agent started it (as `kill -9` of the server leaves it) is adopted
//!   by a new driver asked for the same run (exit code and output, started once), and killed
//!   before a run of another identity starts.
//! - `disk_image_with_an_unknown_agent_detects_it_at_boot`: the same disk with the agent not
//!   declared: detected at boot and reported with its image, scripts run through it; declared
//!   absent, scripts are refused at once.
//!
//! Every wait polls a condition with a deadline. A guard kills every QEMU of the test's tag
//! when the test ends, also on failure (then printing the end of each console).

use herd_driver::{
    DataDisk, Driver, DriverError, Fence, GuestSetup, InstanceSpec, ObservedPower, PowerTarget, ScriptRun,
};
use herd_driver_qemu::qga::Qga;
use herd_driver_qemu::{QemuConfig, QemuDriver};
use herd_model::image::ImageSource;
use herd_model::sku::SkuSize;
use herd_model::InstanceKey;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_test_support::scaled;

/// Bound on any one boot (parallel TCG boots on two cores take 5–20 s).
const BOOT: Duration = Duration::from_secs(180);
/// A guest command's timeout (times `HERD_TEST_TIME_SCALE`).
fn t() -> Duration {
    scaled(Duration::from_secs(10))
}
const NO_ENV: &[&str] = &[];

/// `$HERD_TESTGUEST_OUT`, brought up to date by the cached `build.sh` (see qemu_clients.rs).
fn testguest_out() -> PathBuf {
    let out = herd_test_support::testguest_dir();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/testguest/build.sh");
    let built = Command::new(&build).arg(&out).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let have = out.join("1.0.0/initrd.img").is_file() && out.join("1.0.1/initrd.img").is_file();
    match built {
        Ok(s) if s.success() => {}
        _ if have => eprintln!("warning: {} failed; using the images as they are", build.display()),
        other => panic!("{} {} failed: {other:?}", build.display(), out.display()),
    }
    out
}

fn kernel_image(out: &Path, version: &str) -> ImageSource {
    let dir = out.join(version);
    let cmdline = std::fs::read_to_string(dir.join("cmdline")).unwrap();
    ImageSource::Kernel {
        kernel: dir.join("vmlinuz").display().to_string(),
        initrd: Some(dir.join("initrd.img").display().to_string()),
        cmdline: Some(cmdline.trim().to_string()),
    }
}

/// The test guest's boot disk of `version` (`OUT/<version>/disk.qcow2`, see
/// images/testguest/README.md).
fn disk_image(out: &Path, version: &str) -> ImageSource {
    let path = out.join(version).join("disk.qcow2");
    assert!(path.is_file(), "{} missing: run images/testguest/build.sh {}", path.display(), out.display());
    ImageSource::Disk { path: path.display().to_string(), format: "qcow2".into() }
}

fn key(s: &str) -> InstanceKey {
    InstanceKey::parse_path(s).unwrap()
}

fn spec(key: &InstanceKey, name: &str, reach: &str, image: ImageSource, agent: bool) -> InstanceSpec {
    InstanceSpec {
        key: key.clone(),
        computer_name: name.to_string(),
        image,
        size: SkuSize { vcpus: 1, memory_mib: 256 },
        reach_address: reach.to_string(),
        model_generation: 1,
        admin_username: "azureuser".into(),
        custom_data: None,
        metadata: BTreeMap::new(),
        network: None,
        guest: GuestSetup {
            ssh_public_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHerdTestKeyOnly test@herd".into()],
            admin_password_hash: Some("$6$herdsalt$notarealhash".into()),
            data_disks: Vec::new(),
            forward_ports: Vec::new(),
            guest_agent: Some(agent),
        },
        metadata_endpoint: None,
        host: None,
    }
}

/// One test's instance root and tag. On drop, kills every QEMU of the tag (printing the end
/// of each console first when the test failed) and removes the root.
struct Harness {
    cfg: QemuConfig,
    _root: tempfile::TempDir,
    t0: Instant,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let root = tempfile::Builder::new().prefix("herd-qemu-driver.").tempdir().unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let mut cfg =
            QemuConfig::new(root.path().join("instances"), format!("herd-test:{name}:{}:{nanos}", std::process::id()));
        cfg.stop_timeout = Duration::from_secs(60);
        Harness { cfg, _root: root, t0: Instant::now() }
    }

    fn driver(&self) -> QemuDriver {
        QemuDriver::new(self.cfg.clone()).unwrap()
    }

    fn step(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.t0.elapsed().as_secs_f64());
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Ok(d) = QemuDriver::new(self.cfg.clone()) else { return };
        if std::thread::panicking() {
            for entry in walk_files(&d.config().root) {
                if entry.file_name().is_some_and(|n| n == "console.log" || n == "qemu.log") {
                    let text = std::fs::read_to_string(&entry).unwrap_or_default();
                    eprintln!("----- {} (last lines) -----", entry.display());
                    let lines: Vec<&str> = text.lines().rev().take(25).collect();
                    for l in lines.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        for (_, pid) in d.processes() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Reimages `s.key` to `s`, waits until it runs, and checks through the agent that the guest
/// runs image `version` under the computer name of `s`.
async fn reimage_to(d: &QemuDriver, s: &InstanceSpec, version: &str) {
    d.reimage(s, Fence::FIRST).await.unwrap();
    wait_running(d, &s.key).await;
    let qga = agent(d, &s.key).await;
    assert_eq!(qga.read_file("/etc/herd-image-version").await.unwrap(), format!("{version}\n").into_bytes());
    assert_eq!(qga.get_host_name().await.unwrap(), s.computer_name);
}

/// What most tests here start with: the test guest's images ([`testguest_out`]), a harness
/// named `name` and its driver.
fn start(name: &str) -> (PathBuf, Harness, QemuDriver) {
    let out = testguest_out();
    let h = Harness::new(name);
    let d = h.driver();
    (out, h, d)
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn power_of(d: &QemuDriver, k: &InstanceKey) -> Option<ObservedPower> {
    d.list().await.unwrap().into_iter().find(|o| o.key == *k).map(|o| o.power)
}

/// Polls `list` until `k`'s power satisfies `want`; panics with the last power after `limit`.
async fn wait_power(
    d: &QemuDriver,
    k: &InstanceKey,
    limit: Duration,
    want: impl Fn(&ObservedPower) -> bool,
) -> ObservedPower {
    let limit = scaled(limit);
    let deadline = Instant::now() + limit;
    loop {
        let p = power_of(d, k).await;
        if let Some(p) = p.as_ref().filter(|p| want(p)) {
            return p.clone();
        }
        assert!(Instant::now() < deadline, "{k}: still {p:?} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_running(d: &QemuDriver, k: &InstanceKey) {
    wait_power(d, k, BOOT, |p| {
        assert!(!matches!(p, ObservedPower::Failed(_) | ObservedPower::Stopped), "{k}: {p:?} while booting");
        *p == ObservedPower::Running
    })
    .await;
}

/// Whether a process with this pid still runs (zombies count as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

async fn wait_gone(pid: u32, limit: Duration) {
    let limit = scaled(limit);
    let deadline = Instant::now() + limit;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn agent(d: &QemuDriver, k: &InstanceKey) -> Qga {
    Qga::wait_ready(&d.qga_socket(k), scaled(Duration::from_secs(30))).await.expect("guest agent")
}

/// Runs a shell command in the guest through the agent; returns (exit code, stdout).
async fn guest_sh(d: &QemuDriver, k: &InstanceKey, script: &str) -> (Option<i64>, String) {
    let qga = agent(d, k).await;
    let st = qga.run("/bin/sh", &["-c", script], NO_ENV, None, scaled(Duration::from_secs(30))).await.unwrap();
    (st.exitcode, String::from_utf8_lossy(&st.stdout).into_owned())
}

fn script(name: &str, files: Vec<(&str, &[u8])>, command: &str, timeout: Duration) -> ScriptRun {
    ScriptRun {
        name: name.into(),
        files: files.into_iter().map(|(n, c)| (n.to_string(), c.to_vec())).collect(),
        downloads: Default::default(),
        command: command.into(),
        timeout,
        identity: format!("test-{name}"),
    }
}

/// GET / over HTTP/1.0 from the host, retried until the body holds `want` or `limit` passes.
async fn http_get_until(addr: &str, want: &str, limit: Duration) -> String {
    let (addr, want) = (addr.to_string(), want.to_string());
    let limit = scaled(limit);
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            let got = (|| -> std::io::Result<String> {
                let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: herd\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body)
            })();
            match got {
                Ok(body) if body.contains(&want) => return body,
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("http://{addr}/ never answered with {want:?}; last: {last:?}");
    })
    .await
    .unwrap()
}

/// Samples every `/proc/*/cmdline` on the host until stopped; returns (samples, leaks).
fn cmdline_sampler(needle: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let mut samples = 0;
        let mut leaks = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                    if c.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        leaks.push(format!("{}: {}", e.path().display(), String::from_utf8_lossy(&c)));
                    }
                }
            }
            samples += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (samples, leaks)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vms_boot_serve_run_scripts_and_are_destroyed() {
    let (out, h, d) = start("basic");
    assert_eq!(d.name(), "qemu");
    let (a, b) = (key("rg/web/1"), key("rg/web/2"));
    let sa = spec(&a, "tgweb000001", "127.200.1.1", kernel_image(&out, "1.0.0"), true);
    let sb = spec(&b, "tgweb000002", "127.200.1.2", kernel_image(&out, "1.0.0"), true);
    let (ra, rb) = tokio::join!(d.ensure(&sa, Fence::FIRST), d.ensure(&sb, Fence::FIRST));
    ra.unwrap();
    rb.unwrap();
    h.step("both QEMUs started");
    let pid_a = d.pid(&a).expect("QEMU of a runs");
    assert!(matches!(power_of(&d, &a).await, Some(ObservedPower::Starting | ObservedPower::Running)));
    // Idempotent: a second ensure neither fails nor starts another QEMU.
    d.ensure(&sa, Fence::FIRST).await.unwrap();
    assert_eq!(d.pid(&a), Some(pid_a));
    tokio::join!(wait_running(&d, &a), wait_running(&d, &b));
    h.step("both Running");
    // list is cheap (directories and /proc only): the reconciler calls it every 50 ms.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(d.list().await.unwrap().len(), 2);
    }
    let per_list = started.elapsed() / 20;
    h.step(&format!("list takes {per_list:?}"));
    assert!(per_list < Duration::from_millis(250), "list took {per_list:?}");
    assert_eq!(d.processes().len(), 2);

    for (k, s) in [(&a, &sa), (&b, &sb)] {
        let qga = agent(&d, k).await;
        assert_eq!(qga.get_host_name().await.unwrap(), s.computer_name, "{k}: hostname from the seed");
    }
    let console = d.console_log(&a, 1 << 20).await.unwrap().unwrap();
    assert!(console.contains("HERD-GUEST-READY hostname=tgweb000001"), "{console}");
    assert_eq!(d.console_log(&a, 10).await.unwrap().unwrap().len(), 10);

    // A script starts a web server; the reach address's port 80 reaches it.
    let web = script(
        "web",
        vec![("index.html", b"hello from tgweb000001\n")],
        "httpd -p 80 -h /var/lib/herd/extensions/web && echo started",
        Duration::from_secs(30),
    );
    let o = d.run_script(&a, &web, Fence::FIRST).await.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(o.stdout, b"started\n");
    let body = http_get_until("127.200.1.1:80", "hello from tgweb000001", Duration::from_secs(30)).await;
    assert!(body.starts_with("HTTP/1.") && body.contains(" 200 OK"), "{body}");
    h.step("httpd from a script answers on 127.200.1.1:80");

    // A script with two files and a secret in its command.
    let token = format!("herd-secret-{:x}", std::process::id() as u64 * 7919 + h.t0.elapsed().as_nanos() as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = cmdline_sampler(token.clone(), stop.clone());
    let check = b"leaks=0\nfor f in /proc/[0-9]*/cmdline; do\n  c=$(tr '\\000' ' ' < \"$f\" 2>/dev/null) || continue\n  case \"$c\" in *\"$TOKEN\"*) echo \"LEAK $f\"; leaks=1 ;; esac\ndone\n[ \"$leaks\" = 0 ] && echo no-leak-in-guest\n";
    let command = format!(
        "TOKEN='{token}'\nexport TOKEN\ncat data.txt\nsh ./check.sh\necho \"token-length ${{#TOKEN}}\"\necho to-stderr >&2\n"
    );
    let run = script("secret", vec![("check.sh", check), ("data.txt", b"data-file-content\n")], &command, t() * 3);
    assert!(!format!("{run:?}").contains(&token), "ScriptRun's Debug redacts the command");
    let o = d.run_script(&b, &run, Fence::FIRST).await.unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    assert!(!o.timed_out);
    assert_eq!(
        stdout,
        format!("data-file-content\nno-leak-in-guest\ntoken-length {}\n", token.len()),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stderr, b"to-stderr\n");
    // A failing command is a script that ran: Ok, with its exit code.
    let o = d.run_script(&b, &script("secret", vec![], "echo failing; exit 7", t()), Fence::FIRST).await.unwrap();
    assert_eq!((o.exit_code, o.timed_out, o.stdout.as_slice()), (Some(7), false, &b"failing\n"[..]));
    // A script that outlives its timeout is killed (with what it started) and reported.
    let started = Instant::now();
    let slow = script("secret", vec![], "sleep 300 & sleep 301; echo never", Duration::from_secs(2));
    let o = d.run_script(&b, &slow, Fence::FIRST).await.unwrap();
    assert!(o.timed_out && o.exit_code.is_none(), "{o:?}");
    assert!(
        started.elapsed() < herd_test_support::scaled(Duration::from_secs(20)),
        "timeout took {:?}",
        started.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let (samples, leaks) = sampler.join().unwrap();
    assert!(leaks.is_empty(), "secret in a host argv: {leaks:?}");
    assert!(samples > 10, "the sampler ran throughout ({samples} samples)");
    let qga = agent(&d, &b).await;
    assert!(qga.read_file("/var/lib/herd/extensions/secret/.herd-command").await.is_err(), ".herd-command removed");
    assert_eq!(qga.read_file("/var/lib/herd/extensions/secret/data.txt").await.unwrap(), b"data-file-content\n");
    let st = qga.run("/bin/sh", &["-c", "ps | grep -c '[s]leep 30'"], NO_ENV, None, t()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "0", "the timed-out script's children were killed");
    drop(qga);
    for f in walk_files(&d.config().root) {
        if f.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            assert!(!text.contains(&token), "secret in {}", f.display());
        }
    }
    h.step("scripts: output, exit codes, timeout; the secret stayed out of every argv");

    // Bad names are refused before anything runs.
    let err = d.run_script(&b, &script("../etc", vec![], "true", t()), Fence::FIRST).await.unwrap_err();
    assert!(err.to_string().contains("extension name"), "{err}");

    let stats = d.stats(&a).await.unwrap().expect("stats of a running VM");
    assert!(stats.cpu_seconds > 0.0 && stats.memory_bytes > 0, "{stats:?}");
    // Network counters come from the guest agent: the HTTP answer above crossed eth0.
    assert!(stats.net_rx_bytes.is_some_and(|b| b > 0) && stats.net_tx_bytes.is_some_and(|b| b > 0), "{stats:?}");
    assert!(d.stats(&key("rg/web/99")).await.unwrap().is_none());

    // destroy: no QEMU, no directory, no disk or seed left; idempotent.
    let pid_b = d.pid(&b).unwrap();
    let (ra, rb) = tokio::join!(d.destroy(&a, Fence::FIRST), d.destroy(&b, Fence::FIRST));
    ra.unwrap();
    rb.unwrap();
    assert!(!alive(pid_a) && !alive(pid_b));
    assert!(d.processes().is_empty());
    assert!(!d.instance_dir(&a).exists() && !d.instance_dir(&b).exists());
    let left: Vec<PathBuf> = walk_files(&d.config().root);
    assert!(left.is_empty(), "files left: {left:?}");
    assert!(d.list().await.unwrap().is_empty());
    d.destroy(&a, Fence::FIRST).await.unwrap();
    assert!(d.console_log(&a, 100).await.unwrap().is_none());
    assert!(matches!(d.set_power(&a, PowerTarget::Running, Fence::FIRST).await, Err(DriverError::NotFound(_))));
    h.step("destroyed");
}

/// The data disk (serial `herd-lun-0`) as a guest device path, via sysfs.
const FIND_LUN0: &str =
    "for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = herd-lun-0 ] && dev=/dev/${b##*/}; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_restart_and_reimage_keep_the_data_disk() {
    let (out, h, d) = start("lifecycle");
    let k = key("rg/life/1");
    let mut s = spec(&k, "tglife000001", "127.200.2.1", kernel_image(&out, "1.0.0"), true);
    s.guest.data_disks = vec![DataDisk { lun: 0, size_gb: 1 }];
    d.ensure(&s, Fence::FIRST).await.unwrap();
    wait_running(&d, &k).await;
    h.step("Running");
    let data = d.instance_dir(&k).join("data-0.qcow2");
    let data_inode = std::fs::metadata(&data).unwrap().ino();
    let marker = "herd-data-disk-marker";
    let (rc, _) =
        guest_sh(&d, &k, &format!("{FIND_LUN0}; printf {marker} | dd of=$dev bs=512 conv=sync 2>/dev/null && sync"))
            .await;
    assert_eq!(rc, Some(0), "writing the data disk in the guest");
    let (_, iid) = guest_sh(&d, &k, "cat /run/herd/instance-id").await;
    assert!(iid.trim().ends_with("-0"), "{iid}");

    // Stop: the ACPI power button powers the guest off (its shutdown line is on the console),
    // well before the 60 s stop timeout.
    let pid1 = d.pid(&k).unwrap();
    let console = d.instance_dir(&k).join("console.log");
    let shutdowns = |p: &Path| std::fs::read_to_string(p).unwrap_or_default().matches("HERD-GUEST-SHUTDOWN").count();
    let before = shutdowns(&console);
    let started = Instant::now();
    d.set_power(&k, PowerTarget::Stopped, Fence::FIRST).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "stop took {took:?}: killed at the timeout, not powered off?");
    assert_eq!(shutdowns(&console), before + 1, "the guest ran its shutdown (ACPI power-off)");
    assert!(!alive(pid1));
    assert_eq!(power_of(&d, &k).await, Some(ObservedPower::Stopped));
    assert!(d.stats(&k).await.unwrap().is_none());
    d.set_power(&k, PowerTarget::Deallocated, Fence::FIRST).await.unwrap();
    assert_eq!(power_of(&d, &k).await, Some(ObservedPower::Stopped));
    h.step(&format!("stopped by ACPI power-off in {:.1}s", took.as_secs_f64()));
    let err = d.run_script(&k, &script("x", vec![], "true", t()), Fence::FIRST).await.unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");

    // ensure starts it again, with the same disks.
    d.ensure(&s, Fence::FIRST).await.unwrap();
    wait_running(&d, &k).await;
    let pid2 = d.pid(&k).unwrap();
    assert_ne!(pid1, pid2);
    let (_, back) = guest_sh(&d, &k, &format!("{FIND_LUN0}; dd if=$dev bs=1 count={} 2>/dev/null", marker.len())).await;
    assert_eq!(back, marker, "data survives a stop");
    h.step("started again by ensure");

    d.restart(&k, Fence::FIRST).await.unwrap();
    assert_eq!(shutdowns(&console), before + 2, "restart powers the guest off gracefully");
    wait_running(&d, &k).await;
    let pid3 = d.pid(&k).unwrap();
    assert!(pid3 != pid2 && !alive(pid2));
    h.step("restarted");

    // Reimage onto 1.0.1: new OS disk and seed, same data disk.
    let os_inode = std::fs::metadata(d.instance_dir(&k).join("os.qcow2")).unwrap().ino();
    let qga = agent(&d, &k).await;
    assert_eq!(qga.read_file("/etc/herd-image-version").await.unwrap(), b"1.0.0\n");
    drop(qga);
    let mut s2 = s.clone();
    s2.image = kernel_image(&out, "1.0.1");
    s2.model_generation = 2;
    reimage_to(&d, &s2, "1.0.1").await;
    let (_, iid) = guest_sh(&d, &k, "cat /run/herd/instance-id").await;
    assert!(iid.trim().ends_with("-1"), "a reimage gets a new instance id: {iid}");
    assert_ne!(std::fs::metadata(d.instance_dir(&k).join("os.qcow2")).unwrap().ino(), os_inode, "new OS disk");
    assert_eq!(std::fs::metadata(&data).unwrap().ino(), data_inode, "same data disk file");
    let info = Command::new("qemu-img").args(["info", "-U", "--output", "json"]).arg(&data).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 1u64 << 30);
    let (_, back) = guest_sh(&d, &k, &format!("{FIND_LUN0}; dd if=$dev bs=1 count={} 2>/dev/null", marker.len())).await;
    assert_eq!(back, marker, "data survives a reimage");
    h.step("reimaged onto 1.0.1, data disk kept");

    d.destroy(&k, Fence::FIRST).await.unwrap();
    assert!(d.processes().is_empty() && !d.instance_dir(&k).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_orphans_and_host_reboots() {
    let out = testguest_out();
    let h = Harness::new("adopt");
    let (c1, c2) = (key("rg/adopt/1"), key("rg/adopt/2"));
    let s1 = spec(&c1, "tgadopt000001", "127.200.3.1", kernel_image(&out, "1.0.0"), true);
    // No agent: readiness comes from the console's ready line.
    let s2 = spec(&c2, "tgadopt000002", "127.200.3.2", kernel_image(&out, "1.0.0"), false);
    {
        let d1 = h.driver();
        let (r1, r2) = tokio::join!(d1.ensure(&s1, Fence::FIRST), d1.ensure(&s2, Fence::FIRST));
        r1.unwrap();
        r2.unwrap();
        // Dropped while both boot: its readiness tasks end with it.
    }
    let d2 = h.driver();
    tokio::join!(wait_running(&d2, &c1), wait_running(&d2, &c2));
    h.step("a new driver saw both boot to Running");
    let pid1 = d2.pid(&c1).unwrap();
    drop(d2);

    // Adoption: the same QEMU, Running at once, and ensure starts no second one.
    let d = h.driver();
    assert_eq!(power_of(&d, &c1).await, Some(ObservedPower::Running));
    assert_eq!(d.pid(&c1), Some(pid1));
    d.ensure(&s1, Fence::FIRST).await.unwrap();
    assert_eq!(d.pid(&c1), Some(pid1));
    assert_eq!(d.processes().iter().filter(|(k, _)| *k == c1).count(), 1, "{:?}", d.processes());
    let err = d.run_script(&c2, &script("x", vec![], "true", t()), Fence::FIRST).await.unwrap_err();
    assert!(err.to_string().contains("no guest agent"), "{err}");
    assert!(d.console_log(&c2, 1 << 16).await.unwrap().unwrap().contains("HERD-GUEST-READY hostname=tgadopt000002"));
    assert!(d.console_log(&key("rg/adopt/9"), 100).await.unwrap().is_none());
    h.step("adopted");

    // Orphan: the directory vanishes behind the driver's back.
    let pid2 = d.pid(&c2).unwrap();
    std::fs::remove_dir_all(d.instance_dir(&c2)).unwrap();
    assert_eq!(power_of(&d, &c2).await, Some(ObservedPower::Running), "orphans are listed as Running");
    d.destroy(&c2, Fence::FIRST).await.unwrap();
    assert!(!alive(pid2), "destroy killed the orphan");
    assert_eq!(power_of(&d, &c2).await, None);
    h.step("orphan listed and destroyed");

    // A host reboot: QEMU gone and the recorded boot id is another one.
    let _ = Command::new("kill").args(["-KILL", &pid1.to_string()]).status();
    wait_gone(pid1, Duration::from_secs(10)).await;
    let p = power_of(&d, &c1).await;
    assert!(matches!(&p, Some(ObservedPower::Failed(m)) if m.contains("QEMU exited")), "{p:?}");
    std::fs::write(d.instance_dir(&c1).join("boot-id"), "00000000-0000-0000-0000-000000000000\n").unwrap();
    let p = power_of(&d, &c1).await;
    assert!(matches!(&p, Some(ObservedPower::Failed(m)) if m.contains("host rebooted")), "{p:?}");
    assert_eq!(d.resume_after_host_reboot().await, 1);
    let pid1b = d.pid(&c1).expect("started again");
    assert_ne!(pid1b, pid1);
    wait_running(&d, &c1).await;
    h.step("resumed after a host reboot");

    // A crash under the current boot id is not a reboot: left Failed.
    let _ = Command::new("kill").args(["-KILL", &pid1b.to_string()]).status();
    wait_gone(pid1b, Duration::from_secs(10)).await;
    assert_eq!(d.resume_after_host_reboot().await, 0);
    let p = power_of(&d, &c1).await;
    assert!(matches!(&p, Some(ObservedPower::Failed(m)) if m.contains("QEMU exited")), "{p:?}");
    assert!(d.pid(&c1).is_none());
    // ensure repairs it.
    d.ensure(&s1, Fence::FIRST).await.unwrap();
    wait_running(&d, &c1).await;
    d.destroy(&c1, Fence::FIRST).await.unwrap();
    assert!(d.processes().is_empty());
    h.step("a crash stays Failed until ensure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_conflicts_and_unsupported_specs_fail_clearly() {
    let (out, h, d) = start("ports");
    let k = key("rg/ports/1");
    let s = spec(&k, "tgports000001", "127.200.4.1", kernel_image(&out, "1.0.0"), true);
    let holder = std::net::TcpListener::bind("127.200.4.1:80").unwrap();
    let err = d.ensure(&s, Fence::FIRST).await.unwrap_err().to_string();
    assert!(err.contains("127.200.4.1:80"), "{err}");
    assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
    let p = power_of(&d, &k).await;
    assert!(matches!(&p, Some(ObservedPower::Failed(m)) if m.contains("127.200.4.1:80")), "{p:?}");
    assert!(d.processes().is_empty());
    h.step(&format!("port conflict: {err}"));

    // Once the port is free, ensure starts it. (A driver with a 1 s boot timeout, so the boot
    // also shows what a guest that does not get ready in time looks like.)
    drop(holder);
    let mut impatient = h.cfg.clone();
    impatient.boot_timeout = Duration::from_secs(1);
    let d1 = QemuDriver::new(impatient).unwrap();
    d1.ensure(&s, Fence::FIRST).await.unwrap();
    assert!(d1.pid(&k).is_some());
    let p = wait_power(&d1, &k, Duration::from_secs(10), |p| {
        matches!(p, ObservedPower::Failed(_) | ObservedPower::Running)
    })
    .await;
    assert!(matches!(&p, ObservedPower::Failed(m) if m.contains("boot timed out")), "{p:?}");
    d1.destroy(&k, Fence::FIRST).await.unwrap();
    assert!(d.processes().is_empty());
    drop(d1);

    let mut dir_image = spec(&key("rg/ports/3"), "tgports000003", "127.200.4.3", kernel_image(&out, "1.0.0"), true);
    dir_image.image = ImageSource::Directory { path: "/tmp".into() };
    let err = d.ensure(&dir_image, Fence::FIRST).await.unwrap_err().to_string();
    assert!(err.contains("directory image"), "{err}");
    let mut missing = spec(&key("rg/ports/4"), "tgports000004", "127.200.4.4", kernel_image(&out, "1.0.0"), true);
    missing.image = ImageSource::Disk { path: "/nonexistent/disk.qcow2".into(), format: "qcow2".into() };
    let err = d.ensure(&missing, Fence::FIRST).await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/disk.qcow2"), "{err}");
    assert!(d.list().await.unwrap().is_empty(), "nothing half-created");
}

/// A file's bytes, size and mtime: what must not change while VMs run on it as their image.
fn file_state(p: &Path) -> (Vec<u8>, u64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (std::fs::read(p).unwrap(), m.len(), m.mtime(), m.mtime_nsec())
}

/// `qemu-img info` of a disk in use (`-U`: QEMU holds its lock).
fn qemu_img_info(p: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img").args(["info", "-U", "--output", "json"]).arg(p).output().unwrap();
    assert!(out.status.success(), "qemu-img info {}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The OS disk in the guest: the virtio disk with a partition (the boot disk's FAT partition;
/// the seed and data disks have none) as `$dev`; exits 9 when there is none.
const FIND_OS_DISK: &str =
    "for b in /sys/block/vd*; do [ -e $b/${b##*/}1 ] && dev=/dev/${b##*/}; done; [ -b \"$dev\" ] || exit 9";
/// A sector in the boot disk's gap between the MBR and the partition (sector 2048): never read
/// by the bootloader, so writing it leaves the disk bootable.
const GAP_SECTOR: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_image_boots_its_own_bootloader_on_an_overlay_and_reimages() {
    let (out, h, d) = start("disk");
    let k = key("rg/disk/1");
    let image = disk_image(&out, "1.0.0");
    let ImageSource::Disk { path: image_path, .. } = &image else { unreachable!() };
    let image_path = PathBuf::from(image_path);
    let image_before = file_state(&image_path);
    let s = spec(&k, "tgdisk000001", "127.200.5.1", image, true);
    d.ensure(&s, Fence::FIRST).await.unwrap();
    wait_running(&d, &k).await;
    h.step("Running from disk.qcow2");

    // Booted by the disk's own bootloader: QEMU has no -kernel, the console shows SYSLINUX,
    // and the guest got the image's kernel command line from the disk's syslinux.cfg.
    let pid = d.pid(&k).unwrap();
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
    assert!(!argv.contains(&&b"-kernel"[..]), "a disk image boots without -kernel");
    let console = d.console_log(&k, 1 << 20).await.unwrap().unwrap();
    assert!(console.contains("SYSLINUX "), "{console}");
    assert!(console.contains("HERD-GUEST-READY hostname=tgdisk000001 version=1.0.0"), "{console}");
    let os_disk = d.instance_dir(&k).join("os.qcow2");
    let info = qemu_img_info(&os_disk);
    assert_eq!(info["backing-filename"], image_path.display().to_string(), "{info}");
    assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    let qga = agent(&d, &k).await;
    assert_eq!(qga.get_host_name().await.unwrap(), "tgdisk000001", "hostname from the seed");
    assert_eq!(qga.read_file("/etc/herd-image-version").await.unwrap(), b"1.0.0\n");
    let proc_cmdline = String::from_utf8(qga.read_file("/proc/cmdline").await.unwrap()).unwrap();
    let cmdline = std::fs::read_to_string(out.join("1.0.0/cmdline")).unwrap();
    assert!(proc_cmdline.contains(cmdline.trim()), "guest cmdline {proc_cmdline:?} lacks {cmdline:?}");
    drop(qga);

    // The guest writes its OS disk: the write lands in the overlay, never in the image.
    // (fsync makes the guest send a flush, so QEMU writes the overlay's qcow2 metadata out
    // and `qemu-img compare` sees the new cluster; a bare `sync` flushes nothing here.)
    let marker = "herd-os-disk-marker";
    let (rc, _) = guest_sh(
        &d,
        &k,
        &format!("{FIND_OS_DISK}; printf {marker} | dd of=$dev bs=512 seek={GAP_SECTOR} conv=sync,fsync 2>/dev/null"),
    )
    .await;
    assert_eq!(rc, Some(0), "writing the OS disk in the guest");
    let cmp = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "qcow2", "-F", "qcow2"])
        .arg(&image_path)
        .arg(&os_disk)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&cmp.stdout).into_owned();
    assert_eq!(cmp.status.code(), Some(1), "the overlay differs from its image: {said}");
    assert!(said.contains(&format!("offset {}", GAP_SECTOR * 512)), "{said}");
    assert!(file_state(&image_path) == image_before, "{} changed under a running VM", image_path.display());
    h.step("guest writes go to the overlay; the image is unchanged");

    // Reimage onto 1.0.1's disk: a new overlay on the new image (without the old write).
    let os_inode = std::fs::metadata(&os_disk).unwrap().ino();
    let mut s2 = s.clone();
    s2.image = disk_image(&out, "1.0.1");
    s2.model_generation = 2;
    let ImageSource::Disk { path: image2_path, .. } = &s2.image else { unreachable!() };
    let image2_path = PathBuf::from(image2_path);
    let image2_before = file_state(&image2_path);
    reimage_to(&d, &s2, "1.0.1").await;
    assert_ne!(std::fs::metadata(&os_disk).unwrap().ino(), os_inode, "new OS disk");
    assert_eq!(qemu_img_info(&os_disk)["backing-filename"], image2_path.display().to_string());
    let (rc, back) = guest_sh(
        &d,
        &k,
        &format!("{FIND_OS_DISK}; dd if=$dev bs=512 skip={GAP_SECTOR} count=1 2>/dev/null | tr -d '\\000'"),
    )
    .await;
    assert_eq!((rc, back.as_str()), (Some(0), ""), "a reimaged OS disk starts from the image again");
    h.step("reimaged onto 1.0.1's disk");

    d.destroy(&k, Fence::FIRST).await.unwrap();
    assert!(d.processes().is_empty() && !d.instance_dir(&k).exists());
    let left: Vec<PathBuf> = walk_files(&d.config().root);
    assert!(left.is_empty(), "files left: {left:?}");
    assert!(d.list().await.unwrap().is_empty());
    assert!(file_state(&image_path) == image_before, "{} changed", image_path.display());
    assert!(file_state(&image2_path) == image2_before, "{} changed", image2_path.display());
    h.step("destroyed; both images unchanged");
}

/// Issue 13: a server killed during an extension run must not leave the next server starting
/// a second copy. The first run's call is abandoned once the agent started it (its agent
/// connection closes, the script keeps running in the guest, the `script-run` record stays),
/// as `kill -9` of the server leaves it. A new driver asked for the same run adopts it (its
/// exit code and output); asked for another run, it kills the old script first.
///
/// The call is cut only once the script runs its command: the host records the run as soon as
/// the agent gives its pid, which under TCG can be well before the guest's shell reaches the
/// first line, and a run killed then never writes its start line. The script announces itself
/// on the serial console (the agent cannot be asked: QEMU serves one agent client at a time,
/// and the cut call still holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_run_cut_by_a_crash_is_adopted_or_killed_never_doubled() {
    let out = testguest_out();
    let h = Harness::new("extcrash");
    let k = key("rg/extcrash/1");
    let d = Arc::new(h.driver());
    d.ensure(&spec(&k, "tgextcr000001", "127.200.9.1", kernel_image(&out, "1.0.0"), true), Fence::FIRST).await.unwrap();
    wait_running(&d, &k).await;
    h.step("booted");
    let record = d.instance_dir(&k).join("script-run");
    let slow = |identity: &str| ScriptRun {
        identity: identity.into(),
        ..script(
            "slow",
            vec![],
            "echo $$ >> starts\necho herd-slow-started > /dev/console\nsleep 4\necho done >> starts\n\
             echo adopted-output\nexit 5",
            t(),
        )
    };
    let console_starts = || async {
        let console = d.console_log(&k, 1 << 20).await.unwrap().unwrap_or_default();
        console.matches("herd-slow-started").count()
    };
    let starts = || async {
        let (_, text) = guest_sh(&d, &k, "cat /var/lib/herd/extensions/slow/starts 2>/dev/null; true").await;
        text.lines().map(String::from).collect::<Vec<_>>()
    };
    let crash = |run: ScriptRun| {
        let (d, k, record) = (d.clone(), k.clone(), record.clone());
        async move {
            let _ = std::fs::remove_file(&record);
            let before = console_starts().await;
            let task = tokio::spawn(async move { d.run_script(&k, &run, Fence::FIRST).await });
            let deadline = Instant::now() + scaled(Duration::from_secs(60));
            while !record.exists() {
                assert!(Instant::now() < deadline, "the run was never recorded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            while console_starts().await == before {
                assert!(Instant::now() < deadline, "the script never announced its start on the console");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(!task.is_finished(), "the run ended before it was cut");
            task.abort();
            let _ = task.await;
        }
    };

    // Same identity: adopted, run once.
    crash(slow("gen-1")).await;
    let d2 = h.driver();
    let o = d2.run_script(&k, &slow("gen-1"), Fence::FIRST).await.unwrap();
    h.step("adopted");
    assert_eq!(o.exit_code, Some(5), "{o:?}");
    assert_eq!(o.stdout, b"adopted-output\n");
    let l = starts().await;
    assert_eq!(l.len(), 2, "started once, finished once: {l:?}");
    assert_eq!(l[1], "done");
    assert!(!record.exists(), "the record is removed");

    // Another identity: the old script is killed before the new run starts.
    let _ = guest_sh(&d2, &k, "rm -f /var/lib/herd/extensions/slow/starts").await;
    crash(slow("gen-1")).await;
    let quick = ScriptRun { identity: "gen-2".into(), ..script("slow", vec![], "echo $$ >> starts\necho new", t()) };
    let o = d2.run_script(&k, &quick, Fence::FIRST).await.unwrap();
    assert_eq!((o.exit_code, o.stdout.as_slice()), (Some(0), b"new\n".as_slice()));
    let l = starts().await;
    assert_eq!(l.len(), 2, "{l:?}");
    let (_, state) = guest_sh(&d2, &k, &format!("kill -0 {} 2>/dev/null && echo alive || echo gone", l[0])).await;
    assert_eq!(state.trim(), "gone", "the old script was killed");
    assert!(!starts().await.contains(&"done".to_string()));
    d2.destroy(&k, Fence::FIRST).await.unwrap();
}

/// A disk imported without saying whether it runs the guest agent (`guest_agent: None`): the
/// test guest's disk has one. The VM gets ready, its agent is detected while it boots and
/// reported for the image it runs (also by a new driver on the same root, after a restart),
/// and a script runs through the agent. The same disk declared agent-less (`Some(false)`)
/// refuses scripts at once, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_image_with_an_unknown_agent_detects_it_at_boot() {
    let (out, h, d) = start("detect");
    let k = key("rg/detect/1");
    let image = disk_image(&out, "1.0.0");
    let mut s = spec(&k, "tgdetect00001", "127.200.6.1", image.clone(), true);
    s.guest.guest_agent = None;
    assert!(d.guest_agents_answered().is_empty());
    d.ensure(&s, Fence::FIRST).await.unwrap();
    wait_running(&d, &k).await;
    h.step("Running (console line or agent, whichever first)");
    let deadline = Instant::now() + BOOT;
    loop {
        if d.guest_agents_answered().contains(&(k.clone(), image.clone())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the driver to report the guest agent of {k}: {:?}",
            d.guest_agents_answered()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.step("agent detected and reported with its image");
    assert!(d.instance_dir(&k).join("guest-agent").is_file(), "the answer is recorded in the instance");
    assert_eq!(
        h.driver().guest_agents_answered(),
        vec![(k.clone(), image.clone())],
        "a new driver on the same root reports it too"
    );

    let out_run =
        d.run_script(&k, &script("detect", vec![], "echo agent-ran; hostname", BOOT), Fence::FIRST).await.unwrap();
    assert!(out_run.succeeded(), "{out_run:?}");
    assert_eq!(String::from_utf8_lossy(&out_run.stdout), "agent-ran\ntgdetect00001\n");
    h.step("a script ran through the detected agent");

    // Declared without an agent: scripts are refused at once, naming the override.
    let k2 = key("rg/detect/2");
    let mut s2 = spec(&k2, "tgdetect00002", "127.200.6.2", image.clone(), false);
    s2.guest.guest_agent = Some(false);
    d.ensure(&s2, Fence::FIRST).await.unwrap();
    let started = Instant::now();
    let err = d.run_script(&k2, &script("detect", vec![], "true", BOOT), Fence::FIRST).await.unwrap_err();
    assert!(err.to_string().contains("--guest-agent false"), "{err}");
    assert!(started.elapsed() < t(), "refused at once, not after a wait");
    d.destroy(&k2, Fence::FIRST).await.unwrap();

    d.destroy(&k, Fence::FIRST).await.unwrap();
    assert!(d.guest_agents_answered().is_empty(), "a destroyed instance is no longer reported");
    assert!(d.processes().is_empty());
}
