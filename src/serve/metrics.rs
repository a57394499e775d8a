//! `/metrics`: built at each scrape from the cached GPU snapshot, the cached runs and the
//! sweep's state, with prometheus-client (a [`Collector`]); OpenMetrics text when the
//! scraper's Accept header asks for it, the classic text format (0.0.4) otherwise.
//!
//! Naming follows Prometheus conventions: prefix `vramprobe_`, base units (`_bytes`,
//! `_seconds`, `_ratio`), `_info` for identities, `_total` for counters.

use super::State;
use crate::store::{PointRecord, Status};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The Content-Type of each format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// Does this Accept header ask for OpenMetrics?
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut it = part.split(';');
            let media = it.next().unwrap_or("").trim();
            // q=0 means "not this one".
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// The registry of what changes at every scrape: build, GPU snapshot, sweep.
pub fn registry(state: Arc<State>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(DaemonCollector { state }));
    r
}

/// The most records of one run exported as series (a 32 x 32 grid's two phases): past it a
/// scrape would grow with the grid (a 64 x 64 grid made 55 MB per scrape).
pub const MAX_EXPORTED_RECORDS: usize = 2048;

/// The benchmark series, encoded once each time the stored runs change (they are a few
/// thousand series with many labels: re-encoding them at every scrape would dominate its
/// cost), in both formats, without OpenMetrics' `# EOF`.
#[derive(Debug, Clone, Default)]
pub struct BenchText {
    pub openmetrics: String,
    pub classic: String,
}

impl BenchText {
    /// Encode the newest run per (model, dtype, engine, device) of `runs`.
    pub fn of(runs: &super::runs::Runs) -> BenchText {
        let latest: Vec<super::runs::StoredRun> = runs.latest().into_iter().cloned().collect();
        let mut r = Registry::default();
        r.register_collector(Box::new(RunsCollector { latest }));
        let mut t = BenchText::default();
        if prometheus_client::encoding::text::encode_registry(&mut t.openmetrics, &r).is_err()
            || prometheus_client::encoding::prometheus_text::encode(&mut t.classic, &r).is_err()
        {
            tracing::error!("benchmark metrics encoding failed");
        }
        t
    }
}

/// Encode the live registry and append the cached benchmark series; returns (body,
/// content type).
pub fn render(registry: &Registry, bench: &BenchText, openmetrics: bool) -> (String, &'static str) {
    let mut out = String::with_capacity(4096 + bench.openmetrics.len());
    let result = if openmetrics {
        prometheus_client::encoding::text::encode_registry(&mut out, registry).and_then(|()| {
            out.push_str(&bench.openmetrics);
            prometheus_client::encoding::text::encode_eof(&mut out)
        })
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry).map(|()| {
            out.push_str(&bench.classic);
        })
    };
    if result.is_err() {
        // Writing into a String cannot fail; an encoder error is a bug.
        tracing::error!("metrics encoding failed");
    }
    (out, if openmetrics { OPENMETRICS } else { CLASSIC })
}

#[derive(Debug)]
struct DaemonCollector {
    state: Arc<State>,
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn gauge<N: EncodeGaugeValue + Copy + std::fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, N)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// A counter family with labels (the encoder appends `_total`).
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// An `_info` family: one descriptor, one sample of value 1 per label set.
fn info(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[Labels]) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Info)?;
    for labels in rows {
        Info::new(Labels::new()).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// The devices' memory per container and pod, what no process accounts for, and the
/// processes whose container could not be read.
fn encode_attribution(
    enc: &mut DescriptorEncoder,
    a: &super::pods::Attribution,
    dropped_total: u64,
) -> std::fmt::Result {
    let rows: Vec<(Labels, u64)> = a
        .containers
        .iter()
        .map(|c| {
            (
                vec![
                    ("gpu", c.gpu.clone()),
                    ("uuid", c.uuid.clone()),
                    ("pod_uid", c.owner.pod_uid.clone()),
                    ("container_id", c.owner.container_id.clone()),
                ],
                c.bytes,
            )
        })
        .collect();
    gauge(
        enc,
        "vramprobe_gpu_container_memory_used_bytes",
        "Device memory of a container's GPU processes (NVML per process, container from the host's \
         /proc/<pid>/cgroup; pod_uid empty outside Kubernetes, both empty outside containers).",
        &rows,
    )?;
    let per_gpu = |v: &[(String, String, u64)]| -> Vec<(Labels, u64)> {
        v.iter()
            .map(|(g, u, b)| (vec![("gpu", g.clone()), ("uuid", u.clone())], *b))
            .collect()
    };
    gauge(
        enc,
        "vramprobe_gpu_memory_unattributed_bytes",
        "Device memory in use that no listed process accounts for (used minus the processes' sum).",
        &per_gpu(&a.unattributed),
    )?;
    gauge(
        enc,
        "vramprobe_gpu_process_memory_unresolved_bytes",
        "Device memory of processes whose /proc entry could not be read (exited, or not the host's PIDs).",
        &per_gpu(&a.unresolved),
    )?;
    gauge(
        enc,
        "vramprobe_gpu_container_series",
        "Container series exported at the last poll (at most --max-containers).",
        &[(vec![], a.containers.len() as u64)],
    )?;
    counters(
        enc,
        "vramprobe_gpu_container_series_dropped",
        "Container series left out by --max-containers, summed over polls.",
        &[(vec![], dropped_total)],
    )
}

/// The labels of one stored point.
fn point_labels(p: &PointRecord) -> Labels {
    vec![
        ("model", p.model.clone()),
        ("dtype", p.dtype.clone()),
        ("engine", p.engine.clone()),
        ("device", p.device.clone()),
        ("batch", p.batch.to_string()),
        ("context", p.context.to_string()),
        ("phase", p.phase.to_string()),
    ]
}

fn with(mut l: Labels, k: &'static str, v: &str) -> Labels {
    l.push((k, v.to_string()));
    l
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.state;
        info(
            &mut enc,
            "vramprobe_build",
            "vramprobe's version, git commit and candle version.",
            &[vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("commit", env!("VRAMPROBE_GIT_COMMIT").to_string()),
                (
                    "candle_version",
                    env!("VRAMPROBE_CANDLE_VERSION").to_string(),
                ),
            ]],
        )?;
        gauge(
            &mut enc,
            "vramprobe_start_time_seconds",
            "When the daemon started (Unix time).",
            &[(vec![], secs(s.started))],
        )?;
        self.encode_gpu(&mut enc)?;
        self.encode_engines(&mut enc)?;
        self.encode_sweep(&mut enc)
    }
}

impl DaemonCollector {
    fn encode_gpu(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let g = self
            .state
            .gpu
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        gauge(
            enc,
            "vramprobe_nvml_up",
            "1 when the last NVML collection succeeded, 0 when NVML is missing or failing.",
            &[(vec![], i64::from(g.up))],
        )?;
        if let Some(t) = g.last_success {
            gauge(
                enc,
                "vramprobe_nvml_last_success_timestamp_seconds",
                "When NVML last answered (Unix time).",
                &[(vec![], secs(t))],
            )?;
        }
        gauge(
            enc,
            "vramprobe_nvml_collection_duration_seconds",
            "How long the last NVML collection took.",
            &[(vec![], g.last_duration.as_secs_f64())],
        )?;
        counter(
            enc,
            "vramprobe_nvml_collection_failures",
            "NVML collections that failed since start.",
            g.failures_total,
        )?;
        if !g.up {
            return Ok(()); // no stale device figures
        }
        let id = |d: &crate::probe::nvml::DeviceSnapshot| -> Labels {
            vec![
                ("gpu", d.info.index.to_string()),
                ("uuid", d.info.uuid.clone()),
            ]
        };
        let infos: Vec<Labels> = g
            .devices
            .iter()
            .map(|d| {
                let mut l = id(d);
                l.push(("name", d.info.name.clone()));
                l.push(("driver_version", d.info.driver_version.clone()));
                l.push(("cuda_version", d.info.cuda_driver_version.clone()));
                l
            })
            .collect();
        info(enc, "vramprobe_gpu", "One GPU's identity.", &infos)?;
        type Field = fn(&crate::probe::nvml::DeviceMemory) -> u64;
        let fields: [(&str, &str, Field); 4] = [
            (
                "vramprobe_gpu_memory_total_bytes",
                "Device memory in all (NVML).",
                |m| m.total,
            ),
            (
                "vramprobe_gpu_memory_used_bytes",
                "Device memory in use by processes (NVML v2: excludes reserved).",
                |m| m.used,
            ),
            (
                "vramprobe_gpu_memory_free_bytes",
                "Device memory free (NVML).",
                |m| m.free,
            ),
            (
                "vramprobe_gpu_memory_reserved_bytes",
                "Device memory reserved by the driver and firmware (NVML v2).",
                |m| m.reserved,
            ),
        ];
        for (name, help, f) in fields {
            let rows: Vec<(Labels, u64)> =
                g.devices.iter().map(|d| (id(d), f(&d.memory))).collect();
            gauge(enc, name, help, &rows)?;
        }
        self.encode_mig(enc, &g.devices)?;
        self.encode_health(enc, &g.devices)?;
        if let Some(a) = &g.attribution {
            encode_attribution(enc, a, g.containers_dropped_total)?;
        }
        if self.state.opts.per_process {
            let rows: Vec<(Labels, u64)> = g
                .devices
                .iter()
                .flat_map(|d| {
                    d.processes.iter().filter_map(move |&(pid, bytes)| {
                        Some((with(id(d), "pid", &pid.to_string()), bytes?))
                    })
                })
                .collect();
            gauge(
                enc,
                "vramprobe_gpu_process_memory_used_bytes",
                "Device memory of each compute process (NVML; opt-in: --per-process).",
                &rows,
            )?;
        }
        Ok(())
    }

    fn encode_mig(
        &self,
        enc: &mut DescriptorEncoder,
        devices: &[crate::probe::nvml::DeviceSnapshot],
    ) -> std::fmt::Result {
        type Field = fn(&crate::probe::nvml::DeviceMemory) -> u64;
        let fields: [(&str, &str, Field); 3] = [
            (
                "vramprobe_gpu_mig_memory_total_bytes",
                "A MIG instance's device memory in all (NVML).",
                |m| m.total,
            ),
            (
                "vramprobe_gpu_mig_memory_used_bytes",
                "A MIG instance's device memory in use (NVML).",
                |m| m.used,
            ),
            (
                "vramprobe_gpu_mig_memory_free_bytes",
                "A MIG instance's device memory free (NVML).",
                |m| m.free,
            ),
        ];
        for (name, help, f) in fields {
            let rows: Vec<(Labels, u64)> = devices
                .iter()
                .flat_map(|d| {
                    d.mig.iter().map(move |m| {
                        (
                            vec![
                                ("gpu", d.info.index.to_string()),
                                ("uuid", d.info.uuid.clone()),
                                ("mig_index", m.index.to_string()),
                                ("mig_uuid", m.uuid.clone()),
                            ],
                            f(&m.memory),
                        )
                    })
                })
                .collect();
            gauge(enc, name, help, &rows)?;
        }
        Ok(())
    }

    fn encode_health(
        &self,
        enc: &mut DescriptorEncoder,
        devices: &[crate::probe::nvml::DeviceSnapshot],
    ) -> std::fmt::Result {
        let id = |d: &crate::probe::nvml::DeviceSnapshot| -> Labels {
            vec![
                ("gpu", d.info.index.to_string()),
                ("uuid", d.info.uuid.clone()),
            ]
        };
        let mut ecc = Vec::new();
        let mut retired = Vec::new();
        let mut remapped = Vec::new();
        let mut retired_pending = Vec::new();
        let mut remap_pending = Vec::new();
        let mut remap_failed = Vec::new();
        for d in devices {
            let h = &d.health;
            for (kind, counter, v) in [
                ("corrected", "volatile", h.ecc_corrected_volatile),
                ("uncorrected", "volatile", h.ecc_uncorrected_volatile),
                ("corrected", "aggregate", h.ecc_corrected_aggregate),
                ("uncorrected", "aggregate", h.ecc_uncorrected_aggregate),
            ] {
                if let Some(v) = v {
                    let l = with(with(id(d), "error_type", kind), "counter", counter);
                    ecc.push((l, v));
                }
            }
            for (cause, v) in [
                ("multiple_single_bit", h.retired_pages_single_bit),
                ("double_bit", h.retired_pages_double_bit),
            ] {
                if let Some(v) = v {
                    retired.push((with(id(d), "cause", cause), v));
                }
            }
            for (kind, v) in [
                ("correctable", h.remapped_rows_correctable),
                ("uncorrectable", h.remapped_rows_uncorrectable),
            ] {
                if let Some(v) = v {
                    remapped.push((with(id(d), "error_type", kind), v));
                }
            }
            if let Some(p) = h.retired_pages_pending {
                retired_pending.push((id(d), i64::from(p)));
            }
            if let Some(p) = h.remapped_rows_pending {
                remap_pending.push((id(d), i64::from(p)));
            }
            if let Some(p) = h.remapped_rows_failed {
                remap_failed.push((id(d), i64::from(p)));
            }
        }
        counters(
            enc,
            "vramprobe_gpu_ecc_errors",
            "ECC memory errors (NVML; volatile since the driver loaded, aggregate over the GPU's life).",
            &ecc,
        )?;
        counters(
            enc,
            "vramprobe_gpu_retired_pages",
            "Device memory pages retired, by cause (NVML; GPUs before Ampere).",
            &retired,
        )?;
        gauge(
            enc,
            "vramprobe_gpu_retired_pages_pending",
            "1 when a page retirement waits for the next driver load (NVML).",
            &retired_pending,
        )?;
        counters(
            enc,
            "vramprobe_gpu_remapped_rows",
            "Device memory rows remapped, by the error that caused it (NVML; Ampere and later).",
            &remapped,
        )?;
        gauge(
            enc,
            "vramprobe_gpu_remapped_rows_pending",
            "1 when a row remap waits for a GPU reset (NVML).",
            &remap_pending,
        )?;
        gauge(
            enc,
            "vramprobe_gpu_remapped_rows_failed",
            "1 when a row remap failed: the GPU needs service (NVML).",
            &remap_failed,
        )
    }

    fn encode_engines(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let readings = self
            .state
            .engines
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if readings.is_empty() {
            return Ok(());
        }
        let ep =
            |r: &super::engines::EngineReading| -> Labels { vec![("endpoint", r.url.clone())] };
        let up: Vec<(Labels, i64)> = readings.iter().map(|r| (ep(r), i64::from(r.up))).collect();
        gauge(
            enc,
            "vramprobe_engine_up",
            "1 when the serving engine's /metrics answered the last scrape.",
            &up,
        )?;
        let errs: Vec<(Labels, u64)> = readings.iter().map(|r| (ep(r), r.errors_total)).collect();
        counters(
            enc,
            "vramprobe_engine_scrape_errors",
            "Scrapes of the engine's /metrics that failed (refused, timed out, bad status).",
            &errs,
        )?;
        let took: Vec<(Labels, f64)> = readings
            .iter()
            .map(|r| (ep(r), r.duration.as_secs_f64()))
            .collect();
        gauge(
            enc,
            "vramprobe_engine_scrape_duration_seconds",
            "How long the last scrape of the engine took.",
            &took,
        )?;
        let mut usage = Vec::new();
        let mut blocks = Vec::new();
        let mut tokens = Vec::new();
        let mut predicted_kv = Vec::new();
        let mut predicted_used = Vec::new();
        let mut predicted_weights = Vec::new();
        for r in readings.iter().filter(|r| r.up) {
            for m in &r.models {
                let l = vec![
                    ("endpoint", r.url.clone()),
                    ("engine", m.engine.to_string()),
                    ("model", m.model.clone()),
                ];
                if let Some(u) = m.kv_usage_ratio {
                    usage.push((l.clone(), u));
                }
                if let Some(b) = m.kv_blocks {
                    blocks.push((l.clone(), b));
                }
                let capacity = m
                    .kv_blocks
                    .zip(m.block_size)
                    .map(|(b, s)| b.saturating_mul(s));
                if let Some(t) = capacity {
                    tokens.push((l.clone(), t));
                }
                if let Some(p) = self.state.predictions.get(&m.model) {
                    predicted_weights.push((l.clone(), p.weights_bytes));
                    if let Some(t) = capacity {
                        let bytes = t.saturating_mul(p.kv_bytes_per_token);
                        predicted_kv.push((l.clone(), bytes));
                        if let Some(u) = m.kv_usage_ratio {
                            predicted_used.push((l.clone(), (bytes as f64 * u).round()));
                        }
                    }
                }
            }
        }
        gauge(
            enc,
            "vramprobe_engine_kv_cache_usage_ratio",
            "Fraction of the engine's KV cache in use (vLLM kv_cache_usage_perc, SGLang token_usage).",
            &usage,
        )?;
        gauge(
            enc,
            "vramprobe_engine_kv_cache_blocks",
            "Blocks in the engine's KV cache (vLLM num_gpu_blocks; SGLang: tokens, one per block).",
            &blocks,
        )?;
        gauge(
            enc,
            "vramprobe_engine_kv_cache_tokens",
            "Tokens the engine's KV cache holds (blocks x block size).",
            &tokens,
        )?;
        gauge(
            enc,
            "vramprobe_engine_predicted_kv_cache_bytes",
            "vramprobe's bytes for that many KV tokens of this model (over all its GPUs; --engine-model).",
            &predicted_kv,
        )?;
        gauge(
            enc,
            "vramprobe_engine_predicted_kv_cache_used_bytes",
            "The predicted KV cache bytes times the engine's usage ratio.",
            &predicted_used,
        )?;
        gauge(
            enc,
            "vramprobe_engine_predicted_weights_bytes",
            "vramprobe's bytes for this model's weights as vLLM loads them (--engine-model).",
            &predicted_weights,
        )
    }

    fn encode_sweep(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let j = self
            .state
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        gauge(
            enc,
            "vramprobe_bench_running",
            "1 while a sweep runs.",
            &[(vec![], i64::from(j.running))],
        )?;
        gauge(
            enc,
            "vramprobe_bench_points_planned",
            "Points (batch x context x phase) the current or last sweep plans.",
            &[(vec![], j.planned)],
        )?;
        gauge(
            enc,
            "vramprobe_bench_points_stored",
            "Points the current or last sweep has stored.",
            &[(vec![], j.stored)],
        )?;
        counter(
            enc,
            "vramprobe_bench_sweeps_started",
            "Sweeps started since the daemon started.",
            j.started_total,
        )?;
        counter(
            enc,
            "vramprobe_bench_sweeps_failed",
            "Sweeps that ended with an error (not counting interrupted ones).",
            j.failed_total,
        )?;
        if let Some(t) = j.last_success {
            gauge(
                enc,
                "vramprobe_bench_last_success_timestamp_seconds",
                "When a sweep last completed (Unix time).",
                &[(vec![], secs(t))],
            )?;
        }
        Ok(())
    }
}

/// The stored runs' series (see [`BenchText`]).
#[derive(Debug)]
struct RunsCollector {
    latest: Vec<super::runs::StoredRun>,
}

impl Collector for RunsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let enc = &mut encoder;
        let latest = &self.latest;
        let infos: Vec<Labels> = latest
            .iter()
            .map(|r| {
                vec![
                    ("model", r.run.model.clone()),
                    ("dtype", r.run.dtype.clone()),
                    ("engine", r.run.engine.clone()),
                    ("device", r.run.device.clone()),
                    ("run", r.id.clone()),
                    ("started_at", r.run.started_at.clone()),
                ]
            })
            .collect();
        info(
            enc,
            "vramprobe_bench_run",
            "The stored run whose points are exported, per model, dtype, engine and device.",
            &infos,
        )?;
        // One record per label set: a later record of the same point wins. A run's records
        // past MAX_EXPORTED_RECORDS are left out (and counted), so one huge grid cannot make
        // every scrape megabytes long; the API has them all.
        let mut points: std::collections::BTreeMap<Labels, &PointRecord> = Default::default();
        let mut left_out = Vec::new();
        for r in latest {
            for p in r.points.iter().take(MAX_EXPORTED_RECORDS) {
                points.insert(point_labels(p), p);
            }
            left_out.push((
                vec![
                    ("model", r.run.model.clone()),
                    ("dtype", r.run.dtype.clone()),
                    ("engine", r.run.engine.clone()),
                    ("device", r.run.device.clone()),
                ],
                r.points.len().saturating_sub(MAX_EXPORTED_RECORDS) as i64,
            ));
        }
        gauge(
            enc,
            "vramprobe_bench_records_not_exported",
            "Records of the exported run left out of /metrics past the first \
             MAX_EXPORTED_RECORDS (2048); /api/v1/runs/{id} has every record.",
            &left_out,
        )?;
        let mut fitted = Vec::new();
        let mut measured = Vec::new();
        let mut estimated = Vec::new();
        let mut components = Vec::new();
        let mut error = Vec::new();
        for (labels, p) in &points {
            let ok = p.status == Status::Ok;
            fitted.push((labels.clone(), i64::from(ok)));
            for (name, &v) in &p.estimated_components {
                components.push((with(labels.clone(), "component", name), v));
            }
            if ok {
                for (source, &v) in &p.measured {
                    measured.push((with(labels.clone(), "source", source), v));
                }
                if p.error_ratio.is_finite() && !p.source.is_empty() {
                    error.push((with(labels.clone(), "source", &p.source), p.error_ratio));
                }
            }
            if p.estimated_by_source.is_empty() {
                if !p.source.is_empty() {
                    estimated.push((with(labels.clone(), "source", &p.source), p.estimated_bytes));
                }
            } else {
                for (source, &v) in &p.estimated_by_source {
                    estimated.push((with(labels.clone(), "source", source), v));
                }
            }
        }
        gauge(
            enc,
            "vramprobe_bench_point_fitted",
            "1 when the point ran, 0 when it ran out of memory or was refused.",
            &fitted,
        )?;
        gauge(
            enc,
            "vramprobe_bench_measured_peak_bytes",
            "Measured peak of the phase, per measurement source.",
            &measured,
        )?;
        gauge(
            enc,
            "vramprobe_bench_estimated_peak_bytes",
            "The estimate of the phase's peak, in each source's terms.",
            &estimated,
        )?;
        gauge(
            enc,
            "vramprobe_bench_estimated_component_bytes",
            "The estimate's components of the phase's peak.",
            &components,
        )?;
        gauge(
            enc,
            "vramprobe_bench_error_ratio",
            "(estimated - measured) / measured for the primary source.",
            &error,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        // Prometheus 2.x's default scrape Accept header.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0, text/plain"
        )));
    }
}
