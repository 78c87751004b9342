use super::*;

fn loopback_allowed(max_bytes: u64, roots: Vec<PathBuf>) -> Fetcher {
    Fetcher::new(FetchLimits {
        max_bytes,
        timeout: Duration::from_secs(5),
        file_roots: roots,
        addresses: AddressPolicy::new(ALLOW_SETTING, vec![herd_egress::Net::parse("127.0.0.1/32").unwrap()]),
    })
}

#[tokio::test]
async fn file_reads_within_limits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let small = loopback_allowed(1000, vec![root.clone()]);
    std::fs::write(root.join("s.sh"), b"true").unwrap();
    assert_eq!(small.read_file(&format!("file://{}/s.sh", root.display())).await.unwrap(), b"true");
    std::fs::write(root.join("a b.sh"), b"spaced").unwrap();
    assert_eq!(small.read_file(&format!("file://localhost{}/a%20b.sh", root.display())).await.unwrap(), b"spaced");
    std::fs::write(root.join("big.sh"), vec![b'x'; 2000]).unwrap();
    let e = small.read_file(&format!("file://{}/big.sh", root.display())).await.unwrap_err();
    assert!(e.contains("limit of 1000 bytes"), "{e}");
}

#[tokio::test]
async fn default_limits_refuse_file_uris_and_hand_on_the_address_rules() {
    let f = Fetcher::new(FetchLimits::default());
    let e = f.read_file("file:///etc/shadow").await.unwrap_err();
    assert!(e.contains("file:// URIs are off") && e.contains("[extensions] file_roots"), "{e}");
    let e = f.read_file("file://../../etc/passwd").await.unwrap_err();
    assert!(e.contains("absolute path"), "{e}");
    // What a host downloads under: the limits, the allow list, and the ranges added here.
    let v = loopback_allowed(1000, vec![])
        .refusing(vec![(herd_egress::Net::parse("10.9.0.0/16").unwrap(), "herd virtual network 'v'".into())]);
    let rules = v.rules();
    assert_eq!((rules.max_bytes, rules.timeout), (1000, Duration::from_secs(5)));
    assert_eq!(rules.allowed, vec![herd_egress::Net::parse("127.0.0.1/32").unwrap()]);
    assert_eq!(rules.refused.len(), 1);
    let e = rules.policy().check("10.9.0.4".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("virtual network 'v'"), "{e}");
    assert!(rules.policy().check("127.0.0.2".parse().unwrap()).is_err(), "the default refusals stay");
}

#[tokio::test]
async fn file_roots_refuse_escapes_symlinks_fifos_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("scripts");
    std::fs::create_dir(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let outside = dir.path().join("secret");
    std::fs::write(&outside, b"top secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link.sh")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    // A hard link is a second name for the file outside the root.
    std::fs::hard_link(&outside, root.join("hard.sh")).unwrap();
    let f = loopback_allowed(1 << 20, vec![root.clone()]);
    let r = root.display();
    for (url, want) in [
        (format!("file://{r}/../secret"), "'..'"),
        (format!("file://{r}/sub/../../secret"), "'..'"),
        (format!("file://{r}/link.sh"), "cannot be opened"),
        (format!("file://{r}/etc/passwd"), "cannot be opened"),
        (format!("file://{r}/sub"), "not a regular file"),
        (format!("file://{r}/hard.sh"), "2 hard links"),
        (format!("file://{r}"), "not a regular file"),
        ("file:///etc/shadow".to_string(), "not below a directory allowed"),
        (format!("file://{}/secret", dir.path().display()), "not below a directory allowed"),
    ] {
        let e = f.read_file(&url).await.unwrap_err();
        assert!(e.contains(want), "{url}: {e}");
        assert!(!e.contains("top secret"));
    }
    // A FIFO is refused at once: opening it never waits for a writer.
    let fifo = root.join("pipe.sh");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo (coreutils)");
    let started = std::time::Instant::now();
    let e = f.read_file(&format!("file://{}", fifo.display())).await.unwrap_err();
    assert!(e.contains("a FIFO"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2), "the FIFO held the fetch for {:?}", started.elapsed());
}

#[tokio::test]
async fn the_size_limit_counts_bytes_read_not_metadata() {
    // A file under /proc reports a size of 0 yet reads as much as it holds; a sparse file is
    // the stand-in here for a file that is far larger than the limit.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let big = std::fs::File::create(root.join("big.bin")).unwrap();
    big.set_len(10 << 30).unwrap(); // 10 GiB, sparse
    let f = loopback_allowed(1 << 20, vec![root.clone()]);
    let started = std::time::Instant::now();
    let e = f.read_file(&format!("file://{}/big.bin", root.display())).await.unwrap_err();
    assert!(e.contains("limit of 1048576 bytes"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "read past the limit: {:?}", started.elapsed());
    // The reader itself stops at limit + 1 bytes whatever the metadata says.
    let e =
        read_beneath(std::slice::from_ref(&root), &root.join("big.bin"), 1000, Instant::now() + Duration::from_secs(5))
            .unwrap_err();
    assert!(matches!(e, FileFetchError::TooBig(1000)), "{e}");
    // A deadline in the past stops the read before any byte.
    let e = read_beneath(std::slice::from_ref(&root), &root.join("big.bin"), u64::MAX, Instant::now()).unwrap_err();
    assert!(matches!(e, FileFetchError::TimedOut), "{e}");
}

#[test]
fn roots_may_not_hold_or_lie_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("images")).unwrap();
    let s = "[extensions] file_roots";
    let e = check_roots(s, &[dir.path().to_path_buf()], &data).unwrap_err();
    assert!(e.contains("data dir") && e.contains(s), "{e}");
    assert!(check_roots(s, &[data.join("images")], &data).unwrap_err().contains("data dir"));
    assert!(check_roots(s, &["/proc/self".into()], &data).unwrap_err().contains("/proc"));
    assert!(check_roots(s, &["relative".into()], &data).unwrap_err().contains("absolute"));
    let ok = dir.path().join("scripts");
    std::fs::create_dir(&ok).unwrap();
    assert_eq!(check_roots(s, std::slice::from_ref(&ok), &data).unwrap(), vec![ok.canonicalize().unwrap()]);
}
