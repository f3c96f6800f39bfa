//! Volume I/O against SimpleITK: golden fixtures written by tools/make_volume_fixtures.py, the
//! real chest CT, and writer round trips.

use std::path::{Path, PathBuf};

use ctgrade::volume::{self, ElementType, Volume, WriteOptions};

mod common;
use common::real_ct;

/// A small volume with non-trivial geometry and values that every type can hold.
fn sample(size: [usize; 3]) -> Volume {
    let n = size[0] * size[1] * size[2];
    let c = (0.6f64).cos();
    let s = (0.6f64).sin();
    Volume {
        data: (0..n).map(|i| ((i * 37) % 251) as f32 - 20.0).collect(),
        size,
        spacing: [0.75, 1.25, 2.5],
        origin: [-12.5, 30.25, -7.0],
        // A rotation about z, then a flipped z axis.
        direction: [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0],
    }
}

#[test]
fn real_ct_matches_simpleitk() {
    let (v, ty) = volume::read_with_type(&real_ct()).unwrap();
    assert_eq!(ty, ElementType::Short);
    assert_eq!(v.size, [512, 512, 48]);
    assert_eq!(v.spacing, [0.5703125, 0.5703125, 5.0]);
    assert_eq!(v.origin, [-146.0, -325.0, -777.4999999999998]);
    assert_eq!(v.direction, volume::IDENTITY);
    let s = v.stats();
    assert_eq!((s.min, s.max), (-1024.0, 3071.0));
    assert!((s.mean - -577.9148241678873).abs() < 1e-9);
}

#[test]
fn metaimage_round_trip_every_type_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    for ty in ElementType::ALL {
        // Values each type holds exactly: signed and unsigned bytes, fractions for floats.
        let mut vol = sample([7, 5, 3]);
        for (i, x) in vol.data.iter_mut().enumerate() {
            *x = match ty {
                ElementType::Char => (i * 37 % 200) as f32 - 100.0,
                ElementType::Float | ElementType::Double => *x + 0.25,
                t if t.is_integer() && t.as_met_str().starts_with("MET_U") => *x + 20.0,
                _ => *x,
            };
        }
        for (name, compress) in [
            ("a.mha", true),
            ("b.mha", false),
            ("c.mhd", true),
            ("d.mhd", false),
        ] {
            let p = dir.path().join(format!("{}-{name}", ty.as_met_str()));
            let opts = WriteOptions {
                compress,
                ..WriteOptions::default()
            };
            volume::write_with_options(&p, &vol, ty, &opts).unwrap();
            let (back, back_ty) = volume::read_with_type(&p).unwrap();
            assert_eq!(back_ty, ty);
            assert_eq!(back, vol, "{ty} {name}");
        }
    }
    // Only the four files per type plus the .mhd data files: no temporary files left behind.
    let n = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(n, ElementType::ALL.len() * 6);
}

#[test]
fn write_rounds_and_saturates() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = Volume::filled([4, 1, 1], [1.0; 3], [0.0; 3], 0.0);
    v.data = vec![-0.5, 1.5, 40000.0, -1e9];
    let p = dir.path().join("r.mha");
    volume::write(&p, &v, ElementType::Short).unwrap();
    assert_eq!(
        volume::read(&p).unwrap().data,
        vec![-1.0, 2.0, 32767.0, -32768.0]
    );
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/volume")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}: got {got:?}, SimpleITK {want:?}"
        );
    }
}

#[test]
fn fixtures_match_simpleitk() {
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    assert!(
        files.len() >= 50,
        "expected.json lists {} files",
        files.len()
    );
    for (name, e) in files {
        let path = fixtures().join(e["file"].as_str().unwrap());
        let (v, ty) = volume::read_with_type(&path).unwrap_or_else(|err| panic!("{name}: {err}"));
        let size: Vec<usize> = floats(&e["size"]).iter().map(|&x| x as usize).collect();
        assert_eq!(v.size.to_vec(), size, "{name}");
        assert_close(
            &format!("{name} spacing"),
            &v.spacing,
            &floats(&e["spacing"]),
        );
        assert_close(&format!("{name} origin"), &v.origin, &floats(&e["origin"]));
        assert_close(
            &format!("{name} direction"),
            &v.direction,
            &floats(&e["direction"]),
        );
        assert_eq!(
            ty.as_met_str(),
            e["element_type"].as_str().unwrap(),
            "{name}"
        );
        let want = floats(&e["values"]);
        assert_eq!(v.data.len(), want.len(), "{name}");
        for (i, (&g, &w)) in v.data.iter().zip(&want).enumerate() {
            assert_eq!(g, w as f32, "{name}: voxel {i}");
        }
    }
}

#[test]
fn real_ct_matches_simpleitk_fixture() {
    let exp = &expected()["real_ct"];
    let v = volume::read(&real_ct()).unwrap();
    let size: Vec<usize> = floats(&exp["size"]).iter().map(|&x| x as usize).collect();
    assert_eq!(v.size.to_vec(), size);
    assert_close("spacing", &v.spacing, &floats(&exp["spacing"]));
    assert_close("origin", &v.origin, &floats(&exp["origin"]));
    assert_close("direction", &v.direction, &floats(&exp["direction"]));
    let s = v.stats();
    assert_eq!(s.min, exp["min"].as_f64().unwrap());
    assert_eq!(s.max, exp["max"].as_f64().unwrap());
    let sum: f64 = v.data.iter().map(|&x| x as f64).sum();
    assert_eq!(sum, exp["sum"].as_f64().unwrap());
    assert!((s.mean - exp["mean"].as_f64().unwrap()).abs() < 1e-9);
    for smp in exp["samples"].as_array().unwrap() {
        let s = floats(smp);
        let (x, y, z) = (s[0] as usize, s[1] as usize, s[2] as usize);
        assert_eq!(v.at(x, y, z) as f64, s[3], "voxel ({x}, {y}, {z})");
    }
}

#[test]
fn nifti_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let vol = sample([6, 4, 3]);
    for (name, ty) in [
        ("a.nii", ElementType::Short),
        ("b.nii.gz", ElementType::Float),
        ("c.nii.gz", ElementType::UChar),
        ("d.nii", ElementType::Double),
    ] {
        let mut vol = vol.clone();
        if ty == ElementType::UChar {
            vol.data.iter_mut().for_each(|x| *x = x.abs());
        }
        let p = dir.path().join(name);
        volume::write(&p, &vol, ty).unwrap();
        let (back, back_ty) = volume::read_with_type(&p).unwrap();
        assert_eq!(back_ty, ty, "{name}");
        assert_eq!(back.size, vol.size);
        assert_eq!(back.data, vol.data, "{name}");
        // NIfTI stores geometry as f32.
        for (g, w) in back
            .spacing
            .iter()
            .chain(&back.origin)
            .chain(&back.direction)
            .zip(vol.spacing.iter().chain(&vol.origin).chain(&vol.direction))
        {
            assert!((g - w).abs() < 1e-5, "{name}: {back:?}");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

#[test]
fn unknown_extension_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let dcm = dir.path().join("scan.dcm");
    std::fs::write(&dcm, b"DICM").unwrap();
    let err = volume::read(&dcm).unwrap_err().to_string();
    assert!(
        err.contains("scan.dcm") && err.contains("extension"),
        "{err}"
    );
    // A path that is not there is said so, once.
    let err = volume::read(&dir.path().join("missing.dcm"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.dcm: cannot open: No such file or directory (os error 2)"),
        "{err}"
    );
    let v = Volume::filled([1, 1, 1], [1.0; 3], [0.0; 3], 0.0);
    let p = dir.path().join("x.png");
    assert!(volume::write(&p, &v, ElementType::Short).is_err());
    assert!(!p.exists());
}

#[test]
fn large_round_trip_spans_many_chunks() {
    // Several MiB per file, so that inflating and reading cross many internal chunk boundaries.
    let dir = tempfile::tempdir().unwrap();
    let mut vol = sample([301, 203, 7]);
    vol.data
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = ((i * 7919) % 4001) as f32 - 2000.0 + 0.5 * (i % 2) as f32);
    for (name, ty, compress) in [
        ("s.mha", ElementType::Short, true),
        ("d.mha", ElementType::Double, true),
        ("d.mhd", ElementType::Double, false),
        ("f.mha", ElementType::Float, false),
    ] {
        let p = dir.path().join(name);
        let opts = WriteOptions {
            compress,
            ..WriteOptions::default()
        };
        volume::write_with_options(&p, &vol, ty, &opts).unwrap();
        let back = volume::read(&p).unwrap();
        if ty == ElementType::Short {
            let want: Vec<f32> = vol.data.iter().map(|x| x.round()).collect();
            assert_eq!(back.data, want, "{name}");
        } else {
            assert_eq!(back.data, vol.data, "{name}");
        }
    }
}
