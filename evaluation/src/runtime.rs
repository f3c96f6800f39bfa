//! What a submission costs: the run time of each algorithm job as the platform's
//! `predictions.json` records it (`exec_duration` or `invoke_duration`, and `started_at` /
//! `completed_at`), summarised as median, 95th percentile and maximum.
//!
//! Missing or unreadable timing fields never fail an evaluation: the jobs concerned are listed
//! in `problems` and left out of the statistics, and the rest of the evaluation goes on.

use serde::Serialize;
use serde_json::Value;

use crate::bootstrap::sorted_percentile;

/// How many problems are listed by name before "and N more".
const MAX_LISTED: usize = 10;

/// The timing fields of one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobTiming {
    /// The job's pk.
    pub job: String,
    /// The case the job ran on.
    pub case: String,
    /// `exec_duration` in seconds (exec-mode jobs).
    pub exec_duration_s: Option<f64>,
    /// `invoke_duration` in seconds (invoke-mode calls).
    pub invoke_duration_s: Option<f64>,
    /// `completed_at - started_at` in seconds.
    pub wall_s: Option<f64>,
    /// Fields that are present but unreadable, or inconsistent, named with their values.
    pub problems: Vec<String>,
}

impl JobTiming {
    /// Reads the timing fields of a job of `predictions.json`; never fails.
    pub fn from_job(job: &Value, pk: &str, case: &str) -> Self {
        let mut problems = Vec::new();
        let mut duration = |key: &str| match job.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let d = match v {
                    Value::String(s) => parse_duration(s),
                    Value::Number(n) => n.as_f64().filter(|d| d.is_finite() && *d >= 0.0),
                    _ => None,
                };
                if d.is_none() {
                    problems.push(format!("{key} {v} is not a duration"));
                }
                d
            }
        };
        let exec_duration_s = duration("exec_duration");
        let invoke_duration_s = duration("invoke_duration");
        let mut time = |key: &str| match job.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let t = v.as_str().and_then(parse_timestamp);
                if t.is_none() {
                    problems.push(format!("{key} {v} is not an ISO 8601 time"));
                }
                t
            }
        };
        let (started, completed) = (time("started_at"), time("completed_at"));
        let wall_s = match (started, completed) {
            (Some(s), Some(c)) if c >= s => Some(c - s),
            (Some(_), Some(_)) => {
                problems.push("completed_at is before started_at".into());
                None
            }
            _ => None,
        };
        Self {
            job: pk.into(),
            case: case.into(),
            exec_duration_s,
            invoke_duration_s,
            wall_s,
            problems,
        }
    }

    /// The job's run time as the platform measured it: `exec_duration`, else `invoke_duration`.
    pub fn duration_s(&self) -> Option<f64> {
        self.exec_duration_s.or(self.invoke_duration_s)
    }
}

/// Parses the platform's duration text: Django's `[-][D ]HH:MM:SS[.ffffff]` (also `MM:SS` and
/// plain seconds) or ISO 8601 `P[nD][T[nH][nM][nS]]`. Negative durations are refused.
pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.starts_with('-') {
        return None;
    }
    if let Some(iso) = s.strip_prefix('P') {
        return parse_iso_duration(iso);
    }
    let (days, clock) = match s.split_once(' ') {
        Some((d, rest)) => (d.trim().parse::<u64>().ok()?, rest.trim()),
        None => (0, s),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let num = |p: &str| -> Option<f64> {
        let v: f64 = p.parse().ok()?;
        (v.is_finite() && v >= 0.0 && !p.starts_with('+')).then_some(v)
    };
    let secs = match parts.as_slice() {
        [h, m, sec] => num(h)? * 3600.0 + num(m)? * 60.0 + num(sec)?,
        [m, sec] => num(m)? * 60.0 + num(sec)?,
        [sec] => num(sec)?,
        _ => return None,
    };
    Some(days as f64 * 86_400.0 + secs)
}

/// The part of an ISO 8601 duration after `P`.
fn parse_iso_duration(s: &str) -> Option<f64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut total = 0.0;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut rest = part;
        for &(unit, scale) in units {
            if let Some((v, r)) = rest.split_once(unit) {
                let v: f64 = v
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
                total += v * scale;
                rest = r;
                any = true;
            }
        }
        rest.is_empty().then_some(())
    };
    take(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    if let Some(t) = time {
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    any.then_some(total)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an ISO 8601 time `YYYY-MM-DDTHH:MM:SS[.f][Z|+HH:MM|-HH:MM]` into seconds since the
/// epoch (UTC; a time without offset is taken as UTC).
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    // Split off the offset: 'Z', or the last '+' / '-' in the time part.
    let (clock, offset_s) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0.0)
    } else if let Some(k) = rest.rfind(['+', '-']) {
        let (c, off) = rest.split_at(k);
        let sign = if off.starts_with('-') { -1.0 } else { 1.0 };
        let off = off.get(1..)?;
        let (h, m) = match off.split_once(':') {
            Some((h, m)) => (h, m),
            None if off.len() == 4 => off.split_at(2),
            None => (off, "0"),
        };
        let (h, m): (f64, f64) = (h.parse().ok()?, m.parse().ok()?);
        (c, sign * (h * 3600.0 + m * 60.0))
    } else {
        (rest, 0.0)
    };
    let mut t = clock.splitn(3, ':');
    let h: f64 = t.next()?.parse().ok()?;
    let mi: f64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next().map_or(Some(0.0), |v| v.parse().ok())?;
    if !(0.0..24.0).contains(&h) || !(0.0..60.0).contains(&mi) || !(0.0..61.0).contains(&sec) {
        return None;
    }
    let days = days_from_civil(y, mo, day) as f64;
    Some(days * 86_400.0 + h * 3600.0 + mi * 60.0 + sec - offset_s)
}

/// Median, 95th percentile and maximum of per-job seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeStats {
    /// Which field the seconds come from.
    pub source: String,
    /// Jobs with a value.
    pub n_jobs: usize,
    /// Median (numpy's linear percentile 50).
    pub median_s: f64,
    /// 95th percentile (numpy's linear interpolation).
    pub p95_s: f64,
    /// Maximum.
    pub max_s: f64,
    /// Sum over the jobs (what the submission cost in total).
    pub total_s: f64,
}

impl RuntimeStats {
    fn of(source: String, mut values: Vec<f64>) -> Option<Self> {
        values.sort_by(f64::total_cmp);
        Some(Self {
            source,
            n_jobs: values.len(),
            median_s: sorted_percentile(&values, 50.0)?,
            p95_s: sorted_percentile(&values, 95.0)?,
            max_s: *values.last()?,
            total_s: values.iter().sum(),
        })
    }
}

/// `aggregates.runtime` of `metrics.json` (platform predictions only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeSummary {
    /// Jobs with a prediction in `predictions.json`.
    pub n_jobs: usize,
    /// Run time per job as the platform measured it (`exec_duration`, or `invoke_duration` for
    /// invoke-mode algorithms); null when no job has one.
    pub duration: Option<RuntimeStats>,
    /// `completed_at - started_at` per job (includes queueing and container start); null when
    /// no job has both.
    pub wall: Option<RuntimeStats>,
    /// Why some jobs are left out, one sentence each (the first few jobs named); empty when all
    /// jobs have every field.
    pub problems: Vec<String>,
}

fn listed(jobs: &[String]) -> String {
    let mut s = jobs
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if jobs.len() > MAX_LISTED {
        s.push_str(&format!(" and {} more", jobs.len() - MAX_LISTED));
    }
    s
}

/// Summarises the jobs' timings.
pub fn summarize(jobs: &[JobTiming]) -> RuntimeSummary {
    let name = |j: &JobTiming| format!("job {} ({})", j.job, j.case);
    let mut problems = Vec::new();
    // The jobs lacking a figure, as one problem naming them.
    let mut lacking = |missing: fn(&JobTiming) -> bool, what: &str, statistics: &str| {
        let names: Vec<String> = jobs.iter().filter(|j| missing(j)).map(name).collect();
        if !names.is_empty() {
            problems.push(format!(
                "{} of {} job(s) have no readable {what}, so the {statistics} statistics leave \
                 them out: {}",
                names.len(),
                jobs.len(),
                listed(&names)
            ));
        }
    };
    lacking(
        |j| j.duration_s().is_none(),
        "exec_duration or invoke_duration",
        "run-time",
    );
    lacking(
        |j| j.wall_s.is_none(),
        "started_at and completed_at",
        "wall-time",
    );
    for j in jobs {
        for p in &j.problems {
            problems.push(format!("{}: {p}", name(j)));
        }
    }
    let has = |f: fn(&JobTiming) -> bool| jobs.iter().any(f);
    let source = match (
        has(|j| j.exec_duration_s.is_some()),
        has(|j| j.exec_duration_s.is_none() && j.invoke_duration_s.is_some()),
    ) {
        (true, true) => "exec_duration, invoke_duration",
        (false, true) => "invoke_duration",
        _ => "exec_duration",
    };
    RuntimeSummary {
        n_jobs: jobs.len(),
        duration: RuntimeStats::of(
            source.into(),
            jobs.iter().filter_map(JobTiming::duration_s).collect(),
        ),
        wall: RuntimeStats::of(
            "completed_at - started_at".into(),
            jobs.iter().filter_map(|j| j.wall_s).collect(),
        ),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_platform_formats() {
        assert_eq!(parse_duration("00:03:00.500000"), Some(180.5));
        assert_eq!(parse_duration("1 02:00:00"), Some(86_400.0 + 7200.0));
        assert_eq!(parse_duration("12.25"), Some(12.25));
        assert_eq!(parse_duration("PT1M30.5S"), Some(90.5));
        assert_eq!(parse_duration("P1DT1H"), Some(90_000.0));
        for bad in ["", "-00:00:01", "soon", "1:2:3:4", "P", "PT5X"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_with_offsets() {
        let z = parse_timestamp("2021-10-08T12:00:00.000000+00:00").unwrap();
        assert_eq!(z, 1_633_694_400.0);
        assert_eq!(parse_timestamp("2021-10-08T12:00:00Z"), Some(z));
        assert_eq!(parse_timestamp("2021-10-08T14:00:00+02:00"), Some(z));
        assert_eq!(parse_timestamp("2021-10-08T07:30:00-04:30"), Some(z));
        assert_eq!(parse_timestamp("2021-10-08"), None);
        assert_eq!(parse_timestamp("2021-13-08T12:00:00Z"), None);
    }

    #[test]
    fn summary_leaves_out_and_names_jobs_without_durations() {
        let mut jobs: Vec<JobTiming> = (1..=20)
            .map(|k| {
                let job = serde_json::json!({
                    "exec_duration": format!("00:00:{k:02}.000000"),
                    "started_at": "2021-10-08T12:00:00Z",
                    "completed_at": "2021-10-08T12:01:00Z",
                });
                JobTiming::from_job(&job, &format!("pk{k}"), &format!("case{k}"))
            })
            .collect();
        let bad =
            serde_json::json!({"exec_duration": "later", "started_at": "2021-10-08T12:00:00Z"});
        jobs.push(JobTiming::from_job(&bad, "pk21", "case21"));
        let s = summarize(&jobs);
        let d = s.duration.unwrap();
        // numpy.percentile(range(1, 21), [50, 95]) = [10.5, 19.05]
        assert_eq!((d.n_jobs, d.median_s, d.max_s), (20, 10.5, 20.0));
        assert!((d.p95_s - 19.05).abs() < 1e-12);
        assert_eq!(d.source, "exec_duration");
        assert_eq!(s.wall.unwrap().median_s, 60.0);
        assert!(s.problems[0].starts_with("1 of 21 job(s) have no readable exec_duration"));
        assert!(s.problems[0].contains("job pk21 (case21)"));
        assert!(s
            .problems
            .iter()
            .any(|p| p.contains("\"later\" is not a duration")));
        let none = summarize(&jobs[20..]);
        assert_eq!(none.duration, None);
    }
}
