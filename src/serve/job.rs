//! Sweeps started by the daemon (`POST /api/v1/bench`, at start-up, on a schedule): one at a
//! time, each in a child process (`vramprobe bench`), so that the CPU bench's counting
//! allocator sees only the sweep's allocations, not the daemon's, and a crash in a sweep
//! cannot take the daemon down. Progress is read from the run's points.jsonl; the child
//! stores every point as it completes, so stopping it (SIGINT: it finishes the point it is
//! measuring) loses nothing.

use super::State;
use crate::estimate::candle_train::LoraSetup;
use crate::plan::{
    BenchPlan, Field, Grid, Mode, ModelRef, Need, PlanError, WeightsChoice, DEFAULT_LORA_TARGETS,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;

/// What to sweep: every field optional, the daemon's `--bench-*` flags fill the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchRequest {
    /// A model directory or config.json on the daemon's host, or a Hub id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// `cpu` or `cuda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_steps: Option<u64>,
    /// `inference` or `train` (two training steps per point, `bench --mode train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Training: LoRA rank (absent: a full fine-tune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_rank: Option<u64>,
    /// Training with LoRA: the projections (q, k, v, o, gate, up, down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_targets: Option<Vec<String>>,
    /// `candle-eager` (the default) or `candle-chunked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// candle-chunked: tokens per prefill forward over the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<u64>,
    /// candle-chunked: KV cache positions per sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_capacity: Option<u64>,
    /// candle-chunked: most elements of one attention score block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_block: Option<u64>,
    /// candle-quantized: the GGML type of the synthetic weights (q4_0, q4k, q8_0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<String>,
}

impl BenchRequest {
    /// `self` where given, else `defaults`.
    pub fn or(&self, defaults: &BenchRequest) -> BenchRequest {
        BenchRequest {
            model: self.model.clone().or_else(|| defaults.model.clone()),
            dtype: self.dtype.clone().or_else(|| defaults.dtype.clone()),
            device: self.device.clone().or_else(|| defaults.device.clone()),
            batch: self.batch.clone().or_else(|| defaults.batch.clone()),
            context: self.context.clone().or_else(|| defaults.context.clone()),
            decode_steps: self.decode_steps.or(defaults.decode_steps),
            mode: self.mode.clone().or_else(|| defaults.mode.clone()),
            lora_rank: self.lora_rank.or(defaults.lora_rank),
            lora_targets: self
                .lora_targets
                .clone()
                .or_else(|| defaults.lora_targets.clone()),
            engine: self.engine.clone().or_else(|| defaults.engine.clone()),
            prefill_chunk: self.prefill_chunk.or(defaults.prefill_chunk),
            kv_capacity: self.kv_capacity.or(defaults.kv_capacity),
            attention_block: self.attention_block.or(defaults.attention_block),
            quant: self.quant.clone().or_else(|| defaults.quant.clone()),
        }
    }

    /// The plan this request asks for, with the bench's defaults where a field is absent,
    /// checked as every plan is ([`BenchPlan::check`]).
    ///
    /// # Errors
    /// [`PlanError`]; [`PlanError::api_message`] names the request's field.
    pub fn plan(&self) -> Result<BenchPlan, PlanError> {
        fn parse<T: std::str::FromStr<Err = String>>(
            field: Field,
            v: &str,
        ) -> Result<T, PlanError> {
            v.parse().map_err(|reason| PlanError::Invalid {
                field,
                value: format!("{v:?}"),
                reason,
            })
        }
        let mode: Mode = match &self.mode {
            Some(m) => parse(Field::Mode, m)?,
            None => Mode::default(),
        };
        let defaults = BenchPlan {
            mode,
            grid: Grid::default_for(mode),
            ..BenchPlan::default()
        };
        let lora = match (self.lora_rank, &self.lora_targets) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(PlanError::Needs {
                    field: Field::LoraTargets,
                    needs: Need::LoraRank,
                })
            }
            (Some(rank), targets) => Some(LoraSetup {
                rank,
                targets: match targets {
                    None => DEFAULT_LORA_TARGETS.to_vec(),
                    Some(t) => t
                        .iter()
                        .map(|x| parse(Field::LoraTargets, x))
                        .collect::<Result<_, _>>()?,
                },
            }),
        };
        let device = match &self.device {
            Some(d) => parse(Field::Device, d)?,
            None => defaults.device,
        };
        let engine = match &self.engine {
            Some(e) => parse(Field::Engine, e)?,
            None => defaults.engine,
        };
        let plan = BenchPlan {
            model: self.model.clone(),
            dtype: match &self.dtype {
                Some(d) => parse(Field::Dtype, d)?,
                None => defaults.dtype,
            },
            device,
            lora,
            grid: Grid {
                // candle's quantized Llama runs one sequence (BenchPlan::check says why).
                batches: self.batch.clone().unwrap_or(
                    if engine == crate::estimate::EngineProfile::CandleQuantized {
                        vec![1]
                    } else {
                        defaults.grid.batches
                    },
                ),
                contexts: self.context.clone().unwrap_or(defaults.grid.contexts),
                decode_steps: self.decode_steps.unwrap_or(defaults.grid.decode_steps),
            },
            weights: WeightsChoice::default_for(&ModelRef::of(self.model.as_deref())),
            engine,
            quant: match &self.quant {
                Some(q) => Some(parse(Field::Quant, q)?),
                None => None,
            },
            over_memory: crate::plan::OverMemory::default_for(device),
            prefill_chunk: self.prefill_chunk,
            kv_capacity: self.kv_capacity,
            attention_block: self.attention_block,
            ..defaults
        };
        plan.check()?;
        Ok(plan)
    }
}

/// What the `bench_request` fuzzer runs on one input: the body parsed as the daemon parses
/// it, the plan checked, its command line built.
pub fn fuzz_request(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<BenchRequest>(data) {
        if let Ok(plan) = req.or(&BenchRequest::default()).plan() {
            let _ = plan.records_planned();
            let _ = plan.to_args();
            let _ = plan.knobs();
        }
    }
}

/// The current or last sweep.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobState {
    pub running: bool,
    /// The run directory's name under the runs directory.
    pub id: Option<String>,
    pub request: Option<BenchRequest>,
    pub planned: u64,
    pub stored: u64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `completed`, `failed` or `interrupted`.
    pub outcome: Option<String>,
    /// The end of the sweep's stderr when it failed.
    pub message: Option<String>,
    #[serde(skip)]
    pub pid: Option<u32>,
    #[serde(skip)]
    pub started_total: u64,
    #[serde(skip)]
    pub failed_total: u64,
    #[serde(skip)]
    pub last_success: Option<SystemTime>,
}

/// Why a sweep did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a sweep is running: {0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("cannot start the sweep: {0}")]
    Spawn(String),
}

fn now_stamp() -> String {
    crate::store::utc_stamp(SystemTime::now())
}

/// Start a sweep unless one runs.
///
/// # Errors
/// [`StartError`].
pub fn start(state: &Arc<State>, req: &BenchRequest) -> Result<JobState, StartError> {
    let full = req.or(&state.opts.bench_defaults);
    let plan = full
        .plan()
        .map_err(|e| StartError::Invalid(e.api_message()))?;
    // The memory guard, here for local models (a Hub model's config is fetched by the
    // sweep itself, which applies the guard too and fails before measuring).
    if !matches!(ModelRef::of(plan.model.as_deref()), ModelRef::Hub(_)) {
        // The reason goes to the log, not to the client: it may quote the file it read.
        let sweep = crate::bench::Sweep::resolve(plan.clone(), None, true).map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "a sweep's model cannot be read");
            StartError::Invalid(
                "model: cannot be read as a model directory or config.json (the daemon's log \
                 says why)"
                    .into(),
            )
        })?;
        crate::bench::check_memory(&sweep).map_err(|e| StartError::Invalid(e.to_string()))?;
    }
    let mut args = plan.to_args();
    args.insert(1, "--quiet".into());
    let mut job = state
        .job
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.shutting_down() {
        return Err(StartError::ShuttingDown);
    }
    if job.running {
        return Err(StartError::Busy(job.id.clone().unwrap_or_default()));
    }
    // A name that sorts by time and never collides with an earlier run.
    let mut id = format!("{}-serve", now_stamp());
    let mut n = 1;
    while state.opts.runs_dir.join(&id).exists() {
        n += 1;
        id = format!("{}-serve-{n}", now_stamp());
    }
    let dir = state.opts.runs_dir.join(&id);
    args.push("--out".into());
    args.push(dir.display().to_string());
    let exe = std::env::current_exe().map_err(|e| StartError::Spawn(e.to_string()))?;
    let child = tokio::process::Command::new(exe)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env_remove("VRAMPROBE_LISTEN")
        .env_remove("VRAMPROBE_TOKEN")
        .spawn()
        .map_err(|e| StartError::Spawn(e.to_string()))?;
    *job = JobState {
        running: true,
        id: Some(id.clone()),
        request: Some(full.clone()),
        planned: plan.records_planned(),
        stored: 0,
        started_at: Some(now_stamp()),
        finished_at: None,
        outcome: None,
        message: None,
        pid: child.id(),
        started_total: job.started_total + 1,
        failed_total: job.failed_total,
        last_success: job.last_success,
    };
    tracing::info!(run = %id, "sweep started");
    let snapshot = job.clone();
    drop(job);
    tokio::spawn(watch(Arc::clone(state), child, id, dir));
    Ok(snapshot)
}

/// Follow a running sweep: its progress from points.jsonl every 500 ms, the end of its
/// stderr, and at its exit the outcome (completed, interrupted or failed) in the job state.
async fn watch(
    state: Arc<State>,
    mut child: tokio::process::Child,
    id: String,
    dir: std::path::PathBuf,
) {
    let stderr = child.stderr.take();
    // The last 8 KiB of the sweep's stderr, for the failure message.
    let tail = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 8192 {
                    buf.drain(..buf.len() - 8192);
                }
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let points = dir.join("points.jsonl");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = tick.tick() => {
                let stored = count_lines(&points).await;
                state.job.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stored = stored;
            }
        }
    };
    let stored = count_lines(&points).await;
    let message = tail.await.unwrap_or_default();
    let code = status
        .as_ref()
        .ok()
        .and_then(std::process::ExitStatus::code);
    let outcome = match code {
        Some(0) => "completed",
        Some(c) if c == i32::from(crate::bench::EXIT_INTERRUPTED) => "interrupted",
        _ => "failed",
    };
    {
        let mut j = state
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        j.running = false;
        j.pid = None;
        j.stored = stored;
        j.finished_at = Some(now_stamp());
        j.outcome = Some(outcome.into());
        match outcome {
            "completed" => j.last_success = Some(SystemTime::now()),
            "failed" => {
                j.failed_total += 1;
                j.message = Some(message.trim().to_string());
            }
            _ => {}
        }
    }
    tracing::info!(run = %id, outcome, stored, "sweep ended");
    state.refresh_runs().await;
    state.job_done.notify_waiters();
}

async fn count_lines(path: &std::path::Path) -> u64 {
    tokio::fs::read(path)
        .await
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

/// Ask a running sweep to stop after its current point (SIGINT), wait up to `grace`, then
/// kill it (its completed points are already stored).
/// After a restart: a sweep a previous daemon started may still be writing its run (the
/// daemon was killed, its child was not). Find it by the run directory's lock and follow it
/// as this daemon's own sweep: shown in /api/v1/bench, counted in the metrics, a new sweep
/// refused until it ends, stopped at shutdown. Returns the adopted run's name.
pub async fn adopt(state: &Arc<State>) -> Option<String> {
    let dir = state.opts.runs_dir.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for e in std::fs::read_dir(&dir).ok()?.flatten().take(100_000) {
            let path = e.path();
            if let Some(pid) = crate::store::lock_holder(&path) {
                held.push((path, pid));
            }
        }
        held.sort();
        held.pop()
    });
    let (path, pid) = tokio::time::timeout(super::REFRESH_WAIT, found)
        .await
        .ok()?
        .ok()??;
    let id = path.file_name()?.to_str()?.to_string();
    let info = crate::store::RunDir::read_info(&path).ok();
    let planned = info
        .as_ref()
        .and_then(|i| i.plan())
        .and_then(Result::ok)
        .map_or(0, |p| p.records_planned());
    let stored = count_lines(&path.join("points.jsonl")).await;
    {
        let mut j = state
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *j = JobState {
            running: true,
            id: Some(id.clone()),
            request: None,
            planned,
            stored,
            started_at: info.map(|i| i.started_at),
            finished_at: None,
            outcome: None,
            message: Some(format!(
                "adopted after a daemon restart: process {pid} still writes this run"
            )),
            pid: (pid > 0).then_some(pid),
            started_total: j.started_total,
            failed_total: j.failed_total,
            last_success: j.last_success,
        };
    }
    tracing::warn!(run = %id, pid, "a sweep of a previous daemon is still running: adopted");
    tokio::spawn(watch_adopted(Arc::clone(state), id.clone(), path));
    Some(id)
}

/// Follow an adopted sweep until its process lets go of the run's lock: it is not our child,
/// so its exit code is unknown; the outcome says whether every planned record was stored.
async fn watch_adopted(state: Arc<State>, id: String, dir: std::path::PathBuf) {
    let points = dir.join("points.jsonl");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let stored = count_lines(&points).await;
        state
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stored = stored;
        let d = dir.clone();
        let held = tokio::task::spawn_blocking(move || crate::store::lock_holder(&d).is_some())
            .await
            .unwrap_or(false);
        if !held {
            break;
        }
    }
    let stored = count_lines(&points).await;
    {
        let mut j = state
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let complete = j.planned > 0 && stored >= j.planned;
        j.running = false;
        j.pid = None;
        j.stored = stored;
        j.finished_at = Some(now_stamp());
        j.outcome = Some(if complete { "completed" } else { "interrupted" }.into());
        if complete {
            j.last_success = Some(SystemTime::now());
        }
    }
    tracing::info!(run = %id, stored, "adopted sweep ended");
    state.refresh_runs().await;
    state.job_done.notify_waiters();
}

pub async fn stop(state: &Arc<State>, grace: Duration) {
    let pid = {
        let j = state
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !j.running {
            return;
        }
        j.pid
    };
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    tracing::info!("asking the sweep to stop after its current point");
    let done = state.job_done.notified();
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    if tokio::time::timeout(grace, done).await.is_err() {
        tracing::warn!(?grace, "the sweep did not stop in time: killing it");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), state.job_done.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request becomes the same plan the command line would make, checked by the same
    /// rules; an error names the request's field.
    #[test]
    fn requests_are_checked_and_become_plans() {
        let r = BenchRequest {
            batch: Some(vec![1, 2]),
            context: Some(vec![64]),
            decode_steps: Some(2),
            ..Default::default()
        };
        let p = r.plan().expect("valid");
        assert_eq!(p.grid.batches, [1, 2]);
        assert_eq!(p.grid.contexts, [64]);
        assert_eq!(p.grid.decode_steps, 2);
        assert_eq!(p.records_planned(), 4);
        assert_eq!(
            BenchRequest::default().plan().expect("valid"),
            BenchPlan::default()
        );
        for (bad, field) in [
            (
                BenchRequest {
                    batch: Some(vec![]),
                    ..Default::default()
                },
                "batch",
            ),
            (
                BenchRequest {
                    context: Some(vec![0]),
                    ..Default::default()
                },
                "context",
            ),
            (
                BenchRequest {
                    model: Some("--weights=/etc".into()),
                    ..Default::default()
                },
                "model",
            ),
            (
                BenchRequest {
                    device: Some("tpu".into()),
                    ..Default::default()
                },
                "device",
            ),
            (
                BenchRequest {
                    dtype: Some("int3".into()),
                    ..Default::default()
                },
                "dtype",
            ),
            (
                BenchRequest {
                    engine: Some("transformers-sdpa".into()),
                    ..Default::default()
                },
                "engine",
            ),
            (
                BenchRequest {
                    engine: Some("vllm".into()),
                    ..Default::default()
                },
                "engine",
            ),
            (
                BenchRequest {
                    prefill_chunk: Some(512),
                    ..Default::default()
                },
                "prefill_chunk",
            ),
            (
                BenchRequest {
                    engine: Some("candle-chunked".into()),
                    attention_block: Some(1),
                    ..Default::default()
                },
                "attention_block",
            ),
            (
                BenchRequest {
                    engine: Some("candle-chunked".into()),
                    kv_capacity: Some(100),
                    ..Default::default()
                },
                "kv_capacity",
            ),
            (
                BenchRequest {
                    quant: Some("q4k".into()),
                    ..Default::default()
                },
                "quant",
            ),
            (
                BenchRequest {
                    engine: Some("candle-quantized".into()),
                    quant: Some("q5".into()),
                    ..Default::default()
                },
                "quant",
            ),
            (
                BenchRequest {
                    engine: Some("candle-quantized".into()),
                    batch: Some(vec![1, 2]),
                    ..Default::default()
                },
                "batch",
            ),
        ] {
            let e = bad.plan().expect_err("invalid").api_message();
            assert!(e.starts_with(&format!("{field}: ")), "{e}");
        }
        // The quantized engine: one sequence unless told, its GGML type carried to the
        // command line the daemon runs.
        let q = BenchRequest {
            engine: Some("candle-quantized".into()),
            quant: Some("q8_0".into()),
            ..Default::default()
        }
        .plan()
        .expect("valid");
        assert_eq!(q.grid.batches, [1]);
        assert!(
            q.to_args().contains(&"--quant=q8_0".to_string()),
            "{:?}",
            q.to_args()
        );
        let d = BenchRequest {
            dtype: Some("bf16".into()),
            batch: Some(vec![4]),
            ..Default::default()
        };
        let c = BenchRequest {
            engine: Some("candle-chunked".into()),
            prefill_chunk: Some(64),
            ..r.clone()
        };
        let p = c.plan().expect("valid");
        assert_eq!(p.engine, crate::estimate::EngineProfile::CandleChunked);
        assert_eq!(p.knobs().prefill_chunk, 64);
        let merged = r.or(&d);
        assert_eq!(merged.batch, Some(vec![1, 2]));
        assert_eq!(merged.dtype.as_deref(), Some("bf16"));

        let t = BenchRequest {
            mode: Some("train".into()),
            lora_rank: Some(8),
            lora_targets: Some(vec!["q".into(), "v".into()]),
            ..Default::default()
        };
        let p = t.plan().expect("valid");
        assert_eq!(p.mode, Mode::Train);
        assert_eq!(p.lora.as_ref().map(|l| l.rank), Some(8));
        assert_eq!(p.records_planned(), 2 * 3 * 4);
        for (bad, field) in [
            (
                BenchRequest {
                    mode: Some("finetune".into()),
                    ..Default::default()
                },
                "mode",
            ),
            (
                BenchRequest {
                    lora_rank: Some(8),
                    ..Default::default()
                },
                "lora_rank",
            ),
            (
                BenchRequest {
                    lora_targets: Some(vec!["--x".into()]),
                    lora_rank: Some(4),
                    ..t.clone()
                },
                "lora_targets",
            ),
            (
                BenchRequest {
                    lora_targets: Some(vec!["q".into()]),
                    ..Default::default()
                },
                "lora_targets",
            ),
        ] {
            let e = bad.plan().expect_err("invalid").api_message();
            assert!(e.starts_with(&format!("{field}: ")), "{e}");
        }
    }
}
