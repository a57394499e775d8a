//! `vramprobe bench`: the arguments (or a stored run, `--resume`) become a plan, the plan a
//! sweep; this file shows progress and prints the results.

use super::{out, outln, BadInput, BenchArgs, EXIT_INTERRUPTED};
use crate::bench::{self, Sweep};
use crate::plan::BenchPlan;
use crate::report;
use crate::store::{self, PointRecord, Stage, Status};
use anyhow::Context;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub(super) fn run(a: BenchArgs) -> anyhow::Result<()> {
    let mut sweep = match &a.resume {
        Some(dir) => {
            let (plan, info) = stored_plan(dir)?;
            let mut s = Sweep::resolve(plan, Some(dir.clone()), a.quiet)?;
            if (s.spec.name(), s.spec.param_count()) != (info.model.clone(), info.params) {
                return Err(BadInput(format!(
                    "--resume {}: the model found now ({}, {} parameters) is not the run's \
                     ({}, {} parameters)",
                    dir.display(),
                    s.spec.name(),
                    s.spec.param_count(),
                    info.model,
                    info.params
                ))
                .into());
            }
            s.resume = true;
            s
        }
        None => Sweep::resolve(a.plan(), a.out.clone(), a.quiet)?,
    };
    sweep.stop = Some(stop_flag()?);
    for note in sweep.plan.assumptions(&sweep.spec) {
        eprintln!("assumed: {note}");
    }
    let out = sweep.out.clone();
    let bar = sweep_bar(
        a.quiet,
        sweep
            .plan
            .workloads(&sweep.spec)
            .map_or(0, |w| w.len() as u64 * sweep.plan.mode.phases_per_point()),
    );
    if sweep.resume {
        // What the run being resumed already stored.
        let stored = store::read_points(&out).map_or(0, |p| {
            p.iter().filter(|p| p.stage == Stage::Grid).count() as u64
        });
        bar.set_position(stored);
    }
    let points = bench::run(&sweep, |p| {
        tracing::info!(batch = p.batch, context = p.context, phase = %p.phase, error = p.error_ratio, "point stored");
        // Drawn here, between points, from this thread: no ticker thread allocating while
        // the CPU allocator is being measured.
        if p.stage == Stage::Boundary && bar.position() >= bar.length().unwrap_or(0) {
            bar.inc_length(1);
        }
        bar.set_message(progress_message(p));
        bar.inc(1);
    });
    bar.finish_and_clear();
    let points = points.with_context(|| format!("bench into {}", out.display()))?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&points)?);
    } else {
        out!("{}", report::bench_table(&points));
        out!("{}", report::bench_summary(&points));
        outln!("run written to {}", out.display());
    }
    let r = report::write(&out)?;
    if !a.json {
        outln!("{}", r.headline);
    }
    match a.max_error {
        // A resumed run is checked whole: the points stored before as well as the new ones.
        Some(max) if sweep.resume => check_tolerance(&store::read_points(&out)?, max),
        Some(max) => check_tolerance(&points, max),
        None => Ok(()),
    }
}

/// The plan a stored run was made with (`--resume DIR`), and its run.json.
fn stored_plan(dir: &Path) -> anyhow::Result<(BenchPlan, store::RunInfo)> {
    for f in ["run.json", "points.jsonl"] {
        if !dir.join(f).is_file() {
            return Err(BadInput(format!(
                "--resume {}: no {f} there: not a vramprobe run directory",
                dir.display()
            ))
            .into());
        }
    }
    let run_json = dir.join("run.json");
    let info = store::RunDir::read_info(dir)?;
    match info.plan() {
        None => Err(BadInput(format!(
            "{}: run.json has no `settings` (written by an older vramprobe): it cannot be resumed",
            run_json.display()
        ))
        .into()),
        Some(Err(e)) => Err(BadInput(format!(
            "{}: settings: {}",
            run_json.display(),
            e.api_message()
        ))
        .into()),
        Some(Ok(plan)) => Ok((plan, info)),
    }
}

/// `--max-error`: fail, naming every point whose error exceeds `max`.
fn check_tolerance(points: &[PointRecord], max: f64) -> anyhow::Result<()> {
    let bad = bench::tolerance_violations(points, max);
    if bad.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = bad
        .iter()
        .map(|p| {
            format!(
                "batch {} context {} {}: error {:+.3}%, above the weights {:+.3}%",
                p.batch,
                p.context,
                p.phase,
                p.error_ratio * 100.0,
                p.above_weights_error_ratio * 100.0
            )
        })
        .collect();
    anyhow::bail!(
        "{} of {} points exceed --max-error {max}:\n  {}",
        bad.len(),
        points.len(),
        list.join("\n  ")
    )
}

/// The progress bar's message after a point: its peak and error, or its status.
fn progress_message(p: &PointRecord) -> String {
    if p.status == Status::Ok {
        format!(
            "batch {} x {} {}: {} ({:+.2}%)",
            p.batch,
            p.context,
            p.phase,
            report::bytes(p.measured_peak_bytes),
            p.error_ratio * 100.0
        )
    } else {
        format!(
            "batch {} x {} {}: {}",
            p.batch, p.context, p.phase, p.status
        )
    }
}

/// SIGINT and SIGTERM set the flag (the sweep stops after the current point); a second
/// one ends the process at once.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            EXIT_INTERRUPTED.into(),
            stop.clone(),
        )?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// The sweep's progress bar on stderr: points stored of the grid's, the last point's peak
/// and error. Hidden with `--quiet` or when stderr is not a terminal.
fn sweep_bar(quiet: bool, points: u64) -> indicatif::ProgressBar {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(points);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:20}] {pos}/{len} points, {elapsed} (eta {eta}) {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("bench");
    bar.set_message("loading the model and warming up");
    bar.tick();
    bar
}
