//! `ctgrade-eval simulate`: the whole leaderboard on one machine, through the `docker` command
//! line, doing what grand-challenge.org does with a submission:
//!
//! 1. the algorithm image runs once per case: in invoke mode (the image carries
//!    `LABEL org.grand-challenge.api-method=invoke`) one container is started, `/health` is polled
//!    and `POST /invoke` is called per case from a "tester" container on an internal network; in
//!    exec mode one container runs per case. `/input` (a read-only bind mount) is re-provisioned
//!    with the case as the socket `images/ct` plus `inputs.json`, `/output` is emptied;
//! 2. the successful jobs are listed in `predictions.json` in the platform's job shape, with
//!    their outputs under `<pk>/output/`;
//! 3. the evaluation image runs (invoke or exec, by its label) on them and the ground truth.
//!
//! Failed jobs are reported; the platform would not start an evaluation then, but the
//! simulation still evaluates the successful jobs, against the ground truth without the failed
//! cases' rows, so that the user sees a score (see [`SimulationReport::failed`]).
//! Containers and the network are removed at the end, also on error.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::atomic::write_atomic;
use crate::case::match_key;
use crate::error::EvalError;
use crate::platform::{format_duration, format_time, ImageRef, Job, Socket, SocketValue};
use crate::predictions::{CO_RADS_SLUG, PROBABILITY_SLUG};
use crate::truth::{load_ground_truth, write_only_cases};

/// The label that makes the platform use the invoke API.
pub const API_METHOD_LABEL: &str = "org.grand-challenge.api-method";
/// The port the platform calls in invoke mode.
pub const INVOKE_PORT: u16 = 4743;
/// Case file extensions the simulation can provision (others are refused up front).
pub const CASE_EXTENSIONS: [&str; 3] = [".mha", ".nii.gz", ".nii"];

/// Why a simulation could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// Reading the ground truth, writing a result file.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A file or folder of the simulation.
    #[error("cannot access {path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A `docker` command failed.
    #[error("`docker {command}` failed: {reason}")]
    Docker {
        /// The subcommand and its first arguments.
        command: String,
        /// The last non-empty stderr line, or why it could not run.
        reason: String,
    },
    /// The cases folder holds something the simulation cannot provision.
    #[error("{path}: {reason}")]
    Case {
        /// The offending entry.
        path: PathBuf,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Bad settings (empty folders, a non-empty output folder, a case without ground truth).
    #[error("{0}")]
    Usage(String),
    /// A container in invoke mode never answered 200 on `/health`, or exited.
    #[error("the {what} container never became healthy: {reason}")]
    Unhealthy {
        /// "algorithm" or "evaluation".
        what: &'static str,
        /// The last answer, or the container's last log line.
        reason: String,
    },
    /// The algorithm container exited, or stopped answering, in the middle of the cases.
    #[error("the algorithm container stopped during the job for {case}: {reason}")]
    AlgorithmStopped {
        /// The case being processed.
        case: String,
        /// Its last log line.
        reason: String,
    },
    /// Every job failed: there is nothing to evaluate.
    #[error("all {0} algorithm job(s) failed; nothing to evaluate (see failed-jobs.json)")]
    NothingSucceeded(usize),
    /// The evaluation container failed.
    #[error("the evaluation failed: {0}")]
    Evaluation(String),
    /// SIGINT or SIGTERM arrived; what was started has been removed.
    #[error("interrupted; the containers and the network were removed")]
    Interrupted,
}

type Result<T> = std::result::Result<T, SimulateError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimulateError + '_ {
    move |cause| SimulateError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// How the platform talks to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiMethod {
    /// An HTTP server: `/health`, then `POST /invoke` per job.
    Invoke,
    /// One container run per job.
    Exec,
}

impl ApiMethod {
    /// The method of an image's label value (`invoke`; anything else, or none, is exec).
    pub fn from_label(label: &str) -> Self {
        if label.trim() == "invoke" {
            ApiMethod::Invoke
        } else {
            ApiMethod::Exec
        }
    }
}

/// How long to wait for a container in invoke mode (the platform template's local test: 30
/// attempts 5 s apart, 10 s each).
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// Attempts.
    pub tries: u32,
    /// Pause between attempts.
    pub interval: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            tries: 30,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// The algorithm image.
    pub algorithm_image: String,
    /// The evaluation image.
    pub evaluation_image: String,
    /// An image with `curl` and `sleep`, run on the internal network to make the HTTP calls.
    pub tester_image: String,
    /// Folder of cases (`.mha`, `.nii.gz`, `.nii` files).
    pub cases: PathBuf,
    /// Ground-truth CSV (or a folder holding one), in a format the evaluator reads; it may hold
    /// more cases than the cases folder (only the rows of successful jobs are evaluated).
    pub ground_truth: PathBuf,
    /// Optional model tarball, extracted read-only to `/opt/ml/model`.
    pub model: Option<PathBuf>,
    /// Pass `--gpus all` to the algorithm container.
    pub gpus: bool,
    /// Memory limit of the containers (`docker --memory`, also the swap limit).
    pub memory: String,
    /// Results folder (created; must be empty).
    pub output: PathBuf,
    /// Time limit of one algorithm job (invoke call or exec run) and of the evaluation.
    pub job_timeout: Duration,
    /// Start-up wait in invoke mode.
    pub health: HealthPolicy,
}

/// One case of the cases folder.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseFile {
    /// The file, or the folder of a DICOM series.
    pub path: PathBuf,
    /// Its file or folder name (the upload's name: `image.name` of the job).
    pub name: String,
    /// What it is, which decides the socket it is provisioned to.
    pub kind: CaseKind,
}

/// What a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKind {
    /// An image file with this extension, one of [`CASE_EXTENSIONS`]: the CT image socket.
    Image(&'static str),
    /// A folder holding a DICOM series: the CT DICOM image set socket, one file per slice.
    DicomSeries,
}

/// Whether `path` is a DICOM Part 10 file: the `DICM` marker at byte 128, whatever its name (the
/// platform and the algorithm recognise DICOM files the same way).
fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    path.is_file()
        && fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
        && &head[128..] == b"DICM"
}

/// The DICOM files directly in `dir`, sorted by name.
fn dicom_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_dicom_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Lists the cases of `dir`, sorted by name; hidden entries are skipped. A case is a `.mha`,
/// `.nii.gz` or `.nii` file, or a folder holding DICOM files (a series); anything else is an error
/// naming it, before any container starts.
pub fn list_cases(dir: &Path) -> Result<Vec<CaseFile>> {
    let mut cases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if path.is_dir() {
            if dicom_files(&path)?.is_empty() {
                return Err(SimulateError::Case {
                    path,
                    reason: "a folder without DICOM files (none has the DICM marker at byte 128): \
                             a case is an image file or a folder holding one DICOM series"
                        .into(),
                });
            }
            cases.push(CaseFile {
                path,
                name,
                kind: CaseKind::DicomSeries,
            });
            continue;
        }
        let Some(extension) = CASE_EXTENSIONS
            .iter()
            .find(|e| lower.len() > e.len() && lower.ends_with(*e))
        else {
            let reason = if lower.ends_with(".mhd") {
                "a .mhd header with a separate data file cannot be provisioned as one socket \
                 file; convert it to .mha"
            } else {
                "not a case image: simulate takes .mha, .nii.gz and .nii files"
            };
            return Err(SimulateError::Case {
                path,
                reason: reason.into(),
            });
        };
        cases.push(CaseFile {
            path,
            name,
            kind: CaseKind::Image(extension),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    crate::case::check_unique(&cases, |c| &c.name, |c| &c.name)?;
    if cases.is_empty() {
        return Err(SimulateError::Usage(format!(
            "{}: no cases (.mha, .nii.gz or .nii files, or DICOM series folders)",
            dir.display()
        )));
    }
    Ok(cases)
}

/// The input socket value of a case: the CT image socket (or, for a DICOM series, the CT DICOM
/// image set socket) with the uploaded name.
pub fn ct_input(pk: u64, image_pk: &str, name: &str, kind: CaseKind) -> SocketValue {
    SocketValue {
        pk,
        socket: match kind {
            CaseKind::Image(_) => Socket::ct_image(),
            CaseKind::DicomSeries => Socket::ct_dicom_image_set(),
        },
        value: Value::Null,
        file: None,
        image: Some(ImageRef {
            pk: image_pk.into(),
            name: name.into(),
        }),
    }
}

/// The two output sockets of the algorithm, with their JSON kinds.
fn output_sockets() -> [Socket; 2] {
    [
        Socket::value(PROBABILITY_SLUG, "Float"),
        Socket::value(CO_RADS_SLUG, "Integer"),
    ]
}

/// Reads the algorithm's outputs from its `/output` folder and checks them as the platform
/// validates a value socket's kind (a missing file fails the job, with the platform's wording).
pub fn read_outputs(dir: &Path, first_pk: u64) -> std::result::Result<Vec<SocketValue>, String> {
    let mut values = Vec::new();
    for (k, socket) in output_sockets().into_iter().enumerate() {
        let file = dir.join(&socket.relative_path);
        let text = fs::read_to_string(&file)
            .map_err(|_| format!("Output file {} was not produced", socket.relative_path))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "Output file {} is not valid JSON: {e}",
                socket.relative_path
            )
        })?;
        let ok = match socket.kind.as_str() {
            "Integer" => value.is_i64() || value.is_u64(),
            _ => value.as_f64().is_some_and(f64::is_finite),
        };
        if !ok {
            return Err(format!(
                "Output file {} holds {value}, not a {} value",
                socket.relative_path,
                socket.kind.to_ascii_lowercase()
            ));
        }
        values.push(SocketValue {
            pk: first_pk + k as u64,
            socket,
            value,
            file: None,
            image: None,
        });
    }
    Ok(values)
}

/// A job that did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedJob {
    /// The job's id.
    pub pk: String,
    /// The case file name.
    pub case: String,
    /// What the platform would show: the last non-empty stderr line, or the 500 body.
    pub reason: String,
    /// How long the job ran.
    pub duration: String,
}

/// The sentence on failed jobs, in `failed-jobs.json` and on stderr.
pub const FAILED_JOBS_NOTE: &str = "On grand-challenge.org a submission with failed algorithm \
    jobs gets no evaluation (the platform does not start one); this simulation still evaluates \
    the successful jobs, against the ground-truth rows of their cases only, so that you see a \
    score. Fix the failures before submitting.";

/// The outcome of a simulation.
#[derive(Debug, Clone)]
pub struct SimulationReport {
    /// How the algorithm ran.
    pub algorithm_api: ApiMethod,
    /// How the evaluation ran.
    pub evaluation_api: ApiMethod,
    /// The successful jobs (as in `predictions.json`).
    pub jobs: Vec<Job>,
    /// The failed jobs (as in `failed-jobs.json`).
    pub failed: Vec<FailedJob>,
    /// `metrics.json` as written by the evaluation container.
    pub metrics: Value,
    /// The results folder.
    pub output: PathBuf,
}

/// Writes `jobs` as the platform's `predictions.json` (pretty, atomically).
pub fn write_predictions(path: &Path, jobs: &[Job]) -> Result<()> {
    let text = serde_json::to_string_pretty(jobs).map_err(|e| SimulateError::Io {
        path: path.to_path_buf(),
        cause: e.into(),
    })? + "\n";
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Runs `docker` with `args`; `Ok(stdout)` on success, else the last non-empty stderr line.
fn docker<S: AsRef<OsStr>>(args: &[S]) -> Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output();
    let command = args
        .iter()
        .take(2)
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let output = output.map_err(|e| SimulateError::Docker {
        command: command.clone(),
        reason: format!("cannot run docker: {e}"),
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        // The docker client ends some errors with a pointer to its help ("Run 'docker run
        // --help' for more information"): the cause is the line before.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.contains("--help"))
            .map(str::to_string);
        Err(SimulateError::Docker {
            command,
            reason: reason.unwrap_or_else(|| format!("exit status {}", output.status)),
        })
    }
}

/// The last non-empty line of `text`, trimmed.
pub fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The API method label of an image.
pub fn api_method(image: &str) -> Result<ApiMethod> {
    let format = format!("{{{{index .Config.Labels \"{API_METHOD_LABEL}\"}}}}");
    let label = docker(&["image", "inspect", "-f", &format, image])?;
    Ok(ApiMethod::from_label(&label))
}

/// Removes what the simulation started, in reverse order, when dropped (also on error); the
/// logs of the algorithm and evaluation containers are saved first.
#[derive(Default)]
struct Started {
    containers: Vec<String>,
    network: Option<String>,
    work: Option<PathBuf>,
    logs: Option<PathBuf>,
}

impl Started {
    /// Saves the container's logs (`<logs>/<role>.log`, the role being what follows the
    /// simulation's id in its name) unless it is the tester, then removes it.
    fn remove_container(&mut self, name: &str) {
        if let Some(logs) = &self.logs {
            let role = name.rsplit('-').next().unwrap_or(name);
            if role != "tester" {
                save_logs(name, &logs.join(format!("{role}.log")));
            }
        }
        let _ = docker(&["rm", "-f", name]);
        self.containers.retain(|c| c != name);
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        while let Some(name) = self.containers.last().cloned() {
            self.remove_container(&name);
        }
        if let Some(net) = &self.network {
            if let Err(e) = docker(&["network", "rm", net]) {
                eprintln!("simulate: warning: {e}");
            }
        }
        if let Some(work) = &self.work {
            if let Err(e) = fs::remove_dir_all(work) {
                eprintln!(
                    "simulate: warning: cannot remove the work folder {}: {e}",
                    work.display()
                );
            }
        }
    }
}

/// Writes a container's stdout and stderr to `dest`; best effort, as the logs only help the
/// user read what happened and must not mask the simulation's own outcome.
fn save_logs(name: &str, dest: &Path) {
    let Ok(out) = fs::File::create(dest) else {
        return;
    };
    let Ok(err) = out.try_clone() else {
        return;
    };
    let _ = Command::new("docker")
        .args(["logs", name])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status();
}

/// Empties `dir` (creating it) and opens it to `mode`: the containers run as another user. The
/// folder itself is kept: a running container's bind mount holds on to it, and would not see a
/// new folder made in its place.
fn fresh_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err(&path))?;
    }
    set_mode(dir, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Copies the folder `from` into `to` (created), files readable by all.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(io_err(to))?;
    set_mode(to, 0o755)?;
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let dest = to.join(entry.file_name());
        if entry.file_type().map_err(io_err(&entry.path()))?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), &dest).map_err(io_err(&dest))?;
            set_mode(&dest, 0o644)?;
        }
    }
    Ok(())
}

fn bind(host: &Path, container: &str, read_only: bool) -> [OsString; 2] {
    let mut spec = host.as_os_str().to_os_string();
    spec.push(format!(":{container}"));
    if read_only {
        spec.push(":ro");
    }
    ["-v".into(), spec]
}

/// The platform's restrictions for a container (network chosen by the caller).
fn restricted(memory: &str) -> Vec<OsString> {
    [
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--memory",
        memory,
        "--memory-swap",
        memory,
        "--pids-limit",
        "512",
        "--init",
        "--tmpfs",
        "/tmp:rw,exec",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// The container's last log line (what the platform shows the user), or its exit status.
fn container_last_line(name: &str) -> String {
    let logs = Command::new("docker")
        .args(["logs", "--tail", "100", name])
        .stdin(Stdio::null())
        .output();
    let from_logs = logs.ok().and_then(|o| {
        last_line(&String::from_utf8_lossy(&o.stderr))
            .or_else(|| last_line(&String::from_utf8_lossy(&o.stdout)))
    });
    let state = docker(&["inspect", "-f", "exit status {{.State.ExitCode}}", name]).ok();
    match (from_logs, state) {
        (Some(line), Some(state)) => format!("{line} ({state})"),
        (Some(line), None) => line,
        (None, Some(state)) => state,
        (None, None) => "no log output".into(),
    }
}

fn is_running(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", name]).is_ok_and(|s| s == "true")
}

/// The HTTP side: a tester container with curl on the internal network.
struct Tester {
    name: String,
}

impl Tester {
    /// `(status, body)`; status 0 when nothing answered (the body then holds curl's error).
    fn call(&self, method: &str, url: &str, timeout: Duration) -> Result<(u16, String)> {
        let output = Command::new("docker")
            .args([
                "exec",
                &self.name,
                "curl",
                "-sS",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
            ])
            .args([
                "-X",
                method,
                "--max-time",
                &timeout.as_secs().max(1).to_string(),
                url,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| SimulateError::Docker {
                command: "exec curl".into(),
                reason: format!("cannot run docker: {e}"),
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let status = code.trim().parse::<u16>().unwrap_or(0);
        if status == 0 {
            let err = last_line(&String::from_utf8_lossy(&output.stderr))
                .unwrap_or_else(|| "no answer".into());
            return Ok((0, err));
        }
        Ok((status, body.to_string()))
    }
}

/// Waits until `name` answers 200 on `/health`, as the platform does.
fn wait_healthy(
    tester: &Tester,
    name: &str,
    what: &'static str,
    policy: HealthPolicy,
) -> Result<()> {
    let url = format!("http://{name}:{INVOKE_PORT}/health");
    let mut last = String::from("no attempt made");
    for attempt in 1..=policy.tries {
        check_interrupt()?;
        if !is_running(name) {
            return Err(SimulateError::Unhealthy {
                what,
                reason: format!("it exited: {}", container_last_line(name)),
            });
        }
        let (status, body) = tester.call("GET", &url, policy.timeout)?;
        match status {
            200 => return Ok(()),
            // The platform treats a redirect as a failure, not as "not ready yet".
            300..=399 => {
                return Err(SimulateError::Unhealthy {
                    what,
                    reason: format!("GET /health answered a redirect ({status})"),
                })
            }
            0 => last = format!("attempt {attempt}: {body}"),
            _ => last = format!("attempt {attempt}: GET /health answered {status}"),
        }
        if attempt < policy.tries {
            // In slices, so that an interruption is seen within a tenth of a second.
            let until = Instant::now() + policy.interval;
            while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100).min(policy.interval));
            }
        }
    }
    Err(SimulateError::Unhealthy {
        what,
        reason: format!("{} attempts; last: {last}", policy.tries),
    })
}

/// Runs one container to completion with a time limit; `Ok(None)` on exit 0, else the reason
/// the platform would show. Its stdout and stderr go to `<log_stem>.stdout` and `.stderr`.
fn run_once(
    name: &str,
    args: &[OsString],
    log_stem: &Path,
    limit: Duration,
) -> Result<Option<String>> {
    let stderr_file = log_stem.with_extension("stderr");
    let stdout_file = log_stem.with_extension("stdout");
    let stderr = fs::File::create(&stderr_file).map_err(io_err(&stderr_file))?;
    let stdout = fs::File::create(&stdout_file).map_err(io_err(&stdout_file))?;
    let mut child = Command::new("docker")
        .arg("run")
        .arg("--name")
        .arg(name)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| SimulateError::Docker {
            command: "run".into(),
            reason: format!("cannot run docker: {e}"),
        })?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err(&stderr_file))? {
            break Some(status);
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            let _ = docker(&["rm", "-f", name]);
            let _ = child.wait();
            return Err(SimulateError::Interrupted);
        }
        if start.elapsed() > limit {
            let _ = docker(&["kill", name]);
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let text = fs::read_to_string(&stderr_file).unwrap_or_default();
    let last = last_line(&text);
    let _ = docker(&["rm", "-f", name]);
    Ok(match status {
        Some(s) if s.success() => None,
        // docker run's own exit code is the container's; 137 is the kernel's SIGKILL, which the
        // platform reports as the memory limit.
        Some(s) if s.code() == Some(137) => Some(format!(
            "the container exceeded its memory limit (exit 137){}",
            last.map(|l| format!("; last line: {l}"))
                .unwrap_or_default()
        )),
        Some(s) => Some(last.unwrap_or_else(|| format!("exit status {s}"))),
        None => Some(format!("time limit of {} s exceeded", limit.as_secs())),
    })
}

/// Set by SIGINT or SIGTERM while a simulation runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // A second signal means "now": leave at once (only async-signal-safe calls here).
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(130) };
    }
}

/// Makes SIGINT and SIGTERM set [`INTERRUPTED`] instead of killing the process, so that the
/// simulation stops at its next check and removes its containers and network. The docker
/// commands it runs get the terminal's Ctrl-C themselves (a caught signal is reset to its
/// default in a child), so a blocking call returns promptly.
fn catch_interrupts() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only touches an atomic (or calls _exit).
        unsafe { libc::signal(signal, handler) };
    }
}

/// `Err(Interrupted)` once SIGINT or SIGTERM has arrived.
fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(SimulateError::Interrupted)
    } else {
        Ok(())
    }
}

/// A short random id for container and network names.
fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Absolute form of `p` (docker bind mounts need one).
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(io_err(p))
}

/// Runs the simulation (see the module documentation). `log` receives one progress line per
/// step and job.
///
/// SIGINT and SIGTERM are caught from here on (see `catch_interrupts`): the simulation then
/// stops with [`SimulateError::Interrupted`] after removing what it started.
pub fn simulate(opts: &SimulateOptions, log: &mut dyn FnMut(&str)) -> Result<SimulationReport> {
    // Everything that can be checked before a container starts.
    let cases = list_cases(&opts.cases)?;
    let truth = load_ground_truth(&opts.ground_truth)?;
    let truth_keys: HashSet<String> = truth.cases.iter().map(|c| match_key(&c.case)).collect();
    if let Some(c) = cases
        .iter()
        .find(|c| !truth_keys.contains(&match_key(&c.name)))
    {
        return Err(SimulateError::Usage(format!(
            "case {} has no row in the ground truth {}; the evaluation would reject its prediction",
            c.name,
            truth.path.display()
        )));
    }
    if let Some(model) = &opts.model {
        if !model.is_file() {
            return Err(SimulateError::Usage(format!(
                "--model {}: no such file",
                model.display()
            )));
        }
    }
    let output = absolute(&opts.output)?;
    fs::create_dir_all(&output).map_err(io_err(&output))?;
    if fs::read_dir(&output)
        .map_err(io_err(&output))?
        .next()
        .is_some()
    {
        return Err(SimulateError::Usage(format!(
            "the output folder {} is not empty; results of two runs would mix",
            output.display()
        )));
    }
    let algorithm_api = api_method(&opts.algorithm_image)?;
    let evaluation_api = api_method(&opts.evaluation_image)?;
    log(&format!(
        "algorithm image {} ({:?} mode), evaluation image {} ({:?} mode), {} case(s)",
        opts.algorithm_image,
        algorithm_api,
        opts.evaluation_image,
        evaluation_api,
        cases.len()
    ));

    catch_interrupts();
    let id = short_id();
    let mut started = Started::default();
    let work = output.join(".simulate");
    started.work = Some(work.clone());
    let input_dir = work.join("input");
    let output_dir = work.join("output");
    let logs = output.join("logs");
    fs::create_dir_all(&logs).map_err(io_err(&logs))?;
    started.logs = Some(logs.clone());
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    set_mode(&work, 0o755)?;

    let model_dir = match &opts.model {
        Some(tarball) => {
            let dir = work.join("model");
            fresh_dir(&dir, 0o755)?;
            let tar = Command::new("tar")
                .arg("-xzf")
                .arg(tarball)
                .arg("-C")
                .arg(&dir)
                .output()
                .map_err(io_err(tarball))?;
            if !tar.status.success() {
                return Err(SimulateError::Usage(format!(
                    "cannot extract the model tarball {}: {}",
                    tarball.display(),
                    last_line(&String::from_utf8_lossy(&tar.stderr)).unwrap_or_default()
                )));
            }
            Some(dir)
        }
        None => None,
    };

    let mut tester = None;
    if algorithm_api == ApiMethod::Invoke || evaluation_api == ApiMethod::Invoke {
        let net = format!("ctgrade-sim-{id}");
        docker(&["network", "create", "--internal", &net])?;
        started.network = Some(net.clone());
        let name = format!("ctgrade-sim-{id}-tester");
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            &opts.tester_image,
            "sleep",
            "infinity",
        ])?;
        started.containers.push(name.clone());
        tester = Some(Tester { name });
    }

    // The algorithm container's mounts and flags, shared by both modes.
    let mut alg_args = restricted(&opts.memory);
    alg_args.extend(bind(&input_dir, "/input", true));
    alg_args.extend(bind(&output_dir, "/output", false));
    if let Some(dir) = &model_dir {
        alg_args.extend(bind(dir, "/opt/ml/model", true));
    }
    if opts.gpus {
        alg_args.extend(["--gpus".into(), "all".into()]);
    }
    // The folders must exist before the container binds them.
    fresh_dir(&input_dir, 0o755)?;
    fresh_dir(&output_dir, 0o777)?;

    let alg_name = format!("ctgrade-sim-{id}-algorithm");
    if let (ApiMethod::Invoke, Some(t)) = (algorithm_api, &tester) {
        let mut args: Vec<OsString> = vec!["run".into(), "-d".into(), "--name".into()];
        args.push(alg_name.clone().into());
        args.push("--network".into());
        args.push(started.network.clone().unwrap_or_default().into());
        args.extend(alg_args.iter().cloned());
        args.push(opts.algorithm_image.clone().into());
        docker(&args)?;
        started.containers.push(alg_name.clone());
        let t0 = Instant::now();
        wait_healthy(t, &alg_name, "algorithm", opts.health)?;
        log(&format!(
            "algorithm container healthy after {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
    }

    let mut jobs = Vec::new();
    let mut failed = Vec::new();
    let mut next_pk = 1u64;
    for (k, case) in cases.iter().enumerate() {
        check_interrupt()?;
        let pk = uuid::Uuid::new_v4().to_string();
        let image_pk = uuid::Uuid::new_v4().to_string();
        let input = ct_input(next_pk, &image_pk, &case.name, case.kind);
        next_pk += 1;
        // Provision /input as the platform does: the socket file named by the image's id, and
        // inputs.json; /output starts empty.
        fresh_dir(&input_dir, 0o755)?;
        let socket_dir = input_dir.join(&input.socket.relative_path);
        fs::create_dir_all(&socket_dir).map_err(io_err(&socket_dir))?;
        for dir in [input_dir.join("images"), socket_dir.clone()] {
            set_mode(&dir, 0o755)?;
        }
        let files = match case.kind {
            CaseKind::Image(ext) => vec![(case.path.clone(), format!("{image_pk}{ext}"))],
            // The platform names each slice <SOPInstanceUID>.dcm; simulate, which parses no DICOM,
            // keeps each file's own name (the algorithm recognises DICOM files by content).
            CaseKind::DicomSeries => dicom_files(&case.path)?
                .into_iter()
                .map(|f| {
                    let stem = f
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    (f, format!("{stem}.dcm"))
                })
                .collect(),
        };
        for (from, name) in files {
            let dest = socket_dir.join(name);
            fs::copy(&from, &dest).map_err(io_err(&from))?;
            set_mode(&dest, 0o644)?;
        }
        let inputs_json =
            serde_json::to_string_pretty(&[&input]).map_err(|e| SimulateError::Io {
                path: input_dir.join("inputs.json"),
                cause: e.into(),
            })?;
        write_atomic(&input_dir.join("inputs.json"), inputs_json.as_bytes())?;
        fresh_dir(&output_dir, 0o777)?;

        let started_at = SystemTime::now();
        let t0 = Instant::now();
        let outcome: Option<String> = match (algorithm_api, &tester) {
            (ApiMethod::Invoke, Some(t)) => {
                let url = format!("http://{alg_name}:{INVOKE_PORT}/invoke");
                let (status, body) = t.call("POST", &url, opts.job_timeout)?;
                // A Ctrl-C also ends the curl call: report the interruption, not its failure.
                check_interrupt()?;
                match status {
                    201 => None,
                    // No answer (a time-out, a crash): the container may still be busy with
                    // this job, so later calls would meet a 409; the platform would stop it.
                    0 => {
                        return Err(SimulateError::AlgorithmStopped {
                            case: case.name.clone(),
                            reason: format!("POST /invoke got no answer: {body}"),
                        })
                    }
                    500 => Some(last_line(&body).unwrap_or_else(|| "500 without a body".into())),
                    s => Some(format!(
                        "POST /invoke answered {s}: {}",
                        last_line(&body).unwrap_or_default()
                    )),
                }
            }
            _ => {
                let mut args: Vec<OsString> = vec!["--network".into(), "none".into()];
                args.extend(alg_args.iter().cloned());
                args.push(opts.algorithm_image.clone().into());
                run_once(
                    &format!("{alg_name}-{k}"),
                    &args,
                    &logs.join(&pk),
                    opts.job_timeout,
                )?
            }
        };
        let duration = t0.elapsed();
        if algorithm_api == ApiMethod::Invoke && !is_running(&alg_name) {
            return Err(SimulateError::AlgorithmStopped {
                case: case.name.clone(),
                reason: container_last_line(&alg_name),
            });
        }
        let outcome = match outcome {
            None => read_outputs(&output_dir, next_pk),
            Some(reason) => Err(reason),
        };
        match outcome {
            Ok(outputs) => {
                next_pk += outputs.len() as u64;
                let dest = output.join(&pk).join("output");
                copy_dir(&output_dir, &dest)?;
                let duration_text = format_duration(duration);
                let (exec_duration, invoke_duration) = match algorithm_api {
                    ApiMethod::Invoke => (None, Some(duration_text)),
                    ApiMethod::Exec => (Some(duration_text), None),
                };
                log(&format!(
                    "job {pk} ({}): succeeded in {:.1} s: {} = {}, {} = {}",
                    case.name,
                    duration.as_secs_f64(),
                    outputs[0].socket.slug,
                    outputs[0].value,
                    outputs[1].socket.slug,
                    outputs[1].value
                ));
                jobs.push(Job {
                    pk,
                    inputs: vec![input],
                    outputs,
                    status: "Succeeded".into(),
                    started_at: Some(format_time(started_at)),
                    completed_at: Some(format_time(SystemTime::now())),
                    exec_duration,
                    invoke_duration,
                });
            }
            Err(reason) => {
                log(&format!(
                    "job {pk} ({}): FAILED after {:.1} s: {reason}",
                    case.name,
                    duration.as_secs_f64()
                ));
                failed.push(FailedJob {
                    pk,
                    case: case.name.clone(),
                    reason,
                    duration: format_duration(duration),
                });
            }
        }
    }
    // The algorithm is done: free its memory (and GPU) before the evaluation.
    if algorithm_api == ApiMethod::Invoke {
        started.remove_container(&alg_name);
    }

    write_predictions(&output.join("predictions.json"), &jobs)?;
    if !failed.is_empty() {
        let doc = serde_json::json!({"note": FAILED_JOBS_NOTE, "jobs": failed});
        let text = serde_json::to_string_pretty(&doc).map_err(|e| SimulateError::Io {
            path: output.join("failed-jobs.json"),
            cause: e.into(),
        })? + "\n";
        write_atomic(&output.join("failed-jobs.json"), text.as_bytes())?;
    }
    if jobs.is_empty() {
        return Err(SimulateError::NothingSucceeded(failed.len()));
    }
    // The ground truth the evaluation sees: the rows of the successful jobs' cases only. The
    // evaluator rejects ground-truth cases without a prediction, which on the platform means a
    // failed job (no evaluation at all there) and here may also mean a folder holding a subset
    // of the table's cases.
    let succeeded_keys: HashSet<String> = jobs
        .iter()
        .flat_map(|j| &j.inputs)
        .filter_map(|sv| sv.image.as_ref())
        .map(|image| match_key(&image.name))
        .collect();
    let truth_name = truth.path.file_name().map_or_else(
        || "ground-truth.csv".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let evaluated_truth = output.join("ground-truth.csv");
    let dropped = write_only_cases(&truth, &succeeded_keys, &evaluated_truth)?;
    if dropped > 0 {
        log(&format!(
            "ground truth: {dropped} row(s) without a successful job left out ({} failed); the \
             rows evaluated are in {}",
            failed.len(),
            evaluated_truth.display()
        ));
    }

    // The evaluation's /input: predictions.json and each job's outputs under <pk>/output/.
    let eval_input = work.join("eval-input");
    let eval_output = work.join("eval-output");
    let eval_truth = work.join("ground_truth");
    fresh_dir(&eval_input, 0o755)?;
    fresh_dir(&eval_output, 0o777)?;
    fresh_dir(&eval_truth, 0o755)?;
    fs::copy(
        output.join("predictions.json"),
        eval_input.join("predictions.json"),
    )
    .map_err(io_err(&eval_input))?;
    set_mode(&eval_input.join("predictions.json"), 0o644)?;
    for job in &jobs {
        copy_dir(
            &output.join(&job.pk).join("output"),
            &eval_input.join(&job.pk).join("output"),
        )?;
    }
    let truth_copy = eval_truth.join(&truth_name);
    fs::copy(&evaluated_truth, &truth_copy).map_err(io_err(&truth_copy))?;
    set_mode(&truth_copy, 0o644)?;

    check_interrupt()?;
    let mut eval_args = restricted(&opts.memory);
    eval_args.extend(bind(&eval_input, "/input", true));
    eval_args.extend(bind(&eval_truth, "/opt/ml/input/data/ground_truth", true));
    eval_args.extend(bind(&eval_output, "/output", false));
    let eval_name = format!("ctgrade-sim-{id}-evaluation");
    let t0 = Instant::now();
    match (evaluation_api, &tester) {
        (ApiMethod::Invoke, Some(t)) => {
            let mut args: Vec<OsString> = vec!["run".into(), "-d".into(), "--name".into()];
            args.push(eval_name.clone().into());
            args.push("--network".into());
            args.push(started.network.clone().unwrap_or_default().into());
            args.extend(eval_args);
            args.push(opts.evaluation_image.clone().into());
            docker(&args)?;
            started.containers.push(eval_name.clone());
            wait_healthy(t, &eval_name, "evaluation", opts.health)?;
            let url = format!("http://{eval_name}:{INVOKE_PORT}/invoke");
            let (status, body) = t.call("POST", &url, opts.job_timeout)?;
            check_interrupt()?;
            if status != 201 {
                let reason = last_line(&body).unwrap_or_default();
                return Err(SimulateError::Evaluation(format!(
                    "POST /invoke answered {status}: {reason}"
                )));
            }
        }
        _ => {
            let mut args: Vec<OsString> = vec!["--network".into(), "none".into()];
            args.extend(eval_args);
            args.push(opts.evaluation_image.clone().into());
            if let Some(reason) = run_once(
                &eval_name,
                &args,
                &logs.join("evaluation"),
                opts.job_timeout,
            )? {
                return Err(SimulateError::Evaluation(reason));
            }
        }
    }
    let metrics_file = eval_output.join("metrics.json");
    let bytes = fs::read(&metrics_file).map_err(|_| {
        SimulateError::Evaluation("it succeeded but wrote no /output/metrics.json".into())
    })?;
    let metrics: Value = serde_json::from_slice(&bytes).map_err(|e| {
        SimulateError::Evaluation(format!("its metrics.json is not valid JSON: {e}"))
    })?;
    write_atomic(&output.join("metrics.json"), &bytes)?;
    log(&format!(
        "evaluation done in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(SimulationReport {
        algorithm_api,
        evaluation_api,
        jobs,
        failed,
        metrics,
        output,
    })
}

/// The headline aggregates of a `metrics.json`, one per line (AUC, QWK, sensitivity...).
pub fn summarize_metrics(metrics: &Value) -> Vec<String> {
    let a = &metrics["aggregates"];
    let num = |v: &Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.4}"));
    let ci = |v: &Value| match v.as_array().map(Vec::as_slice) {
        Some([l, h]) => format!(" (95% CI {} to {})", num(l), num(h)),
        _ => String::new(),
    };
    let mut lines = vec![
        format!(
            "cases {}, positive {}, negative {}",
            a["n_cases"], a["n_positive"], a["n_negative"]
        ),
        format!("AUC {}{}", num(&a["auc"]), ci(&a["auc_95ci"])),
        format!(
            "QWK {}{} over {} case(s)",
            num(&a["qwk"]),
            ci(&a["qwk_95ci"]),
            a["qwk_n_cases"]
        ),
        format!(
            "sensitivity {}, specificity {} (at 0.5)",
            num(&a["sensitivity"]),
            num(&a["specificity"])
        ),
    ];
    // Keys of newer evaluators; an older evaluation image leaves them out.
    if a.get("brier").is_some() {
        lines.push(format!(
            "Brier {}{}, ECE {} (10 equal-width bins)",
            num(&a["brier"]),
            ci(&a["brier_95ci"]),
            num(&a["ece_uniform_10"])
        ));
    }
    let d = &a["runtime"]["duration"];
    if d.is_object() {
        lines.push(format!(
            "run time per job ({}): median {} s, 95th percentile {} s, maximum {} s",
            d["source"].as_str().unwrap_or("?"),
            num(&d["median_s"]),
            num(&d["p95_s"]),
            num(&d["max_s"])
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictions::{load_predictions, PredictionFormat};

    fn job(pk: &str, name: &str, probability: f64, co_rads: i64) -> Job {
        let outputs = output_sockets()
            .into_iter()
            .zip([serde_json::json!(probability), serde_json::json!(co_rads)])
            .enumerate()
            .map(|(k, (socket, value))| SocketValue {
                pk: 10 + k as u64,
                socket,
                value,
                file: None,
                image: None,
            })
            .collect();
        Job {
            pk: pk.into(),
            inputs: vec![ct_input(1, "img-1", name, CaseKind::Image(".mha"))],
            outputs,
            status: "Succeeded".into(),
            started_at: Some("2026-11-30T09:00:00.000000Z".into()),
            completed_at: Some("2026-11-30T09:00:05.250000Z".into()),
            exec_duration: None,
            invoke_duration: Some("00:00:05.250000".into()),
        }
    }

    #[test]
    fn predictions_json_has_the_platform_job_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("predictions.json");
        write_predictions(&path, &[job("job-a", "case_1.mha", 0.25, 2)]).unwrap();
        let doc: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let j = &doc[0];
        let mut keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "completed_at",
                "exec_duration",
                "inputs",
                "invoke_duration",
                "outputs",
                "pk",
                "started_at",
                "status"
            ]
        );
        assert_eq!(j["pk"], "job-a");
        assert_eq!(j["status"], "Succeeded");
        assert_eq!(j["started_at"], "2026-11-30T09:00:00.000000Z");
        assert_eq!(j["completed_at"], "2026-11-30T09:00:05.250000Z");
        assert!(j["exec_duration"].is_null());
        assert_eq!(j["invoke_duration"], "00:00:05.250000");
        let input = &j["inputs"][0];
        assert_eq!(j["inputs"].as_array().unwrap().len(), 1);
        assert_eq!(input["pk"], 1);
        assert_eq!(
            input["socket"],
            serde_json::json!({"slug": "ct-image", "kind": "Image", "super_kind": "Image",
                               "relative_path": "images/ct", "title": "CT Image"})
        );
        assert!(input.get("interface").is_none());
        assert!(input["value"].is_null() && input["file"].is_null());
        assert_eq!(
            input["image"],
            serde_json::json!({"pk": "img-1", "name": "case_1.mha"})
        );
        let outputs = j["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 2);
        assert_eq!(
            outputs[0],
            serde_json::json!({"pk": 10, "socket": {"slug": "probability-covid-19", "kind": "Float",
                "super_kind": "Value", "relative_path": "probability-covid-19.json"},
                "value": 0.25, "file": null, "image": null})
        );
        assert_eq!(
            outputs[1],
            serde_json::json!({"pk": 11, "socket": {"slug": "co-rads-score", "kind": "Integer",
                "super_kind": "Value", "relative_path": "co-rads-score.json"},
                "value": 2, "file": null, "image": null})
        );
    }

    #[test]
    fn the_evaluator_reads_written_jobs_in_both_key_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("predictions.json");
        let jobs = [
            job("job-a", "case_1.mha", 0.25, 2),
            job("job-b", "Case 2.nii.gz", 0.75, 4),
        ];
        write_predictions(&path, &jobs).unwrap();
        let check = |path: &Path| {
            let set = load_predictions(path).unwrap();
            assert_eq!(set.format, PredictionFormat::Platform);
            let got: Vec<(String, f64, Option<u8>)> = set
                .predictions
                .iter()
                .map(|p| (p.case.clone(), p.probability, p.co_rads))
                .collect();
            assert_eq!(
                got,
                [
                    ("case_1".to_string(), 0.25, Some(2)),
                    ("Case 2".to_string(), 0.75, Some(4))
                ]
            );
        };
        check(&path);
        // The older spelling: the same jobs with "interface" for "socket".
        let old = fs::read_to_string(&path)
            .unwrap()
            .replace("\"socket\":", "\"interface\":");
        assert!(!old.contains("\"socket\""));
        let old_path = dir.path().join("old.json");
        fs::write(&old_path, old).unwrap();
        check(&old_path);
        // And the typed reader takes the old spelling back to the same jobs.
        let back: Vec<Job> = serde_json::from_str(&fs::read_to_string(&old_path).unwrap()).unwrap();
        assert_eq!(back, jobs);
    }

    #[test]
    fn outputs_are_validated_as_the_platform_does() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_outputs(dir.path(), 1).unwrap_err();
        assert_eq!(
            err,
            "Output file probability-covid-19.json was not produced"
        );
        fs::write(dir.path().join("probability-covid-19.json"), "0.5").unwrap();
        fs::write(dir.path().join("co-rads-score.json"), "3.5").unwrap();
        let err = read_outputs(dir.path(), 1).unwrap_err();
        assert!(
            err.contains("co-rads-score.json") && err.contains("integer"),
            "{err}"
        );
        fs::write(dir.path().join("co-rads-score.json"), "3").unwrap();
        let values = read_outputs(dir.path(), 7).unwrap();
        assert_eq!(values[0].value, serde_json::json!(0.5));
        assert_eq!(values[1].value, serde_json::json!(3));
        assert_eq!((values[0].pk, values[1].pk), (7, 8));
    }

    #[test]
    fn cases_folder_takes_images_and_names_what_it_refuses() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            list_cases(dir.path()),
            Err(SimulateError::Usage(_))
        ));
        for name in ["b.nii.gz", "a.mha", ".hidden", "c.NII"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let cases = list_cases(dir.path()).unwrap();
        let names: Vec<(&str, CaseKind)> =
            cases.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            names,
            [
                ("a.mha", CaseKind::Image(".mha")),
                ("b.nii.gz", CaseKind::Image(".nii.gz")),
                ("c.NII", CaseKind::Image(".nii"))
            ]
        );
        fs::write(dir.path().join("d.mhd"), b"x").unwrap();
        let err = list_cases(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("d.mhd") && err.contains("convert it to .mha"),
            "{err}"
        );
        fs::remove_file(dir.path().join("d.mhd")).unwrap();
        let series = dir.path().join("series");
        fs::create_dir(&series).unwrap();
        fs::write(series.join("notes.txt"), b"x").unwrap();
        let err = list_cases(dir.path()).unwrap_err().to_string();
        assert!(err.contains("series") && err.contains("DICOM"), "{err}");
        // A DICOM file: 128 bytes of preamble, then the marker.
        let mut dcm = vec![0u8; 128];
        dcm.extend_from_slice(b"DICM\x02\x00");
        fs::write(series.join("1.2.3"), &dcm).unwrap();
        let cases = list_cases(dir.path()).unwrap();
        assert_eq!(cases[3].name, "series");
        assert_eq!(cases[3].kind, CaseKind::DicomSeries);
        assert_eq!(
            ct_input(1, "u", "series", CaseKind::DicomSeries)
                .socket
                .kind,
            "DICOM Image Set"
        );
    }

    fn options(dir: &Path) -> SimulateOptions {
        SimulateOptions {
            algorithm_image: "no-such-image:never-pulled".into(),
            evaluation_image: "no-such-image:never-pulled".into(),
            tester_image: "no-such-image:never-pulled".into(),
            cases: dir.join("cases"),
            ground_truth: dir.join("truth.csv"),
            model: None,
            gpus: false,
            memory: "1g".into(),
            output: dir.join("out"),
            job_timeout: Duration::from_secs(1),
            health: HealthPolicy::default(),
        }
    }

    #[test]
    fn settings_are_refused_before_any_container_starts() {
        // Each error comes before docker is asked anything (the images do not exist).
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("cases")).unwrap();
        fs::write(dir.path().join("cases/patient_1.mha"), b"x").unwrap();
        fs::write(dir.path().join("cases/patient_2.mha"), b"x").unwrap();
        fs::write(
            dir.path().join("truth.csv"),
            "case,label\nPatient 1,1\nPatient 3,0\n",
        )
        .unwrap();
        let opts = options(dir.path());
        let err = simulate(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("patient_2.mha") && err.contains("no row in the ground truth"),
            "{err}"
        );
        fs::write(
            dir.path().join("truth.csv"),
            "case,label\npatient 1,1\npatient_2,0\n",
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("out/old")).unwrap();
        let err = simulate(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
        let opts = SimulateOptions {
            model: Some(dir.path().join("model.tar.gz")),
            ..opts
        };
        let err = simulate(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("model.tar.gz") && err.contains("no such file"),
            "{err}"
        );
    }

    #[test]
    fn label_values_select_the_api() {
        assert_eq!(ApiMethod::from_label("invoke"), ApiMethod::Invoke);
        assert_eq!(ApiMethod::from_label("invoke\n"), ApiMethod::Invoke);
        assert_eq!(ApiMethod::from_label("<no value>"), ApiMethod::Exec);
        assert_eq!(ApiMethod::from_label(""), ApiMethod::Exec);
    }

    #[test]
    fn metrics_summary_names_auc_and_qwk() {
        let m = serde_json::json!({"aggregates": {"n_cases": 5, "n_positive": 3, "n_negative": 2,
            "auc": 0.8333333, "auc_95ci": [0.5, 1.0], "qwk": 0.7, "qwk_95ci": null,
            "qwk_n_cases": 5, "sensitivity": 1.0, "specificity": 0.5}});
        let lines = summarize_metrics(&m);
        assert_eq!(lines[1], "AUC 0.8333 (95% CI 0.5000 to 1.0000)");
        assert_eq!(lines[2], "QWK 0.7000 over 5 case(s)");
        assert_eq!(lines.len(), 4);
        let m = serde_json::json!({"aggregates": {"brier": 0.125, "brier_95ci": [0.1, 0.15],
            "ece_uniform_10": 0.05, "runtime": {"duration": {"source": "invoke_duration",
            "median_s": 4.0, "p95_s": 5.5, "max_s": 6.0}}}});
        let lines = summarize_metrics(&m);
        assert_eq!(
            lines[4],
            "Brier 0.1250 (95% CI 0.1000 to 0.1500), ECE 0.0500 (10 equal-width bins)"
        );
        assert_eq!(
            lines[5],
            "run time per job (invoke_duration): median 4.0000 s, 95th percentile 5.5000 s, \
             maximum 6.0000 s"
        );
    }
}
