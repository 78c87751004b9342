//! Latency pooled over every request of every round: `wrk`'s whole latency histogram per run,
//! merged per shape and load balancer, and percentiles of the merged histogram.
//!
//! Why: `wrk` reports percentiles of one run only, and the median of 5 rounds' p99s is decided
//! by whichever 1–2 rounds were slow (issue 17, the slow rounds at 1,000 connections). A p99
//! over all requests of all rounds weighs a slow round by the requests it served, like any other.
//!
//! How: `wrk` keeps its latencies as a histogram with one counter per microsecond up to the
//! timeout, and hands it to a Lua `done(summary, latency, requests)` hook. Its Lua API reads a
//! histogram only value by value, each call scanning from the smallest latency (quadratic over a
//! run with a long tail), so [`SCRIPT`] reads the counters directly through LuaJIT's FFI (the
//! `stats` struct of `wrk`'s `stats.h`: count, limit, min, max, then the counters) and prints
//! every non-empty one after `wrk`'s report. It checks what it read against `wrk`'s own API
//! (min, max, number of distinct values) and [`super::load::wrk`] checks the histogram's p99
//! against the one `wrk` printed ([`p99_agrees`]), so a `wrk` with another layout fails loudly instead of giving
//! wrong numbers.
//!
//! The histogram is the one `wrk`'s own percentiles come from, after `wrk`'s correction for
//! coordinated omission (samples added for responses slower than twice a connection's mean
//! interval between requests), so a pooled percentile is comparable with the per-round ones.

use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// The line before the histogram in `wrk`'s output.
const MARKER: &str = "herd-latency-histogram";

/// The Lua script given to `wrk -s`: it defines only `done`, so `wrk` still sends its
/// precomputed request and parses no response headers for Lua (no cost per request).
pub const SCRIPT: &str = r#"-- herd bench lb: after wrk's report, print its latency histogram ("microseconds count" per
-- non-empty value) so that the bench can pool the rounds. See herd-bench's lb/latency.rs.
local ffi = require("ffi")
ffi.cdef("typedef struct { uint64_t count, limit, min, max; } herd_wrk_stats_head;")

function done(summary, latency, requests)
  local head = ffi.cast("herd_wrk_stats_head **", ffi.cast("void *", latency))[0]
  local count = tonumber(head.count)
  if count == 0 then
    io.write("herd-latency-histogram 0\n")
    return
  end
  local lo, hi = tonumber(head.min), tonumber(head.max)
  local data = ffi.cast("uint64_t *", head) + 4
  local out, distinct, total = {}, 0, 0
  for us = lo, hi do
    local n = tonumber(data[us])
    if n > 0 then
      distinct = distinct + 1
      total = total + n
      out[distinct] = us .. " " .. n
    end
  end
  if lo ~= latency.min or hi ~= latency.max or distinct ~= #latency or total ~= count then
    io.write(string.format("herd-latency-histogram-mismatch min %d/%d max %d/%d distinct %d/%d count %d/%d\n",
      lo, latency.min, hi, latency.max, distinct, #latency, total, count))
    return
  end
  io.write("herd-latency-histogram ", total, "\n", table.concat(out, "\n"), "\n")
end
"#;

/// Writes [`SCRIPT`] into `dir`; returns its path for `wrk -s`.
pub fn write_script(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = dir.join("herd-latency-histogram.lua");
    std::fs::write(&path, SCRIPT)?;
    Ok(path)
}

/// Latency counts by microsecond.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: BTreeMap<u64, u64>,
}

impl Histogram {
    /// The histogram [`SCRIPT`] printed into `wrk`'s output: `None` without the script's
    /// output (a run without `-s`); an error when the script found another layout or the
    /// lines do not add up.
    pub fn from_wrk(out: &str) -> Result<Option<Histogram>> {
        let mut lines = out.lines().skip_while(|l| !l.starts_with(MARKER));
        let Some(head) = lines.next() else { return Ok(None) };
        let Some(total) = head.strip_prefix(MARKER).and_then(|t| t.trim().parse::<u64>().ok()) else {
            bail!("wrk's latency histogram could not be read (this bench knows the stats layout of wrk 4.x): {head}")
        };
        let mut h = Histogram::default();
        for line in lines {
            let mut w = line.split_whitespace().map(str::parse::<u64>);
            match (w.next(), w.next(), w.next()) {
                (Some(Ok(us)), Some(Ok(n)), None) => h.add(us, n),
                _ => break,
            }
        }
        if h.count() != total {
            bail!("wrk's latency histogram holds {} samples, its header says {total}", h.count());
        }
        Ok(Some(h))
    }

    pub fn add(&mut self, us: u64, n: u64) {
        if n > 0 {
            *self.counts.entry(us).or_default() += n;
        }
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (&us, &n) in &other.counts {
            self.add(us, n);
        }
    }

    /// The number of samples.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `p`-th percentile in microseconds, by `wrk`'s rule (the smallest value whose
    /// cumulative count reaches `round(p / 100 × count + 0.5)`), so that one run's histogram
    /// gives the p99 `wrk` printed; `None` when empty.
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        let rank = (p / 100.0 * self.count() as f64 + 0.5).round() as u64;
        let mut seen = 0;
        for (&us, &n) in &self.counts {
            seen += n;
            if seen >= rank {
                return Some(us);
            }
        }
        self.counts.keys().next_back().copied()
    }

    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        self.percentile_us(p).map(|us| us as f64 / 1000.0)
    }
}

/// Whether `wrk`'s printed p99 (`printed_ms`, two decimals of µs, ms or s) is the p99 of
/// `h`, give or take one rank (`wrk` computes the rank in `long double`).
pub fn p99_agrees(h: &Histogram, printed_ms: f64) -> bool {
    let (Some(lo), Some(hi)) = (h.percentile_ms(98.99), h.percentile_ms(99.01)) else { return false };
    // The printed figure is rounded to 0.01 of its unit: 0.01 µs, 0.01 ms or 0.01 s.
    let unit_ms = if printed_ms < 1.0 {
        0.001
    } else if printed_ms < 1000.0 {
        1.0
    } else {
        1000.0
    };
    let slack = 0.0051 * unit_ms + 1e-9;
    lo - slack <= printed_ms && printed_ms <= hi + slack
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail of a real `wrk 4.1.0 --latency -s SCRIPT` run's output.
    const OUT: &str = "     99%   19.94ms
  1515 requests in 2.00s, 682.05KB read
Requests/sec:    756.04
Transfer/sec:    340.37KB
herd-latency-histogram 10
146 1
157 1
5220 4
19943 3
31232 1
";

    #[test]
    fn the_scripts_histogram_is_read_and_checked() {
        let h = Histogram::from_wrk(OUT).unwrap().unwrap();
        assert_eq!(h.count(), 10);
        assert_eq!(h.percentile_us(50.0), Some(5220));
        assert_eq!(h.percentile_us(99.0), Some(31232), "rank round(9.9 + 0.5) = 10");
        assert_eq!(h.percentile_us(0.0), Some(146));
        assert_eq!(Histogram::from_wrk("Requests/sec: 1\n").unwrap(), None, "no script");
        let short = OUT.replace("31232 1\n", "");
        assert!(Histogram::from_wrk(&short).unwrap_err().to_string().contains("holds 9 samples"));
        let other = "herd-latency-histogram-mismatch min 1/2 max 3/3 distinct 2/2 count 4/4\n";
        assert!(Histogram::from_wrk(other).unwrap_err().to_string().contains("layout of wrk 4.x"));
        assert_eq!(Histogram::from_wrk("herd-latency-histogram 0\n").unwrap().unwrap().count(), 0);
        assert_eq!(Histogram::default().percentile_us(99.0), None);
    }

    #[test]
    fn pooled_percentiles_weigh_each_round_by_its_requests() {
        // Four quick rounds of 1,000 requests (p99 1 ms each), one slow round of 500 whose
        // slowest 20 % took 400 ms (its own p99: 400 ms).
        let round = |fast: u64, slow: u64| {
            let mut h = Histogram::default();
            h.add(900, fast - fast / 100);
            h.add(1000, fast / 100);
            h.add(400_000, slow);
            h
        };
        let rounds = [round(1000, 0), round(1000, 0), round(400, 100), round(1000, 0), round(1000, 0)];
        let p99s: Vec<u64> = rounds.iter().map(|r| r.percentile_us(99.0).unwrap()).collect();
        assert_eq!(p99s, [1000, 1000, 400_000, 1000, 1000]);
        let mut pooled = Histogram::default();
        for r in &rounds {
            pooled.merge(r);
        }
        assert_eq!(pooled.count(), 4500);
        // 100 of 4,500 samples (2.2 %) are slow: the pooled p99 is slow, the pooled p97 not.
        assert_eq!(pooled.percentile_us(99.0), Some(400_000));
        assert_eq!(pooled.percentile_ms(97.0), Some(1.0));
    }

    #[test]
    fn a_histograms_p99_agrees_with_wrks_printed_one_to_its_rounding_and_one_rank() {
        let mut h = Histogram::default();
        h.add(900, 9_890);
        h.add(19_943, 10);
        h.add(20_500, 100);
        // Rank 9,901 of 10,000: 20,500 µs; one rank lower 19,943 µs.
        assert_eq!(h.percentile_us(99.0), Some(20_500));
        assert!(p99_agrees(&h, 20.50));
        assert!(p99_agrees(&h, 19.94), "one rank off");
        assert!(!p99_agrees(&h, 19.90) && !p99_agrees(&h, 20.52) && !p99_agrees(&h, 0.9));
        let mut fast = Histogram::default();
        fast.add(980, 100);
        assert!(p99_agrees(&fast, 0.98), "980 µs printed as 980.00us");
        assert!(!p99_agrees(&fast, 0.981));
        let mut slow = Histogram::default();
        slow.add(1_234_000, 100);
        assert!(p99_agrees(&slow, 1230.0), "printed as 1.23s");
        assert!(!p99_agrees(&slow, 1250.0));
        assert!(!p99_agrees(&Histogram::default(), 1.0));
    }
}
