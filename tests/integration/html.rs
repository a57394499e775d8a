//! report.html in a real browser: headless Chromium (Debian package `chromium`, installed by
//! .ci/run) loads the page from a file, and a check script reports what rendered: the
//! headline's text and size, every plot's size and drawn elements, and every resource the
//! page fetched or tried to fetch (there must be none).

use super::*;
use serde_json::Value;
use std::process::Command;

/// Chromium's path: `VRAMPROBE_CHROMIUM`, else `chromium` on PATH.
fn chromium() -> String {
    std::env::var("VRAMPROBE_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Runs after load, before the CSP meta applies (it is the first element of <head>), and
/// writes what it saw into the DOM as JSON for `--dump-dom`.
const CHECK: &str = r#"<script>
var violations = [];
document.addEventListener('securitypolicyviolation', function (e) { violations.push(e.blockedURI || e.violatedDirective); });
window.addEventListener('load', function () {
  var h = document.getElementById('headline');
  var figures = Array.prototype.map.call(document.querySelectorAll('figure'), function (f) {
    var svg = f.querySelector('svg');
    var r = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
    return {
      id: f.id,
      width: r.width,
      height: r.height,
      drawn: svg ? svg.querySelectorAll('path,polyline,polygon,line,rect,circle').length : 0,
      texts: svg ? Array.prototype.map.call(svg.querySelectorAll('text'), function (t) { return t.textContent; }) : []
    };
  });
  var out = {
    headline: h ? h.innerText : null,
    headline_height: h ? h.getBoundingClientRect().height : 0,
    figures: figures,
    resources: performance.getEntriesByType('resource').map(function (e) { return e.name; }),
    violations: violations
  };
  var pre = document.createElement('pre');
  pre.id = 'vramprobe-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"#;

/// Load `html` in headless Chromium and return what the check script saw.
fn render(html: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        html.contains("<head>\n"),
        "report.html has no <head> to put the check script in"
    );
    let page = dir.path().join("page.html");
    std::fs::write(
        &page,
        html.replacen("<head>\n", &format!("<head>\n{CHECK}\n"), 1),
    )
    .unwrap();
    let profile = dir.path().join("profile");
    let o = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,900",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}): install Debian's chromium (apt-get install chromium), \
                 as .ci/run does, or set VRAMPROBE_CHROMIUM",
                chromium()
            )
        });
    let dom = stdout(&o);
    let start = dom
        .find("<pre id=\"vramprobe-check\">")
        .unwrap_or_else(|| panic!("the check script did not run\n{}", stderr(&o)));
    let json = &dom[start + "<pre id=\"vramprobe-check\">".len()..];
    let json = &json[..json.find("</pre>").unwrap()];
    // The DOM is serialised as HTML: undo the escapes textContent got.
    let json = json
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap()
}

/// What every report page must show: the headline as report.json has it, each plot drawn
/// at a real size with its lines and labels, and nothing fetched.
fn assert_renders(html: &str, headline: &str, plots: &[&str]) -> Value {
    for forbidden in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(
            !html.contains(forbidden),
            "report.html contains {forbidden}: it must load nothing"
        );
    }
    let seen = render(html);
    assert_eq!(seen["headline"], headline);
    assert!(seen["headline_height"].as_f64().unwrap() > 10.0, "{seen}");
    let figures = seen["figures"].as_array().unwrap();
    let ids: Vec<&str> = figures.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids, plots);
    for f in figures {
        assert!(f["width"].as_f64().unwrap() > 300.0, "{f}");
        assert!(f["height"].as_f64().unwrap() > 150.0, "{f}");
        assert!(f["drawn"].as_u64().unwrap() > 10, "{f}");
        assert!(f["texts"].as_array().unwrap().len() > 5, "{f}");
    }
    assert_eq!(seen["resources"], serde_json::json!([]), "fetched: {seen}");
    assert_eq!(seen["violations"], serde_json::json!([]), "tried: {seen}");
    seen
}

#[test]
fn a_cpu_bench_report_renders_in_chromium() {
    if !have_tool(
        &chromium(),
        "chromium",
        "a_cpu_bench_report_renders_in_chromium",
    ) {
        return;
    }
    let (_dir, out, o) = bench_run("--batch 1,2 --context 64,128 --decode-steps 2 --quiet");
    ok(&o);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let plots = ["plot-memory", "plot-components", "plot-error"];
    for p in plots {
        let svg = std::fs::read_to_string(out.join(format!("{p}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg"),
            "{p}.svg: {}",
            &svg[..40.min(svg.len())]
        );
        // The file and the page carry the same drawing.
        assert!(html.contains(&svg), "{p}.svg is not inlined in report.html");
    }
    assert!(!out.join("plot-boundary.svg").exists());
    let seen = assert_renders(&html, report["headline"].as_str().unwrap(), &plots);
    // The legend names the batches measured.
    let texts = seen["figures"][0]["texts"].to_string();
    assert!(
        texts.contains("batch 1") && texts.contains("batch 2"),
        "{texts}"
    );
}

#[test]
fn a_gpu_boundary_report_renders_in_chromium() {
    if !have_tool(
        &chromium(),
        "chromium",
        "a_gpu_boundary_report_renders_in_chromium",
    ) {
        return;
    }
    let run = "reports/gpu/2026-11-26-h100-80gb/llama3-8b-40gib-boundary";
    let o = vp(&format!("report {} --format html", run));
    ok(&o);
    let html = stdout(&o);
    let o = vp(&format!("report {} --format json", run));
    ok(&o);
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let seen = assert_renders(
        &html,
        report["headline"].as_str().unwrap(),
        &[
            "plot-memory",
            "plot-components",
            "plot-error",
            "plot-boundary",
        ],
    );
    let memory = seen["figures"][0]["texts"].to_string();
    assert!(memory.contains("memory available: 40.00 GiB"), "{memory}");
    let boundary = seen["figures"][3]["texts"].to_string();
    assert!(boundary.contains("predicted by the estimate"), "{boundary}");
}

#[test]
fn the_browser_check_sees_a_page_that_tries_to_fetch() {
    if !have_tool(
        &chromium(),
        "chromium",
        "the_browser_check_sees_a_page_that_tries_to_fetch",
    ) {
        return;
    }
    // The same page with one image added: the CSP blocks it and the check reports it, so
    // an empty list above means nothing was tried.
    let o = vp("report reports/gpu/2026-11-26-h100-80gb/tiny-bf16 --format html");
    ok(&o);
    let html = stdout(&o).replacen(
        "</h1>",
        "</h1><img src=\"http://127.0.0.1:9/pixel.png\">",
        1,
    );
    let seen = render(&html);
    let tried = seen["violations"].to_string() + &seen["resources"].to_string();
    assert!(tried.contains("127.0.0.1:9"), "{seen}");
}

#[test]
fn a_training_report_renders_in_chromium() {
    if !have_tool(
        &chromium(),
        "chromium",
        "a_training_report_renders_in_chromium",
    ) {
        return;
    }
    let (_dir, out, o) = bench_run("--mode train --batch 1,2 --context 64,128 --quiet");
    ok(&o);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let seen = assert_renders(
        &html,
        report["headline"].as_str().unwrap(),
        &["plot-memory", "plot-components", "plot-error"],
    );
    // The components are the backward pass's, the errors are per training phase.
    let components = seen["figures"][1]["texts"].to_string();
    assert!(components.contains("train_backward"), "{components}");
    assert!(components.contains("optimizer states"), "{components}");
    let errors = seen["figures"][2]["texts"].to_string();
    assert!(errors.contains("train_optimizer_first"), "{errors}");
    assert!(html.contains("id=\"training-claim\"") && html.contains("64-80 GB"));
}
