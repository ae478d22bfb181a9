//! `freeway replay --since 24h --policies DIR [--config FILE] [--json]`:
//! the request log of the state database run through another policies
//! folder, printed per requested model and tier (the work is in
//! [`crate::replay`]). The database is opened read-only: a gateway may be
//! running on it.

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

use crate::gateway::policy_source;
use crate::policy::{Source, settings};
use crate::replay::{Report, SavedModels, Side, SideError, Tally, daily_limits, run as replay};
use crate::state::db::SCHEMA_VERSION;
use crate::state::log::query;

/// What the command was asked.
pub struct Args<'a> {
    /// The config in force (its state database and policies are the baseline).
    pub current: Option<&'a Path>,
    /// `--since`: a duration back from now, or an RFC 3339 time.
    pub since: &'a str,
    /// `--policies`: the folder to replay with.
    pub policies: &'a Path,
    /// `--config`: the config to replay with (default: the one in force).
    pub config: Option<&'a Path>,
    /// `--json`.
    pub json: bool,
}

/// Runs the command: the report on stdout; `Err` for what keeps it from
/// running (printed by the caller, non-zero exit).
pub fn run(args: &Args<'_>) -> Result<ExitCode, String> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let since_ms = since(args.since, now_ms)?;
    if !args.policies.is_dir() {
        return Err(format!("--policies {}: not a folder", args.policies.display()));
    }
    let (env, catalog, loaded) = super::load(args.current)?;
    let current = loaded.config;
    let Some(db) = current.state_path(&env) else {
        return Err("the config in force keeps state in memory only (state.path: \"\"): there is no request log \
                    to replay"
            .to_owned());
    };
    if !db.is_file() {
        return Err(format!(
            "no state database at {}: run the gateway with this config first (state.path), or point \
             FREEWAY_CONFIG at the config it runs with",
            db.display()
        ));
    }
    let conn = query::open(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    let version: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| format!("{}: {e}", db.display()))?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "{}: the state database has schema version {version}, newer than this freeway's {SCHEMA_VERSION}",
            db.display()
        ));
    }
    let tried = query::attempted_providers(&conn, since_ms).map_err(|e| format!("{}: {e}", db.display()))?;
    let saved = SavedModels::read(&conn).map_err(|e| format!("{}: {e}", db.display()))?.with_tried(tried);
    let changes = settings::load(&settings::file_beside(&db));
    let baseline = Side::build(&current, &catalog, &env, &policy_source(&current), &changes, &saved)
        .map_err(|e| format!("the policies in force: {e}"))?;
    let other = match args.config {
        Some(path) => Some(super::load(Some(path))?),
        None => None,
    };
    let (env, catalog, config) = match &other {
        Some((env, catalog, loaded)) => (env, catalog, &loaded.config),
        None => (&env, &catalog, &current),
    };
    let dir = args.policies.to_path_buf();
    let side = match Side::build(config, catalog, env, &Source::Dir(dir.clone()), &changes, &saved) {
        Ok(side) => side,
        Err(SideError::Policies(errors)) => {
            eprintln!("freeway: the policies in {} do not compile:", dir.display());
            for e in errors {
                let file = dir.join(&e.file);
                match e.line {
                    Some(line) => eprintln!("  {}:{line}: {}", file.display(), e.message),
                    None => eprintln!("  {}: {}", file.display(), e.message),
                }
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.to_string()),
    };
    let tally: Tally = replay(&baseline, &side, |each| query::replay_rows(&conn, since_ms, each))
        .map_err(|e| format!("{}: reading the request log: {e}", db.display()))?;
    let days = (now_ms - since_ms).max(1) as f64 / 86_400_000.0;
    let report = tally.finish(rfc3339(since_ms), rfc3339(now_ms), days, &daily_limits(&side));
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print_report(&report, &dir, &policy_source(&current));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: `24h`, `7d`, `30m`... back from `now_ms`, or an RFC 3339 time.
fn since(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(text.trim()) {
        return Ok(now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    }
    match text.trim().parse::<Timestamp>() {
        Ok(t) if t.as_millisecond() <= now_ms => Ok(t.as_millisecond()),
        Ok(_) => Err(format!("--since {text}: in the future")),
        Err(_) => Err(format!("--since {text}: not a duration (24h, 7d) or an RFC 3339 time (2026-01-31T08:00:00Z)")),
    }
}

fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

fn print_report(report: &Report, dir: &Path, baseline: &Source) {
    if report.requests == 0 {
        println!("No request was logged since {}: nothing to replay.", report.since);
        return;
    }
    let baseline = match baseline {
        Source::Embedded => "the built-in policies".to_owned(),
        Source::Dir(d) => d.display().to_string(),
    };
    println!(
        "Replayed {} requests logged from {} to {} through {} (baseline: {}).",
        report.requests,
        report.since,
        report.until,
        dir.display(),
        baseline
    );
    let without = report.requests - report.with_messages;
    if without > 0 {
        println!(
            "{without} of them without their messages (state.log_bodies is off or they were too large): the \
             policies saw their token estimate, tools and session only."
        );
    }
    if report.baseline_off_log > 0 {
        println!(
            "{} of them get another tier on the baseline than the one logged (the live request had what replay \
             lacks: its messages, a classifier's answer, cooldowns): their comparison is approximate.",
            report.baseline_off_log
        );
    }
    println!();
    println!(
        "{:<28} {:<16} {:>8} {:>13} {:>10}  NOW FIRST",
        "MODEL", "TIER", "REQUESTS", "FIRST CHANGED", "ORDER ONLY"
    );
    for g in &report.groups {
        let to: Vec<String> = g.to.iter().map(|(t, n)| format!("{t} ({n})")).collect();
        let mut note = to.join(", ");
        if !g.new_tiers.is_empty() {
            let tiers: Vec<String> = g.new_tiers.iter().map(|(t, n)| format!("{t} ({n})")).collect();
            note = format!("{note}{}tier now {}", if note.is_empty() { "" } else { "; " }, tiers.join(", "));
        }
        println!(
            "{:<28} {:<16} {:>8} {:>13} {:>10}  {}",
            g.model,
            g.tier.as_deref().unwrap_or("-"),
            g.requests,
            g.first_changed,
            g.order_only,
            note
        );
    }
    println!();
    println!(
        "{} of {} requests change their first choice; {} change their order only.",
        report.first_changed, report.requests, report.order_only
    );
    if report.providers.is_empty() {
        return;
    }
    println!();
    println!("Requests a day going first to each provider (projected from the range), against its daily limit:");
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "PROVIDER", "BEFORE/DAY", "AFTER/DAY", "DAILY LIMIT", "BEFORE", "AFTER"
    );
    for p in &report.providers {
        let share = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0));
        println!(
            "{:<20} {:>12.1} {:>12.1} {:>12} {:>10} {:>10}",
            p.provider,
            p.baseline_per_day,
            p.replay_per_day,
            p.daily_limit.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            share(p.baseline_share),
            share(p.replay_share)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_back_or_a_time() {
        let now = 1_000_000_000_000;
        assert_eq!(since("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(since("2001-09-09T01:46:40Z", now).unwrap(), now);
        assert!(since("2001-09-09T01:46:41Z", now).unwrap_err().contains("future"));
        assert!(since("yesterday", now).unwrap_err().contains("RFC 3339"));
    }
}
