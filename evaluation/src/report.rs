//! `--report report.html`: one self-contained HTML page for people (the figures as inline SVG,
//! no scripts, no external URLs): the leaderboard numbers with their intervals, the ROC curve,
//! the reliability diagram, the decision curve, the strata tables, the slowest jobs and the
//! failed predictions. Every text taken from the inputs is HTML-escaped.

use std::fmt::Write as _;

use crate::evaluate::{Report, Stratum};
use crate::runtime::JobTiming;
use crate::strata_table::StrataByColumn;

/// How many of the slowest jobs the report lists.
pub const SLOWEST_JOBS: usize = 10;

/// One line of the leaderboard table: name, value and interval.
type Row<'a> = (&'a str, Option<f64>, Option<[f64; 2]>);

/// The figures of the report, each a complete SVG document.
#[derive(Debug, Clone, Default)]
pub struct ReportFigures {
    /// ROC curve(s).
    pub roc_svg: String,
    /// Reliability diagram.
    pub reliability_svg: String,
    /// Decision curve.
    pub decision_svg: String,
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The number as written in the report: 4 decimals, "n/a" when absent. The same digits as
/// `format!("{:.4}")` of the `metrics.json` value, which is what the tests look for.
pub fn num(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or("n/a".to_string(), |x| format!("{x:.4}"))
}

fn ci(v: Option<[f64; 2]>) -> String {
    v.map_or(String::new(), |[l, h]| format!(" ({l:.4} to {h:.4})"))
}

/// An SVG document without its XML declaration, to sit inside HTML.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(k) => &svg[k..],
        None => svg,
    }
}

/// The slowest jobs by duration (`exec_duration` or `invoke_duration`, else wall time),
/// longest first; jobs without any time are left out.
pub fn slowest_jobs(timings: &[JobTiming], n: usize) -> Vec<(String, String, f64)> {
    let mut v: Vec<(String, String, f64)> = timings
        .iter()
        .filter_map(|t| Some((t.job.clone(), t.case.clone(), t.duration_s().or(t.wall_s)?)))
        .collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v.truncate(n);
    v
}

fn strata_by_column_html(out: &mut String, s: &StrataByColumn) {
    let _ = write!(
        out,
        "<h2>Strata from {}</h2><p>Strata with fewer than {} cases or one class are listed, not \
         scored.</p>",
        escape(&s.path),
        s.min_cases
    );
    for w in &s.warnings {
        let _ = write!(out, "<p class=\"warn\">{}</p>", escape(w));
    }
    for c in &s.columns {
        let _ = write!(out, "<h3>{}</h3>", escape(&c.column));
        if let Some(why) = &c.skipped {
            let _ = write!(out, "<p>{}</p>", escape(why));
            continue;
        }
        out.push_str(
            "<table><tr><th>value</th><th>cases</th><th>positive</th><th>negative</th>\
             <th>AUC (95% CI)</th><th>QWK (95% CI)</th><th>note</th></tr>",
        );
        for st in &c.strata {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}{}</td>\
                 <td>{}</td></tr>",
                escape(&st.value),
                st.n_cases,
                st.n_positive,
                st.n_negative,
                num(st.auc),
                ci(st.auc_95ci),
                num(st.qwk),
                ci(st.qwk_95ci),
                escape(st.reason.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>");
        match (&c.difference_test, &c.note) {
            (Some(t), _) => {
                let _ = write!(
                    out,
                    "<p>Difference of AUC between {}: chi-square {} on {} df, p = {}.</p>",
                    escape(&t.strata.join(", ")),
                    num(Some(t.chi2)),
                    t.df,
                    num(Some(t.p_value))
                );
            }
            (None, Some(n)) => {
                let _ = write!(out, "<p>{}</p>", escape(n));
            }
            (None, None) => {}
        }
        if c.n_missing > 0 {
            let _ = write!(out, "<p>{} case(s) without a value.</p>", c.n_missing);
        }
    }
}

/// The whole report page.
pub fn render_html(
    title: &str,
    report: &Report,
    figures: &ReportFigures,
    timings: &[JobTiming],
) -> String {
    let a = &report.aggregates;
    let m = &a.metrics;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #bbb;\
         padding:.2em .5em;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         .warn{{color:#a40}}figure{{margin:1em 0}}svg{{max-width:100%;height:auto}}</style>\
         </head><body><h1>{t}</h1><p>Predictions {p} ({pf}); ground truth {g} ({gf}).</p>",
        t = escape(title),
        p = escape(&a.predictions.path),
        pf = escape(&a.predictions.format),
        g = escape(&a.ground_truth.path),
        gf = escape(&a.ground_truth.format),
    );
    let rows: Vec<Row> = vec![
        ("AUC", Some(m.auc), m.auc_95ci),
        ("QWK (CO-RADS)", m.qwk, m.qwk_95ci),
        ("Sensitivity at 0.5", m.sensitivity, None),
        ("Specificity at 0.5", m.specificity, None),
        ("Brier score", Some(m.brier), m.brier_95ci),
        ("ECE (10 equal-width bins)", Some(m.ece_uniform_10), None),
        ("Calibration intercept", m.calibration_intercept, None),
        ("Calibration slope", m.calibration_slope, None),
        (
            "Sensitivity at specificity 0.90",
            Some(m.sensitivity_at_specificity_0_90.value),
            m.sensitivity_at_specificity_0_90.value_95ci,
        ),
        (
            "Specificity at sensitivity 0.90",
            Some(m.specificity_at_sensitivity_0_90.value),
            m.specificity_at_sensitivity_0_90.value_95ci,
        ),
    ];
    let _ = write!(
        out,
        "<h2>Leaderboard</h2><p>{} cases ({} positive, {} negative), {} patients, {} excluded. \
         Intervals: 95% percentile bootstrap.</p><table><tr><th>metric</th><th>value</th>\
         <th>95% CI</th></tr>",
        m.n_cases, m.n_positive, m.n_negative, m.n_patients, a.n_excluded
    );
    for (name, v, c) in rows {
        let _ = write!(
            out,
            "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>",
            num(v),
            c.map_or(String::new(), |[l, h]| format!("{l:.4} to {h:.4}"))
        );
    }
    out.push_str("</table>");
    if let Some(c) = &a.compare {
        let _ = write!(
            out,
            "<p>Compared with {}: AUC {}{}, difference {}{}, bootstrap p = {}, DeLong p = {}.</p>",
            escape(&c.other),
            num(Some(c.auc_other)),
            ci(c.auc_other_95ci),
            num(Some(c.auc_difference)),
            ci(c.auc_difference_95ci),
            num(c.auc_p_value),
            num(c.delong.map(|d| d.p_value))
        );
    }
    for (name, svg) in [
        ("ROC curve", &figures.roc_svg),
        ("Reliability diagram", &figures.reliability_svg),
        ("Decision curve", &figures.decision_svg),
    ] {
        if !svg.is_empty() {
            let _ = write!(out, "<h2>{name}</h2><figure>{}</figure>", inline_svg(svg));
        }
    }
    if let Some(s) = &a.strata {
        out.push_str(
            "<h2>Slice-thickness strata</h2><table><tr><th>stratum</th><th>cases</th>\
                      <th>AUC (95% CI)</th><th>QWK (95% CI)</th></tr>",
        );
        for (name, st) in [
            ("<= 1.5 mm", &s.slice_thickness_le_1_5mm),
            ("> 1.5 mm", &s.slice_thickness_gt_1_5mm),
        ] {
            let _ = match st {
                Stratum::Metrics(x) => write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}{}</td></tr>",
                    escape(name),
                    x.n_cases,
                    num(Some(x.auc)),
                    ci(x.auc_95ci),
                    num(x.qwk),
                    ci(x.qwk_95ci)
                ),
                Stratum::Undefined { n_cases, error, .. } => write!(
                    out,
                    "<tr><td>{}</td><td>{n_cases}</td><td colspan=\"2\">{}</td></tr>",
                    escape(name),
                    escape(error)
                ),
            };
        }
        out.push_str("</table>");
    }
    if let Some(s) = &a.strata_by_column {
        strata_by_column_html(&mut out, s);
    }
    let slow = slowest_jobs(timings, SLOWEST_JOBS);
    out.push_str("<h2>Slowest jobs</h2>");
    if slow.is_empty() {
        out.push_str("<p>No job times (only the platform's predictions.json has them).</p>");
    } else {
        out.push_str("<table><tr><th>job</th><th>case</th><th>seconds</th></tr>");
        for (job, case, s) in &slow {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{s:.1}</td></tr>",
                escape(job),
                escape(case)
            );
        }
        out.push_str("</table>");
    }
    for p in a.runtime.iter().flat_map(|r| &r.problems) {
        let _ = write!(out, "<p class=\"warn\">{}</p>", escape(p));
    }
    out.push_str("<h2>Failed predictions</h2>");
    if a.failed_predictions.is_empty() {
        out.push_str("<p>None.</p>");
    } else {
        out.push_str("<table><tr><th>case</th><th>origin</th><th>reason</th></tr>");
        for f in &a.failed_predictions {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(f.case.as_deref().unwrap_or("")),
                escape(&f.origin),
                escape(&f.reason)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}
