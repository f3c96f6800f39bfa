//! ROC plots as SVG or PNG, drawn without a plotting library.
//!
//! Both formats render the same scene (axes, grid, chance diagonal, curves, legend); the other
//! figures ([`crate::figures`]) build their scenes from the same shapes. The PNG is
//! rasterised here at 4x and box-filtered down (anti-aliasing), with text from the public-domain
//! 8x8 bitmap font of the `font8x8` crate, so it needs no system fonts and looks the same on every
//! machine. The SVG leaves text to the viewer's sans-serif font.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::error::{EvalError, Result};

/// One ROC curve to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct RocSeries {
    /// Legend text, e.g. "AUC 0.919 (95% CI 0.890-0.941)".
    pub label: String,
    /// False positive rates.
    pub fpr: Vec<f64>,
    /// True positive rates.
    pub tpr: Vec<f64>,
}

/// An RGB colour.
pub(crate) type Rgb = [u8; 3];

pub(crate) const WIDTH: f64 = 640.0;
pub(crate) const HEIGHT: f64 = 640.0;
pub(crate) const PLOT_X0: f64 = 80.0;
pub(crate) const PLOT_Y0: f64 = 50.0;
pub(crate) const PLOT_SIZE: f64 = 530.0;
pub(crate) const WHITE: Rgb = [255, 255, 255];
pub(crate) const BLACK: Rgb = [0, 0, 0];
pub(crate) const GRID: Rgb = [225, 225, 225];
pub(crate) const CHANCE: Rgb = [140, 140, 140];
pub(crate) const PALETTE: [Rgb; 4] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
];

/// Horizontal alignment of a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Anchor {
    Start,
    Middle,
    End,
}

/// What a scene is made of, in canvas pixels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    Line {
        pts: Vec<(f64, f64)>,
        color: Rgb,
        width: f64,
        dash: Option<f64>,
    },
    Rect {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        fill: Option<Rgb>,
        stroke: Option<Rgb>,
    },
    /// Text centred vertically on `y`; `size` is the glyph height in pixels; `vertical` reads
    /// bottom to top.
    Text {
        x: f64,
        y: f64,
        text: String,
        size: f64,
        anchor: Anchor,
        vertical: bool,
    },
}

/// Legend text size (pixels).
pub(crate) const LEGEND_TEXT: f64 = 11.0;

/// Horizontal advance of one bitmap-font character of nominal `size` (whole hi-res pixels).
pub(crate) fn char_advance(size: f64) -> f64 {
    (size * SS as f64 / 8.0).floor().max(1.0) * 8.0 / SS as f64
}

/// Keeps text printable for the bitmap font (ASCII only).
pub(crate) fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn scene(title: &str, series: &[RocSeries]) -> Vec<Shape> {
    let (f, mut s) = unit_axes(
        title,
        "False positive rate (1 - specificity)",
        "True positive rate (sensitivity)",
    );
    let (x1, y1) = (PLOT_X0 + PLOT_SIZE, PLOT_Y0 + PLOT_SIZE);
    s.push(line(
        vec![(PLOT_X0, y1), (x1, PLOT_Y0)],
        CHANCE,
        1.5,
        Some(6.0),
    ));
    for (k, r) in series.iter().enumerate() {
        let pts = r
            .fpr
            .iter()
            .zip(&r.tpr)
            .map(|(&x, &y)| f.px(x.clamp(0.0, 1.0), y.clamp(0.0, 1.0)))
            .collect();
        s.push(line(pts, PALETTE[k % PALETTE.len()], 2.5, None));
    }
    s.push(frame_box());
    // Legend in the lower right corner, where a useful ROC curve leaves room.
    let rows = series
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let width = 2.5;
            let mark = Mark::Line { width, dash: None };
            (PALETTE[k % PALETTE.len()], r.label.clone(), mark)
        })
        .chain(std::iter::once((
            CHANCE,
            "Chance".to_string(),
            Mark::Line {
                width: 1.5,
                dash: Some(6.0),
            },
        )))
        .collect();
    s.extend(legend(rows, Corner::LowerRight));
    s
}

/// How a legend row is marked.
pub(crate) enum Mark {
    Line { width: f64, dash: Option<f64> },
    Box,
}

/// Where a legend sits in the plot area.
pub(crate) enum Corner {
    UpperLeft,
    UpperRight,
    LowerRight,
}

/// A legend in a corner of the plot area: per row a mark and its text.
pub(crate) fn legend(rows: Vec<(Rgb, String, Mark)>, corner: Corner) -> Vec<Shape> {
    let rows: Vec<(Rgb, String, Mark)> = rows
        .into_iter()
        .map(|(c, t, m)| (c, ascii(&t), m))
        .collect();
    let text_w =
        rows.iter().map(|r| r.1.len()).max().unwrap_or(0) as f64 * char_advance(LEGEND_TEXT);
    let (lw, lh) = (text_w + 52.0, rows.len() as f64 * 22.0 + 10.0);
    let (left, right) = (PLOT_X0 + 10.0, PLOT_X0 + PLOT_SIZE - lw - 10.0);
    let (lx, ly) = match corner {
        Corner::UpperLeft => (left, PLOT_Y0 + 10.0),
        Corner::UpperRight => (right, PLOT_Y0 + 10.0),
        Corner::LowerRight => (right, PLOT_Y0 + PLOT_SIZE - lh - 10.0),
    };
    let mut s = vec![Shape::Rect {
        x: lx,
        y: ly,
        w: lw,
        h: lh,
        fill: Some(WHITE),
        stroke: Some(CHANCE),
    }];
    for (k, (color, label, mark)) in rows.into_iter().enumerate() {
        let cy = ly + 16.0 + k as f64 * 22.0;
        match mark {
            Mark::Line { width, dash } => s.push(line(
                vec![(lx + 8.0, cy), (lx + 36.0, cy)],
                color,
                width,
                dash,
            )),
            Mark::Box => s.push(Shape::Rect {
                x: lx + 14.0,
                y: cy - 6.0,
                w: 16.0,
                h: 12.0,
                fill: Some(color),
                stroke: None,
            }),
        }
        s.push(text(
            lx + 44.0,
            cy,
            label,
            LEGEND_TEXT,
            Anchor::Start,
            false,
        ));
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Data ranges of the plot area.
pub(crate) struct Frame {
    pub(crate) x0: f64,
    pub(crate) x1: f64,
    pub(crate) y0: f64,
    pub(crate) y1: f64,
}

impl Frame {
    pub(crate) fn px(&self, x: f64, y: f64) -> (f64, f64) {
        (
            PLOT_X0 + (x - self.x0) / (self.x1 - self.x0) * PLOT_SIZE,
            PLOT_Y0 + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * PLOT_SIZE,
        )
    }

    /// A polyline clipped to the frame's y range (x is inside by construction): the pieces
    /// that stay inside, in pixels.
    pub(crate) fn clipped(&self, pts: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut cur: Vec<(f64, f64)> = Vec::new();
        let inside = |y: f64| y >= self.y0 && y <= self.y1;
        for w in pts.windows(2) {
            let ((xa, ya), (xb, yb)) = (w[0], w[1]);
            // Parametric clip of the segment to y0 <= y <= y1.
            let (mut t0, mut t1) = (0.0f64, 1.0f64);
            let dy = yb - ya;
            if dy == 0.0 {
                if !inside(ya) {
                    t0 = 1.0;
                    t1 = 0.0;
                }
            } else {
                let (ta, tb) = ((self.y0 - ya) / dy, (self.y1 - ya) / dy);
                t0 = t0.max(ta.min(tb));
                t1 = t1.min(ta.max(tb));
            }
            if t0 > t1 {
                if cur.len() > 1 {
                    runs.push(std::mem::take(&mut cur));
                }
                cur.clear();
                continue;
            }
            let at = |t: f64| self.px(xa + (xb - xa) * t, ya + dy * t);
            let start = at(t0);
            if cur.last() != Some(&start) {
                if cur.len() > 1 {
                    runs.push(std::mem::take(&mut cur));
                }
                cur = vec![start];
            }
            cur.push(at(t1));
            if t1 < 1.0 {
                runs.push(std::mem::take(&mut cur));
            }
        }
        if cur.len() > 1 {
            runs.push(cur);
        }
        runs
    }
}

pub(crate) fn text(
    x: f64,
    y: f64,
    text: String,
    size: f64,
    anchor: Anchor,
    vertical: bool,
) -> Shape {
    Shape::Text {
        x,
        y,
        text,
        size,
        anchor,
        vertical,
    }
}

pub(crate) fn line(pts: Vec<(f64, f64)>, color: Rgb, width: f64, dash: Option<f64>) -> Shape {
    Shape::Line {
        pts,
        color,
        width,
        dash,
    }
}

pub(crate) fn tick_label(v: f64, decimals: usize) -> String {
    // No "-0.00".
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

/// [`axes`] over the unit square, ticks every 0.2: the frame and the shapes.
pub(crate) fn unit_axes(title: &str, x_title: &str, y_title: &str) -> (Frame, Vec<Shape>) {
    let f = Frame {
        x0: 0.0,
        x1: 1.0,
        y0: 0.0,
        y1: 1.0,
    };
    let ticks: Vec<f64> = (0..=5).map(|k| f64::from(k) / 5.0).collect();
    let s = axes(&f, title, x_title, y_title, &ticks, 1);
    (f, s)
}

/// Background, grid, tick labels, title and axis titles.
pub(crate) fn axes(
    f: &Frame,
    title: &str,
    x_title: &str,
    y_title: &str,
    y_ticks: &[f64],
    y_decimals: usize,
) -> Vec<Shape> {
    let mut s = vec![Shape::Rect {
        x: 0.0,
        y: 0.0,
        w: WIDTH,
        h: HEIGHT,
        fill: Some(WHITE),
        stroke: None,
    }];
    let (x1, y1) = (PLOT_X0 + PLOT_SIZE, PLOT_Y0 + PLOT_SIZE);
    for k in 0..=5 {
        let v = f.x0 + (f.x1 - f.x0) * f64::from(k) / 5.0;
        let (gx, _) = f.px(v, f.y0);
        s.push(line(vec![(gx, PLOT_Y0), (gx, y1)], GRID, 1.0, None));
        s.push(text(
            gx,
            y1 + 16.0,
            tick_label(v, 1),
            12.0,
            Anchor::Middle,
            false,
        ));
    }
    for &v in y_ticks {
        let (_, gy) = f.px(f.x0, v);
        s.push(line(vec![(PLOT_X0, gy), (x1, gy)], GRID, 1.0, None));
        s.push(text(
            PLOT_X0 - 8.0,
            gy,
            tick_label(v, y_decimals),
            12.0,
            Anchor::End,
            false,
        ));
    }
    let title = ascii(title);
    let title_size = (16.0f64).min((WIDTH - 16.0) / title.len().max(1) as f64);
    s.push(text(
        WIDTH / 2.0,
        25.0,
        title,
        title_size,
        Anchor::Middle,
        false,
    ));
    s.push(text(
        PLOT_X0 + PLOT_SIZE / 2.0,
        y1 + 42.0,
        x_title.into(),
        14.0,
        Anchor::Middle,
        false,
    ));
    s.push(text(
        24.0,
        PLOT_Y0 + PLOT_SIZE / 2.0,
        y_title.into(),
        14.0,
        Anchor::Middle,
        true,
    ));
    s
}

pub(crate) fn frame_box() -> Shape {
    Shape::Rect {
        x: PLOT_X0,
        y: PLOT_Y0,
        w: PLOT_SIZE,
        h: PLOT_SIZE,
        fill: None,
        stroke: Some(BLACK),
    }
}

fn css(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Renders the ROC plot as an SVG document.
pub fn render_svg(title: &str, series: &[RocSeries]) -> String {
    svg_of(scene(title, series))
}

/// Renders a scene as an SVG document.
pub(crate) fn svg_of(shapes: Vec<Shape>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif">"#
    );
    for shape in shapes {
        match shape {
            Shape::Rect {
                x,
                y,
                w,
                h,
                fill,
                stroke,
            } => {
                let _ = writeln!(
                    out,
                    r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{}" stroke="{}"/>"#,
                    fill.map_or("none".into(), css),
                    stroke.map_or("none".into(), css)
                );
            }
            Shape::Line {
                pts,
                color,
                width,
                dash,
            } => {
                let points: Vec<String> =
                    pts.iter().map(|(x, y)| format!("{x:.2},{y:.2}")).collect();
                let dash =
                    dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{d} {d}""#));
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}" stroke-linejoin="round"{dash}/>"#,
                    points.join(" "),
                    css(color)
                );
            }
            Shape::Text {
                x,
                y,
                text,
                size,
                anchor,
                vertical,
            } => {
                let anchor = match anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                let rotate = if vertical {
                    format!(r#" transform="rotate(-90 {x:.2} {y:.2})""#)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    r#"<text x="{x:.2}" y="{y:.2}" font-size="{size}" text-anchor="{anchor}" dominant-baseline="central"{rotate}>{}</text>"#,
                    xml_escape(&text)
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Supersampling factor of the rasteriser.
const SS: usize = 4;

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![WHITE; w * h],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = y as usize * self.w + x as usize;
            if let Some(p) = self.px.get_mut(i) {
                *p = c;
            }
        }
    }

    /// Fills the hi-res rectangle [x0, x1) x [y0, y1) (coordinates in output pixels).
    fn fill_rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb) {
        let s = SS as f64;
        for y in (y0 * s).round() as i64..(y1 * s).round() as i64 {
            for x in (x0 * s).round() as i64..(x1 * s).round() as i64 {
                self.set(x, y, c);
            }
        }
    }

    /// A segment of the given width (output pixels), with round caps.
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), width: f64, c: Rgb) {
        let s = SS as f64;
        let (ax, ay, bx, by) = (a.0 * s, a.1 * s, b.0 * s, b.1 * s);
        let r = width * s / 2.0;
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = dx * dx + dy * dy;
        let x_lo = (ax.min(bx) - r).floor() as i64;
        let x_hi = (ax.max(bx) + r).ceil() as i64;
        let y_lo = (ay.min(by) - r).floor() as i64;
        let y_hi = (ay.max(by) + r).ceil() as i64;
        for y in y_lo.max(0)..=y_hi.min(self.h as i64) {
            for x in x_lo.max(0)..=x_hi.min(self.w as i64) {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = if len2 > 0.0 {
                    (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (ax + t * dx - px, ay + t * dy - py);
                if qx * qx + qy * qy <= r * r {
                    self.set(x, y, c);
                }
            }
        }
    }

    fn polyline(&mut self, pts: &[(f64, f64)], width: f64, c: Rgb, dash: Option<f64>) {
        for w in pts.windows(2) {
            let (a, b) = (w[0], w[1]);
            match dash {
                None => self.segment(a, b, width, c),
                Some(d) => {
                    let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
                    let mut t = 0.0;
                    while t < len {
                        let e = (t + d).min(len);
                        let p = |u: f64| (a.0 + (b.0 - a.0) * u / len, a.1 + (b.1 - a.1) * u / len);
                        self.segment(p(t), p(e), width, c);
                        t += 2.0 * d;
                    }
                }
            }
        }
    }

    fn text(&mut self, x: f64, y: f64, text: &str, size: f64, anchor: Anchor, vertical: bool) {
        let s = SS as f64;
        // Font pixel size in hi-res pixels (8 font pixels per glyph cell).
        let fp = (size * s / 8.0).floor().max(1.0) as i64;
        let advance = 8 * fp;
        let n = text.chars().count() as i64;
        let total = n * advance;
        let start = match anchor {
            Anchor::Start => 0,
            Anchor::Middle => -total / 2,
            Anchor::End => -total,
        };
        let (ox, oy) = ((x * s).round() as i64, (y * s).round() as i64);
        for (k, ch) in text.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY
                .get(ch as usize)
                .copied()
                .unwrap_or([0; 8]);
            for (gy, row) in glyph.iter().enumerate() {
                for gx in 0..8 {
                    if row & (1 << gx) == 0 {
                        continue;
                    }
                    // Position along the text line (u) and across it (v, centred).
                    let u = start + k as i64 * advance + gx * fp;
                    let v = gy as i64 * fp - 4 * fp;
                    for dy in 0..fp {
                        for dx in 0..fp {
                            if vertical {
                                self.set(ox + v + dy, oy - u - dx, BLACK);
                            } else {
                                self.set(ox + u + dx, oy + v + dy, BLACK);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Averages SS x SS blocks into an RGB8 image.
    fn downsample(&self) -> (usize, usize, Vec<u8>) {
        let (w, h) = (self.w / SS, self.h / SS);
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let mut acc = [0u32; 3];
                for sy in 0..SS {
                    for sx in 0..SS {
                        let i = (y * SS + sy) * self.w + x * SS + sx;
                        if let Some(p) = self.px.get(i) {
                            for c in 0..3 {
                                acc[c] += u32::from(p[c]);
                            }
                        }
                    }
                }
                let n = (SS * SS) as u32;
                out.extend(acc.iter().map(|&a| ((a + n / 2) / n) as u8));
            }
        }
        (w, h, out)
    }
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// Encodes an RGB8 image as PNG (no filtering, zlib-compressed).
pub fn encode_png(w: usize, h: usize, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(h * (w * 3 + 1));
    for row in rgb.chunks(w * 3).take(h) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let idat = z
        .write_all(&raw)
        .and_then(|_| z.finish())
        .unwrap_or_default();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Renders the ROC plot as a PNG file's bytes.
pub fn render_png(title: &str, series: &[RocSeries]) -> Vec<u8> {
    png_of(scene(title, series))
}

/// Renders a scene as a PNG file's bytes.
pub(crate) fn png_of(shapes: Vec<Shape>) -> Vec<u8> {
    let mut c = Canvas::new(WIDTH as usize * SS, HEIGHT as usize * SS);
    for shape in shapes {
        match shape {
            Shape::Rect {
                x,
                y,
                w,
                h,
                fill,
                stroke,
            } => {
                if let Some(f) = fill {
                    c.fill_rect(x, y, x + w, y + h, f);
                }
                if let Some(st) = stroke {
                    let pts = [(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)];
                    c.polyline(&pts, 1.0, st, None);
                }
            }
            Shape::Line {
                pts,
                color,
                width,
                dash,
            } => c.polyline(&pts, width, color, dash),
            Shape::Text {
                x,
                y,
                text,
                size,
                anchor,
                vertical,
            } => c.text(x, y, &text, size, anchor, vertical),
        }
    }
    let (w, h, rgb) = c.downsample();
    encode_png(w, h, &rgb)
}

/// Writes the plot to `path`; the format follows the extension (`.svg` or `.png`).
pub fn write_plot(path: &Path, title: &str, series: &[RocSeries]) -> Result<()> {
    write_scene(path, scene(title, series))
}

/// Writes a scene to `path` as SVG or PNG, by the extension.
pub(crate) fn write_scene(path: &Path, shapes: Vec<Shape>) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let bytes = match ext.as_str() {
        "svg" => svg_of(shapes).into_bytes(),
        "png" => png_of(shapes),
        _ => {
            return Err(EvalError::Usage(format!(
                "plot {}: the file name must end in .svg or .png",
                path.display()
            )))
        }
    };
    crate::atomic::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Vec<RocSeries> {
        vec![RocSeries {
            label: "AUC 0.750 (95% CI 0.500-1.000)".into(),
            fpr: vec![0.0, 0.0, 0.5, 1.0],
            tpr: vec![0.0, 0.5, 1.0, 1.0],
        }]
    }

    #[test]
    fn svg_has_curve_and_escaped_legend() {
        let mut s = demo();
        s[0].label = "a<b & c".into();
        let svg = render_svg("ROC", &s);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a&lt;b &amp; c"));
        // The curve's first and last points: (0, 0) and (1, 1) in plot pixels.
        assert!(svg.contains("80.00,580.00 80.00,315.00 345.00,50.00 610.00,50.00"));
    }

    #[test]
    fn png_is_well_formed_and_has_ink() {
        let png = render_png("ROC", &demo());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(
            u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
            640
        );
        // Decode IDAT and check that the curve's colour appears.
        let idat_len = u32::from_be_bytes([png[33], png[34], png[35], png[36]]) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let mut raw = Vec::new();
        use std::io::Read;
        flate2::read::ZlibDecoder::new(&png[41..41 + idat_len])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), 640 * (640 * 3 + 1));
        let blue = raw
            .chunks(640 * 3 + 1)
            .any(|row| row[1..].chunks(3).any(|p| p == PALETTE[0]));
        assert!(blue);
    }
}
