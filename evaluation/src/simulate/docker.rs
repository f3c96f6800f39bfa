//! The `docker` command line: running containers with the platform's restrictions, their logs,
//! the tester container that calls `/health` and `/invoke`, and one exec-mode job.

use super::*;

/// Runs `docker` with `args`; `Ok(stdout)` on success, else the last non-empty stderr line.
pub(super) fn docker<S: AsRef<OsStr>>(args: &[S]) -> Result<String> {
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
pub(super) struct Started {
    pub(super) containers: Vec<String>,
    pub(super) network: Option<String>,
    pub(super) work: Option<PathBuf>,
    pub(super) logs: Option<PathBuf>,
}

impl Started {
    /// Saves the container's logs (`<logs>/<role>.log`, the role being what follows the
    /// simulation's id in its name) unless it is the tester, then removes it.
    pub(super) fn remove_container(&mut self, name: &str) {
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
pub(super) fn save_logs(name: &str, dest: &Path) {
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
pub(super) fn fresh_dir(dir: &Path, mode: u32) -> Result<()> {
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

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
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
pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
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

pub(super) fn bind(host: &Path, container: &str, read_only: bool) -> [OsString; 2] {
    let mut spec = host.as_os_str().to_os_string();
    spec.push(format!(":{container}"));
    if read_only {
        spec.push(":ro");
    }
    ["-v".into(), spec]
}

/// The platform's restrictions for a container (network chosen by the caller).
pub(super) fn restricted(memory: &str) -> Vec<OsString> {
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
pub(super) fn container_last_line(name: &str) -> String {
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

pub(super) fn is_running(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", name]).is_ok_and(|s| s == "true")
}

/// The HTTP side: a tester container with curl on the internal network.
pub(super) struct Tester {
    pub(super) name: String,
}

impl Tester {
    /// `(status, body)`; status 0 when nothing answered (the body then holds curl's error).
    pub(super) fn call(&self, method: &str, url: &str, timeout: Duration) -> Result<(u16, String)> {
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
pub(super) fn wait_healthy(
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
pub(super) fn run_once(
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
