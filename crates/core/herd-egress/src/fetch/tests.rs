use super::*;
use std::io::Write;

#[test]
fn names_come_from_the_last_segment() {
    assert_eq!(file_name("http://h:8000/a/installapp-v1.sh?sig=x").as_deref(), Some("installapp-v1.sh"));
    assert_eq!(file_name("http://h/dir/"), None);
    assert_eq!(file_name("file:///tmp/.herd-command"), None);
    assert_eq!(without_query("https://h/a/b.sh?sv=1&sig=SECRET#x"), "https://h/a/b.sh");
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

fn loopback_allowed(max_bytes: u64) -> HttpFetch {
    HttpFetch::new(FetchRules {
        max_bytes,
        timeout: Duration::from_secs(5),
        allowed: vec![Net::parse("127.0.0.1/32").unwrap()],
        refused: vec![],
    })
}

#[tokio::test]
async fn downloads_within_limits() {
    let f = loopback_allowed(64 << 20);
    let url = serve(b"echo hi\n".to_vec());
    assert_eq!(f.get(&url).await.unwrap(), b"echo hi\n");
    let small = loopback_allowed(1000);
    let url = serve(vec![b'x'; 2000]);
    assert!(small.get(&url).await.unwrap_err().contains("limit of 1000 bytes"));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/x?sig=SECRET", l.local_addr().unwrap());
    drop(l);
    let e = small.get(&closed).await.unwrap_err();
    assert!(e.contains("connect") && !e.contains("SECRET"), "{e}");
    let e = small.get("http://[bad?sig=SECRET").await.unwrap_err();
    assert!(e.contains("not a valid URL") && !e.contains("SECRET"), "{e}");
    let e = small.get("ftp://h/x").await.unwrap_err();
    assert!(e.contains("only http and https"), "{e}");
}

#[tokio::test]
async fn default_rules_refuse_loopback_link_local_and_added_ranges() {
    let f = HttpFetch::new(FetchRules::default());
    let url = serve(b"secret".to_vec());
    let e = f.get(&url).await.unwrap_err();
    assert!(e.contains("loopback") && e.contains(ALLOW_SETTING), "{e}");
    let e = f.get("http://169.254.169.254/latest/meta-data/").await.unwrap_err();
    assert!(e.contains("link-local"), "{e}");
    let e = f.get("http://[::1]:1/x").await.unwrap_err();
    assert!(e.contains("loopback"), "{e}");
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let e = f.get(&format!("http://localhost:{port}/x")).await.unwrap_err();
    assert!(e.contains("refused") && e.contains("localhost resolves to"), "{e}");
    // A virtual network's address space is refused too.
    let rules = FetchRules {
        refused: vec![ExtraRefusal { net: Net::parse("10.9.0.0/16").unwrap(), why: "herd virtual network 'v'".into() }],
        ..FetchRules::default()
    };
    let e = HttpFetch::new(rules).get("http://10.9.0.4/x").await.unwrap_err();
    assert!(e.contains("virtual network 'v'"), "{e}");
}

#[test]
fn rules_travel_as_json_and_rebuild_the_same_policy() {
    let policy = AddressPolicy::new(ALLOW_SETTING, vec![Net::parse("127.0.0.1").unwrap()])
        .refuse(Net::parse("10.9.0.0/16").unwrap(), "herd virtual network 'v'");
    let rules = FetchRules::new(1000, Duration::from_secs(7), &policy);
    let text = serde_json::to_string(&rules).unwrap();
    assert!(text.contains("\"127.0.0.1/32\"") && text.contains("10.9.0.0/16"), "{text}");
    let back: FetchRules = serde_json::from_str(&text).unwrap();
    assert_eq!(back, rules);
    let p = back.policy();
    assert!(p.check("127.0.0.1".parse().unwrap()).is_ok(), "allowed");
    assert!(p.check("127.0.0.2".parse().unwrap()).is_err(), "the defaults stay");
    let e = p.check("10.9.1.1".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("virtual network 'v'"), "{e}");
    assert_eq!(p.added_refusals().len(), 1);
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
    let f = HttpFetch::new(FetchRules {
        timeout: Duration::from_secs(1),
        allowed: vec![Net::parse("127.0.0.1/32").unwrap()],
        ..FetchRules::default()
    });
    let started = std::time::Instant::now();
    let e = f.get(&format!("http://{addr}/slow.sh")).await.unwrap_err();
    assert!(e.contains("timed out"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "the fetch outlived its deadline: {:?}", started.elapsed());
    drop(tx);
}
