//! The QMP and guest-agent clients, against fake servers and against a real QEMU.
//!
//! The fake servers (a `UnixListener` speaking just enough of each protocol) pin down the
//! parts that are hard to provoke in a real VM: replies out of order and interleaved with
//! events, late replies after a timeout, stale data and the `0xFF` delimiter on the agent
//! channel, an agent that accepts but never answers, and the connection going away.
//!
//! `boots_the_test_guest_over_qmp_and_qga` boots herd's test guest (`images/testguest`,
//! version 1.0.0, built into `$HERD_TESTGUEST_OUT`, default `target/testguest`, by
//! `./scripts/test.sh` and brought up to date by the cached `build.sh`) under QEMU TCG once
//! and checks both clients end to end, from boot to power-off by the ACPI power button (about 15 s on two cores). QEMU is always killed and its temp dir
//! removed, even on failure. Every deadline is multiplied by `HERD_TEST_TIME_SCALE`.

use herd_driver_qemu::qga::{GuestCommand, Qga, QgaError};
use herd_driver_qemu::qmp::{Qmp, QmpError, QmpEvent, VmStatus};
use serde_json::{json, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::task::JoinHandle;

use herd_test_support::scaled;

mod support;

/// A bound on one request (times `HERD_TEST_TIME_SCALE`).
fn t() -> Duration {
    scaled(Duration::from_secs(5))
}

/// One accepted connection of a fake server: JSON lines in (any `0xFF` stripped), raw out.
struct Peer {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Peer {
    async fn accept(listener: &UnixListener) -> Peer {
        let (stream, _) = tokio::time::timeout(t(), listener.accept()).await.expect("no client").unwrap();
        Peer::new(stream)
    }

    fn new(stream: UnixStream) -> Peer {
        let (rd, wr) = stream.into_split();
        Peer { reader: BufReader::new(rd), writer: wr }
    }

    /// The next request, and whether a `0xFF` came before it. `None` when the client left.
    async fn recv_raw(&mut self) -> Option<(bool, Value)> {
        loop {
            let mut line = Vec::new();
            let n =
                tokio::time::timeout(t(), self.reader.read_until(b'\n', &mut line)).await.expect("no request").unwrap();
            if n == 0 {
                return None;
            }
            let delimited = line.contains(&0xFF);
            line.retain(|&b| b != 0xFF);
            if line.trim_ascii().is_empty() {
                continue;
            }
            return Some((delimited, serde_json::from_slice(line.trim_ascii()).expect("request is not JSON")));
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_raw().await.expect("client went away").1
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.writer.write_all(bytes.as_ref()).await.unwrap();
    }

    async fn send_json(&mut self, v: Value) {
        self.send(format!("{v}\r\n")).await;
    }
}

fn socket_in(dir: &tempfile::TempDir, name: &str) -> (PathBuf, UnixListener) {
    let path = dir.path().join(name);
    let listener = UnixListener::bind(&path).unwrap();
    (path, listener)
}

/// A fake QEMU that sends the greeting and answers `qmp_capabilities`.
async fn qmp_handshake(listener: &UnixListener) -> Peer {
    let mut peer = Peer::accept(listener).await;
    peer.send_json(json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}))
        .await;
    let caps = peer.recv().await;
    assert_eq!(caps["execute"], "qmp_capabilities");
    peer.send_json(json!({"return": {}, "id": caps["id"]})).await;
    peer
}

/// A fake server on socket `name` in a fresh temp dir, running `script` on its listener.
/// Returns the dir (keep it until the end), the socket's path and the server task.
fn fake_server<F, Fut>(name: &str, script: F) -> (tempfile::TempDir, PathBuf, JoinHandle<Fut::Output>)
where
    F: FnOnce(UnixListener) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let (path, listener) = socket_in(&dir, name);
    (dir, path, tokio::spawn(script(listener)))
}

/// A fake QEMU on `qmp.sock` ([`fake_server`]): it greets the client, takes
/// `qmp_capabilities`, then runs `script` on the connection.
fn fake_qemu<F, Fut>(script: F) -> (tempfile::TempDir, PathBuf, JoinHandle<Fut::Output>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fake_server("qmp.sock", |listener| async move { script(qmp_handshake(&listener).await).await })
}

fn event(name: &str, data: Value) -> Value {
    json!({"event": name, "data": data, "timestamp": {"seconds": 1_700_000_000, "microseconds": 250}})
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<QmpEvent>) -> Vec<QmpEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(ev) => out.push(ev),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            Err(TryRecvError::Lagged(n)) => panic!("event receiver lagged by {n}"),
        }
    }
}

#[tokio::test]
async fn qmp_matches_out_of_order_replies_by_id_and_keeps_events_apart() {
    let (_dir, path, server) = fake_qemu(|mut peer| async move {
        let mut reqs = Vec::new();
        for _ in 0..3 {
            reqs.push(peer.recv().await);
        }
        let id_of = |name: &str| reqs.iter().find(|r| r["execute"] == name).expect(name)["id"].clone();
        let b = reqs.iter().find(|r| r["execute"] == "cmd-b").unwrap();
        assert_eq!(b["arguments"], json!({"x": 1}));
        assert!(reqs.iter().all(|r| r["id"].is_u64()), "every command carries a numeric id: {reqs:?}");
        // Replies in reverse order, events in between, plus noise nobody waits for.
        peer.send_json(event("STOP", json!(null))).await;
        peer.send_json(json!({"return": {"c": true}, "id": id_of("cmd-c")})).await;
        peer.send_json(json!({"return": {}, "id": 424242})).await;
        peer.send("not json at all\r\n\r\n").await;
        peer.send_json(json!({"error": {"class": "GenericError", "desc": "JSON parse error"}})).await;
        peer.send_json(event("RESUME", json!({}))).await;
        peer.send_json(json!({"error": {"class": "GenericError", "desc": "boom"}, "id": id_of("cmd-b")})).await;
        peer.send_json(json!({"return": {"status": "paused", "running": false}, "id": id_of("query-status")})).await;
        peer.send_json(event("SHUTDOWN", json!({"guest": true, "reason": "guest-shutdown"}))).await;
        // Then a command that is never answered: the connection drops under it.
        let hang = peer.recv().await;
        assert_eq!(hang["execute"], "hang");
    });

    let qmp = Qmp::connect(&path, t()).await.unwrap();
    assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);
    let mut events = qmp.events();
    let (status, b, c) =
        tokio::join!(qmp.query_status(), qmp.execute("cmd-b", Some(json!({"x": 1}))), qmp.execute("cmd-c", None));
    assert_eq!(status.unwrap(), VmStatus::Paused);
    match b {
        Err(QmpError::Command { class, desc }) => assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "boom")),
        other => panic!("cmd-b: {other:?}"),
    }
    assert_eq!(c.unwrap(), json!({"c": true}));

    let shutdown = tokio::time::timeout(t(), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.event == "SHUTDOWN" {
                return ev;
            }
            assert!(["STOP", "RESUME"].contains(&ev.event.as_str()), "unexpected event {ev:?}");
        }
    })
    .await
    .unwrap();
    assert_eq!(shutdown.data["reason"], "guest-shutdown");
    assert!(shutdown.timestamp.is_some());

    // QEMU goes away with a command pending: that call and every later one fail with Closed.
    let hang = qmp.execute("hang", None).await;
    assert!(matches!(hang, Err(QmpError::Closed)), "{hang:?}");
    server.await.unwrap();
    assert!(matches!(qmp.query_status().await, Err(QmpError::Closed)));
    assert!(matches!(qmp.wait_event("SHUTDOWN", t()).await, Err(QmpError::Closed)));
    assert!(qmp.is_closed());
    let mut late = qmp.events();
    assert!(matches!(late.recv().await, Err(tokio::sync::broadcast::error::RecvError::Closed)));
}

#[tokio::test]
async fn qmp_late_reply_after_a_timeout_is_not_taken_for_the_next_one() {
    let (_dir, path, server) = fake_qemu(|mut peer| async move {
        let slow = peer.recv().await;
        // Answer only once the client has given up and sent the next command.
        let next = peer.recv().await;
        peer.send_json(json!({"return": {"who": "slow"}, "id": slow["id"]})).await;
        peer.send_json(json!({"return": {"who": "next"}, "id": next["id"]})).await;
        peer.recv_raw().await // waits for the client to go away
    });
    let qmp = Qmp::connect(&path, t()).await.unwrap();
    let slow = qmp.execute_with_timeout("slow", None, Duration::from_millis(200)).await;
    assert!(matches!(slow, Err(QmpError::Timeout { .. })), "{slow:?}");
    assert_eq!(qmp.execute("next", None).await.unwrap(), json!({"who": "next"}));
    drop(qmp);
    assert!(server.await.unwrap().is_none());
}

#[tokio::test]
async fn qmp_powerdown_reports_whether_the_guest_shut_down() {
    let (_dir, path, server) = fake_qemu(|mut peer| async move {
        // A fast guest: SHUTDOWN even before the command's reply.
        let req = peer.recv().await;
        assert_eq!(req["execute"], "system_powerdown");
        peer.send_json(event("POWERDOWN", json!(null))).await;
        peer.send_json(event("SHUTDOWN", json!({"guest": true, "reason": "guest-shutdown"}))).await;
        peer.send_json(json!({"return": {}, "id": req["id"]})).await;
        // A guest that ignores the button.
        let req = peer.recv().await;
        peer.send_json(json!({"return": {}, "id": req["id"]})).await;
        peer.send_json(event("POWERDOWN", json!(null))).await;
        // A guest that resets instead (with -no-reboot QEMU then exits): not clean.
        let req = peer.recv().await;
        peer.send_json(json!({"return": {}, "id": req["id"]})).await;
        peer.send_json(event("SHUTDOWN", json!({"guest": true, "reason": "guest-reset"}))).await;
        peer.recv_raw().await
    });
    let qmp = Qmp::connect(&path, t()).await.unwrap();
    assert!(qmp.powerdown_with_timeout(t()).await.unwrap());
    let started = Instant::now();
    assert!(!qmp.powerdown_with_timeout(Duration::from_millis(300)).await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!qmp.powerdown_with_timeout(t()).await.unwrap());
    drop(qmp);
    assert!(server.await.unwrap().is_none());
}

#[tokio::test]
async fn qmp_connect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let err = Qmp::connect(&missing, Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");

    // Accepted but never greeted (e.g. another client holds QEMU's only QMP session).
    let (path, listener) = socket_in(&dir, "silent.sock");
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.recv_raw().await
    });
    let err = Qmp::connect(&path, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    assert!(server.await.unwrap().is_none());
}

/// The raw bytes of qemu-ga's reply to `guest-sync-delimited` with `sid`.
fn sync_reply(sid: u64) -> Vec<u8> {
    let mut v = vec![0xFF];
    v.extend_from_slice(format!("{{\"return\": {sid}}}\n").as_bytes());
    v
}

#[tokio::test]
async fn qga_resyncs_past_stale_data_on_the_0xff_delimiter() {
    let (_dir, path, server) = fake_server("qga.sock", |listener| async move {
        let mut peer = Peer::accept(&listener).await;
        let (delimited, sync) = peer.recv_raw().await.unwrap();
        assert!(delimited, "the sync request is preceded by 0xFF to reset the agent's parser");
        assert_eq!(sync["execute"], "guest-sync-delimited");
        let sid = sync["arguments"]["id"].as_u64().unwrap();
        // Stale output from an earlier client: replies, junk, an old sync reply; then ours,
        // split across writes.
        peer.send(b"{\"return\": {}, \"id\": 7}\ngarbage\n").await;
        peer.send(sync_reply(sid ^ 1)).await;
        peer.send(b"{\"return\": {\"pid\": 1}}\n").await;
        let ours = sync_reply(sid);
        peer.send(&ours[..4]).await;
        peer.writer.flush().await.unwrap();
        peer.send(&ours[4..]).await;

        // A command: a stale reply with another id first, then ours.
        let ping = peer.recv().await;
        assert_eq!(ping["execute"], "guest-ping");
        assert!(ping["id"].is_u64());
        peer.send_json(json!({"return": {"stale": true}, "id": "old"})).await;
        peer.send_json(json!({"return": {}, "id": ping["id"]})).await;

        // guest-exec: input-data is base64 of the bytes; the reply carries the pid.
        let exec = peer.recv().await;
        assert_eq!(exec["execute"], "guest-exec");
        let a = &exec["arguments"];
        assert_eq!(a["path"], "/bin/cat");
        assert_eq!(a["arg"], json!(["-"]));
        assert_eq!(a["env"], json!(["SECRET_KIND=test"]));
        assert_eq!(a["input-data"], "AP8BAmhp"); // [0, 255, 1, 2, 'h', 'i']
        assert_eq!(a["capture-output"], true);
        peer.send_json(json!({"return": {"pid": 4242}, "id": exec["id"]})).await;

        let st = peer.recv().await;
        assert_eq!(st["arguments"]["pid"], 4242);
        peer.send_json(json!({"return": {"exited": true, "exitcode": 3, "out-data": "AP8BAmhp",
            "err-data": "b29wcwo=", "err-truncated": true}, "id": st["id"]}))
            .await;

        let bad = peer.recv().await;
        peer.send_json(json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": bad["id"]})).await;

        // guest-shutdown: no reply on success. The next call resynchronises first.
        let shutdown = peer.recv().await;
        assert_eq!(shutdown["execute"], "guest-shutdown");
        assert_eq!(shutdown["arguments"]["mode"], "powerdown");
        let (delimited, sync) = peer.recv_raw().await.unwrap();
        assert!(delimited);
        peer.send(sync_reply(sync["arguments"]["id"].as_u64().unwrap())).await;
        let host = peer.recv().await;
        peer.send_json(json!({"return": {"host-name": "fake-guest"}, "id": host["id"]})).await;
        // Then the agent goes away.
    });

    let qga = Qga::connect(&path, t()).await.unwrap();
    qga.ping().await.unwrap();
    let input = [0, 255, 1, 2, b'h', b'i'];
    let cmd = GuestCommand { path: "/bin/cat", args: &["-"], env: &["SECRET_KIND=test"], input: Some(&input) };
    let pid = qga.exec(cmd, true).await.unwrap();
    assert_eq!(pid, 4242);
    let st = qga.exec_status(pid).await.unwrap();
    assert!(st.exited && !st.success());
    assert_eq!((st.exitcode, st.signal), (Some(3), None));
    assert_eq!(st.stdout, [0, 255, 1, 2, b'h', b'i']);
    assert_eq!(st.stderr, b"oops\n");
    assert!(st.truncated);
    let err = qga.execute("guest-nope", None).await.unwrap_err();
    assert!(matches!(&err, QgaError::Command { class, .. } if class == "CommandNotFound"), "{err:?}");
    qga.shutdown().await.unwrap();
    assert_eq!(qga.get_host_name().await.unwrap(), "fake-guest");
    server.await.unwrap();
    assert!(matches!(qga.ping().await, Err(QgaError::Closed)));
    assert!(matches!(qga.ping().await, Err(QgaError::Closed)));
}

#[tokio::test]
async fn qga_silent_agent_times_out_and_wait_ready_retries_until_it_answers() {
    let (dir, path, server) = fake_server("qga.sock", |listener| async move {
        // 1: an agent that is not up: the connection is open, nothing answers.
        let mut peer = Peer::accept(&listener).await;
        let mut unanswered = 0;
        while peer.recv_raw().await.is_some() {
            unanswered += 1;
        }
        assert!(unanswered >= 1);

        // 2: wait_ready: the agent comes up during the second sync attempt and answers
        // both syncs (as qemu-ga answers requests that waited in the channel).
        let mut peer = Peer::accept(&listener).await;
        let (_, first) = peer.recv_raw().await.unwrap();
        let (_, second) = peer.recv_raw().await.unwrap();
        peer.send(sync_reply(first["arguments"]["id"].as_u64().unwrap())).await;
        peer.send(sync_reply(second["arguments"]["id"].as_u64().unwrap())).await;

        // 3: a call that times out; the next call resyncs and skips the late reply.
        let slow = peer.recv().await;
        assert_eq!(slow["execute"], "guest-ping");
        let (delimited, sync) = peer.recv_raw().await.unwrap();
        assert!(delimited && sync["execute"] == "guest-sync-delimited", "expected a resync, got {sync}");
        peer.send_json(json!({"return": {}, "id": slow["id"]})).await;
        peer.send(sync_reply(sync["arguments"]["id"].as_u64().unwrap())).await;
        let next = peer.recv().await;
        peer.send_json(json!({"return": {"host-name": "h"}, "id": next["id"]})).await;
        peer.recv_raw().await
    });

    let started = Instant::now();
    let err = Qga::connect(&path, Duration::from_millis(400)).await.unwrap_err();
    assert!(matches!(err, QgaError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < herd_test_support::scaled(Duration::from_secs(2)));

    let qga = Qga::wait_ready(&path, Duration::from_secs(10)).await.unwrap().with_timeout(Duration::from_millis(300));
    let slow = qga.ping().await;
    assert!(matches!(slow, Err(QgaError::Timeout { .. })), "{slow:?}");
    let qga = qga.with_timeout(t());
    assert_eq!(qga.get_host_name().await.unwrap(), "h");
    drop(qga);
    assert!(server.await.unwrap().is_none());

    let err = Qga::wait_ready(&dir.path().join("missing.sock"), Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, QgaError::Connect { .. } | QgaError::Timeout { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// A real QEMU.

/// The QEMU process and its temp dir; killed and removed on drop (also when a check fails,
/// then printing the end of the guest console).
struct Vm {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Vm {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits (bounded) for QEMU to exit and returns whether it exited successfully.
    async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("QEMU already reaped");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.success();
            }
            assert!(Instant::now() < deadline, "QEMU did not exit within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for name in ["console.log", "qemu.out"] {
                let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("----- {name} (last lines) -----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// `$HERD_TESTGUEST_OUT` (default `target/testguest`), brought up to date with
/// `images/testguest/build.sh` (cached: a no-op rerun takes a fraction of a second, a cold
/// build about 20 s). When the images exist but the build cannot run here, they are used as
/// they are.
fn testguest_out() -> PathBuf {
    let out = herd_test_support::testguest_dir();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/testguest/build.sh");
    let built = Command::new(&build).arg(&out).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let have = out.join("1.0.0/initrd.img").is_file();
    match built {
        Ok(s) if s.success() => {}
        _ if have => eprintln!("warning: {} {} failed; using the images as they are", build.display(), out.display()),
        other => panic!("{} {} failed: {other:?}", build.display(), out.display()),
    }
    out
}

fn start_qemu(image: &Path) -> Vm {
    start_qemu_with(image, "")
}

/// `netdev_extra` is appended to the user-networking netdev (e.g. `,hostfwd=...`).
fn start_qemu_with(image: &Path, netdev_extra: &str) -> Vm {
    let dir = tempfile::Builder::new().prefix("herd-qemu-clients.").tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("qemu.out")).unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let child = support::direct_boot(image, &dir.path().join("console.log"))
        .args(["-qmp", &format!("unix:{},server=on,wait=off", p("qmp.sock"))])
        .args(["-device", "virtio-serial"])
        .args(["-chardev", &format!("socket,path={},server=on,wait=off,id=qga0", p("qga.sock"))])
        .args(["-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"])
        .args(["-netdev", &format!("user,id=n0{netdev_extra}"), "-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start qemu-system-x86_64");
    Vm { child: Some(child), dir }
}

/// `len` bytes: every byte value first, then xorshift noise.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if i < 256 {
                return i as u8;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn boots_the_test_guest_over_qmp_and_qga() {
    let t0 = Instant::now();
    let out = testguest_out();
    let mut vm = start_qemu(&out.join("1.0.0"));
    let step = |what: &str| eprintln!("[{:5.1}s] {what}", t0.elapsed().as_secs_f64());
    const NO_ENV: &[&str] = &[];
    const NO_ARGS: &[&str] = &[];

    // QMP: connect (retries until QEMU has created the socket) and status.
    let qmp = Qmp::connect(&vm.path("qmp.sock"), scaled(Duration::from_secs(10))).await.unwrap();
    let mut events = qmp.events();
    assert_eq!(qmp.query_status().await.unwrap(), VmStatus::Running);
    step("QMP connected, VM running");

    // QGA: the guest boots while wait_ready resends the sync.
    let qga = Qga::wait_ready(&vm.path("qga.sock"), scaled(Duration::from_secs(60))).await.unwrap();
    step("guest agent ready");
    qga.ping().await.unwrap();

    let st = qga.run("/bin/cat", &["/etc/herd-image-version"], NO_ENV, None, t()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "1.0.0");
    assert_eq!((st.exited, st.exitcode, st.signal, st.truncated), (true, Some(0), None, false));
    assert!(st.stderr.is_empty());

    // stdin round trip, small and 100 KiB (every byte value included).
    let small = b"secret\0\xff\nline two".to_vec();
    let st = qga.run("/bin/cat", NO_ARGS, NO_ENV, Some(&small), t()).await.unwrap();
    assert!(st.success());
    assert_eq!(st.stdout, small);
    let big = payload(100 * 1024, 0x5eed);
    let st = qga.run("/bin/cat", NO_ARGS, NO_ENV, Some(&big), scaled(Duration::from_secs(60))).await.unwrap();
    assert!(st.success() && !st.truncated);
    assert_eq!(st.stdout.len(), big.len());
    assert!(st.stdout == big, "100 KiB stdin did not round-trip");
    // The environment, when given, replaces the agent's.
    let st = qga.run("/bin/sh", &["-c", "echo \"$HERD_X\""], &["HERD_X=from-env"], None, t()).await.unwrap();
    assert_eq!(st.stdout, b"from-env\n");
    step("guest-exec: stdin/stdout round trips");

    let st = qga.run("/bin/sh", &["-c", "echo to-stderr >&2; exit 3"], NO_ENV, None, t()).await.unwrap();
    assert_eq!((st.exited, st.exitcode, st.signal), (true, Some(3), None));
    assert_eq!(st.stderr, b"to-stderr\n");
    assert!(st.stdout.is_empty());
    let err = qga.run("/nonexistent/cmd", NO_ARGS, NO_ENV, None, t()).await.unwrap_err();
    assert!(matches!(err, QgaError::Command { .. }), "{err:?}");

    // Files: 200 KiB of binary data both ways (several chunks), mode applied.
    let blob = payload(200 * 1024, 0xb10b);
    qga.write_file("/tmp/herd-blob", &blob, Some(0o600)).await.unwrap();
    let back = qga.read_file("/tmp/herd-blob").await.unwrap();
    assert_eq!(back.len(), blob.len());
    assert!(back == blob, "200 KiB file did not round-trip");
    let st = qga.run("/bin/stat", &["-c", "%a %s", "/tmp/herd-blob"], NO_ENV, None, t()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), format!("600 {}", blob.len()));
    qga.write_file("/tmp/herd-empty", b"", None).await.unwrap();
    assert!(qga.read_file("/tmp/herd-empty").await.unwrap().is_empty());
    let err = qga.read_file("/nonexistent/file").await.unwrap_err();
    assert!(matches!(err, QgaError::Command { .. }), "{err:?}");
    step("guest files: 200 KiB round trip");

    assert_eq!(qga.get_host_name().await.unwrap(), "herd-guest");

    // No spurious events: nothing but the NIC's filter change during boot, no replies.
    let seen = drain(&mut events);
    for ev in &seen {
        assert!(["NIC_RX_FILTER_CHANGED", "RTC_CHANGE"].contains(&ev.event.as_str()), "spurious event {ev:?}");
    }
    assert_eq!(qmp.query_status().await.unwrap(), VmStatus::Running);

    // The ACPI power button (busybox acpid in the guest) powers the guest off cleanly: the
    // SHUTDOWN event says "guest-shutdown", well before the timeout, and QEMU exits.
    let pressed = Instant::now();
    assert!(qmp.powerdown_with_timeout(scaled(Duration::from_secs(30))).await.unwrap(), "guest did not power off");
    assert!(pressed.elapsed() < scaled(Duration::from_secs(15)), "power-off took {:?}", pressed.elapsed());
    let seen = drain(&mut events);
    assert!(seen.iter().any(|e| e.event == "POWERDOWN"), "{seen:?}");
    step("system_powerdown: guest powered off");
    assert!(vm.wait_exit(Duration::from_secs(30)).await, "QEMU exited with an error");
    step("guest powered off, QEMU exited");

    // QEMU is gone: calls fail with Closed.
    assert!(matches!(qmp.query_status().await, Err(QmpError::Closed)));
    assert!(matches!(qmp.system_powerdown().await, Err(QmpError::Closed)));
    assert!(matches!(qmp.wait_event("SHUTDOWN", t()).await, Err(QmpError::Closed)));
    assert!(matches!(qga.ping().await, Err(QgaError::Closed)), "agent call after QEMU exit");
    step("done");
}

/// QEMU's user networking accepts a forwarded connection on the host side whether or not the
/// guest listens, so a Tcp probe must count the immediate close as down; once a server really
/// listens in the guest, the same probe passes.
#[tokio::test]
async fn tcp_probe_through_user_networking_needs_a_real_listener_in_the_guest() {
    let out = testguest_out();
    let host: std::net::IpAddr = "127.3.77.1".parse().unwrap();
    let vm = start_qemu_with(&out.join("1.0.0"), ",hostfwd=tcp:127.3.77.1:18181-:8080");
    let qga =
        Qga::wait_ready(&vm.dir.path().join("qga.sock"), scaled(Duration::from_secs(90))).await.expect("guest agent");
    let probe = herd_lb::Probe { interval: Duration::from_secs(1), ..herd_lb::Probe::tcp(18181) };
    let closed = herd_lb::probe::probe_once(&probe, host).await;
    assert!(closed.is_err(), "nothing listens on the guest's port 8080, yet the probe passed");
    let st = qga
        .run("busybox", &["httpd", "-p", "8080", "-h", "/tmp"], &[] as &[&str], None, scaled(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(st.success(), "httpd started in the guest: {}", String::from_utf8_lossy(&st.stderr));
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    loop {
        if herd_lb::probe::probe_once(&probe, host).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the probe never passed with httpd listening in the guest");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(vm);
}
