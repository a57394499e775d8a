//! `vramprobe gpus`: the GPU catalogue.

use super::{out, outln, GpusArgs};
use crate::report;
use serde_json::json;

pub(super) fn run(a: GpusArgs) -> anyhow::Result<()> {
    let cat = crate::estimate::gpus::CATALOGUE;
    if a.json {
        let v: Vec<serde_json::Value> = cat
            .iter()
            .map(|g| {
                json!({
                    "id": g.id, "name": g.name, "marketing_gb": g.marketing_gb,
                    "memory_bytes": g.memory_bytes, "usable_bytes": g.usable_bytes(),
                    "compute_capability": format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                    "bf16": g.bf16(), "source": g.source,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", report::gpus_table(cat));
    }
    Ok(())
}
