//! The load side of `herd bench lb`: the connection shapes, one `wrk` run per shape and load
//! balancer, what `wrk` reports (throughput, p99, every kind of error, and with
//! [`super::latency::SCRIPT`] its whole latency histogram), and over the rounds the median and
//! spread of each figure and the percentiles of all rounds' latencies pooled.

use super::latency::{p99_agrees, Histogram};
use anyhow::{bail, Result};
use serde::Serialize;

/// One shape of load: how many connections `wrk` holds open, and whether each carries many
/// requests (keep-alive) or one (`Connection: close`, where per-connection cost dominates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub connections: u32,
    pub keep_alive: bool,
}

impl Shape {
    /// The shapes issue 17 asks for: 64, 1,000 and 10,000 keep-alive connections, and 64
    /// short-lived ones.
    pub const DEFAULT: [Shape; 4] = [
        Shape { connections: 64, keep_alive: true },
        Shape { connections: 1000, keep_alive: true },
        Shape { connections: 10_000, keep_alive: true },
        Shape { connections: 64, keep_alive: false },
    ];
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.connections, if self.keep_alive { "" } else { ":close" })
    }
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (n, keep_alive) = match s.strip_suffix(":close") {
            Some(n) => (n, false),
            None => (s, true),
        };
        let bad = || format!("shape '{s}': expected CONNECTIONS or CONNECTIONS:close, CONNECTIONS from 1 to 30000");
        let connections: u32 = n.parse().map_err(|_| bad())?;
        if !(1..=30_000).contains(&connections) {
            return Err(bad());
        }
        Ok(Shape { connections, keep_alive })
    }
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub rps: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// CPU time (user + system) the load balancer under test spent per request in this run.
    pub cpu_us_per_request: Option<f64>,
    pub connect_errors: u64,
    /// Read, write and timeout errors.
    pub other_errors: u64,
    pub non_2xx: u64,
    /// Connection attempts the kernel dropped during the run because a listener's accept queue
    /// was full (`TcpExtListenOverflows` of the bench's namespace: any listener, the load
    /// balancer's or a backend's), and SYNs sent again after such a drop (`TcpExtTCPSynRetrans`):
    /// each costs its connection a second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_overflows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn_retransmits: Option<u64>,
    /// The latency histogram's samples (requests plus `wrk`'s corrections), when read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_samples: Option<u64>,
    /// The whole latency histogram, when `wrk` ran with [`super::latency::SCRIPT`].
    #[serde(skip)]
    pub latency: Option<Histogram>,
}

impl Run {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.other_errors + self.non_2xx
    }
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Result<Run> {
    let field = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim));
    let Some(rps) = field("Requests/sec:") else { bail!("no Requests/sec in wrk output: {out}") };
    let Some(p99) = field("99%") else { bail!("no 99% latency in wrk output: {out}") };
    let p99_ms = latency_ms(p99)?;
    // "Socket errors: connect 0, read 12, write 0, timeout 3"
    let socket = |kind: &str| {
        field("Socket errors:").and_then(|s| {
            s.split(',').find_map(|part| part.trim().strip_prefix(kind).and_then(|n| n.trim().parse::<u64>().ok()))
        })
    };
    let non_2xx = field("Non-2xx or 3xx responses:").and_then(|n| n.parse().ok()).unwrap_or(0);
    // "  181230 requests in 5.00s, 15.21MB read"
    let requests = out.lines().find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()));
    Ok(Run {
        rps: rps.parse()?,
        p99_ms,
        requests: requests.unwrap_or(0),
        cpu_us_per_request: None,
        connect_errors: socket("connect").unwrap_or(0),
        other_errors: ["read", "write", "timeout"].iter().filter_map(|k| socket(k)).sum(),
        non_2xx,
        listen_overflows: None,
        syn_retransmits: None,
        latency_samples: None,
        latency: None,
    })
}

/// `TcpExt` counters of this network namespace (`/proc/net/netstat`), by name.
pub fn tcp_ext_counters(names: &[&str]) -> Option<Vec<u64>> {
    parse_tcp_ext(&std::fs::read_to_string("/proc/net/netstat").ok()?, names)
}

/// The `TcpExt:` header and value lines of `/proc/net/netstat` read into `names`' values.
pub fn parse_tcp_ext(netstat: &str, names: &[&str]) -> Option<Vec<u64>> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (head, values) = (lines.next()?, lines.next()?);
    let pairs: Vec<(&str, &str)> = head.split_whitespace().zip(values.split_whitespace()).skip(1).collect();
    names.iter().map(|n| pairs.iter().find(|(k, _)| k == n).and_then(|(_, v)| v.parse().ok())).collect()
}

const DROP_COUNTERS: [&str; 2] = ["ListenOverflows", "TCPSynRetrans"];

/// [`parse_wrk`] plus the latency histogram of [`super::latency::SCRIPT`], if printed; the
/// histogram's p99 must be the one `wrk` printed.
pub fn parse_wrk_with_histogram(out: &str) -> Result<Run> {
    let mut run = parse_wrk(out)?;
    if let Some(h) = Histogram::from_wrk(out)? {
        if h.count() > 0 && !p99_agrees(&h, run.p99_ms) {
            bail!(
                "wrk's latency histogram gives p99 {} ms where wrk printed {} ms: not the histogram wrk's \
                 percentiles come from (this bench reads wrk 4.x's stats layout)",
                h.percentile_ms(99.0).unwrap_or(f64::NAN),
                run.p99_ms
            );
        }
        run.latency_samples = Some(h.count());
        run.latency = Some(h);
    }
    Ok(run)
}

fn latency_ms(v: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown latency unit in '{v}'")
    };
    Ok(number.parse::<f64>()? * scale)
}

/// CPU time (user + system, all threads) process `pid` has used, in microseconds.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": state is field 3, utime 14 and stime 15 (in clock ticks).
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / CLOCK_TICKS_PER_SECOND)
}

/// `sysconf(_SC_CLK_TCK)`, which Linux fixes at 100 for user space.
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// How `wrk` runs, the same for every run of a bench.
#[derive(Debug, Clone, Copy)]
pub struct WrkSetup<'a> {
    pub threads: u32,
    /// The CPUs it is pinned to (a `taskset` list), if any.
    pub cpus: Option<&'a str>,
    /// A command that runs the rest (e.g. [`super::budget::Budget::wrk_prefix`]); empty for none.
    pub prefix: &'a [String],
    /// [`super::latency::SCRIPT`] written to a file ([`super::latency::write_script`]), so that
    /// each run also gives its whole latency histogram.
    pub histogram_script: Option<&'a std::path::Path>,
}

/// Runs `wrk` against `url` in `shape` for `seconds`, as `setup` says; `lb_pid` is the load
/// balancer under test, whose CPU time per request is recorded.
pub async fn wrk(url: &str, shape: Shape, seconds: u64, setup: &WrkSetup<'_>, lb_pid: Option<u32>) -> Result<Run> {
    let WrkSetup { threads, cpus, prefix, histogram_script } = *setup;
    let mut cmd = match prefix.split_first() {
        Some((program, args)) => {
            let mut c = tokio::process::Command::new(program);
            c.args(args);
            if let Some(cpus) = cpus {
                c.args(["taskset", "-c", cpus]);
            }
            c.arg("wrk");
            c
        }
        None => super::isolate::pinned("wrk", cpus),
    };
    let threads = threads.clamp(1, shape.connections);
    cmd.args([format!("-t{threads}"), format!("-c{}", shape.connections), format!("-d{seconds}s")]);
    cmd.args(["--latency", "--timeout", "5s"]);
    if !shape.keep_alive {
        cmd.args(["-H", "Connection: close"]);
    }
    if let Some(script) = histogram_script {
        cmd.arg("-s").arg(script);
    }
    let cpu_before = lb_pid.and_then(cpu_us);
    let drops_before = tcp_ext_counters(&DROP_COUNTERS);
    let out = cmd.arg(url).output().await.map_err(|e| anyhow::anyhow!("running wrk (apt-get install wrk): {e}"))?;
    let cpu_after = lb_pid.and_then(cpu_us);
    let drops_after = tcp_ext_counters(&DROP_COUNTERS);
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut run = parse_wrk_with_histogram(&String::from_utf8_lossy(&out.stdout))?;
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        run.cpu_us_per_request = Some(b.saturating_sub(a) as f64 / run.requests.max(1) as f64);
    }
    if let (Some(a), Some(b)) = (drops_before, drops_after) {
        run.listen_overflows = Some(b[0].saturating_sub(a[0]));
        run.syn_retransmits = Some(b[1].saturating_sub(a[1]));
    }
    Ok(run)
}

/// The median and the spread (lowest, highest) of some rounds' figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Spread { median: 0.0, min: 0.0, max: 0.0 };
        }
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Spread { median, min: v[0], max: v[v.len() - 1] }
    }
}

/// One load balancer's rounds in one shape, summarised.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub rps: Spread,
    /// The median and spread of the rounds' own p99s.
    pub p99_ms: Spread,
    /// Percentiles of every round's latencies pooled (every request of every round, as one
    /// distribution); only when every round gave its histogram.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooled: Option<Pooled>,
    pub cpu_us_per_request: Spread,
    pub connect_errors: u64,
    pub other_errors: u64,
    pub non_2xx: u64,
    /// Summed over the rounds (see [`Run::listen_overflows`]).
    pub listen_overflows: u64,
    pub syn_retransmits: u64,
}

/// Percentiles of all rounds' latency histograms merged.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pooled {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Samples pooled: the rounds' requests plus `wrk`'s corrections for coordinated omission.
    pub samples: u64,
}

impl Pooled {
    pub fn of(h: &Histogram) -> Option<Pooled> {
        Some(Pooled {
            p50_ms: h.percentile_ms(50.0)?,
            p99_ms: h.percentile_ms(99.0)?,
            p999_ms: h.percentile_ms(99.9)?,
            samples: h.count(),
        })
    }
}

impl Summary {
    pub fn of(runs: &[Run]) -> Summary {
        let pooled = runs
            .iter()
            .map(|r| r.latency.as_ref())
            .try_fold(Histogram::default(), |mut all, h| {
                all.merge(h?);
                Some(all)
            })
            .and_then(|all| Pooled::of(&all));
        Summary {
            rps: Spread::of(runs.iter().map(|r| r.rps)),
            p99_ms: Spread::of(runs.iter().map(|r| r.p99_ms)),
            pooled,
            cpu_us_per_request: Spread::of(runs.iter().filter_map(|r| r.cpu_us_per_request)),
            connect_errors: runs.iter().map(|r| r.connect_errors).sum(),
            other_errors: runs.iter().map(|r| r.other_errors).sum(),
            non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
            listen_overflows: runs.iter().filter_map(|r| r.listen_overflows).sum(),
            syn_retransmits: runs.iter().filter_map(|r| r.syn_retransmits).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.99.1:18091/
  1 threads and 64 connections
  Latency Distribution
     50%  751.00us
     75%    1.02ms
     90%    1.35ms
     99%    3.28ms
  181230 requests in 5.00s, 15.21MB read
  Socket errors: connect 7, read 12, write 1, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  36241.52
Transfer/sec:      3.04MB
";

    #[test]
    fn wrk_output_gives_throughput_p99_and_each_error_kind() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.rps, 36241.52);
        assert_eq!(r.p99_ms, 3.28);
        assert_eq!(r.requests, 181230);
        assert_eq!((r.connect_errors, r.other_errors, r.non_2xx), (7, 16, 4));
        let clean = WRK.replace("  Socket errors: connect 7, read 12, write 1, timeout 3\n", "");
        let clean = clean.replace("  Non-2xx or 3xx responses: 4\n", "").replace("3.28ms", "980.5us");
        let r = parse_wrk(&clean).unwrap();
        assert_eq!(r.errors(), 0);
        assert!((r.p99_ms - 0.9805).abs() < 1e-9);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn cpu_time_of_this_process_is_read() {
        let before = cpu_us(std::process::id()).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_us(std::process::id()).unwrap() >= before);
        assert_eq!(cpu_us(u32::MAX), None);
    }

    #[test]
    fn shapes_parse_and_print_the_same() {
        for s in Shape::DEFAULT {
            assert_eq!(s.to_string().parse::<Shape>().unwrap(), s);
        }
        assert_eq!("64:close".parse::<Shape>().unwrap(), Shape { connections: 64, keep_alive: false });
        for bad in ["", "0", "x", "64:keep", "40000"] {
            assert!(bad.parse::<Shape>().unwrap_err().contains("CONNECTIONS:close"), "{bad}");
        }
    }

    #[test]
    fn a_runs_histogram_must_give_the_p99_wrk_printed_and_rounds_pool_only_whole() {
        // WRK's p99 is 3.28 ms: 100 samples, the 99th-ranked at 3,280 µs.
        let hist = |p99_us: u64| format!("herd-latency-histogram 100\n700 90\n1000 8\n{p99_us} 1\n9000 1\n");
        let r = parse_wrk_with_histogram(&format!("{WRK}{}", hist(3280))).unwrap();
        assert_eq!(r.latency_samples, Some(100));
        let e = parse_wrk_with_histogram(&format!("{WRK}{}", hist(3300))).unwrap_err().to_string();
        assert!(e.contains("where wrk printed 3.28 ms"), "{e}");
        assert!(parse_wrk_with_histogram(WRK).unwrap().latency.is_none(), "no script, no histogram");

        let mut slow = parse_wrk_with_histogram(&format!("{WRK}{}", hist(3280))).unwrap();
        slow.latency = Some({
            let mut h = Histogram::default();
            h.add(500_000, 100);
            h
        });
        let s = Summary::of(&[r.clone(), r.clone(), slow.clone()]);
        let pooled = s.pooled.unwrap();
        assert_eq!(pooled.samples, 300);
        assert_eq!(pooled.p99_ms, 500.0, "a third of the samples took 500 ms");
        assert_eq!(pooled.p50_ms, 0.7);
        assert_eq!(s.p99_ms.median, 3.28, "the rounds' own p99s");
        slow.latency = None;
        assert!(Summary::of(&[r, slow]).pooled.is_none(), "a round without its histogram: no pooled figure");
    }

    #[test]
    fn tcp_ext_counters_are_read_by_name() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\nTcpExt: 47 369 369 12\n\
                       IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_tcp_ext(netstat, &["ListenOverflows", "TCPSynRetrans"]), Some(vec![369, 12]));
        assert_eq!(parse_tcp_ext(netstat, &["Nope"]), None);
        assert_eq!(parse_tcp_ext("IpExt: a\nIpExt: 1\n", &["ListenOverflows"]), None);
        let here = tcp_ext_counters(&DROP_COUNTERS).expect("this namespace's /proc/net/netstat");
        assert_eq!(here.len(), 2);
    }

    #[test]
    fn median_and_spread() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0, 4.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 10.0));
        assert_eq!(Spread::of([1.0, 2.0]).median, 1.5);
    }
}
