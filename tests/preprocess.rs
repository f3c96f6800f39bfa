//! Preprocessing: SimpleITK golden fixtures for orientation and resampling, the lung mask against
//! phantom ground truth, the assembly of the network input, and the error cases.

mod common;
use ctgrade::preprocess::orient::{orient, Orientation};
use ctgrade::preprocess::resample::{resample, Grid, Interpolation};
use ctgrade::preprocess::{
    preprocess, target_grid, ChannelLayout, InputSpec, PreprocessError, Preprocessed,
};
use ctgrade::synth::{phantom, PhantomConfig};
use ctgrade::volume::Volume;
use serde_json::Value;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/preprocess/resample_cases.json"
);

fn arr<const N: usize>(v: &Value) -> [f64; N] {
    let a = v.as_array().expect("array");
    assert_eq!(a.len(), N);
    std::array::from_fn(|i| a[i].as_f64().expect("number"))
}

fn volume(v: &Value) -> Volume {
    let size = arr::<3>(&v["size"]).map(|s| s as usize);
    let data: Vec<f32> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    assert_eq!(data.len(), size[0] * size[1] * size[2]);
    Volume {
        data,
        size,
        spacing: arr(&v["spacing"]),
        origin: arr(&v["origin"]),
        direction: arr(&v["direction"]),
    }
}

fn assert_geometry(name: &str, g: &Grid, v: &Volume) {
    assert_eq!(g.size, v.size, "{name}: size");
    for k in 0..3 {
        assert!(
            (g.spacing[k] - v.spacing[k]).abs() < 1e-9,
            "{name}: spacing"
        );
        assert!(
            (g.origin[k] - v.origin[k]).abs() < 1e-6,
            "{name}: origin {:?} vs {:?}",
            g.origin,
            v.origin
        );
    }
    for k in 0..9 {
        assert!(
            (g.direction[k] - v.direction[k]).abs() < 1e-9,
            "{name}: direction"
        );
    }
}

/// Orientation (like `DICOMOrient(.., "LPS")`), the target grid, and the resampled voxels agree
/// with SimpleITK on every case: within 1 HU as the issue asks, and in fact within 0.01 HU.
#[test]
fn orientation_and_resampling_match_simpleitk() {
    let text = std::fs::read_to_string(FIXTURES).expect("fixture file");
    let root: Value = serde_json::from_str(&text).expect("fixture JSON");
    let cases = root["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let input = volume(&case["input"]);
        let oriented_ref = volume(&case["oriented"]);
        let output_ref = volume(&case["output"]);
        let default = case["default"].as_f64().expect("default") as f32;
        let spacing = case["spacing_mm"].as_f64().expect("spacing");

        let o = Orientation::of(&input.direction).expect("orientation");
        assert_geometry(name, &o.apply(&Grid::of(&input)), &oriented_ref);
        let oriented = orient(&input).expect("orient");
        assert_eq!(oriented.data, oriented_ref.data, "{name}: oriented voxels");

        let (_, grid, oblique) = target_grid(&Grid::of(&input), spacing).expect("grid");
        assert_eq!(
            oblique,
            case["oblique"].as_bool().expect("oblique"),
            "{name}"
        );
        assert_geometry(name, &grid, &output_ref);

        let interp = match case["interpolation"].as_str() {
            Some("nearest") => Interpolation::Nearest,
            _ => Interpolation::Linear,
        };
        // Resampling reads the original voxels through the oriented grid: no copy needed.
        let out = resample(&input, &grid, interp, default).expect("resample");
        let mut max_diff = 0f32;
        let mut inside = 0;
        for (i, (&a, &b)) in out.data.iter().zip(&output_ref.data).enumerate() {
            assert_eq!(
                a == default,
                b == default,
                "{name}: inside/outside differs at voxel {i}"
            );
            if b != default {
                inside += 1;
                max_diff = max_diff.max((a - b).abs());
            }
        }
        assert!(inside > 100, "{name}: too few voxels inside");
        assert!(max_diff <= 1.0, "{name}: max difference {max_diff} HU");
        let tol = if interp == Interpolation::Nearest {
            0.0
        } else {
            0.01
        };
        assert!(max_diff <= tol, "{name}: max difference {max_diff} HU");
    }
}

fn small_phantom(co_rads: u8, seed: u64) -> (Volume, Volume) {
    // The test_inputs/ grid: 360 x 360 x 317 mm.
    phantom(&PhantomConfig {
        size: [160, 160, 96],
        spacing: [2.25, 2.25, 3.3],
        seed,
        co_rads,
    })
    .expect("phantom")
}

fn dice(a: &Volume, b: &Volume) -> f64 {
    let (mut inter, mut na, mut nb) = (0usize, 0usize, 0usize);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        na += usize::from(x > 0.5);
        nb += usize::from(y > 0.5);
        inter += usize::from(x > 0.5 && y > 0.5);
    }
    2.0 * inter as f64 / (na + nb) as f64
}

/// The classical lung mask matches the phantom's true lungs (Dice >= 0.95) without lesions and
/// at CO-RADS 5 burden, where consolidations must not cut the lungs out.
#[test]
fn lung_mask_matches_phantom_truth_at_co_rads_1_and_5() {
    for (co_rads, seed) in [(1u8, 11u64), (5, 12)] {
        let (ct, truth) = small_phantom(co_rads, seed);
        let p = preprocess(&ct, None, &InputSpec::default()).expect("preprocess");
        let lung_mask = p.lung_mask.map(f32::from);
        let d = dice(&lung_mask, &truth);
        eprintln!(
            "CO-RADS {co_rads}: Dice {d:.4}, report {:?}",
            p.report.lung_volume_ml
        );
        assert!(d >= 0.95, "CO-RADS {co_rads}: Dice {d}");
        assert_eq!(lung_mask.size, ct.size);
        assert_eq!(lung_mask.origin, ct.origin);
        assert!(p.report.lung_volume_left_ml > 1000.0 && p.report.lung_volume_right_ml > 1000.0);
        // Labelled by side (lungmask's convention): the right lung lies towards -x in LPS.
        let mean_x = |label: f32| {
            let (mut sum, mut n) = (0.0, 0usize);
            for (i, &v) in lung_mask.data.iter().enumerate() {
                if v == label {
                    let x = i % ct.size[0];
                    sum += lung_mask.index_to_physical([x as f64, 0.0, 0.0])[0];
                    n += 1;
                }
            }
            sum / n.max(1) as f64
        };
        assert!(lung_mask
            .data
            .iter()
            .all(|&v| v == 0.0 || v == 1.0 || v == 2.0));
        assert!(
            mean_x(1.0) < mean_x(2.0),
            "right {} left {}",
            mean_x(1.0),
            mean_x(2.0)
        );
        check_assembly(&ct, &p, &InputSpec::default());
    }
}

/// Recomputes the network input from the report's choices: slice selection, crop, sampling and
/// window, and checks them against the paper's rules.
fn check_assembly(ct: &Volume, p: &Preprocessed, spec: &InputSpec) {
    let r = &p.report;
    assert_eq!(p.shape, [3, spec.slices, spec.crop_xy[1], spec.crop_xy[0]]);
    assert_eq!(p.input.len(), p.shape.iter().product::<usize>());
    let (_, grid, _) = target_grid(&Grid::of(ct), spec.spacing_mm).expect("grid");
    assert_eq!(r.resampled_size, grid.size);
    // Slices closer than z_margin_mm to the mask are kept, the rest dropped.
    let m = (spec.z_margin_mm / spec.spacing_mm).ceil() as usize - 1;
    assert_eq!(r.kept_z_range[0], r.lung_z_range[0].saturating_sub(m));
    assert_eq!(
        r.kept_z_range[1],
        (r.lung_z_range[1] + m).min(grid.size[2] - 1)
    );
    assert!((m as f64) * spec.spacing_mm < spec.z_margin_mm);
    assert!(((m + 1) as f64) * spec.spacing_mm >= spec.z_margin_mm);
    // Uniform sampling from the first to the last kept slice, in order.
    assert_eq!(r.sampled_slices.len(), spec.slices);
    assert_eq!(r.sampled_slices[0], r.kept_z_range[0]);
    assert_eq!(*r.sampled_slices.last().expect("slices"), r.kept_z_range[1]);
    assert!(r.sampled_slices.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(r.crop_box.x[1] - r.crop_box.x[0], spec.crop_xy[0] as i64);
    assert_eq!(r.crop_box.y[1] - r.crop_box.y[0], spec.crop_xy[1] as i64);
    // The CT channel is the windowed resampled CT at the crop, -1100 HU outside.
    let hu = resample(ct, &grid, Interpolation::Linear, -1100.0).expect("resample");
    let [lo, hi] = spec.hu_window;
    let (cw, ch) = (spec.crop_xy[0], spec.crop_xy[1]);
    for (s, &z) in r.sampled_slices.iter().enumerate().step_by(17) {
        for y in (0..ch).step_by(7) {
            for x in (0..cw).step_by(5) {
                let gx = r.crop_box.x[0] + x as i64;
                let gy = r.crop_box.y[0] + y as i64;
                let inside = gx >= 0
                    && gy >= 0
                    && (gx as usize) < grid.size[0]
                    && (gy as usize) < grid.size[1];
                let v = if inside {
                    hu.at(gx as usize, gy as usize, z)
                } else {
                    -1100.0
                };
                let want = (v.clamp(lo, hi) - lo) / (hi - lo);
                let got = p.input[x + cw * (y + ch * s)];
                assert!(
                    (got - want).abs() < 1e-5,
                    "input ({s}, {y}, {x}): {got} vs {want}"
                );
            }
        }
    }
    assert!(p.input.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// Flipping the scan's axes (with a matching direction) changes nothing after orientation.
#[test]
fn flipped_input_gives_the_same_network_input() {
    let (ct, _) = small_phantom(3, 21);
    let [nx, ny, nz] = ct.size;
    // Reverse x and z: voxel (x, y, z) of the flipped volume is (nx-1-x, y, nz-1-z).
    let mut flipped = ct.clone();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                flipped.data[x + nx * (y + ny * z)] = ct.at(nx - 1 - x, y, nz - 1 - z);
            }
        }
    }
    flipped.origin = ct.index_to_physical([(nx - 1) as f64, 0.0, (nz - 1) as f64]);
    flipped.direction = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0];
    let spec = InputSpec {
        slices: 32,
        ..InputSpec::default()
    };
    let a = preprocess(&ct, None, &spec).expect("original");
    let b = preprocess(&flipped, None, &spec).expect("flipped");
    assert_eq!(b.report.orientation.flipped, [true, false, true]);
    assert_eq!(a.report.sampled_slices, b.report.sampled_slices);
    assert_eq!(a.report.crop_box, b.report.crop_box);
    let max = a
        .input
        .iter()
        .zip(&b.input)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-6, "max difference {max}");
    // The mask is returned on each input's own grid.
    for z in (0..nz).step_by(5) {
        for y in (0..ny).step_by(3) {
            for x in (0..nx).step_by(3) {
                assert_eq!(
                    a.lung_mask.at(x, y, z),
                    b.lung_mask.at(nx - 1 - x, y, nz - 1 - z)
                );
            }
        }
    }
}

/// The lesion-map layout: CT, the lesion map through the same geometry (nearest neighbour), zeros.
#[test]
fn lesion_channel_layout() {
    let (ct, truth) = small_phantom(4, 31);
    let spec = InputSpec {
        slices: 24,
        crop_xy: [200, 180],
        spacing_mm: 2.0,
        channels: ChannelLayout::CtLesionZeros,
        ..InputSpec::default()
    };
    // The true lung mask stands in for a lesion map: values 0/1 on the CT's grid.
    let p = preprocess(&ct, Some(&truth), &spec).expect("preprocess");
    assert_eq!(p.shape, [3, 24, 180, 200]);
    let n = 24 * 180 * 200;
    let (ct_ch, rest) = p.input.split_at(n);
    let (lesion_ch, zeros) = rest.split_at(n);
    assert!(zeros.iter().all(|&v| v == 0.0));
    assert!(lesion_ch.iter().all(|&v| v == 0.0 || v == 1.0));
    // Where the map says lung, the CT channel is dark (lung is about -850 HU, 0.18 after the
    // window); the map must cover a good part of the crop.
    let lung: Vec<f32> = ct_ch
        .iter()
        .zip(lesion_ch)
        .filter(|(_, &l)| l == 1.0)
        .map(|(&c, _)| c)
        .collect();
    assert!(
        lung.len() > n / 20,
        "lesion map mostly empty: {}",
        lung.len()
    );
    let mean = lung.iter().sum::<f32>() / lung.len() as f32;
    assert!(mean < 0.3, "mean CT under the map {mean}");
    check_assembly(&ct, &p, &spec);

    // The same layout without a map is an error, as is a map on another grid.
    assert!(matches!(
        preprocess(&ct, None, &spec),
        Err(PreprocessError::MissingLesion)
    ));
    let mut other = truth.clone();
    other.origin[0] += 5.0;
    let err = preprocess(&ct, Some(&other), &spec).expect_err("grid mismatch");
    assert!(matches!(err, PreprocessError::LesionGrid { .. }), "{err}");
}

/// Inputs without lungs and invalid specifications fail with clear messages.
#[test]
fn errors_are_clear() {
    let air = Volume::filled([64, 64, 40], [3.0, 3.0, 5.0], [0.0; 3], -1000.0);
    let err = preprocess(&air, None, &InputSpec::default()).expect_err("no lungs in air");
    assert!(matches!(err, PreprocessError::NoLungs { .. }));
    assert!(err.to_string().starts_with("no lungs found"), "{err}");
    let water = Volume::filled([64, 64, 40], [3.0, 3.0, 5.0], [0.0; 3], 0.0);
    let err = preprocess(&water, None, &InputSpec::default()).expect_err("no lungs in water");
    assert!(err.to_string().contains("no lungs found"), "{err}");
    let spec = InputSpec {
        spacing_mm: 0.0,
        ..InputSpec::default()
    };
    let err = preprocess(&water, None, &spec).expect_err("bad spec");
    assert!(err.to_string().contains("spacing_mm"), "{err}");
    let mut bad = water.clone();
    bad.direction = [0.0; 9];
    let err = preprocess(&bad, None, &InputSpec::default()).expect_err("bad direction");
    assert!(matches!(err, PreprocessError::Direction(_)), "{err}");
    let mut empty = water;
    empty.data.truncate(10);
    assert!(matches!(
        preprocess(&empty, None, &InputSpec::default()),
        Err(PreprocessError::EmptyVolume)
    ));
}

/// Both lungs are found on a real chest CT (5 mm slices, lungs cut by the first slice).
#[test]
fn real_chest_ct_has_two_lungs() {
    let ct = ctgrade::volume::read(&common::real_ct()).expect("read lung1.mha");
    let p = preprocess(&ct, None, &InputSpec::default()).expect("preprocess lung1");
    let r = &p.report;
    eprintln!(
        "lung1: {:.0} mL (right {:.0}, left {:.0}), {} components, kept z {:?} of {:?}, {:.2} s",
        r.lung_volume_ml,
        r.lung_volume_right_ml,
        r.lung_volume_left_ml,
        r.lung_components,
        r.kept_z_range,
        r.resampled_size,
        r.seconds.total
    );
    assert!(
        r.lung_volume_right_ml > 800.0,
        "right lung {}",
        r.lung_volume_right_ml
    );
    assert!(
        r.lung_volume_left_ml > 800.0,
        "left lung {}",
        r.lung_volume_left_ml
    );
    assert!((2000.0..7000.0).contains(&r.lung_volume_ml));
    // The mask on the input grid holds the same volume as the resampled one, roughly.
    let resampled = r.lung_volume_left_ml + r.lung_volume_right_ml;
    assert!((r.lung_volume_ml - resampled).abs() < 0.03 * resampled);
    // The scan starts inside the lungs and ends in the neck: slices above the apex are dropped.
    assert_eq!(r.kept_z_range[0], 0);
    assert!(
        r.kept_z_range[1] + 5 < r.resampled_size[2],
        "{:?}",
        r.kept_z_range
    );
    // Lung tissue in the centre of the crop's left and right halves at mid-lung height.
    let [_, slices, ch, cw] = p.shape;
    let s = slices / 2;
    let dark = |x0: usize, x1: usize| {
        let mut n = 0;
        for y in ch / 3..2 * ch / 3 {
            for x in x0..x1 {
                n += usize::from(p.input[x + cw * (y + ch * s)] < 0.25);
            }
        }
        n
    };
    assert!(dark(cw / 8, 3 * cw / 8) > 1000 && dark(5 * cw / 8, 7 * cw / 8) > 1000);
    check_assembly(&ct, &p, &InputSpec::default());
}

const BIN: &str = env!("CARGO_BIN_EXE_ctgrade");

/// `ctgrade preprocess` writes the CT channel, the lung mask on the input grid and the report.
#[test]
fn preprocess_command_writes_its_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ct, truth) = small_phantom(2, 41);
    let ct_path = dir.path().join("ct.mha");
    let lesion_path = dir.path().join("lesion.mha");
    ctgrade::volume::write(&ct_path, &ct, ctgrade::volume::ElementType::Short).expect("write CT");
    ctgrade::volume::write(&lesion_path, &truth, ctgrade::volume::ElementType::UChar)
        .expect("write lesion");
    let spec_path = dir.path().join("spec.json");
    std::fs::write(
        &spec_path,
        r#"{"spacing_mm": 1.6, "crop_xy": [200, 200], "slices": 64}"#,
    )
    .expect("spec");
    // `ctgrade preprocess ct.mha --out OUT FLAG PATH`.
    let preprocess = |out: &std::path::Path, flag: &str, path: &std::path::Path| {
        std::process::Command::new(BIN)
            .arg("preprocess")
            .arg(&ct_path)
            .arg("--out")
            .arg(out)
            .arg(flag)
            .arg(path)
            .output()
            .expect("run ctgrade preprocess")
    };
    let out = dir.path().join("out");
    let status = preprocess(&out, "--spec", &spec_path);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (input, ty) = ctgrade::volume::read_with_type(&out.join("input.mha")).expect("input.mha");
    assert_eq!(ty, ctgrade::volume::ElementType::Float);
    assert_eq!(input.size, [200, 200, 64]);
    assert_eq!(input.spacing[0], 1.6);
    let (mask, ty) =
        ctgrade::volume::read_with_type(&out.join("lung_mask.mha")).expect("lung_mask.mha");
    assert_eq!(ty, ctgrade::volume::ElementType::UChar);
    assert_eq!(
        (mask.size, mask.origin, mask.spacing),
        (ct.size, ct.origin, ct.spacing)
    );
    assert!(dice(&mask, &truth) > 0.95);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("preprocess.json")).expect("json"))
            .expect("report JSON");
    for key in ["lung_volume_ml", "kept_z_range", "crop_box", "seconds"] {
        assert!(report.get(key).is_some(), "preprocess.json lacks {key}");
    }
    assert_eq!(report["spec"]["spacing_mm"], 1.6);
    // The input volume's geometry places the crop: its first voxel is the crop box corner.
    let g = report["resampled_origin"].as_array().expect("origin");
    let x0 = report["crop_box"]["x"][0].as_f64().expect("crop x");
    assert!((input.origin[0] - (g[0].as_f64().expect("x") + 1.6 * x0)).abs() < 1e-6);

    // With a lesion map: the CT / lesion / zeros layout, and lesion.mha.
    let out2 = dir.path().join("out2");
    let status = preprocess(&out2, "--lesion", &lesion_path);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let lesion = ctgrade::volume::read(&out2.join("lesion.mha")).expect("lesion.mha");
    assert_eq!(lesion.size, [240, 240, 128]);
    assert!(lesion.data.contains(&1.0));

    // A bad specification names the file and the field.
    std::fs::write(&spec_path, r#"{"spacing_mm": -1}"#).expect("spec");
    let status = preprocess(&dir.path().join("out3"), "--spec", &spec_path);
    assert!(!status.status.success());
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(
        err.contains("spec.json") && err.contains("spacing_mm"),
        "{err}"
    );
    assert!(!dir.path().join("out3").exists());
}
