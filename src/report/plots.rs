//! The report's plots, drawn with plotters' SVG backend (no fonts or system libraries:
//! text is SVG `<text>`, laid out with plotters' built-in metrics):
//! - `memory`: measured and estimated peak against context, one line per batch, with the
//!   memory the run had (GPU capacity or `--memory-limit`);
//! - `components`: the estimate's components stacked, per prefill point;
//! - `error`: the estimate's error per point and phase;
//! - `boundary`: the measured and predicted out-of-memory boundary (runs with a boundary search).

use super::model::Report;
use crate::store::{PointPhase, PointRecord, Stage, Status};
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

/// One plot: its file name in the run directory, its title and the SVG document.
#[derive(Debug, Clone, Serialize)]
pub struct Plot {
    pub file: String,
    pub title: String,
    #[serde(skip)]
    pub svg: String,
}

/// A plot that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the {name} plot: {message}")]
pub struct PlotError {
    pub name: &'static str,
    pub message: String,
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

const SIZE: (u32, u32) = (900, 500);
const FONT: &str = "sans-serif";

/// Line colours: one per batch size (colour-blind-safe Okabe-Ito order).
const COLOURS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];
const RED: RGBColor = RGBColor(200, 30, 30);
const GREY: RGBColor = RGBColor(120, 120, 120);

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// The divisor and name of the unit that suits `max` bytes.
fn unit(max: u64) -> (f64, &'static str) {
    if max >= 1 << 30 {
        ((1u64 << 30) as f64, "GiB")
    } else {
        ((1u64 << 20) as f64, "MiB")
    }
}

fn svg(name: &'static str, draw: impl FnOnce(&mut String) -> Drawn) -> Result<String, PlotError> {
    let mut out = String::new();
    draw(&mut out).map_err(|e| PlotError {
        name,
        message: e.to_string(),
    })?;
    Ok(out)
}

/// The memory the run could use: `--memory-limit` where given, else the GPU's total; none
/// on the CPU (host memory is not the question).
pub fn capacity_bytes(r: &Report) -> Option<u64> {
    let gpu = r.run.gpu.as_ref()?;
    gpu.memory_limit_bytes
        .or_else(|| gpu.info.as_ref().map(|i| i.memory_total_bytes))
}

/// Every plot the report has: memory, components and error always; boundary when searched.
///
/// # Errors
/// [`PlotError`] when plotters fails to draw.
pub fn plots(r: &Report) -> Result<Vec<Plot>, PlotError> {
    let mut out = vec![
        Plot {
            file: "plot-memory.svg".into(),
            title: "Peak memory against context: measured and estimated".into(),
            svg: svg("memory", |s| memory(r, s))?,
        },
        Plot {
            file: "plot-components.svg".into(),
            title: if r.training.is_some() {
                "The estimate's components (backward pass)".into()
            } else {
                "The estimate's components (prefill)".into()
            },
            svg: svg("components", |s| components(r, s))?,
        },
        Plot {
            file: "plot-error.svg".into(),
            title: "Error of the estimate at every point".into(),
            svg: svg("error", |s| error(r, s))?,
        },
    ];
    if boundary_rows(r).is_some() {
        out.push(Plot {
            file: "plot-boundary.svg".into(),
            title: "Out-of-memory boundary: measured and predicted".into(),
            svg: svg("boundary", |s| boundary(r, s))?,
        });
    }
    Ok(out)
}

/// Per batch: (context, max measured over phases, max estimated over phases), ok points only.
type Curve = Vec<(u64, u64, u64)>;

fn curves(points: &[PointRecord]) -> BTreeMap<u64, Curve> {
    let mut by: BTreeMap<u64, BTreeMap<u64, (u64, u64)>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.status == Status::Ok) {
        let e = by.entry(p.batch).or_default().entry(p.context).or_default();
        e.0 = e.0.max(p.measured_peak_bytes);
        e.1 = e.1.max(p.estimated_bytes);
    }
    by.into_iter()
        .map(|(b, m)| (b, m.into_iter().map(|(c, (x, y))| (c, x, y)).collect()))
        .collect()
}

fn memory(r: &Report, out: &mut String) -> Drawn {
    let curves = curves(&r.points);
    // A (batch, context) that did not fit, once, at its larger estimate (a decode after a
    // failed prefill was not run: its estimate is not what failed).
    let mut failed_at: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for p in r.points.iter().filter(|p| p.status != Status::Ok) {
        let e = failed_at.entry((p.batch, p.context)).or_default();
        *e = (*e).max(p.estimated_bytes);
    }
    let capacity = capacity_bytes(r);
    // The scale shows what fitted and the capacity; a point that did not fit is drawn at
    // its estimate, or at the top edge when its estimate is off the scale.
    let max_bytes = r
        .points
        .iter()
        .filter(|p| p.status == Status::Ok)
        .map(|p| p.estimated_bytes.max(p.measured_peak_bytes))
        .chain(capacity)
        .max()
        .unwrap_or_else(|| {
            r.points
                .iter()
                .map(|p| p.estimated_bytes)
                .max()
                .unwrap_or(1)
        })
        .max(1);
    let max_context = r.points.iter().map(|p| p.context).max().unwrap_or(1).max(1);
    let (div, unit_name) = unit(max_bytes);
    let top = max_bytes as f64 / div * 1.15;
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: peak memory, measured (solid) and estimated (dashed)",
                r.run.model
            ),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_context as f64 * 1.05, 0f64..top)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .y_label_formatter(&|y| tick(*y))
        .x_label_formatter(&|x| tick(*x))
        .x_desc("context (tokens)")
        .y_desc(format!("peak ({unit_name})"))
        .draw()?;
    for (i, (batch, curve)) in curves.iter().enumerate() {
        let c = colour(i);
        let measured: Vec<(f64, f64)> = curve
            .iter()
            .map(|&(x, m, _)| (x as f64, m as f64 / div))
            .collect();
        let estimated: Vec<(f64, f64)> = curve
            .iter()
            .map(|&(x, _, e)| (x as f64, e as f64 / div))
            .collect();
        chart
            .draw_series(LineSeries::new(measured.clone(), c.stroke_width(2)))?
            .label(format!("batch {batch}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(measured.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        chart.draw_series(DashedLineSeries::new(estimated, 6, 4, c.stroke_width(2)))?;
    }
    if !failed_at.is_empty() {
        chart
            .draw_series(failed_at.iter().map(|(&(_, context), &estimate)| {
                Cross::new(
                    (context as f64, (estimate as f64 / div).min(top * 0.98)),
                    5,
                    RED.stroke_width(2),
                )
            }))?
            .label("did not fit (at its estimate, or the top edge)")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, RED.stroke_width(2)));
    }
    if let Some(cap) = capacity {
        let y = cap as f64 / div;
        chart
            .draw_series(LineSeries::new(
                [(0.0, y), (max_context as f64 * 1.05, y)],
                RED.stroke_width(1),
            ))?
            .label(format!("memory available: {}", super::units::bytes(cap)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FONT, 13))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A tick value without needless decimals: "200", "2.5", "0.25".
fn tick(v: f64) -> String {
    if v.abs() >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The label of a categorical axis at `x`: the category at an integer position, nothing
/// between categories.
fn category(labels: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 0.01 && i >= 0.0 {
        labels.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Short label of a point: "b1 x 128".
fn label(batch: u64, context: u64) -> String {
    format!("{batch}x{context}")
}

/// The phases a run recorded, in the order they first appear.
fn phases(r: &Report) -> Vec<PointPhase> {
    let mut out: Vec<PointPhase> = Vec::new();
    for p in &r.points {
        if !out.contains(&p.phase) {
            out.push(p.phase);
        }
    }
    out
}

fn components(r: &Report, out: &mut String) -> Drawn {
    // Inference: the prefill (where the activations peak); training: the backward pass.
    let shown = if r.training.is_some() {
        PointPhase::TrainBackward
    } else {
        PointPhase::Prefill
    };
    let mut prefill: Vec<&PointRecord> = r
        .points
        .iter()
        .filter(|p| p.phase == shown && p.stage == Stage::Grid)
        .collect();
    prefill.sort_by_key(|p| (p.batch, p.context));
    let names: Vec<String> = {
        let mut n: Vec<String> = prefill
            .iter()
            .flat_map(|p| p.estimated_components.keys().cloned())
            .collect();
        n.sort();
        n.dedup();
        // Weights at the bottom of every bar.
        n.sort_by_key(|x| x != "weights");
        n
    };
    let max_bytes = prefill
        .iter()
        .map(|p| p.estimated_components.values().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (div, unit_name) = unit(max_bytes);
    let n = prefill.len().max(1);
    let labels: Vec<String> = prefill.iter().map(|p| label(p.batch, p.context)).collect();
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("The estimate's components at each {shown} point (batch x context)"),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.6f64..n as f64 - 0.4, 0f64..max_bytes as f64 / div * 1.05)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .y_label_formatter(&|y| tick(*y))
        .disable_x_mesh()
        .x_labels(n.min(40))
        .x_label_formatter(&|x| category(&labels, *x))
        .x_label_style((FONT, 10))
        .x_desc("batch x context")
        .y_desc(format!("estimated ({unit_name})"))
        .draw()?;
    for (k, name) in names.iter().enumerate() {
        let c = Palette99::pick(k).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = prefill
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = *p.estimated_components.get(name)?;
                let below: u64 = names[..k]
                    .iter()
                    .filter_map(|b| p.estimated_components.get(b))
                    .sum();
                let x = i as f64;
                Some(Rectangle::new(
                    [
                        (x - 0.4, below as f64 / div),
                        (x + 0.4, (below + v) as f64 / div),
                    ],
                    c.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(name.replace('_', " "))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FONT, 12))
        .draw()?;
    root.present()?;
    Ok(())
}

fn error(r: &Report, out: &mut String) -> Drawn {
    let mut ok: Vec<&PointRecord> = r
        .points
        .iter()
        .filter(|p| p.status == Status::Ok && p.error_ratio.is_finite())
        .collect();
    ok.sort_by_key(|p| (p.batch, p.context));
    let mut keys: Vec<(u64, u64)> = ok.iter().map(|p| (p.batch, p.context)).collect();
    keys.dedup();
    let index = |p: &PointRecord| keys.iter().position(|&k| k == (p.batch, p.context));
    let worst = ok
        .iter()
        .map(|p| (p.error_ratio * 100.0).abs())
        .fold(0.5f64, f64::max);
    let n = keys.len().max(1);
    let labels: Vec<String> = keys.iter().map(|&(b, c)| label(b, c)).collect();
    let source = ok.first().map_or("the measurement", |p| p.source.as_str());
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Error of the estimate against {source}: (estimated - measured) / measured"),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.6f64..n as f64 - 0.4, -worst * 1.15..worst * 1.15)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .y_label_formatter(&|y| tick(*y))
        .disable_x_mesh()
        .x_labels(n.min(40))
        .x_label_formatter(&|x| category(&labels, *x))
        .x_label_style((FONT, 10))
        .x_desc("batch x context")
        .y_desc("error (%)")
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(-0.6, 0.0), (n as f64 - 0.4, 0.0)],
        GREY.stroke_width(1),
    ))?;
    for (k, phase) in phases(r).into_iter().enumerate() {
        let c = colour(k);
        let pts: Vec<(f64, f64)> = ok
            .iter()
            .filter(|p| p.phase == phase)
            .filter_map(|p| Some((index(p)? as f64, p.error_ratio * 100.0)))
            .collect();
        let phase = phase.to_string();
        if k % 2 == 0 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?
                .label(phase)
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, c.filled()));
        } else {
            chart
                .draw_series(pts.iter().map(|&p| TriangleMarker::new(p, 5, c.filled())))?
                .label(phase)
                .legend(move |(x, y)| TriangleMarker::new((x + 6, y), 5, c.filled()));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FONT, 13))
        .draw()?;
    root.present()?;
    Ok(())
}

fn boundary_rows(r: &Report) -> Option<&[crate::store::Boundary]> {
    r.boundaries.as_deref().filter(|b| !b.is_empty())
}

fn boundary(r: &Report, out: &mut String) -> Drawn {
    let rows = boundary_rows(r).unwrap_or_default();
    let n = rows.len().max(1);
    let max_context = rows
        .iter()
        .flat_map(|b| {
            [
                b.measured_max_context,
                b.measured_first_oom_context,
                b.predicted_max_context,
                Some(b.limit_context),
            ]
        })
        .flatten()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let labels: Vec<String> = rows.iter().map(|b| format!("batch {}", b.batch)).collect();
    let capacity = capacity_bytes(r).map(super::bytes).unwrap_or_default();
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Largest context that fits in {capacity}, per batch"),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..max_context * 1.1)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .y_label_formatter(&|y| tick(*y))
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| category(&labels, *x))
        .y_desc("context (tokens)")
        .draw()?;
    let series = |f: fn(&crate::store::Boundary) -> Option<u64>| -> Vec<(f64, f64)> {
        rows.iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i as f64, f(b)? as f64)))
            .collect()
    };
    let measured = series(|b| b.measured_max_context);
    let c = colour(0);
    chart
        .draw_series(LineSeries::new(measured.clone(), c.stroke_width(2)))?
        .label("measured: largest context that fitted")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart.draw_series(measured.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    let p = colour(1);
    chart
        .draw_series(DashedLineSeries::new(
            series(|b| b.predicted_max_context),
            6,
            4,
            p.stroke_width(2),
        ))?
        .label("predicted by the estimate")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], p.stroke_width(2)));
    chart
        .draw_series(
            series(|b| b.measured_first_oom_context)
                .into_iter()
                .map(|q| Cross::new(q, 5, RED.stroke_width(2))),
        )?
        .label("measured: first out of memory")
        .legend(|(x, y)| Cross::new((x + 10, y), 5, RED.stroke_width(2)));
    let limits = series(|b| Some(b.limit_context));
    if !limits.is_empty() {
        chart
            .draw_series(DashedLineSeries::new(limits, 2, 4, GREY.stroke_width(1)))?
            .label("engine limit (not memory)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FONT, 13))
        .draw()?;
    root.present()?;
    Ok(())
}
