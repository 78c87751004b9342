//! The QEMU command line of one VM, as a pure function of its [`VmSpec`] and paths.
//!
//! Why a pure function: the command line decides everything the guest sees (machine, disks,
//! NIC, forwarded ports, channels) and everything the host can later find out about the VM
//! (the argv marker), so it is built in one place and table-tested without starting QEMU.
//!
//! - `-name herd:<tag id>:<group>/<set>/<id>`: the marker. The tag id is a 64-bit FNV-1a hash
//!   of the driver's tag in hex (the tag is a path and may hold any character; the hash is
//!   argv-safe), so `/proc/*/cmdline` tells which server and which instance a QEMU belongs to,
//!   even when its directory is gone. The argv holds no secret.
//! - `-daemonize -pidfile qemu.pid`: the QEMU we run returns once the VM is set up, with exit
//!   status 0, or prints why it could not (a port already bound, a missing kernel) and exits 1;
//!   the VM itself is reparented to init and survives the server.
//! - `-D qemu.log -d plugin`: a daemonized QEMU sends its stderr to `/dev/null` unless logging
//!   is enabled; `plugin` output exists only with TCG plugins (none are loaded), so this only
//!   keeps QEMU's own messages (`terminating on signal 15 from pid …`, I/O errors) in
//!   `qemu.log`, and nothing a guest does can grow that file (`guest_errors` or `unimp` would
//!   let it). QEMU truncates the file when it starts. Only when this QEMU knows the item
//!   (built with plugin support, see [`supports_plugin_log`]); otherwise `qemu.log` holds
//!   just what QEMU said before it daemonized (startup errors).
//! - `-machine pc`, `-nodefaults`: only the devices listed here. Disks, NIC, serial channel and
//!   RNG are virtio; the OS disk has `bootindex=0` for disk images; data disks carry the serial
//!   `herd-lun-<lun>` (`/dev/disk/by-id/virtio-herd-lun-<lun>` in the guest).
//! - Serial console: a file chardev with `append=on` (`console.log` spans boots).
//! - User networking with one `hostfwd=tcp:<reach address>:<port>-:<port>` per forwarded port;
//!   the guest reaches the host's loopback services at 10.0.2.2 (QEMU's default).
//! - The instance metadata endpoint ([`add_metadata_forward`]): a
//!   `guestfwd=tcp:10.0.2.100:80-cmd:'<herd>' metadata-relay '<endpoint>'` on the same netdev,
//!   so the guest reaches its own metadata service at `http://10.0.2.100/metadata/...`. QEMU
//!   runs the relay once per guest connection with the connection on its stdin and stdout
//!   (the `-tcp:` form would connect once at startup and carry one stream only). Why not
//!   Azure's 169.254.169.254: QEMU's user network only forwards guest addresses inside its
//!   virtual network (10.0.2.0/24 by default) and refuses the option otherwise ("Conflicting/
//!   invalid host:port in guest forwarding rule"). [`MetadataGuestAddress::LinkLocal`] gets
//!   the Azure address by moving the whole user network to `net=169.254.169.0/24` (the host
//!   is then 169.254.169.2, not 10.0.2.2), so it is a choice, not the default.

use crate::accel::Accel;
use crate::vm_dir::{VmDir, VmSpec};
use herd_model::image::ImageSource;
use herd_model::InstanceKey;

/// The kernel command line for kernel images that bring none.
pub(crate) const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// The marker prefix of every QEMU this tag starts: `herd:<16 hex digits>:`.
pub(crate) fn marker_prefix(tag: &str) -> String {
    format!("herd:{:016x}:", herd_driver::stable_hash(tag))
}

/// A stable, locally administered unicast MAC for `key` (see `herd_hostnet::mac_for`: the
/// same MAC the instance's DHCP reservation names).
pub(crate) fn mac_for(key: &InstanceKey) -> String {
    herd_hostnet::mac_for(&key.path())
}

/// The guest ports forwarded from the reach address: the spec's and the driver's extra ports,
/// deduplicated and sorted.
pub(crate) fn forwarded_ports(spec_ports: &[u16], extra: &[u16]) -> Vec<u16> {
    let mut ports: Vec<u16> = spec_ports.iter().chain(extra).copied().filter(|p| *p != 0).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Whether `qemu -d help` lists the `plugin` log item (QEMU built with TCG plugin support).
pub(crate) fn supports_plugin_log(qemu: &std::path::Path) -> bool {
    std::process::Command::new(qemu)
        .args(["-d", "help"])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split_whitespace().next() == Some("plugin"))
        })
}

/// A value inside a QEMU `key=value,...` option: commas are doubled.
fn opt(s: &str) -> String {
    s.replace(',', ",,")
}

fn path_opt(p: &std::path::Path) -> String {
    opt(&p.to_string_lossy())
}

/// Where the guest finds its metadata endpoint (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetadataGuestAddress {
    /// `http://10.0.2.100/metadata`, inside QEMU's default network: nothing else changes.
    #[default]
    InDefaultNetwork,
    /// Azure's `http://169.254.169.254/metadata`: the user network becomes 169.254.169.0/24
    /// (guest 169.254.169.15, host 169.254.169.2, DNS 169.254.169.3).
    LinkLocal,
}

impl MetadataGuestAddress {
    /// The address the guest connects to (port 80).
    pub fn ip(self) -> std::net::Ipv4Addr {
        match self {
            Self::InDefaultNetwork => std::net::Ipv4Addr::new(10, 0, 2, 100),
            Self::LinkLocal => std::net::Ipv4Addr::new(169, 254, 169, 254),
        }
    }
}

/// A word for the command line QEMU splits with GLib's shell rules: single-quoted, a `'`
/// inside written as `'\''`.
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `-netdev` options that send the guest's `http://<guest address>/` to `endpoint`
/// through `relay metadata-relay <endpoint>` (`relay` is the herd executable), already
/// escaped for a QEMU option value.
pub(crate) fn metadata_netdev_options(
    relay: &std::path::Path,
    endpoint: std::net::SocketAddr,
    at: MetadataGuestAddress,
) -> String {
    let cmd = format!("{} metadata-relay {}", shell_word(&relay.to_string_lossy()), shell_word(&endpoint.to_string()));
    let net = match at {
        MetadataGuestAddress::InDefaultNetwork => "",
        MetadataGuestAddress::LinkLocal => ",net=169.254.169.0/24",
    };
    format!("{net},guestfwd=tcp:{}:80-cmd:{}", at.ip(), opt(&cmd))
}

/// Adds the metadata forward to the user netdev of `args` (from [`qemu_args`]). Returns false
/// when there is no user netdev to add it to.
pub(crate) fn add_metadata_forward(
    args: &mut [String],
    relay: &std::path::Path,
    endpoint: std::net::SocketAddr,
    at: MetadataGuestAddress,
) -> bool {
    let Some(i) = args.windows(2).position(|w| w[0] == "-netdev" && w[1].starts_with("user,")) else {
        return false;
    };
    args[i + 1].push_str(&metadata_netdev_options(relay, endpoint, at));
    true
}

/// The full argv (without the program) that starts `spec` from `d`.
pub(crate) fn qemu_args(
    marker: &str,
    accel: Accel,
    runtime_log: bool,
    spec: &VmSpec,
    d: &VmDir,
    tap: Option<&str>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("{marker}{}", spec.key)]);
    push(&["-machine", "pc"]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg,thread=multi"]),
    }
    push(&["-smp", &spec.vcpus.to_string(), "-m", &spec.memory_mib.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-daemonize", "-pidfile", &d.qemu_pidfile().to_string_lossy()]);
    if runtime_log {
        push(&["-D", &d.qemu_log().to_string_lossy(), "-d", "plugin"]);
    }
    // Serial console, appended across boots.
    push(&["-chardev", &format!("file,id=serial0,path={},append=on", path_opt(&d.console()))]);
    push(&["-serial", "chardev:serial0"]);
    // QMP.
    push(&["-chardev", &format!("socket,id=qmp0,path={},server=on,wait=off", path_opt(&d.qmp_socket()))]);
    push(&["-mon", "chardev=qmp0,mode=control"]);
    // Guest agent channel (harmless for guests without an agent).
    push(&["-device", "virtio-serial-pci,id=vser0"]);
    push(&["-chardev", &format!("socket,id=qga0,path={},server=on,wait=off", path_opt(&d.qga_socket()))]);
    push(&["-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"]);
    // Disks: OS, seed, data (by LUN).
    push(&["-drive", &format!("file={},if=none,id=os,format=qcow2", path_opt(&d.os_disk()))]);
    let os_dev = match spec.image {
        ImageSource::Disk { .. } => "virtio-blk-pci,drive=os,bootindex=0",
        _ => "virtio-blk-pci,drive=os",
    };
    push(&["-device", os_dev]);
    push(&["-drive", &format!("file={},if=none,id=seed,format=raw,readonly=on", path_opt(&d.seed()))]);
    push(&["-device", "virtio-blk-pci,drive=seed"]);
    let mut disks = spec.data_disks.clone();
    disks.sort_by_key(|dd| dd.lun);
    for dd in &disks {
        let id = format!("data{}", dd.lun);
        push(&["-drive", &format!("file={},if=none,id={id},format=qcow2", path_opt(&d.data_disk(dd.lun)))]);
        push(&["-device", &format!("virtio-blk-pci,drive={id},serial=herd-lun-{}", dd.lun)]);
    }
    // Network: bridged, the NIC is the instance's TAP on its subnet's bridge (made before
    // QEMU starts; QEMU runs no scripts). Otherwise user mode, one host forward per port on
    // the reach address.
    let netdev = match tap {
        Some(tap) => format!("tap,id=net0,ifname={},script=no,downscript=no", opt(tap)),
        None => {
            let mut netdev = String::from("user,id=net0");
            for p in &spec.ports {
                netdev.push_str(&format!(",hostfwd=tcp:{}:{p}-:{p}", spec.reach_address));
            }
            netdev
        }
    };
    push(&["-netdev", &netdev]);
    push(&["-device", &format!("virtio-net-pci,netdev=net0,mac={}", spec.mac)]);
    push(&["-device", "virtio-rng-pci"]);
    if let ImageSource::Kernel { kernel, initrd, cmdline } = &spec.image {
        push(&["-kernel", kernel]);
        if let Some(initrd) = initrd {
            push(&["-initrd", initrd]);
        }
        push(&["-append", cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_driver::DataDisk;
    use std::path::{Path, PathBuf};

    fn key(s: &str) -> InstanceKey {
        InstanceKey::parse_path(s).unwrap()
    }

    fn spec(image: ImageSource) -> VmSpec {
        VmSpec {
            key: "rg/web/3".into(),
            computer_name: "web000003".into(),
            image,
            vcpus: 2,
            memory_mib: 512,
            reach_address: "127.200.0.3".parse().unwrap(),
            ports: vec![80, 8080],
            guest_agent: Some(true),
            data_disks: vec![DataDisk { lun: 1, size_gb: 2 }, DataDisk { lun: 0, size_gb: 1 }],
            mac: mac_for(&key("rg/web/3")),
            instance_id: "x".into(),
            reimage_count: 0,
            model_generation: 1,
            metadata_endpoint: None,
            network: None,
        }
    }

    fn dir(p: &str) -> VmDir {
        VmDir { dir: PathBuf::from(p), socket_fallback: PathBuf::from("/run/x/y") }
    }

    /// The value after `flag`, for each occurrence.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn kernel_images_boot_directly_with_forwards_and_disks() {
        let s = spec(ImageSource::Kernel {
            kernel: "/g/vmlinuz".into(),
            initrd: Some("/g/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
        });
        let args = qemu_args("herd:00ff:", Accel::Tcg, true, &s, &dir("/r/rg/web/3"), None);
        assert_eq!(values(&args, "-D"), ["/r/rg/web/3/qemu.log"]);
        assert_eq!(values(&args, "-d"), ["plugin"]);
        assert_eq!(values(&args, "-name"), ["herd:00ff:rg/web/3"]);
        assert_eq!(values(&args, "-accel"), ["tcg,thread=multi"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(values(&args, "-m"), ["512"]);
        assert_eq!(values(&args, "-kernel"), ["/g/vmlinuz"]);
        assert_eq!(values(&args, "-initrd"), ["/g/initrd.img"]);
        assert_eq!(values(&args, "-append"), ["console=ttyS0 quiet"]);
        assert_eq!(values(&args, "-pidfile"), ["/r/rg/web/3/qemu.pid"]);
        assert!(args.contains(&"-daemonize".to_string()));
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.200.0.3:80-:80,hostfwd=tcp:127.200.0.3:8080-:8080"]
        );
        let devices = values(&args, "-device");
        assert!(devices.contains(&"virtio-blk-pci,drive=os"), "{devices:?}");
        assert!(devices.contains(&"virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"));
        assert!(devices.contains(&format!("virtio-net-pci,netdev=net0,mac={}", s.mac).as_str()));
        let drives = values(&args, "-drive");
        assert_eq!(drives.len(), 4, "os, seed, two data disks: {drives:?}");
        assert!(drives[1].contains("seed.img") && drives[1].contains("readonly=on"));
        assert!(drives[2].contains("data-0.qcow2") && drives[3].contains("data-1.qcow2"), "by LUN");
        assert!(values(&args, "-chardev").iter().any(|c| c.contains("console.log,append=on")));
    }

    #[test]
    fn disk_images_boot_from_the_os_disk_and_paths_are_escaped() {
        let s = spec(ImageSource::Disk { path: "/g/disk.qcow2".into(), format: "qcow2".into() });
        let args = qemu_args("herd:00ff:", Accel::Kvm, false, &s, &dir("/r,odd/rg/web/3"), None);
        assert!(values(&args, "-D").is_empty() && values(&args, "-d").is_empty());
        assert!(values(&args, "-kernel").is_empty());
        assert!(values(&args, "-device").contains(&"virtio-blk-pci,drive=os,bootindex=0"));
        assert_eq!(values(&args, "-accel"), ["kvm"]);
        assert_eq!(values(&args, "-cpu"), ["host"]);
        assert!(values(&args, "-drive")[0].starts_with("file=/r,,odd/rg/web/3/os.qcow2,"));
        // Plain arguments (not key=value options) are not escaped.
        assert_eq!(values(&args, "-pidfile"), ["/r,odd/rg/web/3/qemu.pid"]);
        let no_initrd = spec(ImageSource::Kernel { kernel: "/k".into(), initrd: None, cmdline: None });
        let args = qemu_args("m:", Accel::Tcg, false, &no_initrd, &dir("/r"), None);
        assert!(values(&args, "-initrd").is_empty());
        assert_eq!(values(&args, "-append"), [DEFAULT_CMDLINE]);
        assert!(Path::new("/r").is_absolute());
    }

    #[test]
    fn a_bridged_nic_is_its_tap_with_no_forwards() {
        let s = spec(ImageSource::Kernel { kernel: "/k".into(), initrd: None, cmdline: None });
        let args = qemu_args("m:", Accel::Tcg, false, &s, &dir("/r"), Some("ht0123456789ab"));
        assert_eq!(values(&args, "-netdev"), ["tap,id=net0,ifname=ht0123456789ab,script=no,downscript=no"]);
        assert!(values(&args, "-device").contains(&format!("virtio-net-pci,netdev=net0,mac={}", s.mac).as_str()));
        let mut user = args.clone();
        assert!(!add_metadata_forward(&mut user, Path::new("/h"), "127.0.0.1:1".parse().unwrap(), Default::default()));
    }

    #[test]
    fn this_qemu_keeps_its_runtime_log() {
        let qemu = std::path::Path::new("/usr/bin/qemu-system-x86_64");
        if qemu.exists() {
            assert!(supports_plugin_log(qemu), "Debian's QEMU is built with plugins");
        }
        assert!(!supports_plugin_log(std::path::Path::new("/nonexistent/qemu")));
    }

    #[test]
    fn metadata_is_forwarded_through_the_relay() {
        let s = spec(ImageSource::Kernel { kernel: "/k".into(), initrd: None, cmdline: None });
        let mut args = qemu_args("m:", Accel::Tcg, false, &s, &dir("/r"), None);
        let endpoint = "127.200.0.3:16925".parse().unwrap();
        assert!(add_metadata_forward(&mut args, Path::new("/usr/bin/herd"), endpoint, MetadataGuestAddress::default()));
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.200.0.3:80-:80,hostfwd=tcp:127.200.0.3:8080-:8080,\
              guestfwd=tcp:10.0.2.100:80-cmd:'/usr/bin/herd' metadata-relay '127.200.0.3:16925'"]
        );
        // Odd paths survive both GLib's shell splitting and QEMU's option parsing.
        let odd =
            metadata_netdev_options(Path::new("/opt/my herd,v2/it's/herd"), endpoint, MetadataGuestAddress::LinkLocal);
        assert_eq!(
            odd,
            ",net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-cmd:'/opt/my herd,,v2/it'\\''s/herd' metadata-relay '127.200.0.3:16925'"
        );
        let mut none: Vec<String> = vec!["-nodefaults".into()];
        assert!(!add_metadata_forward(&mut none, Path::new("/h"), endpoint, MetadataGuestAddress::default()));
    }

    /// QEMU itself accepts the option (and refuses 169.254.169.254 in its default network,
    /// which is why the default address is 10.0.2.100).
    #[test]
    fn this_qemu_accepts_the_metadata_forward() {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        if !qemu.exists() {
            return;
        }
        let endpoint = "127.200.0.3:16925".parse().unwrap();
        let accepts = |netdev: String| {
            let mut child = std::process::Command::new(qemu)
                .args(["-S", "-display", "none", "-nodefaults", "-no-user-config", "-machine", "none"])
                .args(["-netdev", &netdev, "-monitor", "stdio"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            let _ = child.stdin.take().unwrap().write_all(b"quit\n");
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success() && !err.contains("guest forwarding"), err)
        };
        for at in [MetadataGuestAddress::InDefaultNetwork, MetadataGuestAddress::LinkLocal] {
            let (ok, err) =
                accepts(format!("user,id=n{}", metadata_netdev_options(Path::new("/usr/bin/herd"), endpoint, at)));
            assert!(ok, "{at:?}: {err}");
        }
        let (ok, _) = accepts("user,id=n,guestfwd=tcp:169.254.169.254:80-cmd:/bin/true".into());
        assert!(!ok, "outside the virtual network QEMU refuses a guest forward");
    }

    #[test]
    fn markers_macs_and_ports() {
        assert_eq!(marker_prefix("herd:/var/lib/herd"), marker_prefix("herd:/var/lib/herd"));
        assert_ne!(marker_prefix("herd:/a"), marker_prefix("herd:/b"));
        assert_eq!(marker_prefix("x").len(), "herd:".len() + 16 + 1);
        let mac = mac_for(&key("rg/web/3"));
        assert_eq!(mac, mac_for(&key("rg/web/3")));
        assert_ne!(mac, mac_for(&key("rg/web/4")));
        assert!(mac.starts_with("52:54:") && mac.len() == 17);
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(forwarded_ports(&[8080, 80, 22], &[80, 443]), vec![22, 80, 443, 8080]);
        assert_eq!(forwarded_ports(&[], &[]), Vec::<u16>::new());
    }
}
