//! Sweeps started by the daemon (`POST /api/v1/bench`, at start-up, on a schedule): one at a
//! time, each in a child process (`vramprobe bench`), so that the CPU bench's counting
//! allocator sees only the sweep's allocations, not the daemon's, and a crash in a sweep
//! cannot take the daemon down. Progress is read from the run's points.jsonl; the child
//! stores every point as it completes, so stopping it (SIGINT: it finishes the point it is
//! measuring) loses nothing.

use super::State;
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
}

const MAX_LIST: usize = 64;
const MAX_BATCH: u64 = 4096;
const MAX_CONTEXT: u64 = 1 << 20;
const MAX_DECODE_STEPS: u64 = 4096;

fn list(name: &str, v: &[u64], max: u64) -> Result<String, String> {
    if v.is_empty() || v.len() > MAX_LIST {
        return Err(format!("{name}: give 1 to {MAX_LIST} values"));
    }
    if let Some(bad) = v.iter().find(|&&x| x == 0 || x > max) {
        return Err(format!("{name}: {bad} is outside 1..={max}"));
    }
    Ok(v.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
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
        }
    }

    fn train(&self) -> bool {
        self.mode.as_deref() == Some("train")
    }

    /// Check every field and build the `vramprobe bench` arguments (the run directory
    /// comes last, from the caller).
    ///
    /// # Errors
    /// The field and why, for a 400 answer.
    pub fn args(&self) -> Result<Vec<String>, String> {
        let mut a = vec!["bench".to_string(), "--quiet".to_string()];
        if let Some(m) = &self.model {
            if m.is_empty() || m.len() > 512 || m.starts_with('-') || m.contains('\0') {
                return Err(format!("model: {m:?} is not a model path or Hub id"));
            }
            a.push(format!("--model={m}"));
        }
        if let Some(d) = &self.dtype {
            if !["f32", "bf16", "f16"].contains(&d.as_str()) {
                return Err(format!("dtype: {d:?}: use f32, bf16 or f16"));
            }
            a.push(format!("--dtype={d}"));
        }
        if let Some(d) = &self.device {
            if !["cpu", "cuda"].contains(&d.as_str()) {
                return Err(format!("device: {d:?}: use cpu or cuda"));
            }
            a.push(format!("--device={d}"));
        }
        if let Some(b) = &self.batch {
            a.push(format!("--batch={}", list("batch", b, MAX_BATCH)?));
        }
        if let Some(c) = &self.context {
            a.push(format!("--context={}", list("context", c, MAX_CONTEXT)?));
        }
        if let Some(n) = self.decode_steps {
            if n == 0 || n > MAX_DECODE_STEPS {
                return Err(format!(
                    "decode_steps: {n} is outside 1..={MAX_DECODE_STEPS}"
                ));
            }
            a.push(format!("--decode-steps={n}"));
        }
        if let Some(m) = &self.mode {
            if !["inference", "train"].contains(&m.as_str()) {
                return Err(format!("mode: {m:?}: use inference or train"));
            }
            a.push(format!("--mode={m}"));
        }
        if let Some(r) = self.lora_rank {
            if !self.train() {
                return Err("lora_rank: needs \"mode\": \"train\"".into());
            }
            if r == 0 || r > 4096 {
                return Err(format!("lora_rank: {r} is outside 1..=4096"));
            }
            a.push(format!("--lora-rank={r}"));
        }
        if let Some(t) = &self.lora_targets {
            if self.lora_rank.is_none() {
                return Err("lora_targets: needs lora_rank".into());
            }
            let known = ["q", "k", "v", "o", "gate", "up", "down"];
            if t.is_empty() || t.len() > known.len() {
                return Err(format!(
                    "lora_targets: give 1 to {} of {known:?}",
                    known.len()
                ));
            }
            if let Some(bad) = t.iter().find(|x| !known.contains(&x.as_str())) {
                return Err(format!("lora_targets: {bad:?} is not one of {known:?}"));
            }
            a.push(format!("--lora-targets={}", t.join(",")));
        }
        Ok(a)
    }

    /// Records the sweep plans: batches x contexts x phases (2 for inference, 4 for
    /// training; the bench's own defaults where not given: 3 x 4, or 2 x 3 for training).
    pub fn planned(&self) -> u64 {
        let train = self.train();
        let b = self
            .batch
            .as_ref()
            .map_or(if train { 2 } else { 3 }, Vec::len) as u64;
        let c = self
            .context
            .as_ref()
            .map_or(if train { 3 } else { 4 }, Vec::len) as u64;
        b * c * if train { 4 } else { 2 }
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
    let mut args = full.args().map_err(StartError::Invalid)?;
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
    let mut child = tokio::process::Command::new(exe)
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
        planned: full.planned(),
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
    let state = Arc::clone(state);
    let stderr = child.stderr.take();
    tokio::spawn(async move {
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
            Some(130) => "interrupted",
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
    });
    Ok(snapshot)
}

async fn count_lines(path: &std::path::Path) -> u64 {
    tokio::fs::read(path)
        .await
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

/// Ask a running sweep to stop after its current point (SIGINT), wait up to `grace`, then
/// kill it (its completed points are already stored).
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

    #[test]
    fn requests_are_checked_and_become_arguments() {
        let r = BenchRequest {
            batch: Some(vec![1, 2]),
            context: Some(vec![64]),
            decode_steps: Some(2),
            ..Default::default()
        };
        assert_eq!(
            r.args().expect("valid"),
            [
                "bench",
                "--quiet",
                "--batch=1,2",
                "--context=64",
                "--decode-steps=2"
            ]
        );
        assert_eq!(r.planned(), 4);
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
        ] {
            let e = bad.args().expect_err("invalid");
            assert!(e.starts_with(field), "{e}");
        }
        let d = BenchRequest {
            dtype: Some("bf16".into()),
            batch: Some(vec![4]),
            ..Default::default()
        };
        let merged = r.or(&d);
        assert_eq!(merged.batch, Some(vec![1, 2]));
        assert_eq!(merged.dtype.as_deref(), Some("bf16"));

        let t = BenchRequest {
            mode: Some("train".into()),
            lora_rank: Some(8),
            lora_targets: Some(vec!["q".into(), "v".into()]),
            ..Default::default()
        };
        assert_eq!(
            t.args().expect("valid"),
            [
                "bench",
                "--quiet",
                "--mode=train",
                "--lora-rank=8",
                "--lora-targets=q,v"
            ]
        );
        assert_eq!(t.planned(), 2 * 3 * 4);
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
        ] {
            let e = bad.args().expect_err("invalid");
            assert!(e.starts_with(field), "{e}");
        }
    }
}
