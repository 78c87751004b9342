use super::*;
use std::io::Write;

#[test]
fn names_come_from_the_last_segment() {
    assert_eq!(file_name("http://h:8000/a/installapp-v1.sh?sig=x").as_deref(), Some("installapp-v1.sh"));
    assert_eq!(file_name("http://h/dir/"), None);
    assert_eq!(file_name("file:///tmp/.herd-command"), None);
}

/// A one-shot HTTP server on loopback that answers with `body`.
fn serve(body: Vec<u8>) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/file.sh")
}

fn loopback_allowed(max_bytes: u64, roots: Vec<PathBuf>) -> Fetcher {
    Fetcher::new(FetchLimits {
        max_bytes,
        timeout: Duration::from_secs(5),
        file_roots: roots,
        addresses: AddressPolicy::new(ALLOW_SETTING, vec![herd_egress::Net::parse("127.0.0.1/32").unwrap()]),
    })
}

#[tokio::test]
async fn http_and_file_downloads_within_limits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let f = loopback_allowed(64 << 20, vec![root.clone()]);
    let url = serve(b"echo hi\n".to_vec());
    assert_eq!(f.fetch(&url).await.unwrap(), b"echo hi\n");
    let small = loopback_allowed(1000, vec![root.clone()]);
    let url = serve(vec![b'x'; 2000]);
    assert!(small.fetch(&url).await.unwrap_err().contains("limit of 1000 bytes"));
    std::fs::write(root.join("s.sh"), b"true").unwrap();
    assert_eq!(small.fetch(&format!("file://{}/s.sh", root.display())).await.unwrap(), b"true");
    std::fs::write(root.join("a b.sh"), b"spaced").unwrap();
    assert_eq!(small.fetch(&format!("file://localhost{}/a%20b.sh", root.display())).await.unwrap(), b"spaced");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/x", l.local_addr().unwrap());
    drop(l);
    assert!(small.fetch(&closed).await.unwrap_err().contains("connect"));
}

#[tokio::test]
async fn default_limits_refuse_file_uris_and_loopback() {
    let f = Fetcher::new(FetchLimits::default());
    let e = f.fetch("file:///etc/shadow").await.unwrap_err();
    assert!(e.contains("file:// URIs are off") && e.contains("[extensions] file_roots"), "{e}");
    let e = f.fetch("file://../../etc/passwd").await.unwrap_err();
    assert!(e.contains("absolute path"), "{e}");
    let url = serve(b"secret".to_vec());
    let e = f.fetch(&url).await.unwrap_err();
    assert!(e.contains("loopback") && e.contains(ALLOW_SETTING), "{e}");
    let e = f.fetch("http://169.254.169.254/latest/meta-data/").await.unwrap_err();
    assert!(e.contains("link-local"), "{e}");
    let e = f.fetch("http://[::1]:1/x").await.unwrap_err();
    assert!(e.contains("loopback"), "{e}");
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let e = f.fetch(&format!("http://localhost:{port}/x")).await.unwrap_err();
    assert!(e.contains("refused") && e.contains("localhost resolves to"), "{e}");
    // A virtual network's address space is refused too.
    let v = f.refusing(vec![(herd_egress::Net::parse("10.9.0.0/16").unwrap(), "herd virtual network 'v'".into())]);
    let e = v.fetch("http://10.9.0.4/x").await.unwrap_err();
    assert!(e.contains("virtual network 'v'"), "{e}");
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
        let e = f.fetch(&url).await.unwrap_err();
        assert!(e.contains(want), "{url}: {e}");
        assert!(!e.contains("top secret"));
    }
    // A FIFO is refused at once: opening it never waits for a writer.
    let fifo = root.join("pipe.sh");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo (coreutils)");
    let started = std::time::Instant::now();
    let e = f.fetch(&format!("file://{}", fifo.display())).await.unwrap_err();
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
    let e = f.fetch(&format!("file://{}/big.bin", root.display())).await.unwrap_err();
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

#[tokio::test]
async fn the_deadline_covers_a_stalled_body() {
    // Headers at once, then a body that never comes: the whole fetch still ends at its deadline.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nstart");
            let _ = rx.recv(); // holds the connection open until the test ends
        }
    });
    let f = Fetcher::new(FetchLimits {
        timeout: Duration::from_secs(1),
        ..FetchLimits {
            addresses: AddressPolicy::new(ALLOW_SETTING, vec![herd_egress::Net::parse("127.0.0.1/32").unwrap()]),
            ..FetchLimits::default()
        }
    });
    let started = std::time::Instant::now();
    let e = f.fetch(&format!("http://{addr}/slow.sh")).await.unwrap_err();
    assert!(e.contains("timed out"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "the fetch outlived its deadline: {:?}", started.elapsed());
    drop(tx);
}
