use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;

fn default_policy() -> AddressPolicy {
    AddressPolicy::new("[extensions] allow_fetch_from", vec![])
}

fn egress(policy: AddressPolicy) -> Egress {
    Egress::new(policy, Duration::from_secs(5))
}

/// A loopback HTTP server that answers every connection with `response` and counts them.
fn serve(ip: &str, response: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(response.as_bytes());
        }
    });
    (format!("http://{addr}"), hits)
}

fn ok_response(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

#[test]
fn ranges_parse_and_contain() {
    let n = Net::parse("10.1.0.0/16").unwrap();
    assert!(n.contains("10.1.255.3".parse().unwrap()));
    assert!(!n.contains("10.2.0.1".parse().unwrap()));
    assert!(Net::parse("fe80::/10").unwrap().contains("fe80::1".parse().unwrap()));
    assert!(Net::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
    assert!(!Net::parse("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
    for bad in ["10.0.0.0/33", "nope", "::1/129", "10.0.0.0/x"] {
        assert!(Net::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn default_policy_refuses_loopback_link_local_and_herds_ranges() {
    let p = default_policy();
    for ip in [
        "127.0.0.1",
        "127.128.0.5",
        "127.64.0.9",
        "::1",
        "0.0.0.0",
        "169.254.169.254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::",
    ] {
        let e = p.check(ip.parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("[extensions] allow_fetch_from"), "{e}");
    }
    for ip in ["93.184.216.34", "10.0.0.4", "2001:db8::1"] {
        assert!(p.check(ip.parse().unwrap()).is_ok(), "{ip}");
    }
    let vnet = default_policy().refuse(Net::parse("10.0.0.0/16").unwrap(), "herd virtual network 'vnet1'");
    assert!(vnet.check("10.0.0.4".parse().unwrap()).unwrap_err().to_string().contains("vnet1"));
    let allowed = AddressPolicy::new("x", vec![Net::parse("127.0.0.1/32").unwrap()]);
    assert!(allowed.check("127.0.0.1".parse().unwrap()).is_ok());
    assert!(allowed.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
    assert!(allowed.check("127.0.0.2".parse().unwrap()).is_err());
}

#[tokio::test]
async fn refused_literals_send_no_traffic() {
    let (url, hits) = serve("127.0.0.1", ok_response("secret"));
    let e = egress(default_policy());
    let err = e.request(reqwest::Method::GET, &format!("{url}/x")).unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    for u in ["http://[::1]:9/x", "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]:9/"] {
        let err = e.request(reqwest::Method::GET, u).unwrap_err();
        assert!(matches!(err, EgressError::Refused(_)), "{u}: {err}");
    }
    assert!(matches!(e.request(reqwest::Method::GET, "ftp://example.com/x"), Err(EgressError::Scheme(_))));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "a refused address was connected to");
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_before_connecting() {
    let (url, hits) = serve("127.0.0.1", ok_response("secret"));
    let port = url.rsplit(':').next().unwrap();
    let e = egress(default_policy());
    let err = e.request(reqwest::Method::GET, &format!("http://localhost:{port}/x")).unwrap().send().await.unwrap_err();
    let why = refusal_in(&err).unwrap_or_else(|| panic!("not a refusal: {err:?}"));
    assert!(why.contains("localhost resolves to") && why.contains("loopback"), "{why}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_allowed_address_is_fetched_and_a_redirect_to_a_refused_one_is_not_followed() {
    // The target the redirect points at: 127.0.0.2 is not in the allow list.
    let (target, target_hits) = serve("127.0.0.2", ok_response("secret"));
    let (plain, _) = serve("127.0.0.1", ok_response("hello"));
    let redirect =
        format!("HTTP/1.1 302 Found\r\nLocation: {target}/metadata\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let (redirector, _) = serve("127.0.0.1", redirect);
    let e = egress(AddressPolicy::new("[extensions] allow_fetch_from", vec![Net::parse("127.0.0.1/32").unwrap()]));
    let body = e.request(reqwest::Method::GET, &format!("{plain}/f")).unwrap().send().await.unwrap().text().await;
    assert_eq!(body.unwrap(), "hello");
    let err = e.request(reqwest::Method::GET, &format!("{redirector}/f")).unwrap().send().await.unwrap_err();
    let why = refusal_in(&err).unwrap_or_else(|| panic!("not a refusal: {err:?}"));
    assert!(why.contains("127.0.0.2"), "{why}");
    assert_eq!(target_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect target was connected to");
}
