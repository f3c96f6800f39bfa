//! `report.html`: one self-contained page about a run (`ctgrade run --report`).
//!
//! A summary table of every case, then one section per case: the answers, each member's
//! probability and their spread, pictures (axial, coronal and sagittal slices through the lungs
//! with the lung mask outlined and the crop box drawn, the heat map when computed, a strip of the
//! network input's slices), the preprocessing facts and the timings. Pictures are PNG embedded as
//! base64 data URLs: the page needs no network and no script.
//!
//! The run loop hands each graded case's volumes to [`render_case`], which draws and encodes its
//! pictures at once (so a batch keeps a few kilobytes per case, not its volumes); [`write()`] puts
//! the page together at the end.

pub mod draw;

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;

use crate::burden::Burden;
use crate::ensemble::Ensemble;
use crate::grading::CaseResult;
use crate::preprocess::resample::{Grid, IndexMap};
use crate::preprocess::PreprocessReport;
use crate::volume::Volume;
use draw::{Rgb, View};

/// What every run with demonstration weights says (stderr and the report).
pub const DEMONSTRATION_NOTICE: &str =
    "demonstration weights trained on synthetic phantoms; not a diagnosis";

/// Largest side (voxels) of the display grid the report's slices are drawn on.
pub const DISPLAY_VOXELS: f64 = 256.0;

/// Lung window of the pictures (HU): level -600, width 1500.
pub const LUNG_WINDOW: [f32; 2] = [-1350.0, 150.0];

/// Slices of the network input shown in the strip.
pub const STRIP_SLICES: usize = 8;

/// Why a case's pictures cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// PNG encoding failed.
    #[error("cannot encode a report picture as PNG: {0}")]
    Png(png::EncodingError),
    /// The volumes handed over do not fit together.
    #[error("report pictures: {0}")]
    Shape(String),
}

/// The grid the report's slices are drawn on: the resampled grid's origin and direction (so LPS,
/// axis-aligned after orientation), isotropic, with a spacing that gives about
/// [`DISPLAY_VOXELS`] voxels along the longest side but never coarser than the resampled grid.
pub fn display_grid(resampled: &Grid) -> Grid {
    let extent = (0..3)
        .map(|k| resampled.size[k] as f64 * resampled.spacing[k])
        .fold(0.0, f64::max);
    let finest = resampled
        .spacing
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let spacing = (extent / DISPLAY_VOXELS).max(0.5).min(finest);
    let size = [0, 1, 2].map(|k| {
        ((resampled.size[k] as f64 * resampled.spacing[k] / spacing).round() as usize).max(1)
    });
    Grid {
        size,
        spacing: [spacing; 3],
        origin: resampled.origin,
        direction: resampled.direction,
    }
}

/// Seconds spent on a case's stages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Reading the files.
    pub read_s: f64,
    /// The ensemble's segmenters (lesion and lobe models), when they ran.
    pub segment_s: Option<f64>,
    /// Preprocessing.
    pub preprocess_s: f64,
    /// Running the members.
    pub ensemble_s: f64,
    /// Mapping the heat map back to the CT's grid, when computed.
    pub heat_map_s: Option<f64>,
}

/// What the pictures of a graded case are drawn from; volumes on [`display_grid`].
#[derive(Debug, Clone, Copy)]
pub struct CaseImages<'a> {
    /// The CT's own grid (as read), to label the slices in its own indices.
    pub ct_grid: &'a Grid,
    /// The CT (HU).
    pub ct: &'a Volume,
    /// The lung mask (0, 1 right lung, 2 left lung).
    pub lungs: &'a Volume,
    /// The lesion map (0/1), when the case had one.
    pub lesions: Option<&'a Volume>,
    /// The heat map ([0, 1]), when computed.
    pub heat: Option<&'a Volume>,
    /// The size `[d, h, w]` of the grid the heat map was computed on (the last block's).
    pub heat_cells: Option<[usize; 3]>,
    /// What preprocessing measured (crop box, kept slices, ...).
    pub preprocess: &'a PreprocessReport,
    /// The network input, `(channel, z, y, x)`, values in [0, 1].
    pub input: &'a [f32],
    /// Its shape.
    pub input_shape: [usize; 4],
    /// Timings.
    pub timings: Timings,
}

/// One encoded picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Alternative text.
    pub alt: String,
    /// PNG bytes.
    pub png: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl Figure {
    fn encode(alt: String, img: &Rgb) -> Result<Self, ReportError> {
        Ok(Self {
            alt,
            png: img.png().map_err(ReportError::Png)?,
            width: img.width,
            height: img.height,
        })
    }
}

/// A graded case's pictures and facts, ready for the page.
#[derive(Debug, Clone)]
pub struct CaseFigures {
    /// Slices with the lung outline and the crop box: axial, coronal, sagittal.
    pub views: Vec<Figure>,
    /// The same slices with the heat map, when computed.
    pub heat: Vec<Figure>,
    /// The heat map's grid `[d, h, w]` and the size of one of its cells in mm `[z, y, x]`.
    pub heat_cells: Option<([usize; 3], [f64; 3])>,
    /// Network input slices side by side.
    pub strip: Figure,
    /// Which input slices the strip shows.
    pub strip_slices: Vec<usize>,
    /// Spacing (mm) of the display grid.
    pub display_spacing_mm: f64,
    /// What preprocessing measured.
    pub preprocess: PreprocessReport,
    /// Timings.
    pub timings: Timings,
}

/// Where the slice `at` of `view` on the display grid `shown` lies, in the terms a reader can
/// check in a viewer: its position in mm along the view's LPS axis, and the index of the CT's own
/// voxel axis that runs most nearly across it (`i`, `j`, `k` as stored in the file, so a flipped
/// or permuted CT is labelled in its own indices).
pub fn slice_label(view: View, at: usize, shown: &Grid, ct: &Grid) -> String {
    let axis = view.axis();
    let mut centre = shown.size.map(|n| (n as f64 - 1.0) / 2.0);
    centre[axis] = at as f64;
    let mm = shown.index_to_physical(centre)[axis];
    let Ok(map) = IndexMap::between(shown, ct) else {
        return format!("{} slice at {mm:.1} mm", view.name());
    };
    // The CT index that changes most per display step along the view's axis.
    let k = (0..3)
        .max_by(|&a, &b| {
            map.m[3 * a + axis]
                .abs()
                .total_cmp(&map.m[3 * b + axis].abs())
        })
        .unwrap_or(2);
    let index = (0..3).map(|c| map.m[3 * k + c] * centre[c]).sum::<f64>() + map.t[k];
    let letter = ["i", "j", "k"][k];
    let world = ["x", "y", "z"][axis];
    format!(
        "{} slice at {world} = {mm:.1} mm (CT {letter} = {} of 0..{})",
        view.name(),
        index.round() as i64,
        ct.size[k].saturating_sub(1)
    )
}

/// Draws and encodes a case's pictures.
pub fn render_case(c: &CaseImages) -> Result<CaseFigures, ReportError> {
    let size = c.ct.size;
    if c.lungs.size != size
        || c.heat.is_some_and(|h| h.size != size)
        || c.lesions.is_some_and(|l| l.size != size)
    {
        return Err(ReportError::Shape(
            "the CT, lung mask, lesion map and heat map are not on one grid".into(),
        ));
    }
    let [channels, slices, ch, cw] = c.input_shape;
    if channels == 0 || c.input.len() != channels * slices * ch * cw || slices == 0 {
        return Err(ReportError::Shape(format!(
            "network input of {} values does not have the shape {:?}",
            c.input.len(),
            c.input_shape
        )));
    }
    let p = c.preprocess;
    let shown = Grid::of(c.ct);
    // The crop box and kept slices on the display grid (same origin and axes as the resampled
    // grid): voxel edges scaled by the spacings, then the display voxels whose centres lie inside.
    let scale = p.spec.spacing_mm / c.ct.spacing[0];
    let span = |a: f64, b: f64| {
        let lo = ((a - 0.5) * scale).ceil() as i64;
        let hi = ((b - 0.5) * scale).ceil() as i64 - 1;
        (lo, hi)
    };
    let (x0, x1) = span(p.crop_box.x[0] as f64, p.crop_box.x[1] as f64);
    let (y0, y1) = span(p.crop_box.y[0] as f64, p.crop_box.y[1] as f64);
    let (z0, z1) = span(p.kept_z_range[0] as f64, p.kept_z_range[1] as f64 + 1.0);
    let row_of_z = |z: i64| size[2] as i64 - 1 - z;
    let mut views = Vec::new();
    let mut heat = Vec::new();
    for view in [View::Axial, View::Coronal, View::Sagittal] {
        let at = draw::fullest_slice(c.lungs, view);
        let grey = draw::grey_slice(c.ct, view, at, LUNG_WINDOW);
        let mut img = grey.clone();
        draw::outline(&mut img, c.lungs, view, at, draw::LUNG);
        if let Some(l) = c.lesions {
            draw::outline(&mut img, l, view, at, draw::LESION);
        }
        match view {
            View::Axial => img.rect(x0, y0, x1, y1, draw::CROP),
            View::Coronal => img.rect(x0, row_of_z(z1), x1, row_of_z(z0), draw::CROP),
            View::Sagittal => img.rect(y0, row_of_z(z1), y1, row_of_z(z0), draw::CROP),
        }
        let label = slice_label(view, at, &shown, c.ct_grid);
        let what = match c.lesions {
            Some(_) => "lung and lesion outlines and crop box",
            None => "lung outline and crop box",
        };
        views.push(Figure::encode(format!("{label}, {what}"), &img)?);
        if let Some(h) = c.heat {
            let mut img = grey;
            draw::blend_heat(&mut img, h, view, at);
            draw::outline(&mut img, c.lungs, view, at, draw::LUNG);
            heat.push(Figure::encode(format!("{label}, heat map"), &img)?);
        }
    }
    // One heat-map cell covers the network input's voxels it summarises: the crop in-plane, the
    // kept slices (sampled to `slices`) along z.
    let heat_cells = c.heat.and(c.heat_cells).map(|cells| {
        let kept_mm = (p.kept_z_range[1] + 1 - p.kept_z_range[0]) as f64 * p.spec.spacing_mm;
        let crop_mm = [p.spec.crop_xy[1], p.spec.crop_xy[0]].map(|n| n as f64 * p.spec.spacing_mm);
        let mm = [
            kept_mm / cells[0] as f64,
            crop_mm[0] / cells[1] as f64,
            crop_mm[1] / cells[2] as f64,
        ];
        (cells, mm)
    });
    // The strip: evenly spaced slices of the first channel, scaled up to about 128 pixels.
    let strip_slices = crate::preprocess::uniform_indices(slices, STRIP_SLICES.min(slices));
    let factor = (128 / ch.max(cw)).max(1);
    let gap = 2;
    let mut strip = Rgb::new(strip_slices.len() * (cw + gap) - gap, ch);
    for (n, &z) in strip_slices.iter().enumerate() {
        for y in 0..ch {
            for x in 0..cw {
                let v = c.input[x + cw * (y + ch * z)];
                let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                strip.put((n * (cw + gap) + x) as i64, y as i64, [g; 3]);
            }
        }
    }
    let strip = strip.scaled(factor);
    Ok(CaseFigures {
        views,
        heat,
        heat_cells,
        strip: Figure::encode(
            format!("network input slices {strip_slices:?} of {slices}"),
            &strip,
        )?,
        strip_slices,
        display_spacing_mm: c.ct.spacing[0],
        preprocess: p.clone(),
        timings: c.timings,
    })
}

/// What the page says about the run as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// The ensemble's name.
    pub weights: String,
    /// Its description.
    pub description: String,
    /// Demonstration weights.
    pub demonstration: bool,
    /// "3 x densenet121-3d, continuous head".
    pub model: String,
    /// The input folder.
    pub input: String,
}

impl RunInfo {
    /// The facts of `ensemble` grading `input`.
    pub fn of(ensemble: &Ensemble, input: &Path) -> Self {
        let m = &ensemble.manifest;
        Self {
            weights: m.name.clone(),
            description: m.description.clone(),
            demonstration: m.demonstration,
            model: format!("{} x {}, {:?} head", ensemble.len(), m.network.arch, m.head)
                .to_lowercase(),
            input: input.display().to_string(),
        }
    }
}

/// Escapes text for HTML.
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

/// A picture with its caption, the caption wrapped to the picture's width. The picture scales
/// down with the page, keeping its aspect ratio.
fn figure(f: &Figure) -> String {
    format!(
        "<figure style=\"width:{w}px\"><img src=\"data:image/png;base64,{}\" width=\"{w}\" \
         height=\"{}\" alt=\"{alt}\"><figcaption>{alt}</figcaption></figure>",
        base64::engine::general_purpose::STANDARD.encode(&f.png),
        f.height,
        w = f.width,
        alt = escape(&f.alt)
    )
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1150px}\
h1{margin-bottom:0.2em}table{border-collapse:collapse;margin:0.5em 0}\
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:14px}\
th{background:#f0f0f0}.notice{background:#fff3cd;border:1px solid #e0b000;padding:0.5em 1em;\
font-weight:bold}.failed{color:#b00020}section.case{border-top:2px solid #444;margin-top:1.5em}\
figure{display:inline-block;max-width:100%;margin:0 8px 8px 0;vertical-align:top}\
figcaption{font-size:12px;color:#555}img{display:block;width:100%;height:auto;\
image-rendering:pixelated}.big{font-size:20px}";

/// The page.
pub fn render_html(
    info: &RunInfo,
    results: &[CaseResult],
    figures: &[Option<CaseFigures>],
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>ctgrade report</title><style>{STYLE}</style></head><body>\n\
         <h1>ctgrade report</h1>\n<p>Weights <b>{}</b> ({}): {}<br>Input {}; {} case(s).</p>\n",
        escape(&info.weights),
        escape(&info.model),
        escape(&info.description),
        escape(&info.input),
        results.len()
    );
    if info.demonstration {
        let _ = writeln!(h, "<p class=\"notice\">{DEMONSTRATION_NOTICE}</p>");
    }
    h.push_str(
        "<h2>Summary</h2>\n<table id=\"summary\"><thead><tr><th>case</th><th>file</th>\
         <th>probability</th><th>CO-RADS</th><th>spread</th><th>outcome</th></tr></thead><tbody>\n",
    );
    for r in results {
        let outcome = match (&r.error, r.skipped) {
            (Some(e), _) => format!("<span class=\"failed\">failed: {}</span>", escape(e)),
            (None, true) => "graded by an earlier run".into(),
            (None, false) => "graded".into(),
        };
        let _ = writeln!(
            h,
            "<tr data-case=\"{c}\"><td><a href=\"#case-{c}\">{c}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{outcome}</td></tr>",
            escape(&r.file),
            r.probability.map_or(String::new(), |p| format!("{p:.4}")),
            r.co_rads.map_or(String::new(), |c| c.to_string()),
            r.spread.map_or(String::new(), |s| format!("{s:.4}")),
            c = escape(&r.case),
        );
    }
    h.push_str("</tbody></table>\n");
    for (i, r) in results.iter().enumerate() {
        section(&mut h, r, figures.get(i).and_then(Option::as_ref));
    }
    h.push_str("</body></html>\n");
    h
}

fn section(h: &mut String, r: &CaseResult, fig: Option<&CaseFigures>) {
    let name = escape(&r.case);
    let _ = writeln!(
        h,
        "<section class=\"case\" id=\"case-{name}\" data-case=\"{name}\">\n<h2>{name}</h2>\n\
         <p>File {}; {:.2} s in all.</p>",
        escape(&r.file),
        r.seconds
    );
    match (&r.error, r.probability, r.co_rads) {
        (Some(e), ..) => {
            let _ = writeln!(h, "<p class=\"failed big\">Failed: {}</p>", escape(e));
        }
        (None, Some(p), Some(c)) => {
            let _ = writeln!(
                h,
                "<p class=\"big\">COVID-19 probability <b>{p:.4}</b>, CO-RADS <b>{c}</b></p>"
            );
            if !r.member_probabilities.is_empty() {
                let members: Vec<String> = r
                    .member_probabilities
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("<td>{}: {p:.4}</td>", i + 1))
                    .collect();
                let _ = writeln!(
                    h,
                    "<table class=\"members\"><tr><th>members</th>{}<th>spread (SD)</th>\
                     <td>{:.4}</td></tr></table>",
                    members.concat(),
                    r.spread.unwrap_or(0.0)
                );
            }
            if let Some(b) = &r.lesions {
                burden_table(h, b);
            }
            if r.skipped {
                h.push_str("<p>Graded by an earlier run (--skip-done): no pictures.</p>\n");
            }
        }
        _ => {}
    }
    if !r.warnings.is_empty() {
        h.push_str("<p>Warnings:</p><ul>");
        for w in &r.warnings {
            let _ = write!(h, "<li>{}</li>", escape(w));
        }
        h.push_str("</ul>\n");
    }
    if let Some(f) = fig {
        figures(h, f);
    }
    h.push_str("</section>\n");
}

/// The lesion burden: lungs affected (in all and per lung), and per lobe with the CT severity
/// score when there are lobes.
fn burden_table(h: &mut String, b: &Burden) {
    let pct = |v: Option<f64>| {
        v.map_or("n/a (lungs not separated)".to_string(), |v| {
            format!("{v:.2} %")
        })
    };
    let _ = writeln!(
        h,
        "<table class=\"facts\"><tr><th>lung affected</th><td>{:.2} %</td></tr>\
         <tr><th>right lung</th><td>{}</td></tr><tr><th>left lung</th><td>{}</td></tr>",
        b.lung_affected_pct,
        pct(b.right_lung_affected_pct),
        pct(b.left_lung_affected_pct),
    );
    for l in &b.lobes {
        let _ = writeln!(
            h,
            "<tr><th>{} lobe</th><td>{:.2} %, score {}</td></tr>",
            l.lobe.name().replace('_', " "),
            l.affected_pct,
            l.score
        );
    }
    if let Some(s) = b.ct_severity_score {
        let _ = writeln!(
            h,
            "<tr><th>CT severity score</th><td><b>{s}</b> of 25 (per lobe 0-5: none, under 5 %, \
             5-25 %, 26-50 %, 51-75 %, over 75 % affected)</td></tr>"
        );
    }
    h.push_str("</table>\n");
}

fn figures(h: &mut String, f: &CaseFigures) {
    let p = &f.preprocess;
    let _ = writeln!(
        h,
        "<h3>Lungs and crop</h3>\n<p>Slices through the most lung, on the resampled grid after \
         orientation (LPS: the patient's right on the left, anterior and superior at the top), \
         shown at {:.2} mm; lung mask outlined in green, lesions (where the case had a lesion map) \
         in magenta, the network's crop box and kept slices in yellow.</p>",
        f.display_spacing_mm
    );
    for v in &f.views {
        h.push_str(&figure(v));
    }
    if !f.heat.is_empty() {
        h.push_str(
            "\n<h3>Heat map</h3>\n<p>Grad-CAM of the members' COVID-19 probability on the last \
             convolutional block, averaged over members, scaled to [0, 1] (shown above 0.1).",
        );
        if let Some(([d, hh, w], [mz, my, mx])) = f.heat_cells {
            let _ = write!(
                h,
                " It is computed on that block's coarse grid of {d} x {hh} x {w} cells (z, y, x), \
                 each about {mz:.0} x {my:.0} x {mx:.0} mm, and interpolated: it shows regions, \
                 not voxels."
            );
        }
        h.push_str("</p>");
        for v in &f.heat {
            h.push_str(&figure(v));
        }
        h.push_str(&heat_bar_svg());
    }
    let _ = writeln!(
        h,
        "\n<h3>Network input</h3>\n<p>Evenly spaced slices of the network input's first \
         channel (the CT in its HU window, 0 black to 1 white), {} x {} voxels of {} mm{}.</p>\n{}",
        p.spec.crop_xy[0],
        p.spec.crop_xy[1],
        p.spec.spacing_mm,
        if crop_outside(p) {
            "; where the crop box reaches outside the scan the input is padding, black"
        } else {
            ""
        },
        figure(&f.strip),
    );
    let o = &p.orientation;
    let rows = [
        (
            "input",
            format!(
                "{:?} voxels of {:?} mm",
                p.input_size,
                p.input_spacing.map(|s| (s * 1000.0).round() / 1000.0)
            ),
        ),
        (
            "orientation",
            format!(
                "input axes {:?} as x, y, z; flipped {:?}; tilt {:.1} degrees{}",
                o.axes,
                o.flipped,
                o.obliquity_deg,
                if p.oblique_resampled {
                    " (resampled onto an axis-aligned grid)"
                } else {
                    ""
                }
            ),
        ),
        (
            "resampled",
            format!("{:?} voxels of {} mm", p.resampled_size, p.spec.spacing_mm),
        ),
        (
            "lungs",
            format!(
                "{:.0} mL (right {:.0} mL, left {:.0} mL), {} component(s), slices {}-{}",
                p.lung_volume_ml,
                p.lung_volume_right_ml,
                p.lung_volume_left_ml,
                p.lung_components,
                p.lung_z_range[0],
                p.lung_z_range[1]
            ),
        ),
        (
            "kept slices",
            format!(
                "{}-{} (z {:.1} to {:.1} mm), {} sampled",
                p.kept_z_range[0],
                p.kept_z_range[1],
                p.kept_z_mm[0],
                p.kept_z_mm[1],
                p.sampled_slices.len()
            ),
        ),
        (
            "crop box",
            format!(
                "x {} to {}, y {} to {} (voxels of the resampled grid, {} x {}, end excluded){}",
                p.crop_box.x[0],
                p.crop_box.x[1],
                p.crop_box.y[0],
                p.crop_box.y[1],
                p.resampled_size[0],
                p.resampled_size[1],
                if crop_outside(p) {
                    format!(
                        "; the box is centred on the lungs and reaches outside the scan \
                         (a negative index or one past the size): that part of the network \
                         input is padding at {} HU, black in the pictures",
                        crate::preprocess::PAD_HU
                    )
                } else {
                    String::new()
                }
            ),
        ),
        (
            "timings",
            format!(
                "read {:.2} s, {}preprocess {:.2} s (resample {:.2}, lung mask {:.2}), ensemble {:.2} s{}",
                f.timings.read_s,
                f.timings
                    .segment_s
                    .map_or(String::new(), |s| format!("segmenters {s:.2} s, ")),
                f.timings.preprocess_s,
                p.seconds.resample,
                p.seconds.lung_mask,
                f.timings.ensemble_s,
                f.timings
                    .heat_map_s
                    .map_or(String::new(), |s| format!(", heat map {s:.2} s"))
            ),
        ),
    ];
    h.push_str("<h3>Preprocessing</h3>\n<table class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    h.push_str("</table>\n");
}

/// Whether the crop box reaches outside the resampled grid (and the input is padded there).
fn crop_outside(p: &PreprocessReport) -> bool {
    let [nx, ny, _] = p.resampled_size.map(|n| n as i64);
    p.crop_box.x[0] < 0 || p.crop_box.y[0] < 0 || p.crop_box.x[1] > nx || p.crop_box.y[1] > ny
}

/// Ticks of the heat map's colour bar; 0.1 is where the pictures start to show heat.
const HEAT_TICKS: [f32; 6] = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0];

/// The heat map's colour bar as inline SVG: the colour map, ticks with their values, and the part
/// below 0.1 (not drawn on the slices) greyed out.
fn heat_bar_svg() -> String {
    const W: f32 = 320.0;
    const X0: f32 = 12.0;
    let stops: String = (0..=20)
        .map(|i| {
            let t = i as f32 / 20.0;
            let [r, g, b] = draw::heat_colour(t);
            format!("<stop offset=\"{t}\" stop-color=\"rgb({r},{g},{b})\"/>")
        })
        .collect();
    let ticks: String = HEAT_TICKS
        .iter()
        .map(|&t| {
            let x = X0 + t * W;
            format!(
                "<line x1=\"{x}\" y1=\"4\" x2=\"{x}\" y2=\"24\" stroke=\"#222\"/>\
                 <text x=\"{x}\" y=\"36\" text-anchor=\"middle\">{t}</text>"
            )
        })
        .collect();
    format!(
        "<figure><svg class=\"heat-bar\" width=\"{w}\" height=\"40\" \
         viewBox=\"0 0 {w} 40\" font-size=\"11\" role=\"img\" \
         aria-label=\"heat colour bar from 0 to 1\"><defs><linearGradient id=\"heat\">{stops}\
         </linearGradient></defs><rect x=\"{X0}\" y=\"4\" width=\"{W}\" height=\"16\" \
         fill=\"url(#heat)\"/><rect x=\"{X0}\" y=\"4\" width=\"{below}\" height=\"16\" \
         fill=\"#fff\" fill-opacity=\"0.6\"/>{ticks}</svg><figcaption>heat, 0 to 1 (below \
         0.1: not drawn)</figcaption></figure>",
        w = W + 2.0 * X0,
        below = 0.1 * W,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_grid_keeps_geometry_and_bounds_size() {
        let g = Grid {
            size: [72, 72, 64],
            spacing: [5.0; 3],
            origin: [1.0, 2.0, 3.0],
            direction: crate::volume::IDENTITY,
        };
        let d = display_grid(&g);
        assert_eq!(d.origin, g.origin);
        assert!((d.spacing[0] - 360.0 / 256.0).abs() < 1e-9);
        assert_eq!(d.size[0], 256);
        // Never coarser than the resampled grid.
        let fine = Grid {
            spacing: [1.0; 3],
            size: [400, 400, 300],
            ..g
        };
        assert_eq!(display_grid(&fine).spacing, [1.0; 3]);
        assert_eq!(display_grid(&fine).size, [400, 400, 300]);
    }

    /// A CT stored head first (z flipped) and permuted (its i axis along y): the labels give the
    /// CT's own indices of the slice shown, and its position in mm.
    #[test]
    fn slice_labels_use_the_ct_s_own_indices() {
        let shown = Grid {
            size: [20, 10, 20],
            spacing: [2.0; 3],
            origin: [0.0, 0.0, 0.0],
            direction: crate::volume::IDENTITY,
        };
        // CT index (i, j, k) -> LPS (x, y, z) = (2 j, 1 i, 38 - 2 k).
        let ct = Grid {
            size: [20, 20, 20],
            spacing: [1.0, 2.0, 2.0],
            origin: [0.0, 0.0, 38.0],
            direction: [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
        };
        assert_eq!(
            slice_label(View::Axial, 0, &shown, &ct),
            "axial slice at z = 0.0 mm (CT k = 19 of 0..19)"
        );
        assert_eq!(
            slice_label(View::Axial, 19, &shown, &ct),
            "axial slice at z = 38.0 mm (CT k = 0 of 0..19)"
        );
        assert_eq!(
            slice_label(View::Coronal, 3, &shown, &ct),
            "coronal slice at y = 6.0 mm (CT i = 6 of 0..19)"
        );
        assert_eq!(
            slice_label(View::Sagittal, 5, &shown, &ct),
            "sagittal slice at x = 10.0 mm (CT j = 5 of 0..19)"
        );
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
