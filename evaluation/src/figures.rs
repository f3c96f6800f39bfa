//! The reliability diagram and the decision curve, as SVG or PNG, drawn with the ROC plot's
//! shapes and renderers ([`crate::plot`]): same canvas, fonts and palette.

use std::path::Path;

use crate::calibration::CalibrationCurve;
use crate::error::Result;
use crate::operating::DecisionCurve;
use crate::plot::{
    axes, frame_box, legend, line, text, unit_axes, write_scene, Anchor, Corner, Frame, Mark, Rgb,
    Shape, BLACK, CHANCE, PALETTE,
};

/// One system's reliability curve to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilitySeries {
    /// Legend text, e.g. "predictions: Brier 0.142, ECE 0.051".
    pub label: String,
    /// The curve; its bins' counts are drawn as bars along the bottom.
    pub curve: CalibrationCurve,
}

/// One system's decision curve to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionSeries {
    /// Legend text.
    pub label: String,
    /// Net benefit by threshold probability (the first series also gives "treat all").
    pub curve: DecisionCurve,
}

/// A palette colour mixed with white (`keep` of the colour), for bars behind the curves.
fn light(c: Rgb, keep: f64) -> Rgb {
    c.map(|v| (f64::from(v) * keep + 255.0 * (1.0 - keep)).round() as u8)
}

/// Fraction of the plot height the tallest count bar takes.
const BAR_HEIGHT: f64 = 0.25;

/// The reliability diagram's scene: the observed fraction of positives against the mean
/// predicted probability of each non-empty bin, the diagonal of perfect calibration, and each
/// bin's case count as a bar (labelled with the count) along the bottom.
fn reliability_scene(title: &str, series: &[ReliabilitySeries]) -> Vec<Shape> {
    let (f, mut s) = unit_axes(title, "Mean predicted probability", "Fraction of positives");
    let max_count = series
        .iter()
        .flat_map(|r| r.curve.counts.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n_series = series.len().max(1) as f64;
    for (k, r) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let c = &r.curve;
        for (&b, &count) in c.bin.iter().zip(&c.counts) {
            let (Some(&lo), Some(&hi)) = (c.bin_edges.get(b), c.bin_edges.get(b + 1)) else {
                continue;
            };
            // Bars of the series side by side within the bin, with a small gap.
            let width = (hi - lo) / n_series;
            let x_lo = lo + width * k as f64 + width * 0.08;
            let x_hi = x_lo + width * 0.84;
            let h = count as f64 / max_count * BAR_HEIGHT;
            let (px0, py0) = f.px(x_lo, h);
            let (px1, py1) = f.px(x_hi, 0.0);
            s.push(Shape::Rect {
                x: px0,
                y: py0,
                w: px1 - px0,
                h: py1 - py0,
                fill: Some(light(color, 0.35)),
                stroke: None,
            });
            s.push(text(
                (px0 + px1) / 2.0,
                py0 - 8.0,
                count.to_string(),
                if n_series > 1.0 { 8.0 } else { 10.0 },
                Anchor::Middle,
                false,
            ));
        }
    }
    s.push(line(
        vec![f.px(0.0, 0.0), f.px(1.0, 1.0)],
        CHANCE,
        1.5,
        Some(6.0),
    ));
    for (k, r) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let pts: Vec<(f64, f64)> = r
            .curve
            .prob_pred
            .iter()
            .zip(&r.curve.prob_true)
            .map(|(&x, &y)| f.px(x.clamp(0.0, 1.0), y.clamp(0.0, 1.0)))
            .collect();
        for &(x, y) in &pts {
            s.push(Shape::Rect {
                x: x - 3.5,
                y: y - 3.5,
                w: 7.0,
                h: 7.0,
                fill: Some(color),
                stroke: None,
            });
        }
        s.push(line(pts, color, 2.5, None));
    }
    s.push(frame_box());
    let mut rows: Vec<(Rgb, String, Mark)> = series
        .iter()
        .enumerate()
        .map(|(k, r)| {
            (
                PALETTE[k % PALETTE.len()],
                r.label.clone(),
                Mark::Line {
                    width: 2.5,
                    dash: None,
                },
            )
        })
        .collect();
    rows.push((
        CHANCE,
        "Perfectly calibrated".into(),
        Mark::Line {
            width: 1.5,
            dash: Some(6.0),
        },
    ));
    rows.push((
        light(PALETTE[0], 0.35),
        "Cases per bin (bars, counts above)".into(),
        Mark::Box,
    ));
    s.extend(legend(rows, Corner::UpperLeft));
    s
}

/// A "nice" tick step (1, 2, 2.5 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-6);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

/// The decision curve's scene: net benefit of each system, of treating every case, and of
/// treating none (0), against the threshold probability; the y axis runs from one tick below 0
/// to the highest net benefit (the treat-all curve is cut where it leaves the plot).
fn decision_scene(title: &str, series: &[DecisionSeries]) -> Vec<Shape> {
    let top = series
        .iter()
        .flat_map(|r| {
            r.curve
                .net_benefit
                .iter()
                .chain(&r.curve.net_benefit_treat_all)
                .copied()
        })
        .filter(|v| v.is_finite())
        .fold(0.01f64, f64::max);
    let step = nice_step(top / 5.0);
    let y1 = (top / step).ceil() * step;
    let f = Frame {
        x0: 0.0,
        x1: 1.0,
        y0: -step,
        y1,
    };
    let n_ticks = ((y1 + step) / step).round() as i64;
    let ticks: Vec<f64> = (0..=n_ticks).map(|k| -step + step * k as f64).collect();
    let decimals = if step >= 0.1 {
        1
    } else if step >= 0.01 {
        2
    } else {
        3
    };
    let mut s = axes(
        &f,
        title,
        "Threshold probability",
        "Net benefit",
        &ticks,
        decimals,
    );
    let mut rows: Vec<(Rgb, String, Mark)> = Vec::new();
    if let Some(first) = series.first() {
        let pts: Vec<(f64, f64)> = first
            .curve
            .thresholds
            .iter()
            .zip(&first.curve.net_benefit_treat_all)
            .map(|(&x, &y)| (x, y))
            .collect();
        for run in f.clipped(&pts) {
            s.push(line(run, CHANCE, 2.0, None));
        }
        rows.push((
            CHANCE,
            "Treat all".into(),
            Mark::Line {
                width: 2.0,
                dash: None,
            },
        ));
    }
    s.push(line(
        vec![f.px(0.0, 0.0), f.px(1.0, 0.0)],
        BLACK,
        1.5,
        Some(6.0),
    ));
    rows.push((
        BLACK,
        "Treat none".into(),
        Mark::Line {
            width: 1.5,
            dash: Some(6.0),
        },
    ));
    for (k, r) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let pts: Vec<(f64, f64)> = r
            .curve
            .thresholds
            .iter()
            .zip(&r.curve.net_benefit)
            .map(|(&x, &y)| (x, y))
            .collect();
        for run in f.clipped(&pts) {
            s.push(line(run, color, 2.5, None));
        }
        rows.insert(
            k,
            (
                color,
                r.label.clone(),
                Mark::Line {
                    width: 2.5,
                    dash: None,
                },
            ),
        );
    }
    s.push(frame_box());
    s.extend(legend(rows, Corner::UpperRight));
    s
}

/// Renders the reliability diagram as SVG.
pub fn reliability_svg(title: &str, series: &[ReliabilitySeries]) -> String {
    crate::plot::svg_of(reliability_scene(title, series))
}

/// Renders the reliability diagram as PNG bytes.
pub fn reliability_png(title: &str, series: &[ReliabilitySeries]) -> Vec<u8> {
    crate::plot::png_of(reliability_scene(title, series))
}

/// Writes the reliability diagram to `path` (`.svg` or `.png`).
pub fn write_reliability(path: &Path, title: &str, series: &[ReliabilitySeries]) -> Result<()> {
    write_scene(path, reliability_scene(title, series))
}

/// Renders the decision curve as SVG.
pub fn decision_svg(title: &str, series: &[DecisionSeries]) -> String {
    crate::plot::svg_of(decision_scene(title, series))
}

/// Writes the decision curve to `path` (`.svg` or `.png`).
pub fn write_decision_curve(path: &Path, title: &str, series: &[DecisionSeries]) -> Result<()> {
    write_scene(path, decision_scene(title, series))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::{calibration_curve, BinStrategy};
    use crate::operating::decision_curve;
    use crate::plot::{PLOT_SIZE, PLOT_Y0, WIDTH};

    fn demo() -> (Vec<f64>, Vec<bool>) {
        let p = vec![0.05, 0.15, 0.12, 0.35, 0.55, 0.62, 0.71, 0.93, 0.97, 0.41];
        let l = vec![
            false, false, true, false, true, false, true, true, true, false,
        ];
        (p, l)
    }

    #[test]
    fn reliability_svg_shows_bins_counts_and_legend() {
        let (p, l) = demo();
        let curve = calibration_curve(&p, &l, 10, BinStrategy::Uniform).unwrap();
        let series = [ReliabilitySeries {
            label: "a<b: Brier 0.1".into(),
            curve,
        }];
        let svg = reliability_svg("Reliability", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a&lt;b: Brier 0.1"));
        assert!(svg.contains("Perfectly calibrated"));
        // Every non-empty bin's count is written above its bar: bins 0, 1, 3, 4, 5, 6, 7, 9 hold
        // 1, 2, 1, 1, 1, 1, 1, 2 cases.
        assert_eq!(svg.matches(">2</text>").count(), 2);
        // The diagonal from (0, 0) to (1, 1).
        assert!(svg.contains("80.00,580.00 610.00,50.00"));
        let png = reliability_png("Reliability", &series);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn decision_curve_is_cut_at_the_frame() {
        let (p, l) = demo();
        let series = [DecisionSeries {
            label: "model".into(),
            curve: decision_curve(&p, &l).unwrap(),
        }];
        let svg = decision_svg("Decision curve", &series);
        assert!(svg.contains("Treat all") && svg.contains("Treat none"));
        // No point is drawn outside the plot area.
        for poly in svg.split("points=\"").skip(1) {
            let pts = poly.split('"').next().unwrap();
            for xy in pts.split(' ') {
                let (x, y) = xy.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((0.0..=WIDTH).contains(&x));
                assert!((PLOT_Y0 - 0.01..=PLOT_Y0 + PLOT_SIZE + 0.01).contains(&y));
            }
        }
    }

    #[test]
    fn clipping_splits_a_curve_that_leaves_and_returns() {
        let f = Frame {
            x0: 0.0,
            x1: 1.0,
            y0: 0.0,
            y1: 1.0,
        };
        let runs = f.clipped(&[(0.0, 0.5), (0.25, 2.0), (0.5, 0.5), (1.0, -1.0)]);
        assert_eq!(runs.len(), 2);
        for run in &runs {
            for &(_, y) in run {
                assert!((PLOT_Y0 - 1e-9..=PLOT_Y0 + PLOT_SIZE + 1e-9).contains(&y));
            }
        }
        assert_eq!(nice_step(0.07), 0.1);
        assert_eq!(nice_step(0.045), 0.05);
    }
}
