//! Bad input and robustness (docs/robustness.md): inputs found by fuzzing, resource limits,
//! content problems through `ctgrade run`, and byte-identical outputs of two runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ctgrade, run_args};
use ctgrade::gc::memory;
use ctgrade::grading::Head;
use ctgrade::preprocess::{self, checks, InputSpec, PreprocessError};
use ctgrade::synth::{phantom, PhantomConfig};
use ctgrade::volume::{self, ElementType, ReadLimits, Volume};

/// A small random-weight ensemble on a coarse input: the pipeline is under test, not the weights.
fn make_ensemble(dir: &Path) -> PathBuf {
    common::make_ensemble(dir, Head::Continuous, 1)
}

/// A chest phantom (int16 HU values as `f32`), 96 x 96 x 48 voxels of 3.5 x 3.5 x 6 mm.
fn chest(seed: u64) -> Volume {
    let cfg = PhantomConfig {
        size: [96, 96, 48],
        spacing: [3.5, 3.5, 6.0],
        seed,
        co_rads: 3,
    };
    phantom(&cfg).unwrap().0
}

/// The same physical image stored with x and z reversed (direction diag(-1, 1, -1)).
fn flipped(ct: &Volume) -> Volume {
    let [nx, ny, nz] = ct.size;
    let mut f = ct.clone();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                f.data[x + nx * (y + ny * z)] = ct.at(nx - 1 - x, y, nz - 1 - z);
            }
        }
    }
    f.origin = ct.index_to_physical([(nx - 1) as f64, 0.0, (nz - 1) as f64]);
    f.direction = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0];
    f
}

/// A MetaImage header with the given fields and 2x2x2-ish raw data of `n` shorts.
fn mha_bytes(dim: &str, spacing: &str, n: usize) -> Vec<u8> {
    let mut b = format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
         ElementSpacing = {spacing}\nDimSize = {dim}\nElementType = MET_SHORT\n\
         ElementDataFile = LOCAL\n"
    )
    .into_bytes();
    b.extend(std::iter::repeat_n(0u8, 2 * n));
    b
}

/// Every file the fuzzers found a problem with reads as a clean error naming the file.
#[test]
fn fuzz_regressions_are_clean_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz_regressions");
    let work = tempfile::tempdir().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        // `<target>-<what>.<ext>`: the detached MetaImage target's inputs are split as the
        // fuzz target splits them (2-byte header length, header, data file `case.raw`).
        let file = if let Some(stem) = name.strip_prefix("metaimage_detached-") {
            let len = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
            let rest = &bytes[2..];
            let (header, raw) = rest.split_at(len.min(rest.len()));
            std::fs::write(work.path().join("case.raw"), raw).unwrap();
            let file = work.path().join(stem.replace(".bin", ".mhd"));
            std::fs::write(&file, header).unwrap();
            file
        } else if name.ends_with(".md") {
            continue;
        } else {
            path.clone()
        };
        let err = volume::read(&file).expect_err(&name);
        let msg = err.to_string();
        assert!(
            msg.contains(file.file_name().unwrap().to_str().unwrap()) || msg.contains("case.raw"),
            "{name}: {msg}"
        );
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}

/// Pipes and folders are refused before they are opened (a FIFO would block the reader).
#[cfg(unix)]
#[test]
fn pipes_and_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.mha");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let err = volume::read(&fifo).unwrap_err().to_string();
    assert!(
        err.contains("pipe.mha") && err.contains("not a regular file"),
        "{err}"
    );
    // A detached header naming the pipe as its data file.
    std::fs::write(
        dir.path().join("h.mhd"),
        "NDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = pipe.mha\n",
    )
    .unwrap();
    let err = volume::read(&dir.path().join("h.mhd"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("h.mhd") && err.contains("pipe.mha"), "{err}");
    let folder = dir.path().join("folder.nii");
    std::fs::create_dir(&folder).unwrap();
    let err = volume::read(&folder).unwrap_err().to_string();
    assert!(
        err.contains("folder.nii") && err.contains("a folder"),
        "{err}"
    );
}

/// Geometry and size problems in headers: each a clean error with the reason.
#[test]
fn bad_spacing_and_size_in_headers() {
    let dir = tempfile::tempdir().unwrap();
    for (name, dim, spacing, n, want) in [
        ("zero_spacing", "2 2 2", "1 0 1", 8, "is not positive"),
        (
            "negative_spacing",
            "2 2 2",
            "1 1 -2.5",
            8,
            "is not positive",
        ),
        ("nan_spacing", "2 2 2", "1 nan 1", 8, "finite numbers"),
        ("inf_spacing", "2 2 2", "1 inf 1", 8, "finite numbers"),
        ("size_zero", "2 0 2", "1 1 1", 0, "DimSize contains 0"),
    ] {
        let path = dir.path().join(format!("{name}.mha"));
        std::fs::write(&path, mha_bytes(dim, spacing, n)).unwrap();
        let err = volume::read(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{name}.mha")) && err.contains(want),
            "{name}: {err}"
        );
    }
    // In memory, the same problems are caught before preprocessing.
    let mut v = Volume::filled([8, 8, 8], [1.0, f64::NAN, 1.0], [0.0; 3], 0.0);
    assert!(matches!(
        checks::check_ct(&mut v),
        Err(PreprocessError::Spacing(_))
    ));
    let mut v = Volume::filled([0, 8, 8], [1.0; 3], [0.0; 3], 0.0);
    assert!(matches!(
        checks::check_ct(&mut v),
        Err(PreprocessError::EmptyVolume)
    ));
}

/// NIfTI spacing and size: `pixdim` 0 or NaN reads as 1 mm (niftilib's and ITK's rule), a
/// negative one and a zero `dim` are errors.
#[test]
fn nifti_pixdim_and_dim() {
    let dir = tempfile::tempdir().unwrap();
    let v = Volume::filled([4, 3, 2], [0.5, 0.75, 2.0], [0.0; 3], 7.0);
    let good = dir.path().join("good.nii");
    volume::write(&good, &v, ElementType::Short).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // pixdim[k] is the f32 at byte 76 + 4 k, dim[k] the i16 at byte 40 + 2 k.
    let patched = |name: &str, at: usize, value: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + value.len()].copy_from_slice(value);
        let path = dir.path().join(name);
        std::fs::write(&path, b).unwrap();
        path
    };
    let zero = patched("zero.nii", 76 + 4, &0f32.to_le_bytes());
    assert_eq!(volume::read(&zero).unwrap().spacing, [1.0, 0.75, 2.0]);
    let nan = patched("nan.nii", 76 + 8, &f32::NAN.to_le_bytes());
    assert_eq!(volume::read(&nan).unwrap().spacing, [0.5, 1.0, 2.0]);
    let negative = patched("negative.nii", 76 + 12, &(-2f32).to_le_bytes());
    let err = volume::read(&negative).unwrap_err().to_string();
    assert!(
        err.contains("negative.nii") && err.contains("negative voxel spacing"),
        "{err}"
    );
    let empty = patched("empty.nii", 40 + 4, &0i16.to_le_bytes());
    let err = volume::read(&empty).unwrap_err().to_string();
    assert!(
        err.contains("empty.nii") && err.contains("contains 0"),
        "{err}"
    );
}

/// A header whose geometry resamples to an absurd grid fails before the grid is allocated.
#[test]
fn huge_physical_extent_fails_before_resampling() {
    let mut ct = Volume::filled([8, 8, 8], [500.0; 3], [0.0; 3], -1000.0);
    ct.data[0] = 0.0;
    checks::check_ct(&mut ct).expect("a 4 m cube passes the content checks");
    let t = std::time::Instant::now();
    let err = preprocess::preprocess(&ct, None, &InputSpec::default()).unwrap_err();
    assert!(matches!(err, PreprocessError::GridTooLarge { .. }), "{err}");
    assert!(t.elapsed().as_secs_f64() < 1.0, "took {:?}", t.elapsed());
}

/// The memory budget: `--max-voxels`, `CTGRADE_MAX_VOXELS` and grand-challenge's memory limit
/// each make a scan over the limit fail cleanly, before it is read.
#[test]
fn voxel_limits_from_flag_env_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path());
    let input = dir.path().join("input");
    std::fs::create_dir_all(input.join("images/ct")).unwrap();
    let ct = chest(5);
    volume::write(&input.join("images/ct/big.mha"), &ct, ElementType::Short).unwrap();
    let voxels = ct.len();
    // The largest memory (MiB) whose budget is just below this scan.
    let mb = (1u64..)
        .take_while(|mb| memory::voxels_for_memory(mb << 20) < voxels)
        .last()
        .unwrap();
    let mb = mb.to_string();
    let max = (voxels - 1).to_string();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 3] = [
        (&["--max-voxels", &max], &[]),
        (&[], &[("CTGRADE_MAX_VOXELS", &max)]),
        (&[], &[("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB", &mb)]),
    ];
    for (i, (flags, env)) in cases.into_iter().enumerate() {
        let output = dir.path().join(format!("out{i}"));
        let mut args = run_args(&input, &output, &weights);
        args.extend_from_slice(flags);
        let out = ctgrade(&args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
        assert!(
            last.contains("big.mha") && last.contains("exceeds the limit"),
            "case {i}: {last}"
        );
        assert!(!output.join("probability-covid-19.json").exists());
    }
    assert_eq!(
        memory::read_limits(Some(7), Some(1 << 30)),
        ReadLimits {
            max_voxels: 7,
            ..ReadLimits::default()
        }
    );
}

/// A batch of two scans and a tiny ensemble: `huge.mha`, 12^3 voxels of 300 mm (a 3.6 m cube:
/// 600^3 = 216 M voxels at the ensemble's 6 mm), and `chest.mha`, a real chest. Returns the
/// temporary folder, the ensemble and the input folder.
fn huge_and_chest() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path());
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let mut huge = Volume::filled([12, 12, 12], [300.0; 3], [0.0; 3], -1000.0);
    for v in huge.data.iter_mut().step_by(3) {
        *v = 40.0;
    }
    volume::write(&input.join("huge.mha"), &huge, ElementType::Short).unwrap();
    volume::write(&input.join("chest.mha"), &chest(3), ElementType::Short).unwrap();
    (dir, weights, input)
}

/// A small scan with huge voxels asks for a resampled grid whose lung mask would not fit the
/// container's memory: with grand-challenge's memory limit set it fails with the reason before
/// preprocessing (this one would need about 3.9 GB), while a real chest passes the same limit.
#[test]
fn grid_limit_from_container_memory() {
    let (dir, weights, input) = huge_and_chest();
    // 3 GiB: the scans pass the read limit (522 M voxels) but the grid limit is 149 M voxels.
    let mb = "3072";
    assert_eq!(
        memory::grid_voxels_for_memory(3072 << 20),
        ((3072u64 - 512) << 20) as usize / 18
    );
    let output = dir.path().join("out");
    let out = ctgrade(
        &run_args(&input, &output, &weights),
        &[("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB", mb)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("summary.json")).unwrap())
            .unwrap();
    let text = summary.to_string();
    assert!(
        text.contains("huge.mha: resampling to 6 mm would give a [600, 600, 600] grid")
            && text.contains("more than the container's memory allows"),
        "{text}"
    );
    assert!(
        output.join("chest/probability-covid-19.json").exists(),
        "{stderr}"
    );
    assert!(!output
        .join("huge")
        .join("probability-covid-19.json")
        .exists());
    assert_eq!(
        memory::grid_voxels_for_memory(u64::MAX),
        preprocess::MAX_GRID_VOXELS
    );
}

/// The budget from what the kernel enforces: under `RLIMIT_DATA` or `RLIMIT_AS` alone (no
/// grand-challenge variable, as recent platform wrappers run algorithms) the scan with huge voxels
/// is refused with the reason instead of an allocation abort, the log names the limit that
/// applied, and the real chest in the same batch is graded.
#[test]
fn grid_limit_from_rlimits() {
    let (dir, weights, input) = huge_and_chest();
    for (resource, name) in [
        (libc::RLIMIT_DATA, "RLIMIT_DATA"),
        (libc::RLIMIT_AS, "RLIMIT_AS"),
    ] {
        let output = dir.path().join(format!("out-{name}"));
        let limit: libc::rlim_t = if name == "RLIMIT_AS" {
            4 << 30
        } else {
            1536 << 20
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctgrade"));
        cmd.args(run_args(&input, &output, &weights))
            .env_remove("CTGRADE_MAX_VOXELS")
            .env_remove("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB");
        // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(resource, &r) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(&format!("({name})")), "{name}: {stderr}");
        let summary = std::fs::read_to_string(output.join("summary.json")).unwrap();
        assert!(
            summary.contains("huge.mha: resampling to 6 mm would give a [600, 600, 600] grid"),
            "{name}: {summary}"
        );
        assert!(
            output.join("chest/probability-covid-19.json").exists(),
            "{name}: {stderr}"
        );
        assert!(!output.join("huge/probability-covid-19.json").exists());
    }
}

/// Content problems, one batch: each case gets a defined answer (a grade, a grade with a
/// warning, or a failure with its reason) while the others complete; two runs of the batch
/// write byte-identical files.
#[test]
fn content_problems_in_one_batch_and_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path());
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let put = |name: &str, v: &Volume, ty: ElementType| {
        volume::write(&input.join(name), v, ty).unwrap();
    };
    let ct = chest(7);
    let [nx, ny, nz] = ct.size;
    put("a_plain.mha", &ct, ElementType::Short);
    put("b_flipped.mha", &flipped(&ct), ElementType::Short);
    let mut oblique = ct.clone();
    let a = 12f64.to_radians();
    oblique.direction = [1.0, 0.0, 0.0, 0.0, a.cos(), -a.sin(), 0.0, a.sin(), a.cos()];
    put("c_oblique.mha", &oblique, ElementType::Short);
    // Some NaN and infinite voxels: a slab outside the body and a few scattered ones.
    let mut some_nan = ct.clone();
    for v in some_nan.data[..nx * ny * 2].iter_mut() {
        *v = f32::NAN;
    }
    some_nan.data[nx * ny * 20] = f32::INFINITY;
    some_nan.data[nx * ny * 20 + 1] = f32::NEG_INFINITY;
    put("d_some_nan.mha", &some_nan, ElementType::Float);
    let mut most_nan = ct.clone();
    for v in most_nan.data[..nx * ny * (nz * 3 / 4)].iter_mut() {
        *v = f32::NAN;
    }
    put("e_most_nan.mha", &most_nan, ElementType::Float);
    put(
        "f_constant.mha",
        &Volume::filled(ct.size, ct.spacing, ct.origin, 0.0),
        ElementType::Short,
    );
    // Air with noise: not constant, but nothing lung-like inside a body.
    let mut air = Volume::filled(ct.size, ct.spacing, ct.origin, -1000.0);
    for (i, v) in air.data.iter_mut().enumerate() {
        *v += (i * 7919 % 61) as f32 - 30.0;
    }
    put("g_air.mha", &air, ElementType::Short);
    let mut slice = Volume::filled([nx, ny, 1], ct.spacing, ct.origin, 0.0);
    slice
        .data
        .copy_from_slice(&ct.data[nx * ny * 24..nx * ny * 25]);
    put("h_single_slice.mha", &slice, ElementType::Short);
    // Stored CT numbers without the -1024 intercept, and a [0, 1] normalised image.
    let mut unshifted = ct.clone();
    unshifted
        .data
        .iter_mut()
        .for_each(|v| *v = (*v + 1024.0).max(0.0));
    put("i_unshifted.mha", &unshifted, ElementType::UShort);
    let mut normalised = ct.clone();
    normalised
        .data
        .iter_mut()
        .for_each(|v| *v = ((*v + 1024.0) / 4095.0).clamp(0.0, 1.0));
    put("j_normalised.nii.gz", &normalised, ElementType::Float);
    std::fs::write(
        input.join("k_zero_spacing.mha"),
        mha_bytes("2 2 2", "1 0 1", 8),
    )
    .unwrap();

    let output = dir.path().join("out");
    let mut args = run_args(&input, &output, &weights);
    args.push("--lung-mask");
    let out = ctgrade(&args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "failed cases must fail the run");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("summary.json")).unwrap()).unwrap();
    let cases = summary["cases"].as_array().unwrap();
    let case = |name: &str| {
        cases
            .iter()
            .find(|c| c["case"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {summary}"))
    };
    let error = |name: &str| case(name)["error"].as_str().unwrap_or("").to_string();
    let warnings = |name: &str| case(name)["warnings"].to_string();
    let probability = |name: &str| {
        case(name)["probability"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: {}", error(name)))
    };

    // Orientation: the flipped copy is the same image, so the same answer; the tilted scan
    // is resampled onto an axis-aligned grid and graded.
    let p = probability("a_plain");
    assert!((probability("b_flipped") - p).abs() < 1e-4, "{stderr}");
    probability("c_oblique");
    assert!(
        stderr.contains("c_oblique: the scan is tilted by 12.0 degrees"),
        "{stderr}"
    );
    assert!(stderr.contains("b_flipped: axes reordered"), "{stderr}");
    // NaN / infinite: graded with a warning below half, refused above.
    probability("d_some_nan");
    assert!(
        warnings("d_some_nan").contains("NaN or infinite"),
        "{}",
        warnings("d_some_nan")
    );
    assert!(
        error("e_most_nan").contains("are NaN or infinite"),
        "{}",
        error("e_most_nan")
    );
    assert!(
        error("f_constant").contains("every voxel of the CT is 0"),
        "{}",
        error("f_constant")
    );
    assert!(
        error("g_air").contains("no lungs found"),
        "{}",
        error("g_air")
    );
    assert!(
        error("h_single_slice").contains("too thin along z (inferior-superior): 1 voxel(s)"),
        "{}",
        error("h_single_slice")
    );
    // Not HU: the failure says why the lungs were not found.
    let e = error("i_unshifted");
    assert!(
        e.contains("no lungs found") && e.contains("rescale intercept"),
        "{e}"
    );
    assert!(warnings("i_unshifted").contains("intercept"));
    let e = error("j_normalised");
    assert!(e.contains("normalised"), "{e}");
    assert!(
        error("k_zero_spacing").contains("spacing"),
        "{}",
        error("k_zero_spacing")
    );
    // Each error names its file; good cases have their outputs, failed ones none.
    for c in cases {
        let name = c["case"].as_str().unwrap();
        if let Some(e) = c["error"].as_str() {
            assert!(e.contains(name), "{e}");
            assert!(!output.join(name).exists());
        } else {
            assert!(output
                .join(name)
                .join("probability-covid-19.json")
                .is_file());
        }
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.as_array().unwrap().len(), cases.len());

    // Determinism: a second run writes the same bytes (the summary up to its timings).
    let again = dir.path().join("again");
    let mut args = run_args(&input, &again, &weights);
    args.push("--lung-mask");
    assert!(!ctgrade(&args, &[]).status.success());
    let mut compared = 0;
    for entry in walkdir::WalkDir::new(&output) {
        let entry = entry.unwrap();
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(&output).unwrap();
        let (a, b) = (
            std::fs::read(entry.path()).unwrap(),
            std::fs::read(again.join(rel)).unwrap(),
        );
        let name = rel.to_string_lossy();
        if name.starts_with("summary") {
            let strip = |t: &[u8]| {
                String::from_utf8_lossy(t)
                    .lines()
                    .map(|l| l.split("\"seconds\"").next().unwrap_or(l).to_string())
                    .map(|l| {
                        // CSV: drop the seconds column (the eighth from the end; the seven
                        // after it hold no commas).
                        let mut parts: Vec<&str> = l.rsplitn(9, ',').collect();
                        if name.ends_with(".csv") && parts.len() == 9 {
                            parts.remove(7);
                            parts.reverse();
                            parts.join(",")
                        } else {
                            l
                        }
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&a), strip(&b), "{name}");
        } else {
            assert!(a == b, "{name} differs between two runs");
        }
        compared += 1;
    }
    // Sockets of the 4 graded cases, their lung masks, results.json and the two summaries.
    assert!(compared >= 15, "compared only {compared} files");
}
