//! The NoCloud seed image checked by the tools that will read it for real: `fsck.fat`
//! (dosfstools), `mdir`/`mtype`/`mcopy` (mtools), `blkid` (util-linux), cloud-init itself (its
//! schema checker and its NoCloud data source, fed with the files copied out of the image), and
//! the herd test guest booted under QEMU with the seed as a virtio disk.
//!
//! A test whose tool is missing fails naming the package and `./scripts/test.sh`, which
//! installs it. The boot tests need `qemu-system-x86_64` and the test guest
//! (`images/testguest/build.sh`, built into `$HERD_TESTGUEST_OUT`, default `target/testguest`);
//! they take about 10 s each under TCG.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herd_driver_qemu::seed::{
    build_vfat, meta_data, network_config_dhcp, network_config_dhcp_mac, user_data, write_seed, SeedFiles,
    UserDataInput,
};
use serde_json::Value;

use herd_test_support::{install_hint, require_tool, scaled};

mod support;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Text of `len` bytes, lines of printable ASCII, so every cluster's content differs.
fn filler(len: usize) -> String {
    let mut s = String::with_capacity(len);
    let mut i = 0usize;
    while s.len() < len {
        let line = format!("# line {i:07} {}\n", "abcdefghijklmnopqrstuvwxyz".repeat(2));
        s.push_str(&line);
        i += 1;
    }
    s.truncate(len);
    s
}

fn keys() -> Vec<String> {
    vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHerdTestKeyOnlyNotARealKey0123456789abcd herd@test".to_string()]
}

/// A typical seed: cloud-config for `azureuser`, network-config.
fn typical() -> SeedFiles {
    let keys = keys();
    SeedFiles {
        meta_data: meta_data("i-0001", "seedtest"),
        user_data: user_data(&UserDataInput {
            admin_username: "azureuser",
            password_hash: Some("$6$rounds=4096$saltsalt$notarealhash"),
            ssh_keys: &keys,
            custom_data: None,
            hostname: "seedtest",
        }),
        network_config: Some(network_config_dhcp()),
    }
}

/// Seeds of every shape the image builder has: small, no network-config, empty user-data,
/// 512 KiB of multi-cluster user-data (512-byte clusters), 3 MiB (1 KiB clusters).
fn variants() -> Vec<(&'static str, SeedFiles)> {
    let t = typical();
    vec![
        ("typical", t.clone()),
        ("no-network-config", SeedFiles { network_config: None, ..t.clone() }),
        ("empty-user-data", SeedFiles { user_data: String::new(), ..t.clone() }),
        ("512k", SeedFiles { user_data: filler(512 * 1024 - 700), ..t.clone() }),
        ("3m", SeedFiles { user_data: filler(3 * 1024 * 1024), ..t }),
    ]
}

fn write_variant(dir: &Path, name: &str, files: &SeedFiles) -> PathBuf {
    let path = dir.join(format!("{name}.img"));
    write_seed(&path, files).unwrap();
    path
}

/// Writes each of [`variants`] as an image in `dir` and runs `check` on its name, files and
/// image path.
fn for_each_variant_image(dir: &Path, mut check: impl FnMut(&str, &SeedFiles, PathBuf)) {
    for (name, files) in variants() {
        check(name, &files, write_variant(dir, name, &files));
    }
}

#[test]
fn fsck_fat_reports_no_errors() {
    let fsck = require_tool("fsck.fat", "dosfstools");
    let dir = tempfile::tempdir().unwrap();
    for_each_variant_image(dir.path(), |name, files, img| {
        let out = run(Command::new(&fsck).arg("-n").arg(&img));
        let text = stdout(&out);
        assert!(out.status.success(), "{name}: fsck.fat failed:\n{text}");
        // Only the version line and the summary ("N files, used/total clusters").
        assert_eq!(text.lines().count(), 2, "{name}: unexpected fsck.fat output:\n{text}");
        // fsck.fat counts the volume label entry as a file.
        let files_count = if files.network_config.is_some() { 4 } else { 3 };
        assert!(text.contains(&format!(": {files_count} files, ")), "{name}: {text}");
    });

    // The same check on a broken image fails: the test can tell.
    let mut broken = build_vfat(&typical()).unwrap();
    broken[512 + 3] = 0x00; // FAT copy 1, cluster 2 (meta-data) marked free
    let img = dir.path().join("broken.img");
    fs::write(&img, &broken).unwrap();
    let out = run(Command::new(&fsck).arg("-n").arg(&img));
    assert!(!out.status.success() || stdout(&out).lines().count() > 2, "fsck.fat missed a broken FAT");
}

#[test]
fn mtools_sees_long_names_and_reads_content_back() {
    let (mdir, mtype) = (require_tool("mdir", "mtools"), require_tool("mtype", "mtools"));
    let dir = tempfile::tempdir().unwrap();
    for_each_variant_image(dir.path(), |name, files, img| {
        let listing = stdout(&run(Command::new(&mdir).arg("-i").arg(&img).arg("::")));
        assert!(listing.contains("Volume in drive : is CIDATA"), "{name}: {listing}");
        // mdir shows "SHORT    EXT  size date time  long-name".
        for (short, long) in [("META-D~1", "meta-data"), ("USER-D~1", "user-data")] {
            let line = listing.lines().find(|l| l.starts_with(short)).unwrap_or_else(|| panic!("{name}: {listing}"));
            assert!(line.ends_with(&format!(" {long}")), "{name}: {line}");
        }
        assert_eq!(listing.contains("network-config"), files.network_config.is_some(), "{name}: {listing}");

        let mut contents = vec![("meta-data", &files.meta_data), ("user-data", &files.user_data)];
        if let Some(nc) = &files.network_config {
            contents.push(("network-config", nc));
        }
        for (file, want) in contents {
            let out = run(Command::new(&mtype).arg("-i").arg(&img).arg(format!("::{file}")).stderr(Stdio::null()));
            assert!(out.status.success(), "{name}: mtype {file}");
            assert!(
                out.stdout == want.as_bytes(),
                "{name}: {file} differs ({} vs {} bytes)",
                out.stdout.len(),
                want.len()
            );
        }
    });
}

#[test]
fn blkid_reads_label_cidata() {
    let blkid = require_tool("blkid", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    for_each_variant_image(dir.path(), |name, _, img| {
        for tag in ["LABEL", "TYPE"] {
            let out = run(Command::new(&blkid).args(["-p", "-o", "value", "-s", tag]).arg(&img));
            let value = stdout(&out).trim().to_string();
            assert_eq!(value, if tag == "LABEL" { "CIDATA" } else { "vfat" }, "{name}: {tag}");
        }
        // blkid (not low-level probing) too: what findfs/cloud-init's find_devs_with use.
        let out = run(Command::new(&blkid).args(["-o", "value", "-s", "LABEL"]).arg(&img));
        assert_eq!(stdout(&out).trim(), "CIDATA", "{name}");
    });
}

#[test]
fn cloud_init_schema_accepts_plain_user_data() {
    let cloud_init = require_tool("cloud-init", "cloud-init");
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let nasty = "ssh-rsa AAAA \"quoted\" \\ back\nslash: [x]\t# not a comment é";
    let all_keys = [keys.clone(), vec![nasty.to_string()]].concat();
    let cases = [
        ("with-password", Some("$6$salt$hash"), &keys[..]),
        ("keys-only", None, &all_keys[..]),
        ("nothing", None, &[][..]),
    ];
    for (name, password_hash, ssh_keys) in cases {
        let ud = user_data(&UserDataInput {
            admin_username: "azureuser",
            password_hash,
            ssh_keys,
            custom_data: None,
            hostname: "seedtest",
        });
        let file = dir.path().join(format!("{name}.yaml"));
        fs::write(&file, &ud).unwrap();
        let out = run(Command::new(&cloud_init).arg("schema").arg("--config-file").arg(&file));
        assert!(out.status.success(), "{name}: cloud-init schema rejected:\n{ud}");
        assert!(stdout(&out).contains("Valid cloud-config"), "{name}");
    }
    // The checker does reject a wrong document: the test can fail.
    let bad = dir.path().join("bad.yaml");
    fs::write(&bad, "#cloud-config\nusers:\n  - name: x\n    lock_passwd: \"no\"\n").unwrap();
    let out = run(Command::new(&cloud_init).arg("schema").arg("--config-file").arg(&bad));
    assert!(!out.status.success(), "cloud-init schema accepted an invalid document");
}

/// cloud-init's own Python (the interpreter of the `cloud-init` script), which must import
/// `cloudinit`.
fn cloud_init_python() -> String {
    let path = require_tool("cloud-init", "cloud-init");
    let script = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let interp = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{} has no #! line naming its Python", path.display()))
        .to_string();
    let ok = Command::new(&interp).args(["-c", "import cloudinit"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{interp} (cloud-init's interpreter) cannot import cloudinit: {}", install_hint("cloud-init"));
    interp
}

/// Reads a seed directory with cloud-init's NoCloud data source (devices off), processes the
/// user-data as cloud-init does (MIME parts, merging of cloud-config parts), validates the
/// merged cloud-config against the schema and parses the network-config; prints JSON.
const NOCLOUD_PY: &str = r#"
import json, sys, tempfile
from cloudinit import handlers, helpers, util
from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.net import eni, netplan, network_state
import yaml
from cloudinit.sources.DataSourceNoCloud import DataSourceNoCloud
from cloudinit.user_data import UserDataProcessor

cloud_dir = sys.argv[1]
paths = helpers.Paths({"cloud_dir": cloud_dir, "run_dir": tempfile.mkdtemp()})
ds = DataSourceNoCloud({"datasource": {"NoCloud": {"fs_label": None}}}, None, paths)
assert ds._get_data(), "NoCloud found no seed"
raw = ds.userdata_raw
msg = UserDataProcessor(paths).process(raw)
cc = CloudConfigPartHandler(paths)
cc.handle_part(None, handlers.CONTENT_START, None, None, None, None)
parts = []
for part in msg.walk():
    if part.get_content_maintype() == "multipart":
        continue
    ctype = part.get_content_type()
    payload = util.fully_decoded_payload(part)
    if isinstance(payload, bytes):
        payload = payload.decode()
    parts.append({"type": ctype, "payload": payload})
    if ctype == "text/cloud-config":
        cc.handle_part(None, ctype, part.get_filename() or "part", payload, None, dict(part))
config = cc.cloud_buf
schema_error = None
try:
    validate_cloudconfig_schema(config or {}, get_schema(), strict=True)
except Exception as e:
    schema_error = str(e)
network = None
if ds._network_config:
    # What netplan gets (the v2 document passed through) and what ifupdown gets.
    cfg = ds._network_config
    netplan_yaml = netplan.Renderer({})._render_content(
        network_state.parse_net_config_data(cfg, renderer=netplan.Renderer({})))
    eni_text = eni.Renderer({})._render_interfaces(network_state.parse_net_config_data(cfg))
    network = {"netplan": yaml.safe_load(netplan_yaml), "eni": eni_text}
print(json.dumps({"seed": ds.seed, "metadata": ds.metadata, "parts": parts, "config": config,
                  "schema_error": schema_error, "network": network}, default=str))
"#;

/// Copies the seed files out of `img` with mcopy into `<cloud_dir>/seed/nocloud/` and runs
/// [`NOCLOUD_PY`] on it.
fn cloud_init_reads(python: &str, mcopy: &Path, img: &Path, dir: &Path) -> Value {
    let cloud_dir = dir.join("cloud");
    let seed = cloud_dir.join("seed").join("nocloud");
    fs::create_dir_all(&seed).unwrap();
    let out = run(Command::new(mcopy).arg("-n").arg("-i").arg(img).args(["::meta-data", "::user-data"]).arg(&seed));
    assert!(out.status.success());
    if run(Command::new(mcopy).arg("-n").arg("-i").arg(img).arg("::network-config").arg(&seed)).status.success() {
        assert!(seed.join("network-config").is_file());
    }
    let script = dir.join("nocloud.py");
    fs::write(&script, NOCLOUD_PY).unwrap();
    let out = run(Command::new(python).arg(&script).arg(&cloud_dir));
    assert!(out.status.success(), "cloud-init python failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cloud_init_nocloud_reads_the_seed_and_merges_custom_data() {
    let python = cloud_init_python();
    let mcopy = require_tool("mcopy", "mtools");
    let keys = keys();
    let input = |custom| UserDataInput {
        admin_username: "azureuser",
        password_hash: Some("$6$salt$hash"),
        ssh_keys: &keys,
        custom_data: custom,
        hostname: "seedtest",
    };
    let files = |custom| SeedFiles {
        meta_data: meta_data("i-\"0001\"", "seedtest"),
        user_data: user_data(&input(custom)),
        network_config: Some(network_config_dhcp()),
    };

    // 1. Plain cloud-config.
    let dir = tempfile::tempdir().unwrap();
    let img = write_variant(dir.path(), "plain", &files(None));
    let v = cloud_init_reads(&python, &mcopy, &img, dir.path());
    assert_eq!(v["metadata"]["instance-id"], "i-\"0001\"");
    assert_eq!(v["metadata"]["local-hostname"], "seedtest");
    assert_eq!(v["schema_error"], Value::Null, "{v:#}");
    // netplan gets the glob; ifupdown (no glob support in cloud-init) configures eth0.
    assert_eq!(
        v["network"]["netplan"],
        serde_json::json!({"network": {"version": 2, "ethernets": {"eth0": {"match": {"name": "e*"}, "dhcp4": true}}}})
    );
    assert!(v["network"]["eni"].as_str().unwrap().contains("auto eth0\niface eth0 inet dhcp\n"), "{v:#}");
    let c = &v["config"];
    assert_eq!(c["hostname"], "seedtest");
    assert_eq!(c["ssh_pwauth"], true);
    let users = c["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["name"], "azureuser");
    assert_eq!(users[0]["sudo"], "ALL=(ALL) NOPASSWD:ALL");
    assert_eq!(users[0]["shell"], "/bin/bash");
    assert_eq!(users[0]["lock_passwd"], false);
    assert_eq!(users[0]["passwd"], "$6$salt$hash");
    assert_eq!(users[0]["ssh_authorized_keys"], serde_json::json!(keys));

    // 1b. MAC-matched network-config.
    let dir = tempfile::tempdir().unwrap();
    let mac_files = SeedFiles { network_config: Some(network_config_dhcp_mac("52:54:00:AB:cd:01")), ..files(None) };
    let img = write_variant(dir.path(), "mac", &mac_files);
    let v = cloud_init_reads(&python, &mcopy, &img, dir.path());
    assert_eq!(
        v["network"]["netplan"]["network"]["ethernets"]["eth0"],
        serde_json::json!({"match": {"macaddress": "52:54:00:ab:cd:01"}, "dhcp4": true}),
        "{v:#}"
    );

    // 2. Custom cloud-config: its lists are extended with our user, its scalars win.
    let custom_cc = "#cloud-config\nhostname: custom-host\nusers:\n  - name: bob\n    shell: /bin/sh\n\
                     runcmd:\n  - [echo, \"a \\\"quoted\\\" arg\"]\n  - |\n    echo line1\n    echo line2\n";
    let dir = tempfile::tempdir().unwrap();
    let img = write_variant(dir.path(), "custom-cc", &files(Some(custom_cc)));
    let v = cloud_init_reads(&python, &mcopy, &img, dir.path());
    let types: Vec<&str> = v["parts"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["text/cloud-config", "text/cloud-config"]);
    assert_eq!(v["parts"][0]["payload"], custom_cc, "custom data arrives byte for byte");
    assert_eq!(v["schema_error"], Value::Null, "{v:#}");
    let c = &v["config"];
    assert_eq!(c["hostname"], "custom-host", "custom data wins for scalars");
    let names: Vec<&str> = c["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bob", "azureuser"], "our admin is appended to the custom users");
    assert_eq!(c["users"][1]["ssh_authorized_keys"], serde_json::json!(keys));
    assert_eq!(c["runcmd"][0], serde_json::json!(["echo", "a \"quoted\" arg"]));
    assert_eq!(c["runcmd"][1], "echo line1\necho line2\n");

    // 3. Custom shell script: a script part next to our cloud-config.
    let script = "#!/bin/sh\necho \"it's\" \\\n  here\n";
    let dir = tempfile::tempdir().unwrap();
    let img = write_variant(dir.path(), "custom-sh", &files(Some(script)));
    let v = cloud_init_reads(&python, &mcopy, &img, dir.path());
    let types: Vec<&str> = v["parts"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["text/x-shellscript", "text/cloud-config"]);
    assert_eq!(v["parts"][0]["payload"], script);
    assert_eq!(v["config"]["users"][0]["name"], "azureuser");
    assert_eq!(v["schema_error"], Value::Null, "{v:#}");

    // 4. Custom data that is itself MIME multipart: its parts are unpacked.
    let mime = "Content-Type: multipart/mixed; boundary=\"XYZ\"\nMIME-Version: 1.0\n\n--XYZ\n\
                Content-Type: text/x-shellscript\n\n#!/bin/sh\necho inner\n--XYZ\n\
                Content-Type: text/cloud-config\n\n#cloud-config\nruncmd: [inner]\n--XYZ--\n";
    let dir = tempfile::tempdir().unwrap();
    let img = write_variant(dir.path(), "custom-mime", &files(Some(mime)));
    let v = cloud_init_reads(&python, &mcopy, &img, dir.path());
    let types: Vec<&str> = v["parts"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["text/x-shellscript", "text/cloud-config", "text/cloud-config"], "{v:#}");
    assert_eq!(v["config"]["runcmd"], serde_json::json!(["inner"]));
    assert_eq!(v["config"]["users"][0]["name"], "azureuser");
}

// --- boot -------------------------------------------------------------------------------------

static GUEST_BUILD: Mutex<()> = Mutex::new(());

/// The built test guest (`vmlinuz`, `initrd.img`, `cmdline`), building it when absent; a
/// failed build fails the test with the install hint.
fn test_guest() -> PathBuf {
    let _one_build = GUEST_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let out = herd_test_support::testguest_dir();
    let dir = out.join("1.0.0");
    let ready = |d: &Path| ["vmlinuz", "initrd.img", "cmdline"].iter().all(|f| d.join(f).is_file());
    if !ready(&dir) {
        let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/testguest/build.sh");
        eprintln!("building the test guest: {} {}", build.display(), out.display());
        let status = Command::new(&build).arg(&out).status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "{} {} failed ({status:?}): {}",
            build.display(),
            out.display(),
            install_hint("the test guest's build tools")
        );
    }
    herd_test_support::require_testguest("1.0.0")
}

/// A QEMU process, killed and reaped when dropped (also when a test panics).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the test guest with `seed` as a read-only virtio disk and waits (at most 90 s times
/// `HERD_TEST_TIME_SCALE`) until
/// the serial console shows every one of `wanted`; returns the console log.
fn boot_until(guest: &Path, seed: &Path, dir: &Path, wanted: &[&str]) -> String {
    let log = dir.join("console.log");
    let child = support::direct_boot(guest, &log)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,readonly=on", seed.display()))
        .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut qemu = Qemu(child);
    let start = Instant::now();
    let limit = scaled(Duration::from_secs(90));
    let deadline = start + limit;
    loop {
        let text = fs::read(&log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            eprintln!("guest reached {wanted:?} after {:.1} s", start.elapsed().as_secs_f64());
            return text;
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = qemu.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("QEMU exited ({status}) before {wanted:?}:\n{err}\n--- console ---\n{text}");
        }
        assert!(Instant::now() < deadline, "no {wanted:?} within {limit:?}; console:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// QEMU and the built test guest, or a failure naming what is missing and how to get it.
fn boot_prerequisites() -> PathBuf {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    test_guest()
}

#[test]
fn test_guest_boots_with_script_user_data() {
    let guest = boot_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    // Padded past 4 clusters: the last line runs only if Linux's vfat read the whole chain.
    let mut script = String::from("#!/bin/sh\n");
    script.push_str(&filler(4 * 512 + 100));
    script.push_str(
        "\nS=/var/lib/cloud/seed/nocloud\n\
         echo \"SEED-SCRIPT-RAN instance=$(cat /run/herd/instance-id) findfs=$(findfs LABEL=CIDATA) \
         ud=$(wc -c <$S/user-data) nc=$(wc -c <$S/network-config)\"\n",
    );
    let files = SeedFiles {
        meta_data: meta_data("i-seedtest", "seedtest"),
        user_data: script.clone(),
        network_config: Some(network_config_dhcp()),
    };
    let seed = dir.path().join("seed.img");
    write_seed(&seed, &files).unwrap();
    let log = boot_until(
        &guest,
        &seed,
        dir.path(),
        &["HERD-GUEST-READY hostname=seedtest ", "HERD-USERDATA-DONE name=user-data rc=0"],
    );
    let want = format!(
        "SEED-SCRIPT-RAN instance=i-seedtest findfs=/dev/vda ud={} nc={}",
        script.len(),
        network_config_dhcp().len()
    );
    assert!(log.contains(&want), "no {want:?} in:\n{log}");
    assert!(log.contains("seed: /dev/vda (vfat)"), "{log}");
}

#[test]
fn test_guest_boots_with_cloud_config_user_data() {
    let guest = boot_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    // meta-data says one hostname, user-data another: the guest (like cloud-init) takes the
    // cloud-config's, which shows it parsed our user-data.
    let files = SeedFiles {
        meta_data: meta_data("i-seedtest-cc", "seedtest"),
        user_data: user_data(&UserDataInput {
            admin_username: "azureuser",
            password_hash: Some("$6$salt$hash"),
            ssh_keys: &keys,
            custom_data: None,
            hostname: "seedtest-cc",
        }),
        network_config: None,
    };
    let seed = dir.path().join("seed.img");
    write_seed(&seed, &files).unwrap();
    let log = boot_until(&guest, &seed, dir.path(), &["HERD-GUEST-READY hostname=seedtest-cc "]);
    assert!(log.contains("user: created azureuser"), "{log}");
}
