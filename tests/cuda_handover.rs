//! The hand-over from this build (no CUDA) to a CUDA build installed beside it, and the fallback
//! to the CPU when the CUDA build cannot run: with no NVIDIA driver, with stand-in drivers
//! (`libcuda.so.1` compiled here, reporting chosen versions, devices and errors) and with
//! stand-in CUDA builds (scripts answering `device` as the real one does, or failing to start).
//! `scripts/check-cuda-fallback.sh` runs the same situations with the real CUDA build.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::s;
use ctgrade::device::cuda_driver::CudaDriver;

/// A stand-in `libcuda.so.1` in `dir/<name>/`: `cuInit` returns `init`, the driver reports CUDA
/// `version` and `devices` devices. Returns the folder to put on `LD_LIBRARY_PATH`.
fn stand_in_driver(dir: &Path, name: &str, init: i32, version: i32, devices: i32) -> PathBuf {
    let lib = dir.join(name);
    std::fs::create_dir_all(&lib).unwrap();
    let source = lib.join("cuda.c");
    std::fs::write(
        &source,
        format!(
            "int cuInit(unsigned flags) {{ return {init}; }}\n\
             int cuDriverGetVersion(int *v) {{ *v = {version}; return 0; }}\n\
             int cuDeviceGetCount(int *n) {{ *n = {devices}; return 0; }}\n\
             int cuGetErrorString(int e, const char **s) {{\n\
               *s = e == 100 ? \"no CUDA-capable device is detected\" : \"unknown error\";\n\
               return 0; }}\n"
        ),
    )
    .unwrap();
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(lib.join("libcuda.so.1"))
        .arg(&source)
        .output()
        .expect("these tests compile stand-in drivers with `cc` (apt-get install gcc)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    lib
}

/// A stand-in CUDA build at `path`: it answers `device` with `device_answer` (a shell snippet),
/// logs every call to `path.log`, and otherwise prints what it was run with.
fn stand_in_cuda_build(path: &Path, device_answer: &str) -> PathBuf {
    let script = format!(
        "#!/bin/sh\n\
         echo \"$*\" >> '{log}'\n\
         if [ \"$1\" = device ]; then {device_answer}; fi\n\
         echo \"cuda build ran: $* [CTGRADE_CUDA_BINARY=${{CTGRADE_CUDA_BINARY-unset}}]\"\n",
        log = log_of(path).display()
    );
    std::fs::write(path, script).unwrap();
    make_executable(path);
    path.to_path_buf()
}

fn log_of(cuda_build: &Path) -> PathBuf {
    cuda_build.with_extension("log")
}

fn calls(cuda_build: &Path) -> String {
    std::fs::read_to_string(log_of(cuda_build)).unwrap_or_default()
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const READY: &str = r#"echo '{"device":"cuda:0","reason":null}'; exit 0"#;
const TOO_OLD: &str = r#"echo '{"device":null,"reason":"the NVIDIA driver supports CUDA 12.4, this build needs CUDA 13.0 (driver 580.65.06 or newer)"}'; echo 'error: CUDA device 0 cannot be used: the NVIDIA driver supports CUDA 12.4, this build needs CUDA 13.0' >&2; exit 1"#;
const CANNOT_START: &str = "echo \"$0: error while loading shared libraries: libcudnn.so.9: cannot open shared object file: No such file or directory\" >&2; exit 127";

/// Runs `binary` with `args`, the CUDA build named by `cuda_build` and drivers looked up in
/// `libs` only.
fn run(binary: &Path, args: &[&str], cuda_build: Option<&Path>, libs: &Path) -> Output {
    let mut command = Command::new(binary);
    command.args(args).env("LD_LIBRARY_PATH", libs);
    match cuda_build {
        Some(path) => command.env("CTGRADE_CUDA_BINARY", path),
        None => command.env_remove("CTGRADE_CUDA_BINARY"),
    };
    command.output().unwrap()
}

fn ctgrade() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ctgrade"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one warning line of a fallback to the CPU, checked to be the only line about CUDA.
fn warning(out: &Output) -> String {
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("CUDA")).collect();
    assert_eq!(lines.len(), 1, "one line about CUDA expected:\n{stderr}");
    assert!(lines[0].starts_with("ctgrade: warning: CUDA device 0 cannot be used: "));
    assert!(lines[0].ends_with("; running on the CPU"), "{}", lines[0]);
    lines[0].to_string()
}

fn device_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn without_a_driver_auto_falls_back_and_cuda_fails_with_the_reason() {
    if let Ok(driver) = CudaDriver::probe() {
        eprintln!("skipped: this machine has an NVIDIA driver ({driver:?})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cuda_build = stand_in_cuda_build(&dir.path().join("ctgrade-cuda"), READY);
    let no_libs = dir.path().join("no-libs");
    std::fs::create_dir(&no_libs).unwrap();

    let auto = run(&ctgrade(), &["device"], Some(&cuda_build), &no_libs);
    assert!(auto.status.success(), "{}", text(&auto.stderr));
    assert!(warning(&auto).contains("no NVIDIA driver (libcuda.so.1: cannot open shared object"));
    assert_eq!(device_json(&auto)["device"], "cpu");

    let cuda = run(
        &ctgrade(),
        &["device", "--device", "cuda"],
        Some(&cuda_build),
        &no_libs,
    );
    assert!(!cuda.status.success());
    let stderr = text(&cuda.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: CUDA device 0 cannot be used: no NVIDIA driver (libcuda.so.1"),
        "{stderr}"
    );
    assert_eq!(
        calls(&cuda_build),
        "",
        "the CUDA build is never started without a driver"
    );

    // A whole run falls back and grades on the CPU.
    let weights = common::make_ensemble(dir.path(), ctgrade::grading::Head::Continuous, 1);
    let output = dir.path().join("out");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_inputs");
    let graded = run(
        &ctgrade(),
        &[
            "run",
            "--input",
            s(&input),
            "--output",
            s(&output),
            "--weights",
            s(&weights),
        ],
        Some(&cuda_build),
        &no_libs,
    );
    assert!(graded.status.success(), "{}", text(&graded.stderr));
    warning(&graded);
    assert!(text(&graded.stderr).contains("running on cpu"));
    assert!(output.join("probability-covid-19.json").is_file());
}

#[test]
fn a_usable_driver_hands_the_process_over_with_the_same_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let libs = stand_in_driver(dir.path(), "driver", 0, 13000, 1);
    let cuda_build = stand_in_cuda_build(&dir.path().join("ctgrade-cuda"), READY);
    let args = [
        "run",
        "--input",
        "/in put",
        "--device",
        "auto",
        "--heat-map",
    ];
    let out = run(&ctgrade(), &args, Some(&cuda_build), &libs);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "cuda build ran: run --input /in put --device auto --heat-map [CTGRADE_CUDA_BINARY=]\n"
    );
    assert_eq!(
        calls(&cuda_build),
        format!("device --device cuda:0\n{}\n", args.join(" "))
    );
    assert_eq!(text(&out.stderr), "", "no warning when CUDA is used");

    // `--device cuda:N` asks the CUDA build about device N; `--device cpu` never hands over.
    let libs2 = stand_in_driver(dir.path(), "driver2", 0, 13000, 2);
    let out = run(
        &ctgrade(),
        &["device", "--device", "cuda:1"],
        Some(&cuda_build),
        &libs2,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(calls(&cuda_build).contains("device --device cuda:1\ndevice --device cuda:1\n"));
    let before = calls(&cuda_build);
    let out = run(
        &ctgrade(),
        &["device", "--device", "cpu"],
        Some(&cuda_build),
        &libs,
    );
    assert_eq!(device_json(&out)["device"], "cpu");
    assert_eq!(calls(&cuda_build), before);
}

#[test]
fn the_cuda_build_is_found_beside_the_executable_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let libs = stand_in_driver(dir.path(), "driver", 0, 13000, 1);
    let installed = dir.path().join("ctgrade");
    std::fs::copy(ctgrade(), &installed).unwrap();
    make_executable(&installed);
    let cuda_build = stand_in_cuda_build(&dir.path().join("ctgrade-cuda"), READY);

    // The stand-in answers `device` as the CUDA build would: the answer comes from it.
    let out = run(&installed, &["device"], None, &libs);
    assert_eq!(device_json(&out)["device"], "cuda:0", "{out:?}");

    let mut off = Command::new(&installed);
    off.arg("device")
        .env("LD_LIBRARY_PATH", &libs)
        .env("CTGRADE_CUDA_BINARY", "");
    let out = off.output().unwrap();
    assert_eq!(device_json(&out)["build"], "cpu");
    assert_eq!(calls(&cuda_build), "device --device cuda:0\ndevice\n");
}

#[test]
fn each_reason_the_cuda_build_cannot_run_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ready = stand_in_cuda_build(&dir.path().join("ready"), READY);
    let too_old = stand_in_cuda_build(&dir.path().join("too-old"), TOO_OLD);
    let cannot_start = stand_in_cuda_build(&dir.path().join("cannot-start"), CANNOT_START);
    let good = stand_in_driver(dir.path(), "good", 0, 13000, 1);
    let cases = [
        (
            stand_in_driver(dir.path(), "no-device", 100, 13000, 0),
            &ready,
            "the NVIDIA driver's cuInit failed: no CUDA-capable device is detected (error 100)"
                .to_string(),
        ),
        (
            stand_in_driver(dir.path(), "zero", 0, 13000, 0),
            &ready,
            "the NVIDIA driver sees no CUDA device".to_string(),
        ),
        (
            good.clone(),
            &too_old,
            format!(
                "{}: the NVIDIA driver supports CUDA 12.4, this build needs CUDA 13.0 (driver \
                 580.65.06 or newer)",
                too_old.display()
            ),
        ),
        (
            good.clone(),
            &cannot_start,
            format!(
                "{}: error while loading shared libraries: libcudnn.so.9: cannot open shared \
                 object file: No such file or directory",
                cannot_start.display()
            ),
        ),
        (
            good.clone(),
            &dir.path().join("missing"),
            format!(
                "cannot start {}: No such file or directory (os error 2)",
                dir.path().join("missing").display()
            ),
        ),
    ];
    for (libs, cuda_build, reason) in &cases {
        let auto = run(&ctgrade(), &["device"], Some(cuda_build), libs);
        assert!(auto.status.success(), "{}", text(&auto.stderr));
        assert_eq!(
            warning(&auto),
            format!("ctgrade: warning: CUDA device 0 cannot be used: {reason}; running on the CPU")
        );
        assert_eq!(device_json(&auto)["device"], "cpu");
        let cuda = run(
            &ctgrade(),
            &["device", "--device", "cuda"],
            Some(cuda_build),
            libs,
        );
        assert!(!cuda.status.success());
        assert_eq!(
            text(&cuda.stderr),
            format!("error: CUDA device 0 cannot be used: {reason}\n")
        );
    }
    // The CUDA build is asked only once the driver is found usable.
    assert_eq!(calls(&ready), "");
    assert_eq!(calls(&too_old), "device --device cuda:0\n".repeat(2));
}
