//! The training log (CSV and JSON) and the loss-curve plot (hand-written SVG).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TrainError;

/// One validation point of one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// Member index (0-based).
    pub member: usize,
    /// Updates done.
    pub step: usize,
    /// Epochs done (training cases seen / training cases).
    pub epoch: f64,
    /// Mean training loss since the previous row.
    pub train_loss: f64,
    /// Validation loss (class-balanced), if validated.
    pub val_loss: Option<f64>,
    /// Validation quadratic weighted kappa of CO-RADS.
    pub val_qwk: Option<f64>,
    /// Validation AUC, CO-RADS >= 4 positive.
    pub val_auc: Option<f64>,
    /// Seconds of training of this member so far.
    pub seconds: f64,
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.6}")).unwrap_or_default()
}

/// Writes `rows` as CSV.
pub fn write_csv(path: &Path, rows: &[LogRow]) -> Result<(), TrainError> {
    let mut s = String::from("member,step,epoch,train_loss,val_loss,val_qwk,val_auc,seconds\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{:.4},{:.6},{},{},{},{:.1}",
            r.member,
            r.step,
            r.epoch,
            r.train_loss,
            opt(r.val_loss),
            opt(r.val_qwk),
            opt(r.val_auc),
            r.seconds
        );
    }
    super::write_file(path, s.as_bytes())
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// About five round tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

#[derive(Clone, Copy)]
enum Series {
    TrainLoss,
    ValLoss,
    ValQwk,
}

struct Panel<'a> {
    title: &'a str,
    y0: f64,
    height: f64,
    lo: f64,
    hi: f64,
}

/// Plots the training and validation loss (top) and validation QWK (bottom) against the step,
/// one colour per member (training loss solid, validation loss dashed).
pub fn write_svg(path: &Path, rows: &[LogRow], title: &str) -> Result<(), TrainError> {
    let (w, h) = (860.0, 620.0);
    let (left, right) = (70.0, 20.0);
    let max_step = rows.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let losses: Vec<f64> = rows
        .iter()
        .flat_map(|r| [Some(r.train_loss), r.val_loss])
        .flatten()
        .filter(|v| v.is_finite())
        .collect();
    let lmax = losses.iter().copied().fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let qmin = rows
        .iter()
        .filter_map(|r| r.val_qwk)
        .fold(0.0f64, f64::min)
        .max(-1.0);
    let panels = [
        Panel {
            title: "loss (solid: training, dashed: validation)",
            y0: 50.0,
            height: 280.0,
            lo: 0.0,
            hi: lmax,
        },
        Panel {
            title: "validation quadratic weighted kappa",
            y0: 380.0,
            height: 190.0,
            lo: qmin,
            hi: 1.0,
        },
    ];
    let px = |step: f64| left + (w - left - right) * step / max_step;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for (pi, p) in panels.iter().enumerate() {
        let py = |v: f64| p.y0 + p.height * (1.0 - (v - p.lo) / (p.hi - p.lo).max(1e-12));
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
            p.y0,
            w - left - right,
            p.height
        );
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}">{}</text>"#,
            p.y0 - 6.0,
            esc(p.title)
        );
        for t in ticks(p.lo, p.hi) {
            let y = py(t);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - right,
                left - 6.0,
                y + 4.0,
                (t * 1000.0).round() / 1000.0
            );
        }
        for t in ticks(0.0, max_step) {
            let x = px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                p.y0,
                p.y0 + p.height,
                p.y0 + p.height + 16.0,
                t
            );
        }
        let members = rows.iter().map(|r| r.member + 1).max().unwrap_or(0);
        for m in 0..members {
            let color = COLORS[m % COLORS.len()];
            let series: &[(Series, &str)] = if pi == 0 {
                &[(Series::TrainLoss, ""), (Series::ValLoss, "6,4")]
            } else {
                &[(Series::ValQwk, "")]
            };
            for &(which, dash) in series {
                let pts: Vec<String> = rows
                    .iter()
                    .filter(|r| r.member == m)
                    .filter_map(|r| {
                        let v = match which {
                            Series::TrainLoss => Some(r.train_loss),
                            Series::ValLoss => r.val_loss,
                            Series::ValQwk => r.val_qwk,
                        }?;
                        v.is_finite().then(|| {
                            format!("{:.1},{:.1}", px(r.step as f64), py(v.clamp(p.lo, p.hi)))
                        })
                    })
                    .collect();
                if pts.len() > 1 {
                    let _ = writeln!(
                        s,
                        r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" stroke-dasharray="{dash}" points="{}"/>"#,
                        pts.join(" ")
                    );
                }
            }
            if pi == 0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" fill="{color}" text-anchor="end">member {m}</text>"#,
                    w - right - 8.0,
                    p.y0 + 16.0 + 15.0 * m as f64
                );
            }
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step (batches)</text></svg>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
    super::write_file(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(0.0, 1000.0).len(), 6);
    }
}
