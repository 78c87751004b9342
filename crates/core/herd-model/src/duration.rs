//! ISO 8601 durations (`PT2M`, `PT1H30M`, `P1D`), as Azure writes every policy timeout.

/// Parses `PnDTnHnMnS` (each part optional, seconds may be fractional). Years, months and weeks
/// are refused: their length is not fixed.
pub fn parse_iso8601(s: &str) -> Option<chrono::Duration> {
    let rest = s.trim().strip_prefix(['P', 'p'])?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once(['T', 't']) {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total_ms: i64 = 0;
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut num = String::new();
        let mut last_unit = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                continue;
            }
            let pos = units.iter().position(|(u, _)| u.eq_ignore_ascii_case(&c))?;
            if pos < last_unit || num.is_empty() {
                return None;
            }
            last_unit = pos + 1;
            let v: f64 = num.parse().ok()?;
            total_ms = total_ms.checked_add((v * units[pos].1 as f64) as i64)?;
            num.clear();
        }
        num.is_empty().then_some(())
    };
    take(date, &[('D', 86_400_000)])?;
    if let Some(t) = time {
        take(t, &[('H', 3_600_000), ('M', 60_000), ('S', 1000)])?;
    }
    Some(chrono::Duration::milliseconds(total_ms))
}

/// Writes a duration the way Azure does (`PT1H30M`, `PT0S`).
pub fn format_iso8601(d: chrono::Duration) -> String {
    let mut secs = d.num_seconds().max(0);
    let days = secs / 86_400;
    secs %= 86_400;
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if h > 0 || m > 0 || s > 0 || days == 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 || (h == 0 && m == 0) {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_azure_durations() {
        assert_eq!(parse_iso8601("PT2M"), Some(chrono::Duration::minutes(2)));
        assert_eq!(parse_iso8601("PT1H30M"), Some(chrono::Duration::minutes(90)));
        assert_eq!(parse_iso8601("P1DT1S"), Some(chrono::Duration::seconds(86_401)));
        assert_eq!(parse_iso8601("PT0.5S"), Some(chrono::Duration::milliseconds(500)));
        for bad in ["", "P", "PT", "2M", "PT2X", "PTM", "PT1M2H", "P1Y"] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
        assert_eq!(format_iso8601(chrono::Duration::minutes(90)), "PT1H30M");
        assert_eq!(format_iso8601(chrono::Duration::zero()), "PT0S");
    }
}
