//! Reading what upstreams say about their rate limits: the common header
//! families, parsed into [`RateReport`]s for `read-limits`, and the
//! durations they write resets in.
//!
//! A plugin has no clock: a reset written as a duration becomes
//! [`ResetTime::AfterMs`], one written as a point in time
//! [`ResetTime::AtUnixMs`]; freeway turns either into a wait.

use crate::{ErrorKind, QuotaWindow, RateLimit, RateReport, RateUnit, ResetTime};

/// The value of header `name` (names are lower case on both sides).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
}

/// A count in a header: a plain non-negative integer (a decimal part, which
/// some upstreams write, is dropped; an absurd one saturates).
pub fn parse_count(text: &str) -> Option<u64> {
    let text = text.trim();
    let whole = text.split_once('.').map_or(text, |(whole, _)| whole);
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(whole.parse::<u64>().unwrap_or(u64::MAX))
}

/// A duration as Go prints one (`1m26.4s`, `2.5s`, `150ms`, `7.66s`,
/// `1h2m3s`, `0s`, also `us`/`µs`/`ns`) or as plain seconds (`30`, `0.5`),
/// in milliseconds (rounded down; saturating). `None` for anything else.
/// Never panics, whatever the text.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Some(seconds) = parse_decimal(text) {
        return Some(scale(seconds, 1000));
    }
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        if number_len == 0 {
            return None;
        }
        let (number, tail) = rest.split_at(number_len);
        let value = parse_decimal(number)?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        // Each unit as (numerator, denominator) of a millisecond.
        let (per, div) = match unit {
            "h" => (3_600_000, 1),
            "m" => (60_000, 1),
            "s" => (1000, 1),
            "ms" => (1, 1),
            "us" | "µs" | "μs" => (1, 1000),
            "ns" => (1, 1_000_000),
            _ => return None,
        };
        total = total.saturating_add(scale(value, per) / div);
        rest = tail;
    }
    Some(total)
}

/// A non-negative decimal number as (integer part, fraction digits up to
/// nine, as nanos). `None` unless the whole text is one.
fn parse_decimal(text: &str) -> Option<(u64, u64)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = if whole.is_empty() { 0 } else { whole.parse::<u64>().unwrap_or(u64::MAX) };
    let mut nanos: u64 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u64::from(digit - b'0') * 10u64.pow(8 - i as u32);
    }
    Some((whole, nanos))
}

/// `value` × `per`, where `value` is (whole, nanos): saturating.
fn scale((whole, nanos): (u64, u64), per: u64) -> u64 {
    whole.saturating_mul(per).saturating_add(nanos.saturating_mul(per) / 1_000_000_000)
}

/// The window a header's suffix names (`-minute`, `-day`, `-month`).
fn window_suffix(suffix: &str) -> Option<QuotaWindow> {
    match suffix {
        "" => None,
        "-minute" | "-min" => Some(QuotaWindow::Minute),
        "-day" => Some(QuotaWindow::Day),
        "-month" => Some(QuotaWindow::Month),
        _ => Some(QuotaWindow::Unknown),
    }
}

/// The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}[-window]`
/// family, with its resets written as durations:
///
/// - Groq sends them without a window suffix; its rate-limits page says
///   `x-ratelimit-limit-requests` is always requests per day (RPD) and
///   `x-ratelimit-limit-tokens` always tokens per minute (TPM), resets
///   such as `2m59.56s` and `7.66s`
///   (<https://console.groq.com/docs/rate-limits>). `bare_requests` and
///   `bare_tokens` say which windows the unsuffixed headers mean.
/// - Cerebras suffixes the window: `x-ratelimit-limit-requests-day`,
///   `x-ratelimit-remaining-tokens-minute`, `x-ratelimit-reset-requests-day`
///   in (fractional) seconds
///   (<https://inference-docs.cerebras.ai/support/rate-limits>).
/// - Mistral too: `x-ratelimit-limit-tokens-minute`,
///   `x-ratelimit-remaining-tokens-month`
///   (<https://docs.mistral.ai/deployment/laplateforme/tier/>).
///
/// One report per (unit, window) that has a limit or a remaining count.
pub fn suffixed_reports(
    headers: &[(String, String)],
    bare_requests: QuotaWindow,
    bare_tokens: QuotaWindow,
) -> Vec<RateReport> {
    let mut reports: Vec<RateReport> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let Some(rest) = name.strip_prefix("x-ratelimit-") else { continue };
        let Some((field, rest)) = rest.split_once('-') else { continue };
        let (unit, suffix) = if let Some(suffix) = rest.strip_prefix("requests") {
            (RateUnit::Requests, suffix)
        } else if let Some(suffix) = rest.strip_prefix("tokens") {
            (RateUnit::Tokens, suffix)
        } else {
            continue;
        };
        let window = match window_suffix(suffix) {
            Some(window) => window,
            None if unit == RateUnit::Requests => bare_requests,
            None => bare_tokens,
        };
        let index = match reports.iter().position(|r| r.unit == unit && r.window == window) {
            Some(i) => i,
            None => {
                reports.push(RateReport { unit, window, limit: None, remaining: None, reset: None });
                reports.len() - 1
            }
        };
        let report = &mut reports[index];
        match field {
            "limit" => report.limit = parse_count(value),
            "remaining" => report.remaining = parse_count(value),
            "reset" => report.reset = parse_duration_ms(value).map(ResetTime::AfterMs),
            _ => {}
        }
    }
    reports.retain(|r| r.limit.is_some() || r.remaining.is_some());
    reports
}

/// OpenRouter's `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
/// `X-RateLimit-Reset` (requests; the reset a Unix time in milliseconds:
/// <https://openrouter.ai/docs/api-reference/limits>). The window is not
/// in the headers: `window` says it (unknown, unless the caller knows).
pub fn plain_report(headers: &[(String, String)], window: QuotaWindow) -> Option<RateReport> {
    let limit = header(headers, "x-ratelimit-limit").and_then(parse_count);
    let remaining = header(headers, "x-ratelimit-remaining").and_then(parse_count);
    if limit.is_none() && remaining.is_none() {
        return None;
    }
    let reset = header(headers, "x-ratelimit-reset").and_then(parse_count).map(|at| {
        // An epoch in seconds would be before 2001 read as milliseconds:
        // some servers of the same family write seconds.
        if at < 1_000_000_000_000 { ResetTime::AtUnixMs(at.saturating_mul(1000)) } else { ResetTime::AtUnixMs(at) }
    });
    Some(RateReport { unit: RateUnit::Requests, window, limit, remaining, reset })
}

/// An RFC 3339 time (`2026-01-02T03:04:05Z`, `2026-01-02T03:04:05.5+01:00`)
/// as Unix milliseconds; `None` for anything else or a time before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let b = text.as_bytes();
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't')) {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) { s.parse().ok() } else { None }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = text.get(19..)?;
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let (value, tail) = fraction.split_at(digits);
        millis = value.bytes().take(3).enumerate().map(|(i, d)| i64::from(d - b'0') * 10i64.pow(2 - i as u32)).sum();
        rest = tail;
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let (h, m) = rest.get(1..).and_then(|o| o.split_once(':'))?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm, proleptic
    // Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds.checked_mul(1000)?.checked_add(millis)?).ok()
}

/// Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,
/// output-tokens}-{limit,remaining,reset}` (per minute; resets in RFC 3339:
/// <https://docs.anthropic.com/en/api/rate-limits#response-headers>).
/// Input and output tokens are reported as tokens: the smallest remaining
/// of the three token limits is what binds.
pub fn anthropic_reports(headers: &[(String, String)]) -> Vec<RateReport> {
    let read = |unit: &str| {
        let get = |field: &str| header(headers, &format!("anthropic-ratelimit-{unit}-{field}"));
        let limit = get("limit").and_then(parse_count);
        let remaining = get("remaining").and_then(parse_count);
        let reset = get("reset").and_then(parse_rfc3339_ms).map(ResetTime::AtUnixMs);
        (limit.is_some() || remaining.is_some()).then_some((limit, remaining, reset))
    };
    let mut reports = Vec::new();
    if let Some((limit, remaining, reset)) = read("requests") {
        reports.push(RateReport { unit: RateUnit::Requests, window: QuotaWindow::Minute, limit, remaining, reset });
    }
    let tightest = ["tokens", "input-tokens", "output-tokens"]
        .into_iter()
        .filter_map(read)
        .min_by_key(|(_, remaining, _)| remaining.unwrap_or(u64::MAX));
    if let Some((limit, remaining, reset)) = tightest {
        reports.push(RateReport { unit: RateUnit::Tokens, window: QuotaWindow::Minute, limit, remaining, reset });
    }
    reports
}

impl ErrorKind {
    /// A 429 about `window`, retry after `retry_after_ms` if known.
    pub fn rate_limited(retry_after_ms: Option<u64>, window: QuotaWindow) -> Self {
        ErrorKind::RateLimited(RateLimit { retry_after_ms, window })
    }
}

/// The window an error message names, for upstreams that say it in words
/// ("tokens per day (TPD)", "requests per minute", "free-models-per-day").
pub fn window_in_message(message: &str) -> QuotaWindow {
    let lower = message.to_ascii_lowercase();
    if lower.contains("per day") || lower.contains("per-day") || lower.contains("daily") {
        QuotaWindow::Day
    } else if lower.contains("per minute") || lower.contains("per-min") || lower.contains("/ minute") {
        QuotaWindow::Minute
    } else if lower.contains("per month") || lower.contains("/ month") || lower.contains("monthly") {
        QuotaWindow::Month
    } else {
        QuotaWindow::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn go_durations_and_plain_seconds() {
        for (text, ms) in [
            ("1m26.4s", 86_400),
            ("2.5s", 2500),
            ("150ms", 150),
            ("7.66s", 7660),
            ("1h2m3s", 3_723_000),
            ("2m59.56s", 179_560),
            ("0s", 0),
            ("30", 30_000),
            ("0.5", 500),
            ("33011.382867097855", 33_011_382),
            ("1500us", 1),
            ("20m6.432s", 1_206_432),
        ] {
            assert_eq!(parse_duration_ms(text), Some(ms), "{text}");
        }
        for text in ["", "s", "1x", "-1s", "1.2.3s", "m", "1 s", ".", "1e3"] {
            assert_eq!(parse_duration_ms(text), None, "{text}");
        }
        assert_eq!(parse_duration_ms("99999999999999999999h"), Some(u64::MAX));
    }

    #[test]
    fn the_duration_parser_never_panics() {
        // Every string of up to four characters from an alphabet of the
        // characters the parser treats specially, and a few long ones.
        let alphabet = ["0", "9", ".", "h", "m", "s", "u", "n", "µ", " ", "-"];
        let mut texts = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> =
                texts.iter().flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}"))).collect();
            texts.extend(longer);
        }
        texts.push("9".repeat(400) + "h");
        texts.push(".".repeat(400));
        texts.push("1.".to_owned() + &"9".repeat(400) + "s");
        for text in texts {
            let _ = parse_duration_ms(&text);
        }
    }

    #[test]
    fn groq_headers_are_requests_per_day_and_tokens_per_minute() {
        let headers = h(&[
            ("x-ratelimit-limit-requests", "14400"),
            ("x-ratelimit-limit-tokens", "18000"),
            ("x-ratelimit-remaining-requests", "14370"),
            ("x-ratelimit-remaining-tokens", "17997"),
            ("x-ratelimit-reset-requests", "2m59.56s"),
            ("x-ratelimit-reset-tokens", "7.66s"),
            ("retry-after", "2"),
        ]);
        let reports = suffixed_reports(&headers, QuotaWindow::Day, QuotaWindow::Minute);
        assert_eq!(reports.len(), 2);
        let r = &reports[0];
        assert_eq!(
            (r.unit, r.window, r.limit, r.remaining),
            (RateUnit::Requests, QuotaWindow::Day, Some(14400), Some(14370))
        );
        assert!(matches!(r.reset, Some(ResetTime::AfterMs(179_560))));
        let t = &reports[1];
        assert_eq!(
            (t.unit, t.window, t.limit, t.remaining),
            (RateUnit::Tokens, QuotaWindow::Minute, Some(18000), Some(17997))
        );
        assert!(matches!(t.reset, Some(ResetTime::AfterMs(7660))));
    }

    #[test]
    fn cerebras_and_mistral_headers_carry_their_window() {
        let headers = h(&[
            ("x-ratelimit-limit-requests-day", "14400"),
            ("x-ratelimit-remaining-requests-day", "0"),
            ("x-ratelimit-reset-requests-day", "33011.382867097855"),
            ("x-ratelimit-limit-tokens-minute", "60000"),
            ("x-ratelimit-remaining-tokens-minute", "59000"),
            ("x-ratelimit-reset-tokens-minute", "11.38"),
            ("x-ratelimit-limit-tokens-month", "1000000000"),
            ("x-ratelimit-remaining-tokens-month", "999"),
        ]);
        let reports = suffixed_reports(&headers, QuotaWindow::Day, QuotaWindow::Minute);
        let windows: Vec<_> = reports.iter().map(|r| (r.unit, r.window, r.remaining)).collect();
        assert_eq!(
            windows,
            [
                (RateUnit::Requests, QuotaWindow::Day, Some(0)),
                (RateUnit::Tokens, QuotaWindow::Minute, Some(59000)),
                (RateUnit::Tokens, QuotaWindow::Month, Some(999)),
            ]
        );
        assert!(matches!(reports[0].reset, Some(ResetTime::AfterMs(33_011_382))));
        assert!(reports[2].reset.is_none());
    }

    #[test]
    fn openrouter_headers_reset_at_an_epoch_in_milliseconds() {
        let headers =
            h(&[("X-RateLimit-Limit", "50"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "1741305600000")]);
        let r = plain_report(&headers, QuotaWindow::Unknown).unwrap();
        assert_eq!((r.limit, r.remaining), (Some(50), Some(0)));
        assert!(matches!(r.reset, Some(ResetTime::AtUnixMs(1_741_305_600_000))));
        let seconds = h(&[("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", "1741305600")]);
        assert!(matches!(
            plain_report(&seconds, QuotaWindow::Unknown).unwrap().reset,
            Some(ResetTime::AtUnixMs(1_741_305_600_000))
        ));
        assert!(plain_report(&h(&[("x-ratelimit-reset", "1")]), QuotaWindow::Unknown).is_none());
    }

    #[test]
    fn rfc3339_times_become_unix_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2025-03-07T00:00:00Z"), Some(1_741_305_600_000));
        assert_eq!(parse_rfc3339_ms("2025-03-07T01:00:00.25+01:00"), Some(1_741_305_600_250));
        assert_eq!(parse_rfc3339_ms("2024-02-29T12:00:00Z"), Some(1_709_208_000_000));
        for bad in [
            "",
            "2025-03-07",
            "2025-13-07T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2025-03-07T00:00:00",
            "2025-03-07T00:00:00+1",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn anthropic_headers_report_requests_and_the_tightest_tokens() {
        let headers = h(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2025-03-07T00:00:01Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "100"),
            ("anthropic-ratelimit-input-tokens-reset", "2025-03-07T00:00:30Z"),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7000"),
        ]);
        let reports = anthropic_reports(&headers);
        assert_eq!(reports.len(), 2);
        assert_eq!((reports[0].unit, reports[0].remaining), (RateUnit::Requests, Some(49)));
        assert!(matches!(reports[0].reset, Some(ResetTime::AtUnixMs(1_741_305_601_000))));
        assert_eq!(
            (reports[1].unit, reports[1].limit, reports[1].remaining),
            (RateUnit::Tokens, Some(40000), Some(100))
        );
    }

    #[test]
    fn messages_name_their_window() {
        assert_eq!(window_in_message("Rate limit exceeded: free-models-per-day. Add 10 credits"), QuotaWindow::Day);
        assert_eq!(window_in_message("Rate limit exceeded: free-models-per-min."), QuotaWindow::Minute);
        assert_eq!(
            window_in_message("Rate limit reached for model `x` on tokens per day (TPD): Limit 100000"),
            QuotaWindow::Day
        );
        assert_eq!(window_in_message("on requests per minute (RPM): Limit 30"), QuotaWindow::Minute);
        assert_eq!(window_in_message("slow down"), QuotaWindow::Unknown);
    }
}
