//! Synthetic chest phantoms: determinism, anatomy in HU, and lesion burden by CO-RADS.

use ctgrade::synth::{phantom, PhantomConfig, SynthError};
use ctgrade::volume::Volume;

fn cfg(co_rads: u8, seed: u64) -> PhantomConfig {
    PhantomConfig {
        size: [120, 120, 72],
        spacing: [3.0, 3.0, 4.4],
        seed,
        co_rads,
    }
}

/// Fractions of true-lung voxels in the ground-glass and consolidation HU ranges.
fn lesion_fractions(ct: &Volume, mask: &Volume) -> (f64, f64) {
    let (mut n, mut ggo, mut cons) = (0usize, 0usize, 0usize);
    for (&v, &m) in ct.data.iter().zip(&mask.data) {
        if m > 0.5 {
            n += 1;
            ggo += usize::from((-700.0..=-450.0).contains(&v));
            cons += usize::from((-100.0..=50.0).contains(&v));
        }
    }
    (ggo as f64 / n as f64, cons as f64 / n as f64)
}

#[test]
fn same_seed_same_voxels_other_seed_other_voxels() {
    let (a, ma) = phantom(&cfg(4, 7)).expect("phantom");
    let (b, mb) = phantom(&cfg(4, 7)).expect("phantom");
    assert_eq!(a, b);
    assert_eq!(ma, mb);
    let (c, _) = phantom(&cfg(4, 8)).expect("phantom");
    assert_ne!(a.data, c.data);
    // Whole HU, int16-representable, centred on the physical origin.
    assert!(a
        .data
        .iter()
        .all(|v| v.fract() == 0.0 && (-1024.0..=3071.0).contains(v)));
    let centre = a.index_to_physical([59.5, 59.5, 35.5]);
    assert!(centre.iter().all(|c| c.abs() < 1e-9), "{centre:?}");
}

#[test]
fn anatomy_has_chest_ct_values() {
    let (ct, mask) = phantom(&cfg(1, 3)).expect("phantom");
    let [nx, ny, nz] = ct.size;
    // Air in the corners.
    let corner = ct.at(2, 2, nz / 2);
    assert!((-1040.0..=-960.0).contains(&corner), "corner {corner}");
    // Lungs: about -850 HU on average (vessels included), 3 to 6 L in all.
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (&v, &m) in ct.data.iter().zip(&mask.data) {
        if m > 0.5 {
            sum += v as f64;
            n += 1;
        }
    }
    let mean = sum / n as f64;
    assert!((-880.0..=-780.0).contains(&mean), "lung mean {mean}");
    let litres = n as f64 * 3.0 * 3.0 * 4.4 / 1e6;
    assert!((3.0..=6.0).contains(&litres), "lung volume {litres} L");
    // Both lungs, left (+x) and right.
    let left = (0..mask.len())
        .filter(|&i| mask.data[i] > 0.5 && i % nx >= nx / 2)
        .count();
    assert!(left > n / 3 && left < 2 * n / 3, "left {left} of {n}");
    // Bone (ribs, spine) and soft tissue exist in a mid-chest slice; the table too.
    let z = nz / 2;
    let slice: Vec<f32> = (0..nx * ny).map(|i| ct.data[i + nx * ny * z]).collect();
    assert!(slice.iter().filter(|&&v| v > 400.0).count() > 20, "bone");
    assert!(
        slice.iter().filter(|&&v| (0.0..100.0).contains(&v)).count() > 1000,
        "soft tissue"
    );
    assert!(
        slice
            .iter()
            .filter(|&&v| (-150.0..-60.0).contains(&v))
            .count()
            > 300,
        "fat"
    );
    // The trachea: air on the midline above the lungs, outside the true mask.
    let top = nz - 3;
    let (cx, cy) = (nx / 2, ny / 2 - 2);
    let trachea = (cx - 2..=cx + 2).any(|x| (cy - 2..=cy + 2).any(|y| ct.at(x, y, top) < -900.0));
    assert!(trachea, "no trachea at the top");
    assert!(mask.at(cx, cy, top) == 0.0);
}

#[test]
fn lesion_burden_rises_with_co_rads() {
    let mut ggo = Vec::new();
    let mut cons = Vec::new();
    for c in 1..=5u8 {
        let (ct, mask) = phantom(&cfg(c, 100 + c as u64)).expect("phantom");
        let (g, k) = lesion_fractions(&ct, &mask);
        ggo.push(g);
        cons.push(k);
    }
    eprintln!("ground glass {ggo:?}\nconsolidation {cons:?}");
    // CO-RADS 1 has only the partial-volume edges of vessels in these ranges.
    assert!(ggo[0] < 0.02, "{ggo:?}");
    assert!(
        ggo[2] > ggo[0] + 0.01 && ggo[3] > ggo[2] + 0.02 && ggo[4] > ggo[2],
        "{ggo:?}"
    );
    assert!(
        cons[4] > cons[0] + 0.03 && cons[4] > 3.0 * cons[3],
        "{cons:?}"
    );
}

#[test]
fn invalid_configurations_are_rejected() {
    for c in [0u8, 6] {
        let err = phantom(&cfg(c, 1)).expect_err("bad CO-RADS");
        assert!(matches!(err, SynthError::CoRads(_)));
        assert!(err.to_string().contains("CO-RADS"), "{err}");
    }
    let mut bad = cfg(1, 1);
    bad.size = [0, 10, 10];
    assert!(matches!(phantom(&bad), Err(SynthError::Size(_))));
    let mut bad = cfg(1, 1);
    bad.spacing = [1.0, f64::NAN, 1.0];
    assert!(matches!(phantom(&bad), Err(SynthError::Spacing(_))));
}

const BIN: &str = env!("CARGO_BIN_EXE_ctgrade");

#[test]
fn synth_command_writes_identical_files_and_the_true_mask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |name: &str, mask: Option<&str>| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["synth", "--seed", "9", "--co-rads", "3"])
            .args(["--size", "64,64,40", "--spacing", "5.6,5.6,8"])
            .arg("--out")
            .arg(dir.path().join(name));
        if let Some(m) = mask {
            cmd.arg("--lung-mask").arg(dir.path().join(m));
        }
        let out = cmd.output().expect("run ctgrade synth");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(dir.path().join(name)).expect("output file")
    };
    let a = run("a.mha", Some("mask.mha"));
    let b = run("b.mha", None);
    assert_eq!(a, b, "same seed, different bytes");
    let (ct, mask) = phantom(&PhantomConfig {
        size: [64, 64, 40],
        spacing: [5.6, 5.6, 8.0],
        seed: 9,
        co_rads: 3,
    })
    .expect("phantom");
    let (read_ct, ct_type) =
        ctgrade::volume::read_with_type(&dir.path().join("a.mha")).expect("read CT");
    assert_eq!(ct_type, ctgrade::volume::ElementType::Short);
    assert_eq!(read_ct.data, ct.data);
    assert_eq!(read_ct.origin, ct.origin);
    let (read_mask, mask_type) =
        ctgrade::volume::read_with_type(&dir.path().join("mask.mha")).expect("read mask");
    assert_eq!(mask_type, ctgrade::volume::ElementType::UChar);
    assert_eq!(read_mask.data, mask.data);

    let out = std::process::Command::new(BIN)
        .args(["synth", "--co-rads", "6", "--out"])
        .arg(dir.path().join("c.mha"))
        .output()
        .expect("run ctgrade synth");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CO-RADS category must be 1 to 5"));
    assert!(!dir.path().join("c.mha").exists());
}

/// The committed test inputs are what scripts/make-test-inputs.sh draws, in the platform layout.
#[test]
fn test_inputs_match_their_generator() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test_inputs");
    let cases = [
        ("images/ct/3f1c2a9e-5b7d-4e21-9c4a-8d0f6e2b1a57.mha", 1, 4),
        ("batch/phantom-seed11-co-rads1.mha", 11, 1),
        ("batch/phantom-seed12-co-rads2.mha", 12, 2),
        ("batch/phantom-seed14-co-rads4.mha", 14, 4),
        ("batch/phantom-seed15-co-rads5.mha", 15, 5),
    ];
    for (file, seed, co_rads) in cases {
        let path = root.join(file);
        let size = std::fs::metadata(&path).expect("test input").len();
        assert!(size < 2_500_000, "{file}: {size} bytes");
        let read = ctgrade::volume::read(&path).expect("read test input");
        let (ct, _) = phantom(&PhantomConfig {
            size: [144, 144, 88],
            spacing: [2.5, 2.5, 3.6],
            seed,
            co_rads,
        })
        .expect("phantom");
        assert!(read == ct, "{file} differs from its generator");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("inputs.json")).expect("inputs.json"),
    )
    .expect("inputs.json is JSON");
    let socket = &json[0];
    assert_eq!(socket["socket"]["relative_path"], "images/ct");
    assert_eq!(socket["socket"]["slug"], "ct-image");
    assert_eq!(
        socket["image"]["pk"],
        "3f1c2a9e-5b7d-4e21-9c4a-8d0f6e2b1a57"
    );
}
