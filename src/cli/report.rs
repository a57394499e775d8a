//! `vramprobe report`: a stored run's report again, or two runs compared.

use super::{out, outln, BadInput, ReportArgs, ReportFormat};
use crate::report;
use std::path::Path;

/// A clear error when `dir` is not a run directory.
fn check_run_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("run.json").is_file() {
        return Err(BadInput(format!(
            "{}: no run.json there: not a vramprobe run directory",
            dir.display()
        ))
        .into());
    }
    Ok(())
}

/// A stored run's report, or a clear error when `dir` is not a run directory.
fn stored_report(dir: &Path) -> anyhow::Result<report::model::Report> {
    check_run_dir(dir)?;
    Ok(report::model::build(dir)?)
}

pub(super) fn run(a: ReportArgs) -> anyhow::Result<()> {
    if let Some([ra, rb]) = a.compare.as_deref() {
        let c = report::compare::compare(
            &ra.display().to_string(),
            &stored_report(ra)?,
            &rb.display().to_string(),
            &stored_report(rb)?,
        );
        match a.format {
            ReportFormat::Md => out!("{}", report::compare::markdown(&c)),
            ReportFormat::Json => outln!("{}", serde_json::to_string_pretty(&c)?),
            ReportFormat::Html => {
                return Err(BadInput("--compare renders md or json, not html".to_string()).into())
            }
        }
        return Ok(());
    }
    let Some(dir) = a.run_dir.as_deref() else {
        return Err(BadInput("report: give a RUN_DIR or --compare RUN_A RUN_B".into()).into());
    };
    if a.decode_steps {
        // Only the points are needed, not the whole report.
        check_run_dir(dir)?;
        let steps = report::decode_steps::decode_steps(&crate::store::read_points(dir)?);
        match a.format {
            ReportFormat::Md => out!(
                "{}",
                report::decode_steps::markdown(&dir.display().to_string(), &steps)
            ),
            ReportFormat::Json => outln!("{}", serde_json::to_string_pretty(&steps)?),
            ReportFormat::Html => {
                return Err(
                    BadInput("--decode-steps renders md or json, not html".to_string()).into(),
                )
            }
        }
        return Ok(());
    }
    let r = stored_report(dir)?;
    match a.format {
        ReportFormat::Md => out!("{}", report::markdown::markdown(&r)),
        ReportFormat::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
        ReportFormat::Html => {
            let plots = report::plots::plots(&r)?;
            out!("{}", report::html::html(&r, &plots));
        }
    }
    Ok(())
}
