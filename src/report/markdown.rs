//! `report.md`: a stored run's report to read.

use super::model::{rule_sentence, setup_facts, Report};
use super::units::{bytes, percent};
use crate::store::Status;
use std::fmt::Write;

/// `report.md`.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let run = &r.run;
    let _ = writeln!(out, "# {}: memory, estimated and measured\n", run.model);
    let _ = writeln!(out, "**{}**\n", r.headline);
    let _ = writeln!(out, "## The rule of thumb against the measurement\n");
    let _ = writeln!(out, "{}\n", rule_sentence(r));
    if let Some(q) = &r.quantized {
        let _ = writeln!(out, "## A 16 GB card: the seed's claim\n");
        let _ = writeln!(out, "The seed: \"{}\"\n", q.seed_claim);
        let _ = writeln!(out, "{}\n", q.verdict);
        let _ = writeln!(
            out,
            "| Llama-3-8B, batch 1 x {} | GPU | usable | needs | fits | max context |",
            q.context
        );
        let _ = writeln!(out, "|---|---|---:|---:|---|---:|");
        for f in &q.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                f.weights,
                f.gpu,
                bytes(f.usable_bytes),
                bytes(f.needed_bytes),
                if f.fits { "yes" } else { "no" },
                f.max_context.map_or("-".to_string(), |c| c.to_string())
            );
        }
        let _ = writeln!(
            out,
            "\nEstimated (`vramprobe fit --engine candle-quantized`); this run measured the \
             engine's estimate on its own model, above.\n"
        );
    }
    if let Some(t) = &r.training {
        let _ = writeln!(out, "## Training: the seed's claim\n");
        let _ = writeln!(out, "The seed: \"{}\"\n", t.seed_claim);
        let _ = writeln!(out, "{}\n", t.verdict);
        let _ = writeln!(
            out,
            "| Llama-3-8B, BF16, batch 1 | context | forward | backward | optimizer step | peak |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for e in &t.llama3_8b {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} GB | {:.1} GB | {:.1} GB | **{:.1} GB** ({}) |",
                e.setup,
                e.context,
                e.forward_bytes as f64 / 1e9,
                e.backward_bytes as f64 / 1e9,
                e.optimizer_bytes as f64 / 1e9,
                e.peak_bytes as f64 / 1e9,
                e.peak_phase
            );
        }
        let _ = writeln!(
            out,
            "\nWhat sets these peaks in candle 0.11 (each measured on the CPU within 0.25%): \
             the forward graph stays alive through `backward`; `backward` stores a gradient \
             for every operand, constants and frozen weights included (with LoRA, three \
             weight-sized tensors per frozen projection, so LoRA saves the optimizer's state \
             but not the backward peak); candle-nn's `AdamW::step` computes on the `Var`s, so \
             about 14 temporaries the size of the largest parameter (the 1 GB `lm_head` of \
             Llama-3-8B) are alive at once."
        );
    }
    let _ = writeln!(out, "## Every point\n");
    let _ = writeln!(
        out,
        "| batch | context | phase | status | estimated | measured | error | source |"
    );
    let _ = writeln!(out, "|---:|---:|---|---|---:|---:|---:|---|");
    for p in &r.points {
        let (m, e) = if p.status == Status::Ok {
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
    if let Some(b) = &r.boundaries {
        let _ = writeln!(out, "\n## Out-of-memory boundary\n");
        let _ = writeln!(
            out,
            "| batch | largest context that fitted | first out of memory | predicted |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|");
        let show = |v: Option<u64>| v.map_or("-".into(), |x| x.to_string());
        for x in b {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                x.batch,
                show(x.measured_max_context),
                show(x.measured_first_oom_context),
                show(x.predicted_max_context)
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
