//! Host failure (issue 21) with real TCG VMs behind the server's load balancer, on the namespace
//! rig: three hosts in one zone, a set of two VMs of the test guest (one per host by spreading,
//! the third host empty), each serving `hostname` and its kernel's boot id over HTTP on 8080 (a
//! Custom Script: the boot id says which copy answered, since a moved instance keeps its name,
//! MAC and private IP).
//!
//! Why VMs and not process instances (`host_failure.rs` covers those): a VM is what keeps running
//! on a frozen or cut-off host, behind its own TAP, exactly as the kernel lease table has to
//! fence it; and the return has to destroy a QEMU process, not a namespace.
//!
//! Two kinds of traffic run from the server's namespace through the whole test, bounded in count
//! and time:
//! - **load**: one request every 40 ms to the load balancer's frontend (25 a second: while the
//!   replacement boots, the one VM left serves all of it, and the booting VM takes most of the
//!   second core; at 50 a second that VM's busybox `httpd` fell behind and dropped SYNs, seen
//!   on its host as SYNs forwarded to its TAP with no SYN-ACK back, so the load balancer's
//!   connects timed out on a healthy backend: the machine's limit, not a failure's);
//! - **the observer**: one request every 10 ms to the moved instance's private IP, from the
//!   subnet's probe source 10.0.0.2 (the server's bridge of the subnet carries it; the bridge's
//!   first address is the anycast gateway, which a VM answers through its own host), recording
//!   which boot id answered.
//!
//! Then:
//! 1. **cut** the moved instance's host from the fabric: it leaves rotation within `host_grace`
//!    (+ 2 s, the goal, + a poll), is re-created on the empty host of the zone after `replace_after` (same
//!    id and IP, a new incarnation) and serves behind the load balancer again; its old QEMU still
//!    runs on the cut host. The link restored, that copy is destroyed before the host is Ready
//!    (sampled: the host's QEMU processes, by instance key, until Ready).
//! 2. **freeze** the agent (SIGSTOP) of the host it was moved to, its VMs still running: the
//!    kernel empties the host's `leased` set within the lease; from then on the `leased` counters
//!    of that host never increase (sampled over the following seconds and across the
//!    replacement); the same checks as the cut, the instance going back to the host that
//!    returned; continued, the stale copy goes before Ready.
//! 3. Over the whole run: the load's only failures are requests in flight to the instance when it
//!    became unreachable (the cut; the lease's end), a bounded few: a connect after that moment
//!    times out at the load balancer, which falls back to the other VM; none once it left
//!    rotation (two runs: 0 of 2,135 failed; 2 of 2,390, one in flight at each moment). The observer's answers come from
//!    one boot id at a time: the three copies in order, never an older one after a newer one
//!    answered.
//!
//! Timings as `host_failure.rs`: host_grace 5 s, heartbeats every second, leases of 4 s (bound
//! 4.04 s + 2 s), replace_after 30 s. Deadlines are sized for TCG VMs on a loaded 2-core
//! machine.

mod common;

use common::rig::Rig;
use common::wait_observing;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GRACE: Duration = Duration::from_secs(5);
const LEASE: Duration = Duration::from_secs(4);
const REPLACE_AFTER: Duration = Duration::from_secs(30);
/// The goal's slack over each bound (issue 21).
const GOAL_SLACK: Duration = Duration::from_secs(2);
/// At most this many load requests may fail per failure: those in flight to the lost instance.
/// Under TCG a VM that also answers the observer's 100 requests a second works through a
/// backlog, so a few dozen can be in flight at once (11 seen).
const MAX_FAILED_PER_FAILURE: usize = 40;
/// Each load request's own deadline (the load balancer's connect timeout of 2 s, a fallback,
/// and a TCG VM's answer fit well within it).
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack for when a moment is observed (polls of 0.1–0.2 s).
const POLL_SLACK: Duration = Duration::from_millis(500);

fn config() -> String {
    format!(
        "[agents]\nhost_grace_secs = {}\nheartbeat_interval_ms = 1000\nlease_secs = {}\nreplace_after_secs = {}\n\n[qemu]\nboot_timeout_secs = 240\n",
        GRACE.as_secs(),
        LEASE.as_secs(),
        REPLACE_AFTER.as_secs()
    )
}

/// Serves the VM's name and its kernel's boot id (new on every boot, so per copy) on 8080.
const SERVE_IDENTITY: &str = "mkdir -p /tmp/www && { hostname; cat /proc/sys/kernel/random/boot_id; } > /tmp/www/index.html && httpd -p 8080 -h /tmp/www; true";

/// One request of a [`Traffic`]: when it was sent, how long it took, and the answer's body or
/// what went wrong.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    took: Duration,
    answer: Result<String, String>,
}

impl Sent {
    /// The boot id the answer ends with (see [`SERVE_IDENTITY`]).
    fn boot_id(&self) -> Option<&str> {
        self.answer.as_ref().ok()?.lines().rev().map(str::trim).find(|l| !l.is_empty())
    }
}

/// HTTP GETs of `/` on fresh connections, one every `every`, from inside a network namespace:
/// a thread enters it and runs a single-threaded runtime, so every socket is made there (bound
/// to `from` when given). Each request has `timeout`; at most `max` requests and `max_time` (times the test time scale).
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(
        netns: &str,
        from: Option<IpAddr>,
        to: SocketAddr,
        every: Duration,
        timeout: Duration,
        max: usize,
        max_time: Duration,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (ns, s, out) = (format!("/run/netns/{netns}"), stop.clone(), sent.clone());
        let max_time = herd_test_support::scaled(max_time);
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("{ns}: {e}"));
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the namespace");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let begin = Instant::now();
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..max {
                    tick.tick().await;
                    if s.load(Ordering::Relaxed) || begin.elapsed() > max_time {
                        break;
                    }
                    let out = out.clone();
                    tasks.spawn(async move {
                        let r = get(from, to, timeout).await;
                        out.lock().unwrap().push(r);
                    });
                    while tasks.try_join_next().is_some() {}
                }
                while tasks.join_next().await.is_some() {}
            });
        });
        Traffic { stop, sent, thread: Some(thread) }
    }

    /// What was answered so far, in the order the requests were sent.
    fn so_far(&self) -> Vec<Sent> {
        let mut v = self.sent.lock().unwrap().clone();
        v.sort_by_key(|s| s.at);
        v
    }

    /// Stops sending, waits for the requests in flight: every request, in the order sent.
    fn finish(mut self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the traffic thread");
        self.so_far()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn get(from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> Sent {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let at = Instant::now();
    let exchange = async {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let mut s = socket.connect(to).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
            return Err(format!("answer: {}", text.lines().next().unwrap_or("(empty)")));
        }
        Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    };
    let answer =
        tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
    Sent { at, took: at.elapsed(), answer }
}

fn instances(r: &Rig) -> Vec<Value> {
    r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]).as_array().cloned().unwrap_or_default()
}

fn instance(r: &Rig, id: &str) -> Value {
    instances(r).into_iter().find(|i| i["instanceId"] == id).unwrap_or(Value::Null)
}

fn host_state(r: &Rig, host: &str) -> String {
    let list = r.json(&["host", "list"]);
    list.as_array()
        .and_then(|v| v.iter().find(|h| h["name"] == host))
        .map(|h| h["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// The newest boot id the observer has seen answer since `since`.
fn answered_since(observer: &Traffic, since: Instant) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for s in observer.so_far().iter().filter(|s| s.at >= since) {
        if let Some(b) = s.boot_id() {
            if ids.last().map(String::as_str) != Some(b) {
                ids.push(b.to_string());
            }
        }
    }
    ids
}

/// What one failure did, as measured.
struct Outcome {
    /// The failure's instant.
    at: Instant,
    out_of_rotation: Duration,
    /// The record named another host.
    placed: Duration,
    replaced: Duration,
    new_host: String,
    /// The boot id the new copy answered the observer with.
    boot_id: String,
}

/// The checks both failures share, once the failure happened at `t0`: the instance out of
/// rotation within the grace (+ the goal's slack), re-created on another host of the zone after
/// `replace_after` with the same IP and a new incarnation, back in rotation, and answering the
/// observer with a boot id other than `old_boot`. `sample` runs on every poll (the frozen host's counters).
fn after_failure(
    r: &Rig,
    what: &str,
    t0: Instant,
    before: &Value,
    old_boot: &str,
    observer: &Traffic,
    sample: &mut dyn FnMut(),
) -> Outcome {
    let id = before["instanceId"].as_str().unwrap().to_string();
    let ip = before["privateIpAddress"].as_str().unwrap().to_string();
    let host = before["host"].as_str().unwrap().to_string();
    let out_of_rotation =
        wait_observing(&format!("{what}: instance {id} ({ip}) out of rotation"), Duration::from_secs(60), || {
            sample();
            let now = r.in_rotation();
            (!now.contains(&ip)).then(|| t0.elapsed()).ok_or_else(|| format!("{now:?}"))
        });
    assert!(
        out_of_rotation <= GRACE + GOAL_SLACK + POLL_SLACK,
        "{what}: out of rotation after {out_of_rotation:?}, beyond host_grace {GRACE:?} + {GOAL_SLACK:?} (+ a poll)"
    );
    // Placed: the record names another host (Phase A writes it before the driver call); the
    // bound is replace_after (above the lease bound), the goal 2 s more, and a poll's slack.
    let placed =
        wait_observing(&format!("{what}: instance {id} placed on another host"), Duration::from_secs(120), || {
            sample();
            let i = instance(r, &id);
            (i["host"] != host.as_str() && i["host"].is_string()).then(|| t0.elapsed()).ok_or_else(|| i.to_string())
        });
    assert!(
        placed + Duration::from_millis(1500) >= REPLACE_AFTER,
        "{what}: placed after {placed:?}, before replace_after"
    );
    assert!(
        placed <= REPLACE_AFTER + GOAL_SLACK + POLL_SLACK,
        "{what}: placed after {placed:?}, beyond replace_after {REPLACE_AFTER:?} + {GOAL_SLACK:?}"
    );
    let now = wait_observing(
        &format!("{what}: instance {id} re-created and running on another host"),
        Duration::from_secs(300),
        || {
            sample();
            let i = instance(r, &id);
            let ok = i["host"] != host.as_str()
                && i["host"].is_string()
                && i["powerState"] == "running"
                && i["provisioningState"] == "Succeeded";
            ok.then(|| i.clone()).ok_or_else(|| i.to_string())
        },
    );
    let replaced = t0.elapsed();
    assert!(
        replaced + Duration::from_millis(1500) >= REPLACE_AFTER,
        "{what}: re-created after {replaced:?}, before replace_after"
    );
    assert_eq!(now["zones"], before["zones"], "{what}: the same zone: {now}");
    assert_eq!(now["privateIpAddress"], before["privateIpAddress"], "{what}: the same private IP: {now}");
    assert_eq!(now["computerName"], before["computerName"], "{what}: {now}");
    let was = before["hostFailure"]["recreated"]["incarnation"].as_u64().unwrap_or(1);
    let rec = &now["hostFailure"]["recreated"];
    assert_eq!(rec["fromHost"], host.as_str(), "{what}: {now}");
    assert!(rec["incarnation"].as_u64().unwrap_or(0) > was, "{what}: a new incarnation: {now}");
    let new_host = now["host"].as_str().unwrap().to_string();
    // The old copy still runs where it was (nothing could tell it to stop): two QEMUs exist,
    // one of them fenced.
    let key = format!("rg/web/{id}");
    assert!(r.qemu_keys(&host).contains(&key), "{what}: the stale copy still runs on {host}");
    wait_observing(&format!("{what}: {key}'s QEMU on {new_host}"), Duration::from_secs(30), || {
        let keys = r.qemu_keys(&new_host);
        keys.contains(&key).then_some(()).ok_or_else(|| format!("{keys:?}"))
    });
    wait_observing(
        &format!("{what}: instance {id} back in rotation (its Custom Script ran again)"),
        Duration::from_secs(300),
        || {
            sample();
            let now = r.in_rotation();
            now.contains(&ip).then_some(()).ok_or_else(|| format!("{now:?}"))
        },
    );
    let boot_id =
        wait_observing(&format!("{what}: the observer answered by the new copy"), Duration::from_secs(60), || {
            sample();
            let seen = answered_since(observer, t0);
            seen.iter().find(|b| *b != old_boot).cloned().ok_or_else(|| format!("boot ids since the failure: {seen:?}"))
        });
    eprintln!(
        "host-failure-vms timing: {what}: out of rotation after {:.1} s (host_grace {} s), placed after {:.1} s, re-created and running on {new_host} after {:.1} s (replace_after {} s)",
        out_of_rotation.as_secs_f64(),
        GRACE.as_secs(),
        placed.as_secs_f64(),
        replaced.as_secs_f64(),
        REPLACE_AFTER.as_secs()
    );
    Outcome { at: t0, out_of_rotation, placed, replaced, new_host, boot_id }
}

/// Brings `host` back with `back` and samples its QEMU processes until it is Ready: `key`'s
/// stale copy must be gone by then. Returns the states seen.
fn returns_clean(r: &Rig, what: &str, host: &str, key: &str, back: &dyn Fn()) -> Vec<String> {
    assert!(r.qemu_keys(host).contains(key), "{what}: the stale copy runs on {host} before the return");
    back();
    let mut states: Vec<String> = Vec::new();
    let mut samples = 0;
    wait_observing(&format!("{what}: {host} Ready again"), Duration::from_secs(180), || {
        // The state first, then the processes: a copy seen after Ready ran while Ready.
        let s = host_state(r, host);
        let keys = r.qemu_keys(host);
        samples += 1;
        if states.last() != Some(&s) {
            states.push(s.clone());
        }
        if s == "Ready" {
            assert!(
                !keys.contains(key),
                "{what}: {host} Ready with the moved copy {key} running ({states:?}, {samples} samples)"
            );
            Ok(())
        } else {
            Err(format!("{s}, QEMUs {keys:?}"))
        }
    });
    eprintln!("{what}: {host} returned through {states:?} ({samples} samples of its QEMUs)");
    states
}

#[test]
fn tcg_vms_behind_the_lb_move_on_a_cut_and_a_freeze_and_answer_one_copy_at_a_time() {
    let tg = herd_test_support::require_testguest("1.0.0");
    let r = Rig::up(
        &Rig::unique("hv"),
        &["--hosts", "3", "--zones", "1,1,1", "--driver", "qemu", "--server-arg=--accel", "--server-arg=tcg"],
        &config(),
    );
    r.testguest_web(&tg, "2", &["1"], &[]);
    wait_observing("2 VMs running on two hosts", Duration::from_secs(300), || {
        let list = instances(&r);
        let hosts: BTreeSet<String> = list
            .iter()
            .filter(|i| i["powerState"] == "running" && i["provisioningState"] == "Succeeded")
            .filter_map(|i| i["host"].as_str().map(str::to_string))
            .collect();
        (hosts.len() == 2).then_some(()).ok_or_else(|| common::instances_summary(&Value::Array(list)))
    });
    r.custom_script(SERVE_IDENTITY, &["*"], false);
    wait_observing("the Custom Script on both VMs", Duration::from_secs(300), || {
        let list = instances(&r);
        let done = list.len() == 2
            && list.iter().all(|i| i["pendingAction"].is_null() && i["extensions"][0]["state"] == "Succeeded");
        done.then_some(()).ok_or_else(|| common::instances_summary(&Value::Array(list)))
    });
    wait_observing("both VMs in rotation", Duration::from_secs(120), || {
        let now = r.in_rotation();
        (now.len() == 2).then_some(()).ok_or_else(|| format!("{now:?}"))
    });

    let mut list = instances(&r);
    list.sort_by_key(|i| i["instanceId"].as_str().unwrap_or_default().to_string());
    let (a, b) = (list[0].clone(), list[1].clone());
    let id = a["instanceId"].as_str().unwrap().to_string();
    let key = format!("rg/web/{id}");
    let ip = a["privateIpAddress"].as_str().unwrap().to_string();
    let (host_a, host_b) = (a["host"].as_str().unwrap().to_string(), b["host"].as_str().unwrap().to_string());
    let spare = ["h1", "h2", "h3"].into_iter().find(|h| *h != host_a && *h != host_b).unwrap().to_string();

    let server_ns = r.netns("server");
    let frontend: SocketAddr = format!("{}:18080", r.frontend()).parse().unwrap();
    let load = Traffic::start(
        &server_ns,
        None,
        frontend,
        Duration::from_millis(40),
        LOAD_TIMEOUT,
        60_000,
        Duration::from_secs(1500),
    );
    // From the subnet's probe source (10.0.0.2, on the server's bridge): the server's first
    // address there is the anycast gateway 10.0.0.1, which a VM answers through its own host.
    let observer = Traffic::start(
        &server_ns,
        Some("10.0.0.2".parse().unwrap()),
        format!("{ip}:8080").parse().unwrap(),
        Duration::from_millis(10),
        Duration::from_secs(1),
        150_000,
        Duration::from_secs(1500),
    );
    let started = Instant::now();
    let first = wait_observing("the observer's first answer", Duration::from_secs(60), || {
        answered_since(&observer, started).first().cloned().ok_or_else(|| format!("{:?}", observer.so_far().last()))
    });
    wait_observing("the load answered by both VMs", Duration::from_secs(60), || {
        let names: BTreeSet<String> =
            load.so_far().iter().filter_map(|s| s.answer.as_ref().ok()?.lines().next().map(str::to_string)).collect();
        (names.len() == 2).then_some(()).ok_or_else(|| format!("{names:?}, last {:?}", load.so_far().last()))
    });

    // 1. The cut: instance a moves to the empty host (spreading), b keeps serving.
    let t_cut = Instant::now();
    r.link(&host_a, false);
    let cut = after_failure(&r, "cut link", t_cut, &a, &first, &observer, &mut || {});
    assert_eq!(cut.new_host, spare, "spreading puts the instance on the empty host of the zone");
    returns_clean(&r, "cut link", &host_a, &key, &|| r.link(&host_a, true));

    // 2. The freeze of the host it moved to: its VMs keep running, the kernel fences them.
    let frozen_host = cut.new_host.clone();
    let moved = instance(&r, &id);
    let table = r.lease_table(&frozen_host);
    let (ports, _) = r.lease_state(&frozen_host, &table);
    assert!(!ports.is_empty(), "{frozen_host} leases its VM's port before the freeze");
    let t_freeze = Instant::now();
    r.signal(&frozen_host, "stop");
    let fenced = wait_observing(
        &format!("{frozen_host}'s leased set to empty (the kernel's timeouts)"),
        Duration::from_secs(30),
        || {
            let (ports, _) = r.lease_state(&frozen_host, &table);
            ports.is_empty().then(|| t_freeze.elapsed()).ok_or_else(|| format!("{ports:?}"))
        },
    );
    assert!(
        fenced <= LEASE + GOAL_SLACK,
        "fenced {fenced:?} after the freeze, beyond the lease {LEASE:?} (+ the polls)"
    );
    let (_, counted) = r.lease_state(&frozen_host, &table);
    let mut counts: Vec<(Duration, u64)> = Vec::new();
    let mut sample = || {
        let (_, n) = r.lease_state(&frozen_host, &table);
        counts.push((t_freeze.elapsed(), n));
    };
    let freeze = after_failure(&r, "frozen agent", t_freeze, &moved, &cut.boot_id, &observer, &mut sample);
    assert_eq!(freeze.new_host, host_a, "spreading puts the instance on the host that returned empty");
    assert!(r.qemu_keys(&frozen_host).contains(&key), "the frozen host's VM still runs");
    sample();
    let span = counts.last().unwrap().0.saturating_sub(fenced);
    assert!(counts.len() >= 10 && span >= REPLACE_AFTER - LEASE, "{} samples over {span:?}", counts.len());
    let grew: Vec<&(Duration, u64)> = counts.iter().filter(|(_, n)| *n != counted).collect();
    assert!(grew.is_empty(), "after the lease ({counted} packets) the stale TAPs' allow-counter moved: {grew:?}");
    eprintln!(
        "frozen agent: leases ran out {:.1} s after the freeze; the allow-counter stayed at {counted} over {} samples and {:.0} s",
        fenced.as_secs_f64(),
        counts.len(),
        span.as_secs_f64()
    );
    returns_clean(&r, "frozen agent", &frozen_host, &key, &|| r.signal(&frozen_host, "cont"));

    // The observer goes on a few seconds past the last return, then both loops stop.
    let t_end = Instant::now();
    wait_observing("the observer answered after the last return", Duration::from_secs(30), || {
        observer.so_far().iter().any(|s| s.at > t_end && s.answer.is_ok()).then_some(()).ok_or_else(|| "not yet".into())
    });
    let observed = observer.finish();
    let loaded = load.finish();

    // One answer at a time: the three copies in order, none again after the next answered.
    let mut order: Vec<&str> = Vec::new();
    for s in &observed {
        if let Some(b) = s.boot_id() {
            if order.last() != Some(&b) {
                order.push(b);
            }
        }
    }
    let distinct: BTreeSet<&str> = order.iter().copied().collect();
    assert_eq!(
        order,
        [first.as_str(), cut.boot_id.as_str(), freeze.boot_id.as_str()],
        "three copies answered one after the other, never interleaved"
    );
    assert_eq!(order.len(), 3, "three copies answered one after the other, never interleaved: {order:?}");
    assert_eq!(distinct.len(), 3, "{order:?}");
    let answered = observed.iter().filter(|s| s.answer.is_ok()).count();
    eprintln!("observer: {} requests, {answered} answered, copies in order {order:?}", observed.len());

    // The load: a request fails only when it was in flight to the instance at the moment it
    // became unreachable (the cut; the end of the frozen host's lease, observed as its `leased`
    // set emptying): a connect after that moment times out at the load balancer (2 s), which
    // then tries the other VM. So every failure was sent at most a client timeout before that
    // moment and not after it, and there are none after the instance left rotation.
    let moments = [
        ("cut link", cut.at, Duration::ZERO, cut.out_of_rotation),
        ("frozen agent", freeze.at, fenced, freeze.out_of_rotation),
    ];
    let caused = |s: &Sent, at: Instant, after: Duration| {
        let moment = at + after;
        s.at + LOAD_TIMEOUT + POLL_SLACK >= moment && s.at <= moment + POLL_SLACK
    };
    let failed: Vec<&Sent> = loaded.iter().filter(|s| s.answer.is_err()).collect();
    let since = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
    let at_ms = |s: &Sent| format!("sent at {:.2} s, {:?}: {:?}", since(s.at), s.took, s.answer);
    let outside: Vec<String> = failed
        .iter()
        .filter(|s| !moments.iter().any(|(_, at, after, _)| caused(s, *at, *after)))
        .map(|s| at_ms(s))
        .collect();
    assert!(
        outside.is_empty(),
        "load requests failed that were not in flight when the instance became unreachable (cut at {:.2} s, out of rotation after {:?}, replacement placed after {:?}; freeze at {:.2} s, fenced after {fenced:?}, out of rotation after {:?}, replacement placed after {:?}): {outside:?}",
        since(cut.at),
        cut.out_of_rotation,
        cut.placed,
        since(freeze.at),
        freeze.out_of_rotation,
        freeze.placed,
    );
    for (what, at, after, out) in moments {
        let n: Vec<String> = failed.iter().filter(|s| caused(s, at, after)).map(|s| at_ms(s)).collect();
        eprintln!(
            "load: {what} at {:.2} s, unreachable {:.2} s later, out of rotation {:.2} s later: {} failed {n:?}",
            since(at),
            after.as_secs_f64(),
            out.as_secs_f64(),
            n.len()
        );
        assert!(n.len() <= MAX_FAILED_PER_FAILURE, "{what}: {} load requests failed: {n:?}", n.len());
    }
    let ok = loaded.iter().filter(|s| s.answer.is_ok()).count();
    assert!(ok * 10 >= loaded.len() * 9, "the load was answered: {ok} of {}", loaded.len());
    eprintln!(
        "load: {} requests, {ok} answered, {} failed; replaced after {:.1} s (cut) and {:.1} s (freeze)",
        loaded.len(),
        failed.len(),
        cut.replaced.as_secs_f64(),
        freeze.replaced.as_secs_f64()
    );
    r.down();
}
