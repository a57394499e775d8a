//! Rendering results for people. A stored run's report is data ([`model`]) that each writer
//! turns into a format ([`markdown`], [`html`] with the [`plots`], report.json by serde);
//! [`compare`] holds two runs' reports side by side; [`tables`] are the terminal tables of
//! the commands. Nothing here imports a writer except [`write`], so the imports run one way:
//! units <- model <- writers <- write.

pub mod compare;
pub mod decode_steps;
pub mod html;
pub mod markdown;
pub mod model;
pub mod plots;
pub mod tables;
pub mod units;

pub use tables::*;
pub use units::{bytes, grouped};

use crate::store::StoreError;
use std::path::Path;

/// Write report.json, report.md, report.html and the SVG plots into the run directory.
///
/// # Errors
/// [`StoreError`]; a plot that cannot be drawn is an I/O error on its file.
pub fn write(dir: &Path) -> Result<model::Report, StoreError> {
    let r = model::build(dir)?;
    let put = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| StoreError::Io { path, source })
    };
    let mut json = serde_json::to_string_pretty(&r).unwrap_or_default();
    json.push('\n');
    put("report.json", &json)?;
    put("report.md", &markdown::markdown(&r))?;
    let plots = plots::plots(&r).map_err(|e| StoreError::Io {
        path: dir.join("report.html"),
        source: std::io::Error::other(e),
    })?;
    for p in &plots {
        put(&p.file, &p.svg)?;
    }
    put("report.html", &html::html(&r, &plots))?;
    Ok(r)
}
