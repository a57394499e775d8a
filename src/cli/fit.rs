//! `vramprobe fit` (and `estimate --fit`): which GPUs a model fits on, how far it stretches,
//! how many it needs.

use super::{load_overheads, out, outln, print_assumed, BadInput, FitArgs};
use crate::estimate::fit::{self, FitQuery, GpuFit, TrainFitQuery};
use crate::estimate::gpus::{self, GpuModel};
use crate::estimate::Workload;
use crate::model::ModelRef;
use crate::plan::{Grid, Mode};
use crate::report;
use crate::spec::DType;
use serde_json::json;

/// The fit of `q` on every GPU of the catalogue, or on the one `only` names. Unless the
/// user gave a calibration (`calibrated`), each GPU with a committed calibration is fitted
/// with its own measured CUDA terms, the others with `q`'s.
pub(super) fn fit_results(
    q: &FitQuery<'_>,
    only: Option<&str>,
    calibrated: bool,
) -> anyhow::Result<Vec<GpuFit>> {
    Ok(select_gpus(only)?
        .into_iter()
        .map(|g| {
            let own = (!calibrated)
                .then(|| crate::estimate::cuda::committed_for(g.name))
                .flatten();
            match own {
                Some(c) => GpuFit {
                    calibration: Some(c.file),
                    ..fit::fit(
                        &FitQuery {
                            overheads: c.overheads,
                            ..*q
                        },
                        g,
                    )
                },
                None => fit::fit(q, g),
            }
        })
        .collect())
}

/// The catalogue, or the one GPU `--gpu` names.
pub(super) fn select_gpus(only: Option<&str>) -> anyhow::Result<Vec<&'static GpuModel>> {
    Ok(match only {
        None => gpus::CATALOGUE.iter().collect(),
        Some(name) => vec![gpus::find(name).ok_or_else(|| {
            let ids: Vec<&str> = gpus::CATALOGUE.iter().map(|g| g.id).collect();
            BadInput(format!(
                "--gpu {name}: not one GPU of the catalogue (ids: {})",
                ids.join(", ")
            ))
        })?],
    })
}

/// Print a fit: `v` (the JSON without the fit) gets `fit` added, or the table.
fn print_fit(
    json_out: bool,
    mut v: serde_json::Value,
    q: &FitQuery<'_>,
    fits: &[GpuFit],
    assumed: &[String],
) -> anyhow::Result<()> {
    if json_out {
        v["fit"] = json!(fits);
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_assumed(assumed);
        out!(
            "{}",
            report::fit_table(
                &q.spec.name(),
                &super::precision(q.dtype, q.engine, q.quant),
                q.engine,
                q.workload,
                fits
            )
        );
    }
    Ok(())
}

pub(super) fn run(a: FitArgs) -> anyhow::Result<()> {
    let (spec, _) = ModelRef::of(Some(&a.q.model)).load(a.q.revision.as_deref(), false, true)?;
    let dtype = a.q.dtype.or(spec.torch_dtype).unwrap_or(DType::BF16);
    let Some(engine) = a.q.profile()? else {
        return super::vllm::fit(&a, &spec, dtype);
    };
    if a.concurrency.is_some() {
        return Err(BadInput("--concurrency is for --engine vllm's plan".into()).into());
    }
    a.q.quant_for(engine)?;
    let limit = engine
        .positions(&spec)
        .saturating_sub(a.q.decode_steps)
        .max(2);
    let context = a.context.unwrap_or(4096.min(limit));
    let grid = Grid {
        batches: vec![a.q.batch],
        contexts: vec![context],
        decode_steps: a.q.decode_steps,
    };
    let w: Workload = grid.workloads(&spec)?[0];
    super::check_engine_workload(&spec, engine, a.q.quant_for(engine)?, w, a.q.train.mode)?;
    let (overheads, source) = load_overheads(a.q.calibration.as_deref(), a.gpu.as_deref())?;
    let layout = a.q.gguf_layout(&spec, engine)?;
    let q =
        a.q.fit_query(&spec, dtype, engine, w, overheads, layout.as_ref());
    if a.q.train.mode == Mode::Train {
        // A training step has no decode steps: the context is the whole sequence.
        let q = FitQuery {
            workload: Workload { context, ..w },
            ..q
        };
        return run_train(&a, &q, &source);
    }
    let assumed = grid.assumptions(&spec);
    let fits = fit_results(&q, a.gpu.as_deref(), a.q.calibration.is_some())?;
    let v = json!({
        "model": spec.name(), "dtype": dtype, "engine": engine.as_str(), "mode": "inference",
        "batch": w.batch, "context": w.context, "decode_steps": w.decode_steps,
        "overheads": overheads, "overheads_source": source, "assumed": assumed,
    });
    print_fit(a.json, v, &q, &fits, &assumed)
}

fn run_train(a: &FitArgs, q: &FitQuery<'_>, source: &str) -> anyhow::Result<()> {
    let t = TrainFitQuery {
        spec: q.spec,
        dtype: q.dtype,
        engine: q.engine,
        batch: q.workload.batch,
        context: q.workload.context,
        setup: a.q.train.setup(a.q.quant)?,
        overheads: q.overheads,
    };
    let fits: Vec<GpuFit> = select_gpus(a.gpu.as_deref())?
        .into_iter()
        .map(|g| fit::fit_train(&t, g))
        .collect();
    let v = json!({
        "model": q.spec.name(), "dtype": q.dtype, "engine": q.engine.as_str(), "mode": "train",
        "setup": t.setup, "batch": t.batch, "context": t.context,
        "overheads": q.overheads, "overheads_source": source, "assumed": [],
    });
    print_fit(a.json, v, q, &fits, &[])
}
