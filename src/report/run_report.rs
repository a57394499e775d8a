//! The report of a stored run: `report.json` (versioned) and `report.md`, built only from the
//! run directory (run.json, points.jsonl, boundary.json), so a re-render gives the same bytes.
//! It opens with the answer in one sentence, then the rule of thumb against the measurement,
//! then the evidence.

use super::{bytes, percent};
use crate::estimate::rule_of_thumb;
use crate::store::{self, PointRecord, RunInfo, StoreError};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

/// The report's schema version (report.json's `schema_version`).
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// The answer, in one sentence.
    pub headline: String,
    pub rule_of_thumb: RuleVsMeasured,
    /// run.json as stored: command, environment, versions, GPU and baselines.
    pub run: RunInfo,
    /// The out-of-memory boundary per batch, where searched.
    pub boundaries: Option<serde_json::Value>,
    pub points: Vec<PointRecord>,
}

/// The seed's rule of thumb beside the largest measured peak.
#[derive(Debug, Clone, Serialize)]
pub struct RuleVsMeasured {
    /// weights x 2 bytes + 2 GB.
    pub rule_of_thumb_bytes: u64,
    /// The largest peak measured (primary source) over the run.
    pub measured_max_bytes: u64,
    pub batch: u64,
    pub context: u64,
    pub phase: String,
    /// rule / measured - 1.
    pub rule_error_ratio: f64,
}

/// Build the report of the run in `dir`.
///
/// # Errors
/// [`StoreError`] when run.json or points.jsonl cannot be read.
pub fn build(dir: &Path) -> Result<Report, StoreError> {
    let run = store::RunDir::read_info(dir)?;
    let points = store::read_points(dir)?;
    let boundaries = std::fs::read_to_string(dir.join("boundary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let ok: Vec<&PointRecord> = points.iter().filter(|p| p.status == "ok").collect();
    let biggest = ok.iter().max_by_key(|p| p.measured_peak_bytes);
    let rule = rule_of_thumb(run.params).inference_bytes;
    let rule_of_thumb = RuleVsMeasured {
        rule_of_thumb_bytes: rule,
        measured_max_bytes: biggest.map_or(0, |p| p.measured_peak_bytes),
        batch: biggest.map_or(0, |p| p.batch),
        context: biggest.map_or(0, |p| p.context),
        phase: biggest.map_or_else(String::new, |p| p.phase.clone()),
        rule_error_ratio: biggest.map_or(f64::NAN, |p| {
            rule as f64 / p.measured_peak_bytes as f64 - 1.0
        }),
    };
    Ok(Report {
        schema_version: REPORT_SCHEMA_VERSION,
        headline: headline(&run, &points),
        rule_of_thumb,
        run,
        boundaries,
        points,
    })
}

fn headline(run: &RunInfo, points: &[PointRecord]) -> String {
    let ok: Vec<&PointRecord> = points.iter().filter(|p| p.status == "ok").collect();
    let on = match &run.gpu {
        Some(g) => format!(
            "on this {}",
            g.info
                .as_ref()
                .map_or(run.device.as_str(), |i| i.name.as_str())
        ),
        None => "on the CPU (host memory)".to_string(),
    };
    if ok.is_empty() {
        return format!(
            "{} in {} {on}: no point fitted.",
            run.model,
            run.dtype.to_uppercase()
        );
    }
    // Per batch, the largest context (grid or boundary search) at which both phases fitted.
    let mut per_batch: Vec<(u64, u64)> = Vec::new();
    for &b in &run.grid.batches {
        let both = |c: u64| ok.iter().filter(|p| p.batch == b && p.context == c).count() >= 2;
        if let Some(c) = ok
            .iter()
            .filter(|p| p.batch == b && both(p.context))
            .map(|p| p.context)
            .max()
        {
            per_batch.push((b, c));
        }
    }
    let fits = per_batch
        .iter()
        .map(|(b, c)| format!("batch {b} at {c} tokens"))
        .collect::<Vec<_>>()
        .join(", ");
    let all = ok.len() == points.len();
    let worst = ok
        .iter()
        .map(|p| p.error_ratio.abs())
        .fold(0.0f64, f64::max);
    let source = ok.first().map_or("", |p| p.source.as_str());
    let what = match source {
        "nvml_process" => "of what nvidia-smi showed",
        "host_alloc" => "of the allocated bytes",
        _ => "of the measured peak",
    };
    format!(
        "{} in {} {on}: {} up to {fits}; the estimate was within {:.2}% {what} at every point \
         that fitted.",
        run.model,
        run.dtype.to_uppercase(),
        if all {
            "every grid point fitted,"
        } else {
            "fits"
        },
        worst * 100.0
    )
}

/// The rule of thumb against the largest measured peak, in one paragraph.
pub(super) fn rule_sentence(r: &Report) -> String {
    let rt = &r.rule_of_thumb;
    format!(
        "\"Weights x 2 bytes plus a few GB\" gives {} ({:.2} GB) for {} parameters. The largest \
         peak measured here was {} ({:.2} GB), at batch {} x {} tokens ({}): the rule of thumb is \
         {} off.",
        bytes(rt.rule_of_thumb_bytes),
        rt.rule_of_thumb_bytes as f64 / 1e9,
        super::grouped(r.run.params),
        bytes(rt.measured_max_bytes),
        rt.measured_max_bytes as f64 / 1e9,
        rt.batch,
        rt.context,
        rt.phase,
        percent(rt.rule_error_ratio)
    )
}

/// Where and how the run was made, as (what, value) lines: command, model, host, GPU,
/// versions.
pub(super) fn setup_facts(r: &Report) -> Vec<(&'static str, String)> {
    let run = &r.run;
    let env = &run.environment;
    let mut facts = vec![
        ("command", run.command.join(" ")),
        (
            "model",
            format!(
                "{} ({} parameters), {}, engine {}, weights {}",
                run.model_config,
                super::grouped(run.params),
                run.dtype,
                run.engine,
                run.weights
            ),
        ),
        (
            "host",
            format!(
                "{}, {}, {} ({} cores)",
                env.host, env.os, env.cpu, env.cpu_cores
            ),
        ),
    ];
    if let Some(g) = run.gpu.as_ref().and_then(|g| g.info.as_ref()) {
        facts.push((
            "GPU",
            format!(
                "{} ({}), driver {}, CUDA {}",
                g.name,
                bytes(g.memory_total_bytes),
                g.driver_version,
                g.cuda_driver_version
            ),
        ));
    }
    let commit = env
        .git_commit
        .as_deref()
        .map(|c| format!(" (commit {c})"))
        .unwrap_or_default();
    facts.push((
        "vramprobe",
        format!(
            "{}{commit}, candle {}, started {}",
            env.vramprobe_version, env.candle_version, run.started_at
        ),
    ));
    facts
}

/// `report.md`.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let run = &r.run;
    let _ = writeln!(out, "# {}: memory, estimated and measured\n", run.model);
    let _ = writeln!(out, "**{}**\n", r.headline);
    let _ = writeln!(out, "## The rule of thumb against the measurement\n");
    let _ = writeln!(out, "{}\n", rule_sentence(r));
    let _ = writeln!(out, "## Every point\n");
    let _ = writeln!(
        out,
        "| batch | context | phase | status | estimated | measured | error | source |"
    );
    let _ = writeln!(out, "|---:|---:|---|---|---:|---:|---:|---|");
    for p in &r.points {
        let (m, e) = if p.status == "ok" {
            (bytes(p.measured_peak_bytes), percent(p.error_ratio))
        } else {
            ("-".to_string(), "-".to_string())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.batch,
            p.context,
            p.phase,
            p.status,
            bytes(p.estimated_bytes),
            m,
            e,
            if p.source.is_empty() { "-" } else { &p.source }
        );
    }
    if let Some(b) = r.boundaries.as_ref().and_then(|b| b.as_array()) {
        let _ = writeln!(out, "\n## Out-of-memory boundary\n");
        let _ = writeln!(
            out,
            "| batch | largest context that fitted | first out of memory | predicted |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|");
        let show = |v: &serde_json::Value| v.as_u64().map_or("-".into(), |x| x.to_string());
        for x in b {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                show(&x["batch"]),
                show(&x["measured_max_context"]),
                show(&x["measured_first_oom_context"]),
                show(&x["predicted_max_context"])
            );
        }
    }
    let _ = writeln!(out, "\n## Where and how\n");
    for (what, value) in setup_facts(r) {
        if what == "command" {
            let _ = writeln!(out, "- {what}: `{value}`");
        } else {
            let _ = writeln!(out, "- {what}: {value}");
        }
    }
    out
}

/// Write report.json, report.md, report.html and the SVG plots into the run directory.
///
/// # Errors
/// [`StoreError`]; a plot that cannot be drawn is an I/O error on its file.
pub fn write(dir: &Path) -> Result<Report, StoreError> {
    let r = build(dir)?;
    let put = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| StoreError::Io { path, source })
    };
    let mut json = serde_json::to_string_pretty(&r).unwrap_or_default();
    json.push('\n');
    put("report.json", &json)?;
    put("report.md", &markdown(&r))?;
    let plots = super::plots::plots(&r).map_err(|e| StoreError::Io {
        path: dir.join("report.html"),
        source: std::io::Error::other(e),
    })?;
    for p in &plots {
        put(&p.file, &p.svg)?;
    }
    put("report.html", &super::html::html(&r, &plots))?;
    Ok(r)
}
