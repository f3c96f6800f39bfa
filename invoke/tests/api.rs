//! The invoke API on loopback: health before and after loading, 201, 500 then 201 again, 409 on a
//! concurrent call, 503 before loading, a failing set-up, shutdown.

use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gc_invoke::{serve_until, JobResult, ServeError};

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    /// A server whose set-up waits for `loaded` and whose jobs each take their outcome from `jobs`.
    fn start(loaded: mpsc::Receiver<Result<(), String>>, jobs: mpsc::Receiver<JobResult>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            serve_until(
                listener,
                "test",
                move || {
                    loaded.recv().map_err(|e| e.to_string())??;
                    Ok(move || jobs.recv().unwrap_or_else(|e| Err(e.to_string())))
                },
                async move {
                    let _ = stopped.await;
                },
            )
        });
        Self {
            base,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn call(method: &str, url: &str) -> (u16, String) {
    let agent = agent();
    let response = match method {
        "GET" => agent.get(url).call(),
        _ => agent.post(url).send_empty(),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn wait_healthy(base: &str) {
    let start = Instant::now();
    while call("GET", &format!("{base}/health")).0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "never healthy");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_invoke_failure_and_conflict() {
    let (load, loaded) = mpsc::channel();
    let (job, jobs) = mpsc::channel();
    let server = Server::start(loaded, jobs);
    let base = server.base.clone();

    // Loading: not healthy, and no job is taken.
    assert_eq!(call("GET", &format!("{base}/health")).0, 503);
    assert_eq!(call("POST", &format!("{base}/invoke")).0, 503);
    load.send(Ok(())).unwrap();
    wait_healthy(&base);

    job.send(Ok(())).unwrap();
    assert_eq!(
        call("POST", &format!("{base}/invoke")),
        (201, "done\n".into())
    );

    job.send(Err("/input/images/ct/x.mha: invalid header".into()))
        .unwrap();
    let (status, body) = call("POST", &format!("{base}/invoke"));
    assert_eq!(status, 500);
    assert_eq!(body.trim(), "/input/images/ct/x.mha: invalid header");
    assert_eq!(call("GET", &format!("{base}/health")).0, 200);

    // A job that waits for its outcome; a second call meanwhile is refused and does not disturb it.
    let url = format!("{base}/invoke");
    let first = thread::spawn(move || call("POST", &url));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(call("POST", &format!("{base}/invoke")).0, 409);
    assert_eq!(call("GET", &format!("{base}/health")).0, 200);
    job.send(Ok(())).unwrap();
    assert_eq!(first.join().unwrap().0, 201);

    // Free again after the conflict; wrong methods and paths are not redirects.
    job.send(Ok(())).unwrap();
    assert_eq!(call("POST", &format!("{base}/invoke")).0, 201);
    assert_eq!(call("GET", &format!("{base}/invoke")).0, 405);
    assert_eq!(call("GET", &format!("{base}/")).0, 404);

    server.stop().unwrap();
}

#[test]
fn a_panicking_job_is_a_500_and_the_server_stays_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = thread::spawn(move || {
        let mut calls = 0;
        serve_until(
            listener,
            "test",
            move || {
                Ok(move || {
                    calls += 1;
                    if calls == 1 {
                        panic!("boom");
                    }
                    Ok(())
                })
            },
            async move {
                let _ = stopped.await;
            },
        )
    });
    wait_healthy(&base);
    let (status, body) = call("POST", &format!("{base}/invoke"));
    assert_eq!(status, 500);
    assert!(body.contains("boom"), "{body}");
    assert_eq!(call("POST", &format!("{base}/invoke")).0, 201);
    stop.send(()).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn a_failing_setup_stops_the_server_with_its_reason() {
    let (load, loaded) = mpsc::channel();
    let (_job, jobs) = mpsc::channel();
    let server = Server::start(loaded, jobs);
    load.send(Err("weights/x: hash mismatch".into())).unwrap();
    let result = server.thread.unwrap().join().unwrap();
    match result {
        Err(ServeError::Setup(reason)) => assert_eq!(reason, "weights/x: hash mismatch"),
        other => panic!("expected a set-up error, got {other:?}"),
    }
}

#[test]
fn shutdown_while_loading_returns_ok() {
    let (_load, loaded) = mpsc::channel();
    let (_job, jobs) = mpsc::channel();
    let server = Server::start(loaded, jobs);
    assert_eq!(call("GET", &format!("{}/health", server.base)).0, 503);
    server.stop().unwrap();
}
