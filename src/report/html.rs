//! `report.html`: one self-contained page (inline CSS and SVG; a Content-Security-Policy
//! that forbids loading anything, so a browser fetches nothing even if it tried), in the
//! report's order: the answer, the rule of thumb against the measurement, then the evidence.

use super::model::{rule_sentence, setup_facts, Report};
use super::plots::Plot;
use super::units::{bytes, percent};
use crate::store::Status;
use std::fmt::Write;

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;\
max-width:960px;padding:0 1rem;color:#1a1a1a;line-height:1.45}\
h1{font-size:1.5rem;margin-bottom:.5rem}h2{font-size:1.15rem;margin-top:2rem;\
border-bottom:1px solid #ddd;padding-bottom:.2rem}\
#headline{font-size:1.2rem;font-weight:600;background:#eef6fb;border-left:4px solid #0072b2;\
padding:.8rem 1rem}\
figure{margin:1.5rem 0}figure svg{max-width:100%;height:auto;display:block}\
figcaption{color:#555;font-size:.9rem}\
table{border-collapse:collapse;font-size:.85rem;font-variant-numeric:tabular-nums}\
th,td{padding:.2rem .6rem;border-bottom:1px solid #eee}td.n,th.n{text-align:right}\
tr.fail td{color:#a00}dt{font-weight:600}dd{margin:0 0 .4rem 0}code{font-size:.85rem}";

/// Escape text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The SVG document as an inline element (without its XML declaration, if any).
fn inline_svg(svg: &str) -> &str {
    svg.find("<svg").map_or(svg, |i| &svg[i..])
}

/// `report.html`.
pub fn html(r: &Report, plots: &[Plot]) -> String {
    let run = &r.run;
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}: memory, estimated and measured</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n",
        esc(&run.model)
    );
    let _ = writeln!(
        o,
        "<h1>{}: memory, estimated and measured</h1>",
        esc(&run.model)
    );
    let _ = writeln!(o, "<p id=\"headline\">{}</p>", esc(&r.headline));
    let _ = writeln!(
        o,
        "<h2>The rule of thumb against the measurement</h2>\n<p id=\"rule-of-thumb\">{}</p>",
        esc(&rule_sentence(r))
    );
    quantized(&mut o, r);
    training(&mut o, r);
    figures(&mut o, plots);
    points(&mut o, r);
    boundaries(&mut o, r);
    setup(&mut o, r);
    let _ = writeln!(
        o,
        "</dl>\n<p><small>report schema {}; made by vramprobe from run.json and \
         points.jsonl.</small></p>\n</body>\n</html>",
        r.schema_version
    );
    o
}

/// candle-quantized runs: the seed's 16 GB claim and the Llama-3-8B fits.
fn quantized(o: &mut String, r: &Report) {
    let Some(q) = &r.quantized else { return };
    let _ = writeln!(
        o,
        "<h2>A 16 GB card: the seed's claim</h2>\n<p id=\"quantized-claim\">The seed: \
         &ldquo;{}&rdquo; {}</p>",
        esc(&q.seed_claim),
        esc(&q.verdict)
    );
    let _ = writeln!(
        o,
        "<table id=\"llama3-16gb\">\n<thead><tr><th>Llama-3-8B, batch 1 x {}</th><th>GPU</th>\
         <th class=\"n\">usable</th><th class=\"n\">needs</th><th>fits</th>\
         <th class=\"n\">max context</th></tr></thead>\n<tbody>",
        q.context
    );
    for f in &q.rows {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&f.weights),
            esc(&f.gpu),
            bytes(f.usable_bytes),
            bytes(f.needed_bytes),
            if f.fits { "yes" } else { "no" },
            f.max_context.map_or("-".to_string(), |c| c.to_string())
        );
    }
    let _ = writeln!(o, "</tbody></table>");
}

/// Training runs: the seed's claim and the Llama-3-8B estimates.
fn training(o: &mut String, r: &Report) {
    if let Some(t) = &r.training {
        let _ = writeln!(
            o,
            "<h2>Training: the seed's claim</h2>\n<p id=\"training-claim\">The seed: \
             &ldquo;{}&rdquo; {}</p>",
            esc(&t.seed_claim),
            esc(&t.verdict)
        );
        let _ = writeln!(
            o,
            "<table id=\"llama3-training\">\n<thead><tr><th>Llama-3-8B, BF16, batch 1</th>\
             <th class=\"n\">context</th><th class=\"n\">forward</th><th class=\"n\">backward\
             </th><th class=\"n\">optimizer step</th><th class=\"n\">peak</th></tr></thead>\n<tbody>"
        );
        for e in &t.llama3_8b {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1} GB</td>\
                 <td class=\"n\">{:.1} GB</td><td class=\"n\">{:.1} GB</td>\
                 <td class=\"n\"><b>{:.1} GB</b> ({})</td></tr>",
                esc(&e.setup),
                e.context,
                e.forward_bytes as f64 / 1e9,
                e.backward_bytes as f64 / 1e9,
                e.optimizer_bytes as f64 / 1e9,
                e.peak_bytes as f64 / 1e9,
                esc(&e.peak_phase)
            );
        }
        let _ = writeln!(o, "</tbody></table>");
    }
}

/// Every plot, inline.
fn figures(o: &mut String, plots: &[Plot]) {
    let _ = writeln!(o, "<h2>Plots</h2>");
    for p in plots {
        let id = p.file.trim_end_matches(".svg");
        let _ = writeln!(
            o,
            "<figure id=\"{}\">\n{}\n<figcaption>{} (<code>{}</code>)</figcaption>\n</figure>",
            esc(id),
            inline_svg(&p.svg),
            esc(&p.title),
            esc(&p.file)
        );
    }
}

/// Every point, one row each.
fn points(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "<h2>Every point</h2>\n<table id=\"points\">\n<thead><tr><th class=\"n\">batch</th>\
         <th class=\"n\">context</th><th>phase</th><th>status</th><th class=\"n\">estimated</th>\
         <th class=\"n\">measured</th><th class=\"n\">error</th><th>source</th></tr></thead>\n<tbody>"
    );
    for p in &r.points {
        let fitted = p.status == Status::Ok;
        let (m, e) = if fitted {
            (bytes(p.measured_peak_bytes), percent(p.error_ratio))
        } else {
            ("-".to_string(), "-".to_string())
        };
        let _ = writeln!(
            o,
            "<tr{}><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            if fitted { "" } else { " class=\"fail\"" },
            p.batch,
            p.context,
            esc(p.phase.as_str()),
            esc(p.status.as_str()),
            bytes(p.estimated_bytes),
            m,
            e,
            esc(if p.source.is_empty() { "-" } else { &p.source })
        );
    }
    let _ = writeln!(o, "</tbody>\n</table>");
}

/// The out-of-memory boundary, where searched.
fn boundaries(o: &mut String, r: &Report) {
    if let Some(b) = &r.boundaries {
        let _ = writeln!(
            o,
            "<h2>Out-of-memory boundary</h2>\n<table id=\"boundary\">\n<thead><tr>\
             <th class=\"n\">batch</th><th class=\"n\">largest context that fitted</th>\
             <th class=\"n\">first out of memory</th><th class=\"n\">predicted</th></tr></thead>\n<tbody>"
        );
        let show = |v: Option<u64>| v.map_or("-".into(), |x| x.to_string());
        for x in b {
            let _ = writeln!(
                o,
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td></tr>",
                x.batch,
                show(x.measured_max_context),
                show(x.measured_first_oom_context),
                show(x.predicted_max_context)
            );
        }
        let _ = writeln!(o, "</tbody>\n</table>");
    }
}

/// Where and how the run was made.
fn setup(o: &mut String, r: &Report) {
    let _ = writeln!(o, "<h2>Where and how</h2>\n<dl id=\"setup\">");
    for (what, value) in setup_facts(r) {
        let v = if what == "command" {
            format!("<code>{}</code>", esc(&value))
        } else {
            esc(&value)
        };
        let _ = writeln!(o, "<dt>{}</dt><dd>{v}</dd>", esc(what));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn inline_svg_drops_an_xml_declaration() {
        assert_eq!(inline_svg("<?xml version=\"1.0\"?>\n<svg/>"), "<svg/>");
        assert_eq!(inline_svg("<svg a=\"1\"/>"), "<svg a=\"1\"/>");
    }
}
