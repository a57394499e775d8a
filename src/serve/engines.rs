//! Serving engines beside the GPUs: each `--engine-metrics URL` (a vLLM or SGLang
//! `/metrics` on the node) is scraped on the poll interval, with a timeout, and what it says
//! about its KV cache is re-exported, with vramprobe's prediction for the model where it
//! knows the model (`--engine-model NAME=CONFIG`). A dead endpoint is `up = 0` and an error
//! count, never a failed scrape of the daemon.
//!
//! Understood series (Prometheus text format):
//! - vLLM: `vllm:kv_cache_usage_perc` (0-1; `vllm:gpu_cache_usage_perc` before v0.10),
//!   `vllm:cache_config_info{num_gpu_blocks, block_size}`, the `model_name` label;
//! - SGLang: `sglang:token_usage` (0-1), `sglang:max_total_num_tokens` (its KV pool in
//!   tokens: one token per block), the `model_name` label.

use crate::spec::ModelSpec;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One `--engine-metrics` endpoint (plain HTTP: engines serve /metrics on the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    host: String,
    port: u16,
    path: String,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--engine-metrics {url}: an http:// URL (engines serve /metrics in plain HTTP on the node)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("--engine-metrics {url}: port \"{p}\" is not a number"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("--engine-metrics {url}: no host"));
        }
        Ok(Endpoint {
            url: url.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// What one engine said about one model's KV cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineModel {
    /// `vllm` or `sglang`.
    pub engine: &'static str,
    pub model: String,
    /// Fraction of the KV cache in use (0-1).
    pub kv_usage_ratio: Option<f64>,
    /// Blocks in the engine's KV cache (SGLang: tokens, its block being one token).
    pub kv_blocks: Option<u64>,
    /// Tokens per block.
    pub block_size: Option<u64>,
}

/// The last scrape of one endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineReading {
    pub url: String,
    pub up: bool,
    pub models: Vec<EngineModel>,
    pub duration: Duration,
    pub errors_total: u64,
    pub last_error: Option<String>,
}

/// The largest /metrics body read (an engine's is tens of KiB).
pub const MAX_BODY: usize = 8 << 20;

/// One sample line: name, labels, value.
fn parse_line(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name_labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].rfind('}')? + open;
            (&line[..=close], line[close + 1..].trim())
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], line[sp..].trim())
        }
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match name_labels.find('{') {
        Some(open) => (
            &name_labels[..open],
            parse_labels(&name_labels[open + 1..name_labels.len() - 1]),
        ),
        None => (name_labels, BTreeMap::new()),
    };
    Some((name, labels, value))
}

/// `a="x",b="y\"z"` -> {a: x, b: y"z}.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

type Models = BTreeMap<(&'static str, String), EngineModel>;

fn slot<'a>(models: &'a mut Models, engine: &'static str, model: &str) -> &'a mut EngineModel {
    models
        .entry((engine, model.to_string()))
        .or_insert_with(|| EngineModel {
            engine,
            model: model.to_string(),
            ..EngineModel::default()
        })
}

/// The engines' KV cache series in an exposition, per (engine, model).
pub fn parse_exposition(text: &str) -> Vec<EngineModel> {
    let mut models = Models::new();
    // vLLM's cache_config_info has no model label: it applies to the one model served.
    let mut vllm_blocks: Option<(u64, Option<u64>)> = None;
    for line in text.lines() {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        let model = labels.get("model_name").map_or("", String::as_str);
        match name {
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                // Several engine cores (data parallel) report one each: keep the largest.
                let m = slot(&mut models, "vllm", model);
                m.kv_usage_ratio = Some(m.kv_usage_ratio.map_or(value, |v| v.max(value)));
            }
            "vllm:cache_config_info" => {
                let blocks = labels.get("num_gpu_blocks").and_then(|b| b.parse().ok());
                let size = labels.get("block_size").and_then(|b| b.parse().ok());
                if let Some(b) = blocks {
                    vllm_blocks = Some((b, size));
                }
            }
            "sglang:token_usage" => {
                let m = slot(&mut models, "sglang", model);
                m.kv_usage_ratio = Some(m.kv_usage_ratio.map_or(value, |v| v.max(value)));
            }
            "sglang:max_total_num_tokens" if value >= 0.0 => {
                let m = slot(&mut models, "sglang", model);
                m.kv_blocks = Some(value as u64);
                m.block_size = Some(1);
            }
            _ => {}
        }
    }
    if let Some((blocks, size)) = vllm_blocks {
        if !models.keys().any(|(e, _)| *e == "vllm") {
            slot(&mut models, "vllm", "");
        }
        for ((engine, _), m) in &mut models {
            if *engine == "vllm" {
                m.kv_blocks = Some(blocks);
                m.block_size = size;
            }
        }
    }
    models.into_values().collect()
}

/// GET `endpoint` within `timeout`; the body as text.
///
/// # Errors
/// Why there is no answer (connection, status, timeout, a body over [`MAX_BODY`]).
pub async fn fetch(endpoint: &Endpoint, timeout: Duration) -> Result<String, String> {
    use http_body_util::BodyExt;
    let work = async {
        let stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(endpoint.path.as_str())
            .header(
                hyper::header::HOST,
                format!("{}:{}", endpoint.host, endpoint.port),
            )
            .header(hyper::header::ACCEPT, "text/plain")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !res.status().is_success() {
            conn.abort();
            return Err(format!("status {}", res.status()));
        }
        let body = http_body_util::Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        conn.abort();
        String::from_utf8(body.to_vec()).map_err(|_| "body: not UTF-8".to_string())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Scrape `endpoint` once into `last`.
pub async fn scrape(endpoint: &Endpoint, timeout: Duration, last: &EngineReading) -> EngineReading {
    let start = Instant::now();
    let result = fetch(endpoint, timeout).await;
    let mut r = EngineReading {
        url: endpoint.url.clone(),
        duration: start.elapsed(),
        errors_total: last.errors_total,
        ..EngineReading::default()
    };
    match result {
        Ok(text) => {
            r.up = true;
            r.models = parse_exposition(&text);
        }
        Err(e) => {
            r.errors_total += 1;
            r.last_error = Some(e);
        }
    }
    r
}

/// What vramprobe predicts for a model an engine serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// KV bytes per token over every layer and KV head (the whole model, all GPUs).
    pub kv_bytes_per_token: u64,
    /// The weights in the config's dtype, as vLLM loads them on one GPU (all ranks
    /// together when tensor parallel, but for the replicated rotary cache).
    pub weights_bytes: u64,
}

impl Prediction {
    pub fn of(spec: &ModelSpec) -> Self {
        let dtype = spec.torch_dtype.unwrap_or(crate::spec::DType::BF16);
        Prediction {
            kv_bytes_per_token: crate::estimate::kv_cache_bytes_per_token(spec, dtype),
            weights_bytes: crate::estimate::vllm::weights_bytes(
                spec,
                dtype,
                &crate::estimate::vllm::VllmKnobs::default(),
            )
            .0,
        }
    }
}

#[cfg(test)]
mod tests;
