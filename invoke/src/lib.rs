//! grand-challenge.org's invoke API, the way the platform's current templates run a container.
//!
//! The image carries `LABEL org.grand-challenge.api-method="invoke"`; the platform starts it as an
//! HTTP server on port 4743, polls `GET /health` until it answers 200 (a redirect is a failure),
//! then for each job provisions a fresh `/input` and an empty `/output` and calls `POST /invoke`,
//! which must answer exactly 201 on success. Jobs come one at a time; the model is loaded once.
//!
//! [`serve`] implements that contract around two closures: `setup` (load the model, warm the
//! device) and the job it returns (read `/input`, write `/output`). Both run on one worker thread
//! that owns the model, so the model needs neither `Send` nor `Sync`:
//! - `GET /health`: 503 while `setup` runs, 200 once it returned; `setup` failing stops the server
//!   with its reason.
//! - `POST /invoke`: 201 when the job succeeded; 500 with the job's one-line reason as the body
//!   (also printed as the last stderr line, which the platform shows); 409 while another job runs;
//!   503 before the model is loaded. A panicking job is a 500 and the server stays up.
//! - SIGTERM or SIGINT: stops accepting calls, lets a running job finish, returns `Ok`.

use std::future::Future;
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::oneshot;

/// The port the platform calls.
pub const DEFAULT_PORT: u16 = 4743;

/// The outcome of one job: `Err` holds a one-line reason for the user.
pub type JobResult = Result<(), String>;

/// Why the server stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause (in the message, not `source()`: `{:#}` would print it twice).
        error: std::io::Error,
    },
    /// The async runtime or the listener failed.
    #[error("the server failed: {0}")]
    Io(std::io::Error),
    /// `setup` failed: its own one-line reason.
    #[error("{0}")]
    Setup(String),
}

/// Where a server listens: the `--host` and `--port` options of a `serve` command.
#[derive(Debug, Clone, clap::Args)]
pub struct Listen {
    /// Address to listen on (the platform connects from another container).
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (the platform calls 4743).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

impl Listen {
    /// Binds the address.
    pub fn bind(&self) -> Result<TcpListener, ServeError> {
        bind(&self.host, self.port)
    }
}

/// Binds `host:port` (a host name, an IPv4 or an IPv6 address).
pub fn bind(host: &str, port: u16) -> Result<TcpListener, ServeError> {
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    TcpListener::bind(&addr).map_err(|error| ServeError::Bind { addr, error })
}

/// Serves the invoke API on `listener` until SIGTERM or SIGINT. `name` prefixes the log lines.
pub fn serve<S, H>(listener: TcpListener, name: &str, setup: S) -> Result<(), ServeError>
where
    S: FnOnce() -> Result<H, String> + Send + 'static,
    H: FnMut() -> JobResult + 'static,
{
    serve_until(listener, name, setup, termination())
}

/// Serves the invoke API on `listener` until `shutdown` completes (see the module documentation).
pub fn serve_until<S, H, F>(
    listener: TcpListener,
    name: &str,
    setup: S,
    shutdown: F,
) -> Result<(), ServeError>
where
    S: FnOnce() -> Result<H, String> + Send + 'static,
    H: FnMut() -> JobResult + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().map_err(ServeError::Io)?;
    let (jobs, job_queue) = mpsc::channel::<Job>();
    let shared = Arc::new(Shared {
        name: name.to_string(),
        ready: AtomicBool::new(false),
        busy: AtomicBool::new(false),
        jobs,
    });
    let (started, startup) = oneshot::channel::<JobResult>();
    let worker_shared = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("invoke-worker".into())
        .spawn(move || worker(setup, &worker_shared, started, job_queue))
        .map_err(ServeError::Io)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Io)?;
    eprintln!("{name}: listening on {addr}; loading the model");
    runtime.block_on(async move {
        listener.set_nonblocking(true).map_err(ServeError::Io)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ServeError::Io)?;
        let app = Router::new()
            .route("/health", get(health))
            .route("/invoke", post(invoke))
            .with_state(shared);
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
        tokio::select! {
            served = server => served.map_err(ServeError::Io),
            Ok(Err(reason)) = startup => Err(ServeError::Setup(reason)),
        }
    })
}

/// Completes on SIGTERM (how the platform and Docker stop a container) or SIGINT (Ctrl-C).
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A queued job: where its outcome goes.
type Job = oneshot::Sender<JobResult>;

/// What the HTTP handlers share.
struct Shared {
    name: String,
    /// `setup` has returned successfully.
    ready: AtomicBool,
    /// A job is queued or running.
    busy: AtomicBool,
    /// The worker's queue.
    jobs: mpsc::Sender<Job>,
}

/// The worker thread: runs `setup`, then each job in turn, catching panics so one bad job does not
/// take the server down.
fn worker<S, H>(
    setup: S,
    shared: &Shared,
    started: oneshot::Sender<JobResult>,
    jobs: mpsc::Receiver<Job>,
) where
    S: FnOnce() -> Result<H, String>,
    H: FnMut() -> JobResult,
{
    let start = Instant::now();
    let mut handler = match catch_unwind(AssertUnwindSafe(setup)) {
        Ok(Ok(handler)) => handler,
        Ok(Err(reason)) => {
            let _ = started.send(Err(reason));
            return;
        }
        Err(panic) => {
            let _ = started.send(Err(format!("start-up failed: {}", panic_message(&*panic))));
            return;
        }
    };
    shared.ready.store(true, Ordering::Release);
    eprintln!(
        "{}: ready in {:.1} s (GET /health answers 200)",
        shared.name,
        start.elapsed().as_secs_f64()
    );
    let _ = started.send(Ok(()));
    for reply in jobs {
        let outcome = catch_unwind(AssertUnwindSafe(&mut handler))
            .unwrap_or_else(|panic| Err(format!("internal error: {}", panic_message(&*panic))));
        let _ = reply.send(outcome);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

async fn health(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading the model\n")
    }
}

async fn invoke(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    if !shared.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading; wait for GET /health to answer 200\n".into(),
        );
    }
    if shared.busy.swap(true, Ordering::AcqRel) {
        return (
            StatusCode::CONFLICT,
            "a job is already running; the platform calls /invoke one job at a time\n".into(),
        );
    }
    let start = Instant::now();
    let (reply, outcome) = oneshot::channel();
    if shared.jobs.send(reply).is_err() {
        shared.busy.store(false, Ordering::Release);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the worker has stopped\n".into(),
        );
    }
    // Free the server for the next job when this one ends, even if the caller hung up meanwhile
    // (which drops this handler, but not a spawned task).
    let releaser = Arc::clone(&shared);
    let outcome = tokio::spawn(async move {
        let outcome = outcome.await;
        releaser.busy.store(false, Ordering::Release);
        outcome
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    match outcome {
        Ok(Ok(Ok(()))) => {
            eprintln!("{}: invoke done in {seconds:.2} s (201)", shared.name);
            (StatusCode::CREATED, "done\n".into())
        }
        Ok(Ok(Err(reason))) => {
            eprintln!("{}: invoke failed in {seconds:.2} s (500)", shared.name);
            // Last: the platform shows the last stderr line.
            eprintln!("{reason}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{reason}\n"))
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the job was lost (the worker stopped)\n".into(),
        ),
    }
}
