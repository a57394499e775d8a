//! Models from the Hugging Face Hub: `config.json` and the safetensors weights, fetched with
//! hf-hub 1.0 (its blocking API, so no async runtime leaks into the rest of the program).
//!
//! Conventions, as the Hub's own tools have them: `HF_TOKEN` (or `HF_TOKEN_PATH`),
//! `HF_ENDPOINT`, `HF_HOME` / `HF_HUB_CACHE` are read by hf-hub; `HF_HUB_OFFLINE=1` (which
//! hf-hub does not read) means the local cache only. The token is never printed: errors
//! name the repository and the endpoint, not the request headers.

#[cfg(feature = "hub")]
use hf_hub::progress::{DownloadEvent, Progress, ProgressEvent, ProgressHandler};
#[cfg(feature = "hub")]
use hf_hub::{HFClientSync, HFError};
use std::path::PathBuf;
#[cfg(feature = "hub")]
use std::sync::Mutex;

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// 401/403: a gated repository without an accepted license or a token.
    #[error(
        "{repo}: access denied by {endpoint}: accept the license on the model page \
         ({endpoint}/{repo}) and set HF_TOKEN to a token of that account"
    )]
    Gated { repo: String, endpoint: String },
    #[error(
        "{repo}: no such model or revision on {endpoint} (check the id and --revision, or pass \
         a local directory)"
    )]
    NotFound { repo: String, endpoint: String },
    #[error("{repo}: not in the local cache, and HF_HUB_OFFLINE is set (unset it to download)")]
    Offline { repo: String },
    #[error("{repo}: {message}")]
    Other { repo: String, message: String },
}

/// Whether `s` looks like a Hub model id (`owner/name`) rather than a path.
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((owner, name)) => ok(owner) && ok(name),
        None => false,
    }
}

#[cfg(feature = "hub")]
fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

#[cfg(feature = "hub")]
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// A progress bar on stderr (hidden when stderr is not a terminal or `quiet`).
#[cfg(feature = "hub")]
struct Bar {
    bar: indicatif::ProgressBar,
    done: Mutex<std::collections::HashMap<String, u64>>,
}

#[cfg(feature = "hub")]
impl ProgressHandler for Bar {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(e) = event else {
            return;
        };
        match e {
            DownloadEvent::Start { total_bytes, .. } => self.bar.set_length(*total_bytes),
            DownloadEvent::Progress { files } => {
                if let Ok(mut done) = self.done.lock() {
                    for f in files {
                        done.insert(f.filename.clone(), f.bytes_completed);
                    }
                    self.bar.set_position(done.values().sum());
                }
            }
            DownloadEvent::AggregateProgress {
                bytes_completed, ..
            } => self.bar.set_position(*bytes_completed),
            DownloadEvent::Complete => self.bar.finish_and_clear(),
        }
    }
}

/// Fetch `repo` at `revision` (default `main`) into the Hub cache and return the snapshot
/// directory: `config.json` always, the `*.safetensors` weights (and their index) when
/// `weights` is set.
///
/// # Errors
/// [`HubError`], with the repository named and, for a gated one, what to do.
#[cfg(feature = "hub")]
pub fn fetch(
    repo: &str,
    revision: Option<&str>,
    weights: bool,
    quiet: bool,
) -> Result<PathBuf, HubError> {
    let other = |e: String| HubError::Other {
        repo: repo.to_string(),
        message: e,
    };
    let (owner, name) = repo
        .split_once('/')
        .ok_or_else(|| other("not an owner/name model id".into()))?;
    if !offline() {
        writable_cache().map_err(other)?;
    }
    let client = HFClientSync::new().map_err(|e| other(format!("Hub client: {e}")))?;
    let mut patterns = vec!["config.json".to_string()];
    if weights {
        patterns.push("*.safetensors".into());
        patterns.push("*.safetensors.index.json".into());
    }
    let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("downloading {repo}"));
        b
    };
    let progress = Progress::new(Bar {
        bar,
        done: Mutex::new(Default::default()),
    });
    let result = client
        .model(owner, name)
        .snapshot_download()
        .maybe_revision(revision.map(str::to_string))
        .allow_patterns(patterns)
        .local_files_only(offline())
        .progress(progress)
        .send();
    drop(client);
    wait_for_runtime_exit();
    result.map_err(|e| classify(repo, e))
}

/// The Hub cache hf-hub writes to (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`), created and checked writable, or the reason naming the
/// variable and the path (hf-hub's own error names neither).
#[cfg(feature = "hub")]
fn writable_cache() -> Result<(), String> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let (source, dir) = if let Some(d) = var("HF_HUB_CACHE") {
        ("HF_HUB_CACHE", d)
    } else if let Some(h) = var("HF_HOME") {
        ("HF_HOME", h.join("hub"))
    } else if let Some(home) = var("HOME") {
        ("HOME", home.join(".cache/huggingface/hub"))
    } else {
        return Ok(()); // hf-hub will say what it cannot find
    };
    let fail = |e: std::io::Error| {
        format!(
            "the Hub cache {} (from {source}) cannot be written: {e}; point HF_HOME or \
             HF_HUB_CACHE at a writable directory",
            dir.display()
        )
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let probe = dir.join(format!(".vramprobe-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// hf-hub's blocking client runs a tokio runtime on a detached thread that frees its
/// buffers after the client is dropped. The CPU bench counts every allocation of the
/// process, so wait (up to 5 s) until that thread is gone before anything is measured.
#[cfg(feature = "hub")]
fn wait_for_runtime_exit() {
    let running = || {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end().starts_with("hf-hub-blocking"))
                })
            })
            .unwrap_or(false)
    };
    let start = std::time::Instant::now();
    while running() && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(feature = "hub")]
fn classify(repo: &str, e: HFError) -> HubError {
    let repo = repo.to_string();
    match e {
        HFError::AuthRequired { .. } | HFError::Forbidden { .. } => HubError::Gated {
            repo,
            endpoint: endpoint(),
        },
        HFError::RepoNotFound { .. } | HFError::RevisionNotFound { .. } => HubError::NotFound {
            repo,
            endpoint: endpoint(),
        },
        HFError::LocalEntryNotFound { .. } => HubError::Offline { repo },
        other => HubError::Other {
            repo,
            message: other.to_string(),
        },
    }
}

/// Without the `hub` feature (the GPU build): models come from local directories only.
///
/// # Errors
/// Always [`HubError::Other`], saying so.
#[cfg(not(feature = "hub"))]
pub fn fetch(
    repo: &str,
    _revision: Option<&str>,
    _weights: bool,
    _quiet: bool,
) -> Result<PathBuf, HubError> {
    Err(HubError::Other {
        repo: repo.to_string(),
        message: "this vramprobe was built without the `hub` feature (as the GPU build is): \
                  pass a local model directory"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths_are_told_apart() {
        for id in ["meta-llama/Meta-Llama-3-8B-Instruct", "org/model.v2", "a/b"] {
            assert!(is_repo_id(id), "{id}");
        }
        for p in [
            "models/vramprobe-tiny-llama/config.json",
            "./a",
            "/abs/path",
            "a/../b",
            "../x",
            "plain",
            "a/b c",
            "a/",
        ] {
            assert!(!is_repo_id(p), "{p}");
        }
    }
}
