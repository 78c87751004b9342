//! The price book: what one hour of a SKU costs, at the regular price or at the spot price in
//! effect at a given instant.
//!
//! Why a book and not the bare [`PriceTable`]: the spot price may come from a schedule file the
//! server watches (`spot_schedule = "spot-prices.csv"`), so a price is a function of time, and
//! a file being edited must never leave the server without prices. A schedule that fails to
//! parse keeps the previous one and says which file and line is wrong.
//!
//! A schedule file holds `timestamp,price` lines, RFC 3339 timestamps in increasing order:
//! ```text
//! # spot prices for Standard_B1ms
//! timestamp,price
//! 2026-01-01T00:00:00Z,0.0041
//! 2026-01-01T08:00:00Z,0.0062
//! ```
//! The price in effect at `t` is the last line at or before `t`. Before the first line it is
//! the SKU's fixed `spot` price if it has one, else the first line's price.
//!
//! SKU names are looked up case-insensitively, as Azure treats VM sizes.

use chrono::{DateTime, Utc};
use herd_model::scale_set::Priority;
use herd_model::spot::{is_spot, PriceTable};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A price table or schedule file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriceError {
    /// A price in the table is not a finite, non-negative number.
    #[error("prices.\"{sku}\".{field}: {message}")]
    Invalid { sku: String, field: &'static str, message: String },
    /// The schedule file cannot be read.
    #[error("spot price schedule {}: cannot be read: {message}", path.display())]
    Read { path: PathBuf, message: String },
    /// One line of the schedule file is wrong.
    #[error("spot price schedule {}:{line}: {message}", path.display())]
    Line { path: PathBuf, line: usize, message: String },
    /// The schedule file holds no price.
    #[error(
        "spot price schedule {}: holds no prices; add lines of `timestamp,price` (RFC 3339), e.g. 2026-01-01T00:00:00Z,0.0041",
        path.display()
    )]
    Empty { path: PathBuf },
}

/// What a file looked like when it was last read: a change in either means read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileStamp {
    Missing,
    Seen { modified: Option<SystemTime>, len: u64 },
}

fn stamp_of(path: &Path) -> FileStamp {
    match std::fs::metadata(path) {
        Ok(m) => FileStamp::Seen { modified: m.modified().ok(), len: m.len() },
        Err(_) => FileStamp::Missing,
    }
}

#[derive(Debug, Clone)]
struct Schedule {
    path: PathBuf,
    stamp: FileStamp,
    /// Sorted by time, strictly increasing, never empty.
    points: Vec<(DateTime<Utc>, f64)>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The SKU's spelling in the table.
    name: String,
    regular: f64,
    spot: Option<f64>,
    schedule: Option<Schedule>,
}

/// Regular and spot prices per SKU, per hour, in USD.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    /// Keyed by the lower-cased SKU name.
    skus: BTreeMap<String, Entry>,
}

fn check_price(sku: &str, field: &'static str, v: f64) -> Result<f64, PriceError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(PriceError::Invalid {
            sku: sku.into(),
            field,
            message: format!("{v} is not allowed; a price per hour is a number of at least 0"),
        })
    }
}

impl PriceBook {
    /// Builds the book from the config's table, reading every schedule file once. Relative
    /// schedule paths are taken from `base_dir` (the config file's directory). A table entry
    /// or a schedule file that cannot be used is an error: the server should not start with
    /// prices it cannot honour.
    pub fn new(table: &PriceTable, base_dir: Option<&Path>) -> Result<Self, PriceError> {
        let mut skus = BTreeMap::new();
        for (name, p) in table {
            let regular = check_price(name, "regular", p.regular)?;
            let spot = p.spot.map(|s| check_price(name, "spot", s)).transpose()?;
            let schedule = match &p.spot_schedule {
                Some(file) => {
                    let path = match base_dir {
                        Some(dir) if Path::new(file).is_relative() => dir.join(file),
                        _ => PathBuf::from(file),
                    };
                    let stamp = stamp_of(&path);
                    let points = read_schedule(&path)?;
                    Some(Schedule { path, stamp, points })
                }
                None => None,
            };
            let key = name.to_ascii_lowercase();
            if let Some(other) = skus.get(&key).map(|e: &Entry| e.name.clone()) {
                return Err(PriceError::Invalid {
                    sku: name.clone(),
                    field: "regular",
                    message: format!("'{name}' and '{other}' name the same SKU (names are case-insensitive); keep one"),
                });
            }
            skus.insert(key, Entry { name: name.clone(), regular, spot, schedule });
        }
        Ok(Self { skus })
    }

    fn entry(&self, sku: &str) -> Option<&Entry> {
        self.skus.get(&sku.to_ascii_lowercase())
    }

    /// The table's spelling of `sku`, if the book prices it.
    pub fn canonical(&self, sku: &str) -> Option<&str> {
        self.entry(sku).map(|e| e.name.as_str())
    }

    /// True if the book has any price for `sku`.
    pub fn knows(&self, sku: &str) -> bool {
        self.entry(sku).is_some()
    }

    /// The regular price per hour; 0 for a SKU the book does not price (its instance-hours
    /// are still metered, so adding a price later shows what the time was).
    pub fn regular(&self, sku: &str) -> f64 {
        self.entry(sku).map_or(0.0, |e| e.regular)
    }

    /// The spot price per hour in effect at `at`: the schedule's last entry at or before `at`;
    /// before its first entry, the fixed `spot` if any, else the first entry's price. Without
    /// a schedule, the fixed `spot`. None when the SKU has no spot price.
    pub fn spot_at(&self, sku: &str, at: DateTime<Utc>) -> Option<f64> {
        let e = self.entry(sku)?;
        match &e.schedule {
            Some(s) => {
                let i = s.points.partition_point(|(t, _)| *t <= at);
                match i {
                    0 => e.spot.or_else(|| s.points.first().map(|p| p.1)),
                    _ => Some(s.points[i - 1].1),
                }
            }
            None => e.spot,
        }
    }

    /// What one hour of `sku` costs at `priority` at `at`. A Spot (or Low) instance of a SKU
    /// without a spot price is billed at the regular price: the meter never under-reports.
    pub fn hourly(&self, sku: &str, priority: Priority, at: DateTime<Utc>) -> f64 {
        if is_spot(priority) {
            self.spot_at(sku, at).unwrap_or_else(|| self.regular(sku))
        } else {
            self.regular(sku)
        }
    }

    /// The instants in `(from, to)` at which `sku`'s price at `priority` changes (the
    /// schedule's entries), so an interval can be billed piece by piece at the right price.
    pub fn changes_between(
        &self,
        sku: &str,
        priority: Priority,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        if !is_spot(priority) {
            return vec![];
        }
        let Some(s) = self.entry(sku).and_then(|e| e.schedule.as_ref()) else {
            return vec![];
        };
        let start = s.points.partition_point(|(t, _)| *t <= from);
        s.points[start..].iter().map(|(t, _)| *t).take_while(|t| *t < to).collect()
    }

    /// SKUs with a spot price (fixed or scheduled), in the table's spelling.
    pub fn spot_priced_skus(&self) -> Vec<String> {
        self.skus.values().filter(|e| e.spot.is_some() || e.schedule.is_some()).map(|e| e.name.clone()).collect()
    }

    /// Reads again every schedule file whose modification time or size changed since it was
    /// last read. A file that cannot be read or parsed keeps the previous schedule; each such
    /// problem is returned once per change of the file, naming the file and the line.
    pub fn reload_if_changed(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for e in self.skus.values_mut() {
            let Some(s) = e.schedule.as_mut() else { continue };
            // The stamp is taken before reading: a write that lands during the read changes it
            // again, and the next call reads the file once more.
            let stamp = stamp_of(&s.path);
            if stamp == s.stamp {
                continue;
            }
            s.stamp = stamp;
            match read_schedule(&s.path) {
                Ok(points) => {
                    tracing::info!(sku = %e.name, file = %s.path.display(), entries = points.len(), "spot price schedule reloaded");
                    s.points = points;
                }
                Err(err) => problems.push(format!("{err}; the previous spot prices of {} stay in effect", e.name)),
            }
        }
        problems
    }
}

/// Parses a schedule file: `timestamp,price` lines, `#` comments, blank lines, and one header
/// line before the first entry.
pub fn read_schedule(path: &Path) -> Result<Vec<(DateTime<Utc>, f64)>, PriceError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| PriceError::Read { path: path.into(), message: e.to_string() })?;
    parse_schedule(path, &text)
}

/// [`read_schedule`] on text already read; `path` only names the file in errors.
pub fn parse_schedule(path: &Path, text: &str) -> Result<Vec<(DateTime<Utc>, f64)>, PriceError> {
    let mut points: Vec<(DateTime<Utc>, f64)> = Vec::new();
    let mut last_line = 0;
    let mut header_allowed = true;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| PriceError::Line { path: path.into(), line: line_no, message };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [ts, price] = fields[..] else {
            return Err(err(format!("expected `timestamp,price`, found {} field(s): '{line}'", fields.len())));
        };
        let t = DateTime::parse_from_rfc3339(ts).map(|t| t.with_timezone(&Utc));
        let p = price.parse::<f64>();
        if header_allowed && t.is_err() && p.is_err() {
            // A header such as `timestamp,price`.
            header_allowed = false;
            continue;
        }
        header_allowed = false;
        let t = t.map_err(|e| {
            err(format!("'{ts}' is not an RFC 3339 timestamp ({e}); write it like 2026-01-01T00:00:00Z"))
        })?;
        let p = match p {
            Ok(p) if p.is_finite() && p >= 0.0 => p,
            _ => return Err(err(format!("'{price}' is not a price; write a number of at least 0, e.g. 0.0041"))),
        };
        if let Some((prev, _)) = points.last() {
            if t <= *prev {
                return Err(err(format!(
                    "{} is not after {} on line {last_line}; entries must be in increasing time order",
                    t.to_rfc3339(),
                    prev.to_rfc3339()
                )));
            }
        }
        points.push((t, p));
        last_line = line_no;
    }
    if points.is_empty() {
        return Err(PriceError::Empty { path: path.into() });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::spot::SkuPrice;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedule_parses_comments_header_and_blank_lines() {
        let p = parse_schedule(
            Path::new("s.csv"),
            "# prices\n\ntimestamp,price\n2026-01-01T00:00:00Z, 0.01\n 2026-01-01T01:00:00+01:00 ,0.02\n2026-01-01T02:00:00Z,0.03\n",
        );
        // 01:00+01:00 is 00:00Z: not after the first entry.
        let e = p.unwrap_err().to_string();
        assert!(e.contains("s.csv:5") && e.contains("increasing time order") && e.contains("line 4"), "{e}");
        let p = parse_schedule(
            Path::new("s.csv"),
            "timestamp,price\n2026-01-01T00:00:00Z,0.01\n2026-01-01T01:00:00Z,0.02\n",
        )
        .unwrap();
        assert_eq!(p, vec![(t("2026-01-01T00:00:00Z"), 0.01), (t("2026-01-01T01:00:00Z"), 0.02)]);
    }

    #[test]
    fn schedule_errors_name_the_line() {
        // (schedule, the line named, or none for the whole file, and what is wrong)
        let cases = [
            ("2026-01-01T00:00:00Z,0.01\nyesterday,0.02\n", Some(2), "RFC 3339"),
            ("2026-01-01T00:00:00Z,abc\n", Some(1), "not a price"),
            ("2026-01-01T00:00:00Z,-1\n", Some(1), "at least 0"),
            ("2026-01-01T00:00:00Z,0.1,x\n", Some(1), "found 3 field(s)"),
            ("timestamp,price\nts,price\n", Some(2), "RFC 3339"),
            ("# nothing\n", None, "holds no prices"),
        ];
        for (text, line, what) in cases {
            let at = line.map_or("s.csv".to_string(), |n| format!("s.csv:{n}"));
            let e = parse_schedule(Path::new("s.csv"), text).unwrap_err().to_string();
            assert!(e.contains(&at) && e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn lookups_are_case_insensitive_and_spot_falls_back() {
        let mut table = PriceTable::new();
        table.insert("Standard_B1ms".into(), SkuPrice { regular: 0.0207, spot: Some(0.0041), spot_schedule: None });
        table.insert("Standard_D2s".into(), SkuPrice { regular: 0.1, spot: None, spot_schedule: None });
        let book = PriceBook::new(&table, None).unwrap();
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(book.regular("standard_b1ms"), 0.0207);
        assert_eq!(book.spot_at("STANDARD_B1MS", now), Some(0.0041));
        assert_eq!(book.canonical("standard_b1ms"), Some("Standard_B1ms"));
        assert_eq!(book.spot_at("Standard_D2s", now), None);
        assert_eq!(book.hourly("Standard_D2s", Priority::Spot, now), 0.1, "no spot price: billed at regular");
        assert_eq!(book.regular("Unknown"), 0.0);
        assert_eq!(book.spot_priced_skus(), vec!["Standard_B1ms".to_string()]);
    }

    #[test]
    fn bad_table_entries_are_refused() {
        let mut table = PriceTable::new();
        table.insert("A".into(), SkuPrice { regular: -1.0, spot: None, spot_schedule: None });
        let e = PriceBook::new(&table, None).unwrap_err().to_string();
        assert!(e.contains("prices.\"A\".regular"), "{e}");
        let mut table = PriceTable::new();
        table.insert("A".into(), SkuPrice { regular: 1.0, spot: None, spot_schedule: None });
        table.insert("a".into(), SkuPrice { regular: 2.0, spot: None, spot_schedule: None });
        let e = PriceBook::new(&table, None).unwrap_err().to_string();
        assert!(e.contains("case-insensitive"), "{e}");
        let mut table = PriceTable::new();
        table.insert(
            "A".into(),
            SkuPrice { regular: 1.0, spot: None, spot_schedule: Some("/nonexistent/x.csv".into()) },
        );
        let e = PriceBook::new(&table, None).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.csv") && e.contains("cannot be read"), "{e}");
    }
}
