//! Volume I/O against SimpleITK: golden fixtures written by tools/make_volume_fixtures.py, the
//! real chest CT, and writer round trips.

use std::path::{Path, PathBuf};

use ctgrade::volume::{self, ElementType, Volume, WriteOptions};

fn real_ct() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/real_ct/lung1.mha")
}

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
