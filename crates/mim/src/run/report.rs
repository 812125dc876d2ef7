//! The run report: one self-contained HTML page per run folder
//! (`report.html`), made from what the run wrote and nothing else, so
//! `tessera report` gives the same page for a finished run, a run in
//! progress (pre-training and fine-tuning refresh it at every checkpoint)
//! or several runs overlaid.
//!
//! ```text
//! config.json      → the configuration (model, recipe, precision)
//! segments.jsonl   → one line per start or resume: step, data, CPU, threads, ranks
//! metrics.jsonl    → loss, lr, gradient norm, images/s per step; knn_top1 lines;
//!                    fine-tuning's val_top1 / val_top5 per epoch
//! recon/step-*.png → the reconstruction strip (the same test images, step by step)
//! attention/step-*.png → attention maps of held-out images (the latest)
//! probe.json       → what `tessera probe` measured on the checkpoint
//! validation.json  → fine-tuning's last validation: its confusion matrix
//! ```
//! Plots are inline SVG (one `<polyline>` per run and curve, one point per
//! metrics line; a dashed line where a run was resumed), pictures are
//! embedded as base64 PNG, and no script, style or font comes from the
//! network: the page opens from disk in any browser. A short inline script
//! records, once the page has loaded, whether each picture decoded and
//! where each plot lies (`data-decoded`, `data-rect`): what the browser
//! test (tests/report.rs) reads back.

use crate::error::{Result, io_err};
use crate::io::safetensors::write_atomically;
use crate::run::folder::{ATTENTION, CONFIG, METRICS, PROBE, RECON, REPORT, SEGMENTS, VALIDATION};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Writes `dir/report.html` for the run in `dir` (atomically).
pub fn refresh(dir: &Path) -> Result<PathBuf> {
    let out = dir.join(REPORT);
    write(&[dir], &out)?;
    Ok(out)
}

/// Writes the report of the runs in `dirs` (overlaid on shared axes when
/// there are several) to `out`, atomically.
pub fn write(dirs: &[&Path], out: &Path) -> Result<()> {
    let runs = dirs.iter().map(|d| Run::read(d)).collect::<Result<Vec<_>>>()?;
    write_atomically(out, render(&runs).as_bytes())
}

/// What a run folder holds, read leniently: a missing file is an empty
/// part, a line that is not JSON is skipped (a run in progress may be
/// mid-write; the report shows what is whole).
struct Run {
    name: String,
    config: Option<serde_json::Value>,
    segments: Vec<serde_json::Value>,
    steps: Vec<serde_json::Value>,
    knn: Vec<serde_json::Value>,
    validation_lines: Vec<serde_json::Value>,
    recon: Vec<(u64, PathBuf)>,
    attention: Vec<(u64, PathBuf)>,
    probe: Option<serde_json::Value>,
    validation: Option<serde_json::Value>,
}

/// The lines of a JSON-lines file that parse.
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn json_file(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// `folder/step-NNNNNN.png` pictures by step.
fn step_pictures(folder: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.strip_suffix(".png")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort();
    v
}

impl Run {
    fn read(dir: &Path) -> Result<Run> {
        if !dir.is_dir() {
            return Err(io_err(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such run folder"),
            ));
        }
        if !dir.join(METRICS).exists() && !dir.join(CONFIG).exists() {
            return Err(crate::error::MimError::Input(format!(
                "{} holds no run (no {METRICS} or {CONFIG})",
                dir.display()
            )));
        }
        let lines = json_lines(&dir.join(METRICS));
        let has = |v: &serde_json::Value, k: &str| v.get(k).is_some_and(|x| !x.is_null());
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Run {
            name,
            config: json_file(&dir.join(CONFIG)),
            segments: json_lines(&dir.join(SEGMENTS)),
            steps: lines.iter().filter(|v| has(v, "loss")).cloned().collect(),
            knn: lines.iter().filter(|v| has(v, "knn_top1")).cloned().collect(),
            validation_lines: lines.iter().filter(|v| has(v, "val_top1")).cloned().collect(),
            recon: step_pictures(&dir.join(RECON)),
            attention: step_pictures(&dir.join(ATTENTION)),
            probe: json_file(&dir.join(PROBE)),
            validation: json_file(&dir.join(VALIDATION)),
        })
    }

    /// True for a fine-tuning run (its recipe has a layer decay).
    fn is_finetune(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.get("layer_decay").is_some())
    }

    /// `(step, value)` of `key` over the step lines.
    fn series(&self, lines: &[serde_json::Value], x: &str, key: &str) -> Vec<(f64, f64)> {
        lines
            .iter()
            .filter_map(|v| Some((v.get(x)?.as_f64()?, v.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    }

    /// The steps at which the run was resumed (every segment after the first).
    fn resumes(&self) -> Vec<f64> {
        self.segments
            .iter()
            .filter_map(|s| s["step"].as_f64())
            .filter(|&s| s > 0.0)
            .collect()
    }

    /// Wall time in seconds: each segment's clock restarts at zero.
    fn wall_seconds(&self) -> f64 {
        let mut total = 0.0;
        let mut last = 0.0;
        for t in self.steps.iter().filter_map(|v| v["time_s"].as_f64()) {
            if t < last {
                total += last;
            }
            last = t;
        }
        total + last
    }
}

// ------------------------------------------------------------- the page

/// Colours of the runs, in order (distinguishable, and printable in grey).
const PALETTE: [&str; 6] = ["#1f6fb4", "#d1495b", "#2a9d3f", "#8f5bb5", "#e08e0b", "#4a4a4a"];

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn render(runs: &[Run]) -> String {
    let title = runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(" vs ");
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Tessera report: {}</title><style>{STYLE}</style></head><body>\n\
         <h1>Tessera report: {}</h1>\n",
        esc(&title),
        esc(&title)
    );
    summary(&mut h, runs);
    curves(&mut h, runs);
    // Fine-tuning has no k-NN, reconstructions or attention pictures.
    let pretraining = !runs.iter().all(Run::is_finetune);
    if pretraining {
        representation(&mut h, runs);
        pictures(
            &mut h,
            runs,
            "reconstructions",
            "Reconstructions over training",
            |r| &r.recon,
            8,
        );
        pictures(&mut h, runs, "attention", "Attention maps", |r| &r.attention, 1);
    }
    if runs.iter().any(Run::is_finetune) {
        finetune(&mut h, runs);
    }
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body></html>\n");
    h
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}\
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}\
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{margin:0}.plot figcaption{font-size:13px;font-weight:bold}\
.strip{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.strip figure{margin:0;font-size:12px}\
.strip img{image-rendering:pixelated;width:260px}.note{color:#777;font-size:13px}\
pre{background:#f6f6f6;padding:8px;font-size:12px;max-height:300px;overflow:auto}";

/// Run once the page has loaded: whether each picture decoded, and where
/// each plot's drawing area lies on the page (read by the browser test).
const SCRIPT: &str = "window.addEventListener('load',function(){\
for(const i of document.images){i.dataset.decoded=(i.complete&&i.naturalWidth>0)?'yes':'no';}\
for(const s of document.querySelectorAll('svg.chart')){const r=s.getBoundingClientRect();\
s.dataset.rect=[r.left+scrollX,r.top+scrollY,r.width,r.height].map(Math.round).join(',');}\
document.body.dataset.loadMs=Math.round(performance.now());});";

fn section_start(h: &mut String, id: &str, title: &str) {
    let _ = writeln!(h, "<section id=\"{id}\"><h2>{title}</h2>");
}

fn summary(h: &mut String, runs: &[Run]) {
    section_start(h, "summary", "Run");
    h.push_str("<table><tr><th></th>");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(h, "<th style=\"color:{}\">{}</th>", colour(i), esc(&r.name));
    }
    h.push_str("</tr>\n");
    type Row<'a> = (&'a str, &'a dyn Fn(&Run) -> String);
    let rows: [Row; 9] = [
        ("kind", &|r| {
            if r.is_finetune() { "fine-tuning" } else { "pre-training" }.into()
        }),
        ("model", &|r| model_line(r)),
        ("data", &|r| {
            r.segments.last().map_or("?".into(), |s| {
                format!("{} ({} images)", s["data"].as_str().unwrap_or("?"), s["images"])
            })
        }),
        ("machine", &|r| {
            r.segments.last().map_or("?".into(), |s| {
                format!(
                    "{}, {} threads{}",
                    s["cpu"].as_str().unwrap_or("?"),
                    s["threads"],
                    if s["ranks"].as_u64().unwrap_or(1) > 1 {
                        format!(" × {} ranks", s["ranks"])
                    } else {
                        String::new()
                    }
                )
            })
        }),
        ("precision", &|r| {
            r.config.as_ref().map_or("?".into(), |c| {
                c["precision"]
                    .as_str()
                    .map_or_else(|| c["precision"].to_string(), String::from)
            })
        }),
        ("steps", &|r| {
            let done = r.steps.last().and_then(|v| v["step"].as_u64()).unwrap_or(0);
            let total = r.config.as_ref().and_then(|c| c["total_steps"].as_u64());
            match total {
                Some(t) => format!("{done} of {t}"),
                None => done.to_string(),
            }
        }),
        ("segments", &|r| {
            let resumes = r.resumes();
            if resumes.is_empty() {
                format!("{} (never resumed)", r.segments.len().max(1))
            } else {
                let at: Vec<String> = resumes.iter().map(|s| s.to_string()).collect();
                format!("{} (resumed at step {})", r.segments.len(), at.join(", "))
            }
        }),
        ("time", &|r| format_seconds(r.wall_seconds())),
        ("images/s", &|r| {
            let mut v: Vec<f64> = r
                .series(&r.steps, "step", "images_per_s")
                .into_iter()
                .map(|p| p.1)
                .collect();
            if v.is_empty() {
                return "?".into();
            }
            v.sort_by(f64::total_cmp);
            format!("{:.1} (median of {} steps)", v[v.len() / 2], v.len())
        }),
    ];
    for (label, f) in rows {
        let _ = write!(h, "<tr><th>{label}</th>");
        for r in runs {
            let _ = write!(h, "<td>{}</td>", esc(&f(r)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    for r in runs {
        if let Some(c) = &r.config {
            let pretty = serde_json::to_string_pretty(c).unwrap_or_default();
            let _ = writeln!(
                h,
                "<details><summary>configuration of {}</summary><pre>{}</pre></details>",
                esc(&r.name),
                esc(&pretty)
            );
        }
    }
    h.push_str("</section>\n");
}

/// The model in a line: encoder, method and target of a pre-training run,
/// encoder and classes of a fine-tuning one.
fn model_line(r: &Run) -> String {
    let Some(c) = &r.config else { return "?".into() };
    if r.is_finetune() {
        return match serde_json::from_value::<crate::train::recipe::FinetuneConfig>(c.clone()) {
            Ok(f) => format!(
                "{}, {} classes, pool {:?}",
                f.model.encoder.describe(),
                f.model.num_classes,
                f.model.pool
            ),
            Err(_) => "?".into(),
        };
    }
    match serde_json::from_value::<crate::train::pretrain::TrainConfig>(c.clone()) {
        Ok(t) => {
            let method = match &t.model.method {
                crate::config::Method::Mae { .. } => "MAE",
                crate::config::Method::SimMim => "SimMIM",
            };
            format!("{method}, {}", t.model.encoder.describe())
        }
        Err(_) => "?".into(),
    }
}

fn format_seconds(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

/// One series per run: `key` against `x` over the lines `lines` picks,
/// with the run's resumes marked if `resumes`.
fn per_run(
    runs: &[Run],
    lines: impl Fn(&Run) -> &[serde_json::Value],
    x: &str,
    key: &str,
    resumes: bool,
) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| Series {
            label: r.name.clone(),
            colour: colour(i),
            points: r.series(lines(r), x, key),
            resumes: if resumes { r.resumes() } else { Vec::new() },
        })
        .collect()
}

fn curves(h: &mut String, runs: &[Run]) {
    section_start(h, "curves", "Training curves");
    h.push_str("<div class=\"plots\">\n");
    for (key, title) in [
        ("loss", "loss"),
        ("lr", "learning rate"),
        ("grad_norm", "gradient norm"),
        ("images_per_s", "images/s"),
    ] {
        let series = per_run(runs, |r| &r.steps, "step", key, true);
        let log = key == "loss" || key == "grad_norm";
        chart(h, &format!("plot-{key}"), title, "step", &series, log);
    }
    h.push_str("</div></section>\n");
}

fn representation(h: &mut String, runs: &[Run]) {
    section_start(h, "representation", "Representation quality");
    let series = per_run(runs, |r| &r.knn, "step", "knn_top1", true);
    if series.iter().any(|s| !s.points.is_empty()) {
        h.push_str("<div class=\"plots\">\n");
        chart(
            h,
            "plot-knn",
            "online k-NN top-1 (k = 20, cosine)",
            "step",
            &series,
            false,
        );
        h.push_str("</div>\n");
    } else {
        h.push_str("<p class=\"note\">No online k-NN (pre-train with <code>--knn-every N</code>).</p>\n");
    }
    let probes: Vec<(&Run, &serde_json::Value)> = runs.iter().filter_map(|r| Some((r, r.probe.as_ref()?))).collect();
    if probes.is_empty() {
        h.push_str(
            "<p class=\"note\">No probe yet (<code>tessera probe --checkpoint RUN/checkpoint.safetensors</code> \
             writes probe.json here).</p>\n",
        );
    } else {
        h.push_str(
            "<table id=\"probe\"><tr><th>run</th><th>features</th><th>dim</th><th>linear probe</th>\
             <th>k-NN</th><th>images (train / test)</th></tr>\n",
        );
        let pct = |v: &serde_json::Value| v.as_f64().map_or("?".into(), |a| format!("{:.2}%", 100.0 * a));
        for (r, p) in probes {
            for row in p["results"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {} of {}</td></tr>",
                    esc(&r.name),
                    esc(row["features"].as_str().unwrap_or("?")),
                    row["dim"],
                    pct(&row["linear_probe"]),
                    pct(&row["knn"]),
                    p["train"],
                    p["test"],
                    esc(p["data"].as_str().unwrap_or("?"))
                );
            }
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

fn finetune(h: &mut String, runs: &[Run]) {
    section_start(h, "finetune", "Fine-tuning");
    h.push_str("<div class=\"plots\">\n");
    for (key, title) in [("val_top1", "validation top-1"), ("val_top5", "validation top-5")] {
        let series = per_run(runs, |r| &r.validation_lines, "epoch", key, false);
        chart(h, &format!("plot-{key}"), title, "epoch", &series, false);
    }
    h.push_str("</div>\n<table id=\"epochs\"><tr><th>run</th><th>epoch</th><th>top-1</th><th>top-5</th></tr>\n");
    for r in runs {
        for v in &r.validation_lines {
            let pct = |k: &str| v[k].as_f64().map_or("?".into(), |a| format!("{:.2}%", 100.0 * a));
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.name),
                v["epoch"],
                pct("val_top1"),
                pct("val_top5")
            );
        }
    }
    h.push_str("</table>\n");
    for r in runs {
        if let Some(v) = &r.validation {
            confusion(h, &r.name, v);
        }
    }
    h.push_str("</section>\n");
}

/// The confusion matrix of a validation (`EvalReport` as JSON) as a grid of
/// shaded cells, rows the true class, columns the predicted (up to 40 classes).
fn confusion(h: &mut String, name: &str, v: &serde_json::Value) {
    let Some(rows) = v["confusion"].as_array() else { return };
    let k = rows.len();
    let names: Vec<String> = v["class_names"]
        .as_array()
        .map(|a| a.iter().map(|n| n.as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default();
    if k == 0 || k > 40 {
        let _ = writeln!(
            h,
            "<p class=\"note\">{}: {k} classes, too many to draw a confusion matrix.</p>",
            esc(name)
        );
        return;
    }
    let cell = (360 / k).clamp(8, 40);
    let (label_w, top) = (110, 4);
    let (w, hgt) = (label_w + cell * k + 10, top + cell * k + 10);
    let _ = writeln!(
        h,
        "<figure class=\"plot\" id=\"confusion\">\
         <figcaption>{}: confusion (rows: true class, columns: predicted)</figcaption>\
         <svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\">",
        esc(name)
    );
    for (i, row) in rows.iter().enumerate() {
        let counts: Vec<f64> = row
            .as_array()
            .map(|r| r.iter().map(|c| c.as_f64().unwrap_or(0.0)).collect())
            .unwrap_or_default();
        let total: f64 = counts.iter().sum::<f64>().max(1.0);
        for (j, c) in counts.iter().enumerate() {
            let shade = 255.0 - 215.0 * (c / total);
            let _ = write!(
                h,
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({s},{s},255)\" stroke=\"#fff\">\
                 <title>{} → {}: {c}</title></rect>",
                label_w + j * cell,
                top + i * cell,
                esc(names.get(i).map_or("?", String::as_str)),
                esc(names.get(j).map_or("?", String::as_str)),
                s = shade as u8
            );
        }
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            label_w - 4,
            top + i * cell + cell / 2 + 4,
            esc(names.get(i).map_or("?", String::as_str))
        );
    }
    h.push_str("</svg></figure>\n");
}

/// A strip of a run's step pictures (at most `max`: evenly spread, the
/// last always in), the same images at each step.
fn pictures(
    h: &mut String,
    runs: &[Run],
    id: &str,
    title: &str,
    of: impl Fn(&Run) -> &Vec<(u64, PathBuf)>,
    max: usize,
) {
    section_start(h, id, title);
    let mut any = false;
    for r in runs {
        let all = of(r);
        if all.is_empty() {
            continue;
        }
        any = true;
        let chosen: Vec<&(u64, PathBuf)> = spread(all.len(), max).into_iter().map(|i| &all[i]).collect();
        let _ = writeln!(h, "<h3>{}</h3><div class=\"strip\">", esc(&r.name));
        for (step, path) in chosen {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let _ = writeln!(
                        h,
                        "<figure><img alt=\"step {step}\" src=\"data:image/png;base64,{}\">\
                         <figcaption>step {step}</figcaption></figure>",
                        base64(&bytes)
                    );
                }
                Err(e) => {
                    let _ = writeln!(h, "<p class=\"note\">{}: {e}</p>", esc(&path.display().to_string()));
                }
            }
        }
        h.push_str("</div>\n");
    }
    if !any {
        h.push_str("<p class=\"note\">None yet.</p>\n");
    }
    h.push_str("</section>\n");
}

/// At most `max` of the indices `0..len`, evenly spread, the last always
/// in (and the first too when `max` ≥ 2).
fn spread(len: usize, max: usize) -> Vec<usize> {
    match (len, max) {
        (0, _) | (_, 0) => Vec::new(),
        _ if len <= max => (0..len).collect(),
        (_, 1) => vec![len - 1],
        _ => (0..max).map(|i| (i * (len - 1)).div_ceil(max - 1)).collect(),
    }
}

// ------------------------------------------------------------- charts

/// One run's curve.
struct Series {
    label: String,
    colour: &'static str,
    /// `(x, y)`, one per metrics line.
    points: Vec<(f64, f64)>,
    /// Steps where the run was resumed (drawn dashed).
    resumes: Vec<f64>,
}

/// Chart geometry: the drawing area inside the margins.
const W: f64 = 560.0;
const H: f64 = 260.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;

/// A line chart of `series` on shared axes (y logarithmic with `log`, if
/// every value is positive and they span more than a factor of 10).
fn chart(h: &mut String, id: &str, title: &str, x_label: &str, series: &[Series], log: bool) {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    let _ = write!(
        h,
        "<figure class=\"plot\" id=\"{id}\"><figcaption>{}</figcaption>",
        esc(title)
    );
    let _ = write!(
        h,
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\"><rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>"
    );
    if all.is_empty() {
        let _ = writeln!(
            h,
            "<text x=\"{}\" y=\"{}\" font-size=\"13\" fill=\"#777\" text-anchor=\"middle\">no data yet</text>\
             </svg></figure>",
            W / 2.0,
            H / 2.0
        );
        return;
    }
    let (mut x0, mut x1) = min_max(all.iter().map(|p| p.0));
    let (mut y0, mut y1) = min_max(all.iter().map(|p| p.1));
    let log = log && y0 > 0.0 && y1 / y0 > 10.0;
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let fy = |y: f64| if log { y.log10() } else { y };
    if log {
        (y0, y1) = (y0.log10().floor(), y1.log10().ceil());
    } else if y1 <= y0 {
        (y0, y1) = (y0 - 1.0, y1 + 1.0);
    } else {
        let pad = 0.05 * (y1 - y0);
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + (1.0 - (fy(y) - y0) / (y1 - y0)) * ph;
    // Axes and ticks.
    let _ = write!(
        h,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{x:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 4.0,
            TOP + ph + 16.0,
            tick_label(t)
        );
    }
    let y_ticks: Vec<f64> = if log {
        (y0 as i32..=y1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        ticks(y0, y1)
    };
    for t in y_ticks {
        let y = sy(t);
        let _ = write!(
            h,
            "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            LEFT,
            LEFT + pw,
            LEFT - 4.0,
            y + 4.0,
            tick_label(t)
        );
    }
    let _ = write!(
        h,
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{x_label}{}</text>",
        LEFT + pw / 2.0,
        H - 4.0,
        if log { " · y on a log scale" } else { "" }
    );
    // Resumes, then the curves.
    for s in series {
        for &r in &s.resumes {
            if r >= x0 && r <= x1 {
                let x = sx(r);
                let _ = write!(
                    h,
                    "<line class=\"resume\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"{}\" \
                     stroke-dasharray=\"4 3\"><title>{} resumed at step {r}</title></line>",
                    TOP + ph,
                    s.colour,
                    esc(&s.label)
                );
            }
        }
    }
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            h,
            "<polyline class=\"series\" data-run=\"{}\" data-points=\"{}\" fill=\"none\" stroke=\"{}\" \
             stroke-width=\"1.5\" points=\"{}\"/>",
            esc(&s.label),
            s.points.len(),
            s.colour,
            pts.join(" ")
        );
        if s.points.len() == 1 {
            let (x, y) = s.points[0];
            let _ = write!(
                h,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                sx(x),
                sy(y),
                s.colour
            );
        }
        if series.len() > 1 {
            let _ = write!(
                h,
                "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{}\" text-anchor=\"end\">{}</text>",
                LEFT + pw - 6.0,
                TOP + 14.0 + 13.0 * i as f64,
                s.colour,
                esc(&s.label)
            );
        }
    }
    h.push_str("</svg></figure>\n");
}

fn min_max(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)))
}

/// About five round tick values in `[a, b]` (steps of 1, 2 or 5 × 10ᵏ).
fn ticks(a: f64, b: f64) -> Vec<f64> {
    let raw = (b - a) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| raw <= *s)
        .unwrap_or(10.0 * mag);
    let mut t = (a / step).ceil() * step;
    let mut out = Vec::new();
    while t <= b + 1e-9 * step && out.len() < 20 {
        out.push(t);
        t += step;
    }
    out
}

fn tick_label(t: f64) -> String {
    let a = t.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{t:.0e}")
    } else if a >= 10.0 || t.fract() == 0.0 {
        format!("{t:.0}")
    } else {
        let s = format!("{t:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Standard base64 (RFC 4648, with padding), for embedded pictures.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ABC[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn pictures_are_spread_with_the_last_in() {
        assert_eq!(spread(0, 8), Vec::<usize>::new());
        assert_eq!(spread(3, 8), [0, 1, 2]);
        assert_eq!(spread(5, 1), [4]);
        assert_eq!(spread(11, 3), [0, 5, 10]);
        assert_eq!(spread(10, 4), [0, 3, 6, 9]);
        for len in 1..40 {
            for max in 1..10 {
                let s = spread(len, max);
                assert!(
                    s.len() == len.min(max) && s.last() == Some(&(len - 1)),
                    "{len} {max}: {s:?}"
                );
                assert!(s.windows(2).all(|w| w[0] < w[1]), "{len} {max}: {s:?}");
            }
        }
    }

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.013, 0.087);
        assert!(t.iter().all(|&v| (0.013..=0.087).contains(&v)) && t.len() >= 3, "{t:?}");
        assert_eq!(tick_label(0.02), "0.02");
        assert_eq!(tick_label(1000.0), "1000");
    }

    #[test]
    fn wall_time_adds_the_segments() {
        let mut r = Run {
            name: "r".into(),
            config: None,
            segments: Vec::new(),
            steps: Vec::new(),
            knn: Vec::new(),
            validation_lines: Vec::new(),
            recon: Vec::new(),
            attention: Vec::new(),
            probe: None,
            validation: None,
        };
        for t in [1.0, 2.0, 3.0, 0.5, 1.5] {
            r.steps.push(serde_json::json!({"step": 1, "loss": 1.0, "time_s": t}));
        }
        assert_eq!(r.wall_seconds(), 4.5);
    }
}
