//! Pictures of a case: slices of volumes on the display grid as RGB images, the lung mask
//! outlined, the crop box drawn, a heat map blended in, and PNG encoding.

use crate::volume::Volume;

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `3 * width * height` bytes.
    pub data: Vec<u8>,
}

/// Lung-mask outline colour.
pub const LUNG: [u8; 3] = [40, 220, 90];
/// Lesion outline colour.
pub const LESION: [u8; 3] = [255, 60, 200];
/// Crop-box colour.
pub const CROP: [u8; 3] = [255, 200, 0];

impl Rgb {
    /// A black image.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; 3 * width * height],
        }
    }

    /// Sets pixel `(x, y)` when it is inside the image.
    pub fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = 3 * (x as usize + self.width * y as usize);
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Draws the outline of the rectangle with corners `(x0, y0)` and `(x1, y1)` (inclusive),
    /// clipped to the image.
    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for x in x0..=x1 {
            self.put(x, y0, c);
            self.put(x, y1, c);
        }
        for y in y0..=y1 {
            self.put(x0, y, c);
            self.put(x1, y, c);
        }
    }

    /// Encodes the image as PNG.
    pub fn png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header()?;
            writer.write_image_data(&self.data)?;
        }
        Ok(out)
    }

    /// This image scaled by an integer factor (nearest neighbour).
    pub fn scaled(&self, factor: usize) -> Rgb {
        let factor = factor.max(1);
        let mut out = Rgb::new(self.width * factor, self.height * factor);
        for y in 0..out.height {
            for x in 0..out.width {
                let i = 3 * (x / factor + self.width * (y / factor));
                let o = 3 * (x + out.width * y);
                out.data[o..o + 3].copy_from_slice(&self.data[i..i + 3]);
            }
        }
        out
    }
}

/// The three orthogonal views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Plane z = const: columns x (patient's right on the left), rows y (anterior at the top).
    Axial,
    /// Plane y = const: columns x, rows z (superior at the top).
    Coronal,
    /// Plane x = const: columns y (anterior on the left), rows z (superior at the top).
    Sagittal,
}

impl View {
    /// Name for captions.
    pub fn name(self) -> &'static str {
        match self {
            View::Axial => "axial",
            View::Coronal => "coronal",
            View::Sagittal => "sagittal",
        }
    }

    /// The grid axis the view's slices are taken along (axial: z).
    pub fn axis(self) -> usize {
        match self {
            View::Axial => 2,
            View::Coronal => 1,
            View::Sagittal => 0,
        }
    }

    /// Image size `(width, height)` of this view of a grid of `size`.
    pub fn image_size(self, size: [usize; 3]) -> (usize, usize) {
        match self {
            View::Axial => (size[0], size[1]),
            View::Coronal => (size[0], size[2]),
            View::Sagittal => (size[1], size[2]),
        }
    }

    /// Grid index of image pixel `(col, row)` on slice `at`.
    pub fn voxel(self, size: [usize; 3], at: usize, col: usize, row: usize) -> [usize; 3] {
        match self {
            View::Axial => [col, row, at],
            View::Coronal => [col, at, size[2] - 1 - row],
            View::Sagittal => [at, col, size[2] - 1 - row],
        }
    }
}

fn value(v: &Volume, i: [usize; 3]) -> f32 {
    v.data[i[0] + v.size[0] * (i[1] + v.size[1] * i[2])]
}

/// The slice of `ct` at `at` in `view`, in grey with the window `[lo, hi]` HU.
pub fn grey_slice(ct: &Volume, view: View, at: usize, window: [f32; 2]) -> Rgb {
    let (w, h) = view.image_size(ct.size);
    let mut img = Rgb::new(w, h);
    let [lo, hi] = window;
    for row in 0..h {
        for col in 0..w {
            let v = value(ct, view.voxel(ct.size, at, col, row));
            let g = if v.is_nan() {
                0
            } else {
                (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8
            };
            img.put(col as i64, row as i64, [g; 3]);
        }
    }
    img
}

/// Colours the pixels of `img` on the border of `mask` (inside the mask, next to a pixel that is
/// not) in `view` at `at`.
pub fn outline(img: &mut Rgb, mask: &Volume, view: View, at: usize, colour: [u8; 3]) {
    let (w, h) = view.image_size(mask.size);
    let inside = |col: i64, row: i64| {
        col >= 0
            && row >= 0
            && (col as usize) < w
            && (row as usize) < h
            && value(mask, view.voxel(mask.size, at, col as usize, row as usize)) > 0.5
    };
    for row in 0..h as i64 {
        for col in 0..w as i64 {
            if inside(col, row)
                && !(inside(col - 1, row)
                    && inside(col + 1, row)
                    && inside(col, row - 1)
                    && inside(col, row + 1))
            {
                img.put(col, row, colour);
            }
        }
    }
}

/// A perceptually ordered colour map (dark blue, red, yellow, white) for `t` in [0, 1].
pub fn heat_colour(t: f32) -> [u8; 3] {
    const STOPS: [(f32, [f32; 3]); 5] = [
        (0.0, [0.0, 0.0, 0.5]),
        (0.3, [0.6, 0.0, 0.6]),
        (0.6, [1.0, 0.2, 0.0]),
        (0.85, [1.0, 0.8, 0.0]),
        (1.0, [1.0, 1.0, 0.9]),
    ];
    let t = t.clamp(0.0, 1.0);
    let mut c = STOPS[STOPS.len() - 1].1;
    for pair in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (pair[0], pair[1]);
        if t <= b {
            let f = (t - a) / (b - a);
            c = [0, 1, 2].map(|k| ca[k] + f * (cb[k] - ca[k]));
            break;
        }
    }
    c.map(|v| (v * 255.0).round() as u8)
}

/// Blends the heat map into `img` (opacity grows with the heat; none below 0.1).
pub fn blend_heat(img: &mut Rgb, heat: &Volume, view: View, at: usize) {
    let (w, h) = view.image_size(heat.size);
    for row in 0..h {
        for col in 0..w {
            let t = value(heat, view.voxel(heat.size, at, col, row));
            // NaN is not heat either.
            if t.is_nan() || t <= 0.1 {
                continue;
            }
            let a = 0.25 + 0.5 * t;
            let i = 3 * (col + img.width * row);
            for (px, c) in img.data[i..i + 3].iter_mut().zip(heat_colour(t)) {
                *px = (*px as f32 * (1.0 - a) + c as f32 * a).round() as u8;
            }
        }
    }
}

/// The slice index of `mask` in `view` with the most mask voxels (the middle when it is empty).
pub fn fullest_slice(mask: &Volume, view: View) -> usize {
    let [nx, ny, nz] = mask.size;
    let axis = view.axis();
    let mut counts = vec![0usize; mask.size[axis]];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if mask.data[x + nx * (y + ny * z)] > 0.5 {
                    counts[[x, y, z][axis]] += 1;
                }
            }
        }
    }
    let best = counts
        .iter()
        .enumerate()
        .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
        .map_or(0, |(i, _)| i);
    if counts[best] == 0 {
        mask.size[axis] / 2
    } else {
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips() {
        let mut img = Rgb::new(5, 3);
        img.rect(0, 0, 4, 2, CROP);
        img.put(2, 1, [1, 2, 3]);
        let bytes = img.png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (5, 3));
        assert_eq!(&buf[..info.buffer_size()], &img.data[..]);
    }

    #[test]
    fn views_put_superior_at_the_top() {
        let size = [4, 5, 6];
        assert_eq!(View::Coronal.voxel(size, 2, 1, 0), [1, 2, 5]);
        assert_eq!(View::Sagittal.voxel(size, 3, 4, 5), [3, 4, 0]);
        assert_eq!(View::Sagittal.image_size(size), (5, 6));
    }

    #[test]
    fn fullest_slice_finds_the_mask() {
        let mut m = Volume::filled([3, 3, 4], [1.0; 3], [0.0; 3], 0.0);
        m.data[1 + 3 * (1 + 3 * 2)] = 1.0;
        m.data[2 + 3 * (1 + 3 * 2)] = 1.0;
        assert_eq!(fullest_slice(&m, View::Axial), 2);
        assert_eq!(fullest_slice(&m, View::Coronal), 1);
        assert_eq!(heat_colour(0.0), [0, 0, 128]);
        assert_eq!(heat_colour(1.0), [255, 255, 230]);
    }
}
