//! `vramprobe serve`: a daemon for Prometheus. It polls NVML in the background, watches the
//! runs directory, runs sweeps on request (one at a time, in a child process), and answers
//! `/metrics`, `/healthz`, `/`, `/api/v1/runs` and `/api/v1/bench`.

pub mod engines;
pub mod gpu;
mod http;
pub mod job;
pub mod metrics;
pub mod pods;
pub mod runs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// The daemon's fixed default port: outside the 9100-9999 range that Prometheus' exporter
/// list has fully allocated, and not 9090 (Prometheus), 9100 (node), 9400 (dcgm-exporter),
/// 9835 (nvidia_gpu_exporter).
pub const DEFAULT_PORT: u16 = 8947;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything `serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Bearer token for `POST /api/v1/bench` (required when listening beyond loopback).
    pub token: Option<Secret>,
    pub runs_dir: PathBuf,
    pub poll_interval: Duration,
    /// Export per-process GPU memory (PIDs churn: opt-in).
    pub per_process: bool,
    /// FAKE NVML from a JSON file (machines without a GPU; see [`gpu::FakeNvml`]).
    pub fake_nvml: Option<PathBuf>,
    /// Attribute GPU processes to containers and pods through `<proc_root>/<pid>/cgroup`
    /// (None: off).
    pub proc_root: Option<PathBuf>,
    /// The most container series exported.
    pub max_containers: usize,
    /// Serving engines' /metrics scraped beside the GPUs.
    pub engines: Vec<engines::Endpoint>,
    /// Model names as engines report them -> the config vramprobe predicts them from.
    pub engine_models: Vec<(String, PathBuf)>,
    pub bench_on_start: bool,
    pub bench_every: Option<Duration>,
    /// What a sweep measures where the request does not say.
    pub bench_defaults: job::BenchRequest,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a request may take in all.
    pub request_timeout: Duration,
    /// How long a running sweep gets to finish its point at shutdown before it is killed.
    pub shutdown_grace: Duration,
}

/// Why the daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad options (exit 2).
    #[error("{0}")]
    Options(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every handler and the collector share.
#[derive(Debug)]
pub struct State {
    pub opts: ServeOptions,
    pub started: SystemTime,
    pub gpu: Arc<RwLock<gpu::GpuState>>,
    pub runs: RwLock<runs::Runs>,
    /// The runs' series, encoded when the runs change.
    pub bench_text: RwLock<Arc<metrics::BenchText>>,
    pub job: Mutex<job::JobState>,
    pub job_done: tokio::sync::Notify,
    /// The last scrape of each `--engine-metrics` endpoint.
    pub engines: RwLock<Vec<engines::EngineReading>>,
    /// What vramprobe predicts for the models named by `--engine-model`.
    pub predictions: std::collections::BTreeMap<String, engines::Prediction>,
    shutting_down: AtomicBool,
    /// A refresh of the runs directory is reading the disk (at most one at a time: one
    /// stuck on a hung mount must not pile up threads behind it).
    refreshing: Arc<AtomicBool>,
}

impl State {
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Re-read the runs directory (off the async threads: it is file I/O), waiting at most
    /// [`REFRESH_WAIT`] for it: a read that blocks (a FIFO, a hung network mount) holds one
    /// blocking thread and nothing else; start-up, sweeps and shutdown go on without it, and
    /// no second refresh starts until it returns.
    pub async fn refresh_runs(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return; // one is reading already
        }
        let me = Arc::clone(self);
        let flag = Arc::clone(&self.refreshing);
        let task = tokio::task::spawn_blocking(move || {
            let _done = ClearOnDrop(flag);
            let dir = me.opts.runs_dir.clone();
            // Most refreshes find nothing new: decide that from file sizes and times alone.
            if !me
                .runs
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .stale(&dir)
            {
                return;
            }
            // Read into a copy so scrapes never wait on the disk.
            let mut copy = me
                .runs
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if copy.refresh(&dir) {
                let text = Arc::new(metrics::BenchText::of(&copy));
                *me.runs
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = copy;
                *me.bench_text
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = text;
            }
        });
        if tokio::time::timeout(REFRESH_WAIT, task).await.is_err() {
            tracing::warn!(
                dir = %self.opts.runs_dir.display(),
                "reading the runs directory takes longer than {REFRESH_WAIT:?}: serving what \
                 was read before"
            );
        }
    }
}

/// How long a caller waits for a refresh of the runs directory.
pub const REFRESH_WAIT: Duration = Duration::from_secs(5);

/// Clears the flag when dropped (when the refresh returns or panics).
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The shortest `--bench-every` accepted.
pub const MIN_BENCH_EVERY: Duration = Duration::from_secs(1);

/// Check the options that make the daemon unsafe or unable to start.
///
/// # Errors
/// [`ServeError::Options`].
pub fn check(opts: &ServeOptions) -> Result<(), ServeError> {
    if !opts.listen.ip().is_loopback() && opts.token.is_none() {
        return Err(ServeError::Options(format!(
            "--listen {}: beyond loopback, POST /api/v1/bench needs a bearer token: set \
             --token or VRAMPROBE_TOKEN (or listen on 127.0.0.1)",
            opts.listen
        )));
    }
    if opts.token.as_ref().is_some_and(|t| t.0.len() < 16) {
        return Err(ServeError::Options(
            "--token: use at least 16 characters (white space around it is not part of it)".into(),
        ));
    }
    if opts.bench_every.is_some_and(|e| e < MIN_BENCH_EVERY) {
        return Err(ServeError::Options(format!(
            "--bench-every: at least {} (0 would spin the scheduler)",
            humantime::format_duration(MIN_BENCH_EVERY)
        )));
    }
    if opts.poll_interval < Duration::from_millis(100) {
        return Err(ServeError::Options(
            "--poll-interval: at least 100ms (NVML calls take the driver lock)".into(),
        ));
    }
    opts.bench_defaults.plan().map_err(|e| {
        ServeError::Options(e.render(
            |f| format!("--bench-{}", f.key().replace('_', "-")),
            crate::plan::Need::cli,
        ))
    })?;
    Ok(())
}

/// Run the daemon until SIGINT or SIGTERM. `on_listening` is called with the bound address
/// (the port is chosen by the system when given as 0).
///
/// # Errors
/// [`ServeError`].
pub fn run(opts: ServeOptions, on_listening: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    check(&opts)?;
    std::fs::create_dir_all(&opts.runs_dir).map_err(|source| ServeError::Io {
        what: format!(
            "{}: cannot create the runs directory",
            opts.runs_dir.display()
        ),
        source,
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServeError::Io {
            what: "tokio runtime".into(),
            source,
        })?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ServeError::Io {
                what: format!("--listen {}", opts.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Io {
            what: "local address".into(),
            source,
        })?;
        let predictions = load_predictions(&opts.engine_models)?;
        let state = Arc::new(State {
            predictions,
            engines: RwLock::new(
                opts.engines
                    .iter()
                    .map(|e| engines::EngineReading {
                        url: e.url.clone(),
                        ..engines::EngineReading::default()
                    })
                    .collect(),
            ),
            opts: opts.clone(),
            started: SystemTime::now(),
            gpu: Arc::new(RwLock::new(gpu::GpuState::default())),
            runs: RwLock::new(runs::Runs::default()),
            bench_text: RwLock::new(Arc::default()),
            job: Mutex::new(job::JobState::default()),
            job_done: tokio::sync::Notify::new(),
            shutting_down: AtomicBool::new(false),
            refreshing: Arc::new(AtomicBool::new(false)),
        });
        state.refresh_runs().await;
        job::adopt(&state).await;
        // NVML on its own thread: its calls block.
        let (stop_poll, stop_rx) = std::sync::mpsc::channel::<()>();
        let source: Box<dyn gpu::GpuSource> = match &opts.fake_nvml {
            Some(path) => {
                tracing::warn!(path = %path.display(), "using FAKE NVML from a file");
                Box::new(gpu::FakeNvml { path: path.clone() })
            }
            None => Box::new(gpu::Nvml::default()),
        };
        let poller = {
            let g = Arc::clone(&state.gpu);
            let (interval, per_process) = (opts.poll_interval, opts.per_process);
            let attributor = opts.proc_root.clone().map(|root| gpu::Attributor {
                resolver: pods::Resolver::new(root),
                cap: opts.max_containers,
            });
            std::thread::Builder::new()
                .name("nvml-poll".into())
                .spawn(move || gpu::poll(source, interval, per_process, attributor, g, stop_rx))
                .map_err(|source| ServeError::Io {
                    what: "NVML thread".into(),
                    source,
                })?
        };
        // The runs directory, re-read at the poll interval (only changed runs are parsed).
        let refresher = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut t = tokio::time::interval(state.opts.poll_interval);
                loop {
                    t.tick().await;
                    state.refresh_runs().await;
                }
            })
        };
        let scheduler = {
            let state = Arc::clone(&state);
            tokio::spawn(async move { schedule(state).await })
        };
        let engine_scraper = {
            let state = Arc::clone(&state);
            tokio::spawn(async move { scrape_engines(state).await })
        };
        on_listening(addr);
        tracing::info!(%addr, "listening");
        let shutdown = shutdown_signal();
        http::serve(listener, Arc::clone(&state), shutdown).await;
        // Stop accepting sweeps, let the running one finish its point, keep what it stored.
        state.shutting_down.store(true, Ordering::SeqCst);
        scheduler.abort();
        job::stop(&state, opts.shutdown_grace).await;
        refresher.abort();
        engine_scraper.abort();
        let _ = stop_poll.send(());
        let _ = tokio::task::spawn_blocking(move || poller.join()).await;
        tracing::info!("stopped");
        Ok(())
    });
    // A blocking thread still stuck in the runs directory (a hung mount) must not hold the
    // process after everything else stopped.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The configs of `--engine-model NAME=CONFIG`, read once at start.
fn load_predictions(
    models: &[(String, PathBuf)],
) -> Result<std::collections::BTreeMap<String, engines::Prediction>, ServeError> {
    models
        .iter()
        .map(|(name, path)| {
            let (spec, _) = crate::model::ModelRef::of(Some(&path.display().to_string()))
                .load(None, false, true)
                .map_err(|e| {
                    ServeError::Options(format!("--engine-model {name}={}: {e}", path.display()))
                })?;
            Ok((name.clone(), engines::Prediction::of(&spec)))
        })
        .collect()
}

/// Scrape every `--engine-metrics` endpoint at the poll interval, each with a timeout of
/// the interval (at least 1 s, at most 10 s), all at once.
async fn scrape_engines(state: Arc<State>) {
    if state.opts.engines.is_empty() {
        return;
    }
    let timeout = state
        .opts
        .poll_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut t = tokio::time::interval(state.opts.poll_interval);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        let last = state
            .engines
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let handles: Vec<_> = state
            .opts
            .engines
            .iter()
            .zip(last.iter())
            .map(|(e, l)| {
                let (e, l) = (e.clone(), l.clone());
                tokio::spawn(async move { engines::scrape(&e, timeout, &l).await })
            })
            .collect();
        let mut readings = Vec::with_capacity(handles.len());
        for (h, l) in handles.into_iter().zip(last) {
            readings.push(h.await.unwrap_or(l));
        }
        *state
            .engines
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = readings;
    }
}

/// Sweeps at start-up and every `--bench-every`.
async fn schedule(state: Arc<State>) {
    let req = job::BenchRequest::default();
    if state.opts.bench_on_start {
        if let Err(e) = job::start(&state, &req) {
            tracing::warn!(error = %e, "start-up sweep not started");
        }
    }
    let Some(every) = state.opts.bench_every else {
        return;
    };
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        t.tick().await;
        match job::start(&state, &req) {
            Ok(_) => {}
            Err(job::StartError::Busy(id)) => {
                tracing::info!(running = %id, "scheduled sweep skipped: one is running");
            }
            Err(e) => tracing::warn!(error = %e, "scheduled sweep not started"),
        }
    }
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers: stop the daemon with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
