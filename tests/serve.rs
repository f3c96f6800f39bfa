//! `ctgrade serve` on loopback, driven as grand-challenge drives an invoke container: health while
//! loading and after, one POST /invoke per job with a freshly provisioned input folder and an
//! emptied output folder, both `inputs.json` spellings, a broken case (500, its reason, no outputs)
//! followed by a good one, the same answers as `ctgrade run`, and a clean stop on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_same_files, make_ensemble, run_ok, s};
use ctgrade::grading::Head;
use ctgrade::synth::{phantom, PhantomConfig};
use ctgrade::volume::{self, ElementType};

/// A running `ctgrade serve` with its stderr collected line by line.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(input: &Path, output: &Path, weights: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(["--input", s(input), "--output", s(output)])
            .args(["--weights", s(weights), "--device", "cpu"])
            .env_remove("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The server logs the address it bound (port 0 picks a free one).
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = addr_tx.send(rest.split(';').next().unwrap_or("").to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server never said where it listens");
        Self {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    fn call(&self, method: &str, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => agent.get(&url).call(),
            _ => agent.post(&url).send_empty(),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn wait_healthy(&self) -> usize {
        let start = Instant::now();
        let mut not_ready = 0;
        loop {
            match self.call("GET", "/health").0 {
                200 => return not_ready,
                503 => not_ready += 1,
                other => panic!("/health answered {other}"),
            }
            assert!(start.elapsed() < Duration::from_secs(60), "never healthy");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the collected log satisfies `ok` (stderr is read by another thread, so a line
    /// written before a response may arrive after it).
    fn wait_log(&self, what: &str, ok: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        while !ok(&self.log()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Empties `dir` (the platform gives each job a fresh folder at the same path).
fn clear(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}

/// Provisions `input` with one CT socket file and an `inputs.json` keyed `key`.
fn provision(input: &Path, file: &str, bytes: &[u8], key: &str) {
    clear(input);
    std::fs::create_dir_all(input.join("images/ct")).unwrap();
    std::fs::write(input.join("images/ct").join(file), bytes).unwrap();
    let json = format!(
        r#"[{{"pk": "0b8e", "{key}": {{"slug": "ct-image", "kind": "Image", "super_kind": "Image",
        "relative_path": "images/ct"}}, "value": null, "file": null,
        "image": {{"pk": "1c7f", "name": "upload-{file}"}}}}]"#
    );
    std::fs::write(input.join("inputs.json"), json).unwrap();
}

fn chest(seed: u64, co_rads: u8) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        size: [96, 96, 48],
        spacing: [3.5, 3.5, 6.0],
        seed,
        co_rads,
    };
    let path = dir.path().join("x.mha");
    volume::write(&path, &phantom(&cfg).unwrap().0, ElementType::Short).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn serve_grades_jobs_like_run() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 2);
    let (input, output) = (dir.path().join("input"), dir.path().join("output"));
    clear(&input);
    clear(&output);
    let server = Server::start(&input, &output, &weights);
    server.wait_healthy();
    server.wait_log("members loaded before healthy", |log| {
        log.iter().any(|l| l.contains("2 member(s) loaded"))
    });

    let cases = [(1, 2, "socket"), (2, 5, "interface"), (3, 4, "socket")];
    for (seed, co_rads, key) in cases {
        let file = format!("case{seed}.mha");
        let ct = chest(seed, co_rads);
        provision(&input, &file, &ct, key);
        clear(&output);
        let (status, body) = server.call("POST", "/invoke");
        assert_eq!(status, 201, "{body}\n{:?}", server.log());
        let served: Vec<Vec<u8>> = ["probability-covid-19.json", "co-rads-score.json"]
            .iter()
            .map(|f| std::fs::read(output.join(f)).unwrap())
            .collect();
        let uploaded = format!("(uploaded as upload-{file})");
        server.wait_log(key, |log| log.iter().any(|l| l.contains(&uploaded)));

        // `ctgrade run` on the same input writes the same bytes.
        let run_out = dir.path().join(format!("run{seed}"));
        run_ok(&input, &run_out, &weights);
        for (f, bytes) in ["probability-covid-19.json", "co-rads-score.json"]
            .iter()
            .zip(&served)
        {
            assert_eq!(&std::fs::read(run_out.join(f)).unwrap(), bytes, "{f}");
        }

        // A broken job between good ones: 500 with the reason, no outputs, server still healthy.
        provision(
            &input,
            "broken.mha",
            b"ObjectType = Image\nNDims = 3\n",
            key,
        );
        clear(&output);
        let (status, body) = server.call("POST", "/invoke");
        assert_eq!(status, 500);
        assert!(body.contains("broken.mha"), "{body}");
        assert_eq!(std::fs::read_dir(&output).unwrap().count(), 0);
        server.wait_log("the last stderr line is the reason", |log| {
            log.last().map(|l| l.as_str()) == Some(body.trim())
        });
        assert_eq!(server.call("GET", "/health").0, 200);
    }

    // An empty input folder is a failed job, not a dead server.
    clear(&input);
    let (status, body) = server.call("POST", "/invoke");
    assert_eq!(status, 500);
    assert!(body.contains("no CT image found"), "{body}");

    // SIGTERM: a clean stop with exit status 0.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", server.log());
}

#[test]
fn serve_refuses_bad_weights_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 1);
    std::fs::write(weights.join("ensemble.json"), "{").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--device",
            "cpu",
        ])
        .args(["--weights", s(&weights)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.contains("ensemble.json"), "{stderr}");
}

/// With a lesion model in the ensemble, the server loads it once at start and computes each job's
/// lesion channel as `ctgrade run` does: the same bytes.
#[test]
fn serve_computes_the_lesion_channel_like_run() {
    let dir = tempfile::tempdir().unwrap();
    let weights = common::make_lesion_ensemble(dir.path(), Some(&[1, 2]), false);
    let (input, output) = (dir.path().join("input"), dir.path().join("output"));
    clear(&input);
    clear(&output);
    let server = Server::start(&input, &output, &weights);
    server.wait_healthy();
    for seed in [6, 7] {
        provision(&input, "ct.mha", &chest(seed, 4), "socket");
        clear(&output);
        let (status, body) = server.call("POST", "/invoke");
        assert_eq!(status, 201, "{body}\n{:?}", server.log());
        server.wait_log("the lesion model ran", |log| {
            log.iter()
                .filter(|l| l.contains("lesion map computed by lesion"))
                .count()
                == (seed - 5) as usize
        });
        let run_out = dir.path().join(format!("run{seed}"));
        run_ok(&input, &run_out, &weights);
        assert_same_files(
            &run_out,
            &output,
            &[
                "probability-covid-19.json",
                "co-rads-score.json",
                "percentage-of-lung-affected.json",
            ],
        );
    }
}
