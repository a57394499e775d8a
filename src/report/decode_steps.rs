//! A decode phase step by step (`vramprobe report RUN --decode-steps`): what every source
//! read at the end of each decode step and after the device settled, and on CUDA what the
//! pool took from the driver for the step, handed back at its synchronisation, and held
//! beyond the tensors.
//!
//! These are the records that explain the pool's decode slack (the estimate's
//! `decode_slack_permille`, fitted on one H100 run): with the release threshold at "never"
//! nothing is released inside a step, so the reservation read at a step's end is the step's
//! highest, and the reading after the settle is what the next step starts from.

use super::units::{bytes, grouped};
use crate::store::{PointPhase, PointRecord, Stage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One source at one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStep {
    /// Bytes in use at the step's end (raw: absolute, ballast included where NVML counts it).
    pub current_bytes: u64,
    /// High-water mark since the decode phase began.
    pub peak_bytes: u64,
    /// After the step's synchronisation settled the device (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_bytes: Option<u64>,
}

/// One decode step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub step: u64,
    pub kv_len: u64,
    pub millis: f64,
    pub sources: BTreeMap<String, SourceStep>,
    /// CUDA: how much the pool's reservation grew during the step (its reservation at the
    /// step's end less what it held when the step began: the previous step's settled figure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_taken_bytes: Option<u64>,
    /// CUDA: what the step's settle handed back to the driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_released_bytes: Option<u64>,
    /// CUDA: the reservation at the step's end beyond the most the tensors used so far
    /// (rounding and slack; negative never, by construction of the pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_beyond_used_bytes: Option<u64>,
}

/// One point's decode phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointSteps {
    pub batch: u64,
    pub context: u64,
    pub stage: Stage,
    /// What the estimate expects the pool to hold beyond the tensors at the phase's peak
    /// (`cuda_pool_reserved` less `cuda_pool` in the point's `estimated_by_source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_pool_beyond_used_bytes: Option<u64>,
    pub steps: Vec<StepRow>,
}

/// Every decode point of a run that has a step-by-step trace, in the order stored.
pub fn decode_steps(points: &[PointRecord]) -> Vec<PointSteps> {
    points
        .iter()
        .filter(|p| p.phase == PointPhase::Decode && !p.decode_trace.is_empty())
        .map(point_steps)
        .collect()
}

fn point_steps(p: &PointRecord) -> PointSteps {
    const USED: &str = "cuda_pool";
    const RESERVED: &str = "cuda_pool_reserved";
    let est = |k: &str| p.estimated_by_source.get(k).copied();
    let estimated_pool_beyond_used_bytes = match (est(RESERVED), est(USED)) {
        (Some(r), Some(u)) => Some(r.saturating_sub(u)),
        _ => None,
    };
    let mut before: Option<u64> = None;
    let steps = p
        .decode_trace
        .iter()
        .map(|s| {
            let sources = s
                .current
                .iter()
                .map(|(name, &current)| {
                    let step = SourceStep {
                        current_bytes: current,
                        peak_bytes: s.peak.get(name).copied().unwrap_or(current),
                        settled_bytes: s.settled.get(name).copied(),
                    };
                    (name.clone(), step)
                })
                .collect::<BTreeMap<_, _>>();
            let reserved_end = s.current.get(RESERVED).copied();
            let reserved_settled = s.settled.get(RESERVED).copied();
            let pool_taken_bytes = reserved_end.zip(before).map(|(e, b)| e.saturating_sub(b));
            let pool_released_bytes = reserved_end
                .zip(reserved_settled)
                .map(|(e, st)| e.saturating_sub(st));
            let pool_beyond_used_bytes = reserved_end
                .zip(s.peak.get(USED).copied())
                .map(|(r, u)| r.saturating_sub(u));
            before = reserved_settled;
            StepRow {
                step: s.step,
                kv_len: s.kv_len,
                millis: s.micros as f64 / 1000.0,
                sources,
                pool_taken_bytes,
                pool_released_bytes,
                pool_beyond_used_bytes,
            }
        })
        .collect();
    PointSteps {
        batch: p.batch,
        context: p.context,
        stage: p.stage,
        estimated_pool_beyond_used_bytes,
        steps,
    }
}

/// The steps as Markdown: one table per point, a column pair per source.
pub fn markdown(run: &str, points: &[PointSteps]) -> String {
    let mut s = format!("# Decode steps: {run}\n\n");
    if points.is_empty() {
        s.push_str(
            "No decode phase in this run has a step-by-step trace (runs stored before \
             vramprobe recorded one, training runs, or points that did not run).\n",
        );
        return s;
    }
    s.push_str(
        "At each step's end (before anything is released) and, on a GPU, after the step's \
         synchronisation settled the device, in bytes. Readings are raw: absolute, a \
         `--memory-limit` ballast included in NVML's.\n",
    );
    for p in points {
        let _ = write!(
            s,
            "\n## batch {} x context {} ({})\n\n",
            p.batch, p.context, p.stage
        );
        if let Some(e) = p.estimated_pool_beyond_used_bytes {
            let _ = writeln!(
                s,
                "The estimate expects the pool to hold {} beyond the tensors at the phase's \
                 peak.\n",
                bytes(e)
            );
        }
        let names: Vec<&String> = p
            .steps
            .first()
            .map_or(Vec::new(), |r| r.sources.keys().collect::<Vec<_>>());
        let settled = p
            .steps
            .iter()
            .any(|r| r.sources.values().any(|v| v.settled_bytes.is_some()));
        let pool = p.steps.iter().any(|r| r.pool_beyond_used_bytes.is_some());
        let mut head = vec!["step".to_string(), "kv_len".into(), "ms".into()];
        for n in &names {
            head.push(format!("{n} end"));
            head.push(format!("{n} peak"));
            if settled {
                head.push(format!("{n} settled"));
            }
        }
        if pool {
            head.extend(["pool taken".into(), "pool released".into()]);
            head.push("pool beyond used".into());
        }
        let _ = writeln!(s, "| {} |", head.join(" | "));
        let _ = writeln!(s, "|{}", "---:|".repeat(head.len()));
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), grouped);
        for r in &p.steps {
            let mut cells = vec![
                r.step.to_string(),
                r.kv_len.to_string(),
                format!("{:.2}", r.millis),
            ];
            for n in &names {
                let v = r.sources.get(*n);
                cells.push(opt(v.map(|v| v.current_bytes)));
                cells.push(opt(v.map(|v| v.peak_bytes)));
                if settled {
                    cells.push(opt(v.and_then(|v| v.settled_bytes)));
                }
            }
            if pool {
                cells.push(opt(r.pool_taken_bytes));
                cells.push(opt(r.pool_released_bytes));
                cells.push(opt(r.pool_beyond_used_bytes));
            }
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DecodeStep;

    fn step(n: u64, used: u64, used_peak: u64, reserved: u64, settled: u64) -> DecodeStep {
        let m = |a: &[(&str, u64)]| a.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        DecodeStep {
            step: n,
            kv_len: 100 + n,
            micros: 1500,
            current: m(&[("cuda_pool", used), ("cuda_pool_reserved", reserved)]),
            peak: m(&[("cuda_pool", used_peak), ("cuda_pool_reserved", reserved)]),
            settled: m(&[("cuda_pool", used), ("cuda_pool_reserved", settled)]),
        }
    }

    #[test]
    fn the_pool_columns_follow_the_readings() {
        let mib = 1u64 << 20;
        let mut p: PointRecord = serde_json::from_str(
            r#"{"model": "m", "dtype": "bf16", "engine": "candle-eager", "device": "cuda:0",
                "batch": 1, "context": 100, "phase": "decode", "decode_steps": 2,
                "estimated_bytes": 1, "estimated_components": {}, "measured_peak_bytes": 1,
                "source": "cuda_pool", "measured": {}, "error_ratio": 0.0,
                "estimated_above_weights_bytes": 0, "measured_above_weights_bytes": 0,
                "above_weights_error_ratio": null, "secs_per_forward": 0.1,
                "tokens_per_sec": 10.0, "status": "ok"}"#,
        )
        .unwrap();
        p.estimated_by_source = [
            ("cuda_pool".to_string(), 100 * mib),
            ("cuda_pool_reserved".to_string(), 160 * mib),
        ]
        .into();
        p.decode_trace = vec![
            step(1, 90 * mib, 95 * mib, 128 * mib, 96 * mib),
            step(2, 91 * mib, 97 * mib, 160 * mib, 96 * mib),
        ];
        let all = decode_steps(&[p.clone()]);
        assert_eq!(all.len(), 1);
        let s = &all[0];
        assert_eq!(s.estimated_pool_beyond_used_bytes, Some(60 * mib));
        // Step 1 has no previous settle: what it took is unknown.
        assert_eq!(s.steps[0].pool_taken_bytes, None);
        assert_eq!(s.steps[0].pool_released_bytes, Some(32 * mib));
        assert_eq!(s.steps[0].pool_beyond_used_bytes, Some(33 * mib));
        assert_eq!(s.steps[1].pool_taken_bytes, Some(64 * mib));
        assert_eq!(s.steps[1].pool_released_bytes, Some(64 * mib));
        assert_eq!(s.steps[1].pool_beyond_used_bytes, Some(63 * mib));
        let md = markdown("r", &all);
        assert!(
            md.contains(
                "| step | kv_len | ms | cuda_pool end | cuda_pool peak | cuda_pool settled |"
            ),
            "{md}"
        );
        assert!(md.contains("| 2 | 102 | 1.50 |"), "{md}");
        assert!(
            md.contains("67,108,864 | 67,108,864 | 66,060,288 |"),
            "{md}"
        );
        // A prefill, or a decode without a trace, is not listed.
        p.decode_trace.clear();
        assert!(decode_steps(&[p]).is_empty());
        assert!(markdown("r", &[]).contains("No decode phase"));
    }
}
