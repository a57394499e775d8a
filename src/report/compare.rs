//! `vramprobe report --compare RUN_A RUN_B`: what changed between two stored runs (two GPUs,
//! two versions, two settings): the setup facts that differ, then every point the two share,
//! with the measured peak's change and each run's estimate error, then the points only one
//! has, then the out-of-memory boundary where both searched it.

use super::model::Report;
use super::units::{bytes, percent};
use crate::store::{PointPhase, PointRecord, Status};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One setup fact of both runs.
#[derive(Debug, Clone, Serialize)]
pub struct Fact {
    pub what: &'static str,
    pub a: String,
    pub b: String,
    pub same: bool,
}

/// One (batch, context, phase) present in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct PointChange {
    pub batch: u64,
    pub context: u64,
    pub phase: PointPhase,
    pub status_a: Status,
    pub status_b: Status,
    /// The primary source's measured peak (0 where the point did not fit).
    pub measured_a_bytes: u64,
    pub measured_b_bytes: u64,
    /// measured_b / measured_a - 1, where both fitted.
    pub measured_change_ratio: Option<f64>,
    pub estimated_a_bytes: u64,
    pub estimated_b_bytes: u64,
    pub error_a_ratio: Option<f64>,
    pub error_b_ratio: Option<f64>,
}

/// One batch's boundary in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct BoundaryChange {
    pub batch: u64,
    pub measured_max_context_a: Option<u64>,
    pub measured_max_context_b: Option<u64>,
    pub predicted_max_context_a: Option<u64>,
    pub predicted_max_context_b: Option<u64>,
}

/// The comparison (`--format json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub run_a: String,
    pub run_b: String,
    pub headline_a: String,
    pub headline_b: String,
    pub facts: Vec<Fact>,
    pub shared: Vec<PointChange>,
    /// (batch, context, phase) measured in one run only.
    pub only_a: Vec<Key>,
    pub only_b: Vec<Key>,
    pub boundaries: Vec<BoundaryChange>,
}

fn facts_of(r: &Report) -> Vec<(&'static str, String)> {
    let run = &r.run;
    let env = &run.environment;
    let gpu = run.gpu.as_ref();
    let info = gpu.and_then(|g| g.info.as_ref());
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let source = r
        .points
        .iter()
        .find(|p| !p.source.is_empty())
        .map_or_else(|| "-".into(), |p| p.source.clone());
    vec![
        ("model", run.model.clone()),
        ("parameters", super::units::grouped(run.params)),
        ("dtype", run.dtype.clone()),
        ("engine", run.engine.clone()),
        (
            "mode",
            match &run.train {
                None => "inference".into(),
                Some(t) => match &t.lora {
                    None => format!(
                        "train, full fine-tune ({} trainable)",
                        super::units::grouped(t.trainable_params)
                    ),
                    Some(l) => format!(
                        "train, LoRA r{} on {} ({} trainable)",
                        l.rank,
                        l.targets
                            .iter()
                            .map(|x| format!("{x:?}").to_lowercase())
                            .collect::<Vec<_>>()
                            .join(","),
                        super::units::grouped(t.trainable_params)
                    ),
                },
            },
        ),
        ("device", run.device.clone()),
        ("weights", run.weights.clone()),
        ("measured by", source),
        ("GPU memory", opt(info.map(|i| bytes(i.memory_total_bytes)))),
        (
            "memory limit",
            opt(gpu.and_then(|g| g.memory_limit_bytes).map(bytes)),
        ),
        ("driver", opt(info.map(|i| i.driver_version.clone()))),
        ("CUDA", opt(info.map(|i| i.cuda_driver_version.clone()))),
        (
            "CUDA context + libraries",
            opt(gpu.map(|g| bytes(g.fixed_overhead_bytes))),
        ),
        ("host", env.host.clone()),
        ("CPU", format!("{} ({} cores)", env.cpu, env.cpu_cores)),
        ("OS", env.os.clone()),
        ("vramprobe", env.vramprobe_version.clone()),
        ("git commit", opt(env.git_commit.clone())),
        ("candle", env.candle_version.clone()),
        (
            "grid",
            format!(
                "batch {:?} x context {:?}, {} decode steps",
                run.grid.batches, run.grid.contexts, run.grid.decode_steps
            ),
        ),
        ("started", run.started_at.clone()),
    ]
}

/// (batch, context, phase) of a point.
pub type Key = (u64, u64, PointPhase);

fn by_key(points: &[PointRecord]) -> BTreeMap<Key, &PointRecord> {
    // A point measured twice (grid and boundary search) keeps its grid record.
    let mut m = BTreeMap::new();
    for p in points {
        m.entry((p.batch, p.context, p.phase)).or_insert(p);
    }
    m
}

fn fitted(p: &PointRecord) -> bool {
    p.status == Status::Ok
}

fn boundary_map(r: &Report) -> BTreeMap<u64, (Option<u64>, Option<u64>)> {
    r.boundaries
        .iter()
        .flatten()
        .map(|x| (x.batch, (x.measured_max_context, x.predicted_max_context)))
        .collect()
}

/// Compare run B against run A.
pub fn compare(run_a: &str, a: &Report, run_b: &str, b: &Report) -> Comparison {
    let facts = facts_of(a)
        .into_iter()
        .zip(facts_of(b))
        .map(|((what, x), (_, y))| Fact {
            what,
            same: x == y,
            a: x,
            b: y,
        })
        .collect();
    let pa = by_key(&a.points);
    let pb = by_key(&b.points);
    let mut shared = Vec::new();
    let mut only_a = Vec::new();
    for (k, x) in &pa {
        let Some(y) = pb.get(k) else {
            only_a.push(*k);
            continue;
        };
        let both = fitted(x) && fitted(y) && x.measured_peak_bytes > 0;
        let err =
            |p: &PointRecord| (fitted(p) && p.error_ratio.is_finite()).then_some(p.error_ratio);
        shared.push(PointChange {
            batch: k.0,
            context: k.1,
            phase: k.2,
            status_a: x.status,
            status_b: y.status,
            measured_a_bytes: if fitted(x) { x.measured_peak_bytes } else { 0 },
            measured_b_bytes: if fitted(y) { y.measured_peak_bytes } else { 0 },
            measured_change_ratio: both
                .then(|| y.measured_peak_bytes as f64 / x.measured_peak_bytes as f64 - 1.0),
            estimated_a_bytes: x.estimated_bytes,
            estimated_b_bytes: y.estimated_bytes,
            error_a_ratio: err(x),
            error_b_ratio: err(y),
        });
    }
    let mut only_b: Vec<Key> = pb
        .keys()
        .filter(|k| !pa.contains_key(*k))
        .cloned()
        .collect();
    // Prefill before decode, as they ran.
    shared.sort_by_key(|p| (p.batch, p.context, p.phase != PointPhase::Prefill));
    only_a.sort_by_key(|k| (k.0, k.1, k.2 != PointPhase::Prefill));
    only_b.sort_by_key(|k| (k.0, k.1, k.2 != PointPhase::Prefill));
    let (ba, bb) = (boundary_map(a), boundary_map(b));
    let boundaries = ba
        .iter()
        .filter_map(|(batch, x)| {
            let y = bb.get(batch)?;
            Some(BoundaryChange {
                batch: *batch,
                measured_max_context_a: x.0,
                measured_max_context_b: y.0,
                predicted_max_context_a: x.1,
                predicted_max_context_b: y.1,
            })
        })
        .collect();
    Comparison {
        run_a: run_a.to_string(),
        run_b: run_b.to_string(),
        headline_a: a.headline.clone(),
        headline_b: b.headline.clone(),
        facts,
        shared,
        only_a,
        only_b,
        boundaries,
    }
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), percent)
}

fn worst(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    v.flatten()
        .filter(|x| x.is_finite())
        .max_by(|x, y| x.abs().total_cmp(&y.abs()))
}

/// The comparison in Markdown.
pub fn markdown(c: &Comparison) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# What changed: B against A\n");
    let _ = writeln!(o, "- **A** `{}`: {}", c.run_a, c.headline_a);
    let _ = writeln!(o, "- **B** `{}`: {}\n", c.run_b, c.headline_b);
    let changed: Vec<&Fact> = c.facts.iter().filter(|f| !f.same).collect();
    let _ = writeln!(o, "## Setup\n");
    if changed.is_empty() {
        let _ = writeln!(o, "The two runs were made the same way.\n");
    } else {
        let _ = writeln!(o, "| | A | B |\n|---|---|---|");
        for f in &changed {
            let _ = writeln!(o, "| {} | {} | {} |", f.what, f.a, f.b);
        }
        let same: Vec<&str> = c.facts.iter().filter(|f| f.same).map(|f| f.what).collect();
        let _ = writeln!(o, "\nThe same in both: {}.\n", same.join(", "));
    }
    let _ = writeln!(o, "## Points measured in both\n");
    if c.shared.is_empty() {
        let _ = writeln!(o, "None: the two runs share no (batch, context, phase).\n");
    } else {
        let changes = worst(c.shared.iter().map(|p| p.measured_change_ratio));
        let ea = worst(c.shared.iter().map(|p| p.error_a_ratio));
        let eb = worst(c.shared.iter().map(|p| p.error_b_ratio));
        let status = c.shared.iter().filter(|p| p.status_a != p.status_b).count();
        let _ = writeln!(
            o,
            "{} points. Largest change of the measured peak: {}. Largest estimate error: {} in \
             A, {} in B. Points whose outcome changed (fitted / out of memory): {status}.\n",
            c.shared.len(),
            pct(changes),
            pct(ea),
            pct(eb)
        );
        let _ = writeln!(
            o,
            "| batch | context | phase | measured A | measured B | change | estimated A | \
             estimated B | error A | error B |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let shown = |status: Status, v: u64| {
            if status == Status::Ok {
                bytes(v)
            } else {
                status.to_string()
            }
        };
        for p in &c.shared {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.batch,
                p.context,
                p.phase,
                shown(p.status_a, p.measured_a_bytes),
                shown(p.status_b, p.measured_b_bytes),
                pct(p.measured_change_ratio),
                bytes(p.estimated_a_bytes),
                bytes(p.estimated_b_bytes),
                pct(p.error_a_ratio),
                pct(p.error_b_ratio)
            );
        }
        let _ = writeln!(o);
    }
    for (name, only) in [("A", &c.only_a), ("B", &c.only_b)] {
        if !only.is_empty() {
            let list: Vec<String> = only
                .iter()
                .map(|(b, x, p)| format!("{b}x{x} {p}"))
                .collect();
            let _ = writeln!(o, "Only in {name} ({}): {}.\n", only.len(), list.join(", "));
        }
    }
    if !c.boundaries.is_empty() {
        let show = |v: Option<u64>| v.map_or("-".into(), |x| x.to_string());
        let _ = writeln!(
            o,
            "## Out-of-memory boundary\n\n| batch | fitted A | fitted B | predicted A | \
             predicted B |\n|---:|---:|---:|---:|---:|"
        );
        for x in &c.boundaries {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                x.batch,
                show(x.measured_max_context_a),
                show(x.measured_max_context_b),
                show(x.predicted_max_context_a),
                show(x.predicted_max_context_b)
            );
        }
    }
    o
}
