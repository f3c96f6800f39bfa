//! `ctgrade-eval serve` on loopback, as the platform drives an evaluation container in invoke
//! mode: /health until 200, POST /invoke gives 201 and the fixture's metrics, a broken
//! predictions.json gives 500 with the reason, a repaired one 201 again, SIGTERM exits 0.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A port nobody listens on right now (the binary binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process; killed if the test fails before it is stopped.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// `None` while nothing listens yet.
fn call(method: &str, url: &str) -> Option<(u16, String)> {
    let agent = agent();
    let response = match method {
        "GET" => agent.get(url).call(),
        _ => agent.post(url).send_empty(),
    };
    let mut response = response.ok()?;
    let status = response.status().as_u16();
    Some((
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    ))
}

#[test]
fn serve_answers_health_and_invoke_and_stops_on_sigterm() {
    let fx = fixtures().join("platform");
    let expected: Value =
        serde_json::from_str(&fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    copy_dir(&fx.join("input"), &input);
    let predictions = input.join("predictions.json");
    let good = fs::read(&predictions).unwrap();
    let metrics = tmp.path().join("output/metrics.json");
    let log = tmp.path().join("server.log");

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ctgrade-eval"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-p", predictions.to_str().unwrap()])
        .args(["-g", fx.join("ground_truth").to_str().unwrap()])
        .args(["-o", metrics.to_str().unwrap()])
        .args(["--bootstrap", "200", "--seed", "11"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server(Some(child));
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        if let Some((status, _)) = call("GET", &format!("{base}/health")) {
            if status == 200 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never healthy: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }

    let invoke = || call("POST", &format!("{base}/invoke")).expect("the server answers");
    let (status, body) = invoke();
    assert_eq!(status, 201, "{body}");
    let check_metrics = || {
        let m: Value = serde_json::from_str(&fs::read_to_string(&metrics).unwrap()).unwrap();
        let (a, e) = (&m["aggregates"], &expected["all"]);
        assert_eq!(a["n_cases"], e["n_cases"]);
        for k in ["auc", "sensitivity", "specificity"] {
            let (g, x) = (a[k].as_f64().unwrap(), e[k].as_f64().unwrap());
            assert!((g - x).abs() <= 1e-9, "{k}: {g} vs {x}");
        }
        let (g, x) = (&a["auc_95ci"], &e["auc_95ci"]);
        for i in 0..2 {
            let (g, x) = (g[i].as_f64().unwrap(), x[i].as_f64().unwrap());
            assert!((g - x).abs() <= 1e-9, "auc_95ci: {g} vs {x}");
        }
    };
    check_metrics();

    // A broken predictions.json: 500, the body names the file and the cause, no metrics.json.
    fs::write(&predictions, b"[{\"pk\": ").unwrap();
    let (status, body) = invoke();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("predictions.json") && body.contains("not valid JSON"),
        "{body}"
    );
    assert_eq!(body.trim().lines().count(), 1, "{body}");
    assert!(!metrics.exists(), "a failed call left a metrics.json");

    // Repaired: the same server evaluates again.
    fs::write(&predictions, &good).unwrap();
    let (status, body) = invoke();
    assert_eq!(status, 201, "{body}");
    check_metrics();

    let child = server.0.as_mut().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit on SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    server.0 = None;
    assert!(
        status.success(),
        "{status}: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn serve_refuses_a_bad_plot_name_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade-eval"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
        ])
        .args(["--plot", tmp.path().join("roc.gif").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.is_empty()).unwrap_or("");
    assert!(
        last.contains("roc.gif") && last.contains(".svg or .png"),
        "{stderr}"
    );
}

#[test]
fn plain_invocation_still_evaluates_and_rejects_mixing_with_serve() {
    let fx = fixtures().join("platform");
    let tmp = tempfile::tempdir().unwrap();
    let metrics = tmp.path().join("metrics.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade-eval"))
        .args(["-p", fx.join("input/predictions.json").to_str().unwrap()])
        .args(["-g", fx.join("ground_truth").to_str().unwrap()])
        .args(["-o", metrics.to_str().unwrap(), "--bootstrap", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(metrics.is_file());
    // Options belong after the subcommand; before it they are refused rather than ignored.
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade-eval"))
        .args(["--bootstrap", "0", "serve", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
