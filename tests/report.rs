//! The run report in a real browser: a short run (resumed once, with the
//! online k-NN and a probe) gives a `report.html` that headless Chromium
//! renders with every section, one plotted point per metrics line, every
//! embedded picture decoded, and ink inside every plot's area of a
//! screenshot. Where Chromium is missing (`chromium` on the PATH, or
//! `TESSERA_CHROMIUM`), the browser half says it skipped; `.ci/run` installs
//! Debian's `chromium`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tessera(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tessera {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The browser to render with, if this machine has one.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Chromium, headless, on a file: its arguments first.
fn browse(browser: &Path, args: &[&str], page: &Path) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

/// The values of attribute `name` on the elements of `html` that carry it.
fn attrs<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!(" {name}=\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let rest = &html[i + key.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// A 10-step run with a resume, k-NN and a probe; its report, rendered.
#[test]
fn a_short_runs_report_renders_every_section_in_a_browser() {
    let dir = tmp("report");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let common = [
        "--out",
        r,
        "--dim",
        "32",
        "--depth",
        "2",
        "--heads",
        "2",
        "--decoder-dim",
        "16",
        "--decoder-depth",
        "1",
        "--decoder-heads",
        "2",
        "--synthetic-len",
        "96",
        "--batch",
        "8",
        "--steps",
        "10",
        "--ckpt-every",
        "5",
        "--recon-every",
        "2",
        "--knn-every",
        "2",
        "--knn-train",
        "40",
        "--knn-test",
        "20",
        "--quiet",
    ];
    let mut first = vec!["pretrain", "--stop-after", "6"];
    first.extend_from_slice(&common);
    tessera(&first);
    let mut again = vec!["pretrain", "--resume"];
    again.extend_from_slice(&common);
    tessera(&again);
    let ckpt = run.join("checkpoint.safetensors");
    let said = tessera(&[
        "probe",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--synthetic-len",
        "96",
        "--train-limit",
        "40",
        "--test-limit",
        "20",
        "--max-iter",
        "20",
    ]);
    assert!(said.contains("probe.json"), "{said}");
    let t = std::time::Instant::now();
    let said = tessera(&["report", r]);
    let made = t.elapsed();
    let page = run.join("report.html");
    assert!(said.contains("report.html") && page.exists(), "{said}");
    assert!(made.as_secs_f64() < 1.0, "a 10-step run's report took {made:?}");

    let html = std::fs::read_to_string(&page).unwrap();
    let steps = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .count();
    assert_eq!(steps, 10);
    // The page alone: no address outside it.
    for bad in ["http://", "https://", "src=\"/", "@import", "url("] {
        let outside = html.replace("http://www.w3.org/2000/svg", "");
        assert!(!outside.contains(bad), "the page reaches outside itself: {bad}");
    }
    // Every embedded picture is a PNG that decodes.
    let pictures: Vec<&str> = attrs(&html, "src");
    assert!(pictures.len() >= 5, "{} pictures", pictures.len());
    for src in &pictures {
        let b64 = src.strip_prefix("data:image/png;base64,").expect("an embedded PNG");
        image::load_from_memory(&decode_base64(b64)).expect("an embedded picture decodes");
    }

    // Two runs overlaid on shared axes, each its own curve.
    let other = dir.join("other");
    let mut args: Vec<&str> = vec!["pretrain"];
    let o = other.to_str().unwrap();
    for (i, a) in common.iter().enumerate() {
        args.push(if i > 0 && common[i - 1] == "--out" { o } else { a });
    }
    args.extend_from_slice(&["--mask-ratio", "0.5"]);
    tessera(&args);
    let both = dir.join("both.html");
    let said = tessera(&["report", r, o, "--out", both.to_str().unwrap()]);
    assert!(said.contains("2 runs"), "{said}");
    let page_both = std::fs::read_to_string(&both).unwrap();
    let at = page_both.find("id=\"plot-loss\"").unwrap();
    let figure = &page_both[at..at + page_both[at..].find("</figure>").unwrap()];
    assert_eq!(attrs(figure, "data-run"), ["run", "other"], "one curve per run");

    let Some(browser) = chromium() else {
        eprintln!("skipped: no Chromium (install Debian's chromium, or set TESSERA_CHROMIUM)");
        return;
    };
    // Laid out at the screenshot's width, so the plots' places agree.
    let dom = browse(&browser, &["--window-size=1200,2000", "--dump-dom"], &page);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for id in ["summary", "curves", "reconstructions", "attention", "representation"] {
        assert!(dom.contains(&format!("<section id=\"{id}\"")), "no section {id}");
    }
    // One point per step in each training curve, and the k-NN's five.
    for id in [
        "plot-loss",
        "plot-lr",
        "plot-grad_norm",
        "plot-images_per_s",
        "plot-knn",
    ] {
        let at = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no plot {id}"));
        let figure = &dom[at..at + dom[at..].find("</figure>").unwrap()];
        let points = attrs(figure, "points");
        assert_eq!(points.len(), 1, "{id}: one curve");
        let want = if id == "plot-knn" { 5 } else { steps };
        assert_eq!(points[0].split_whitespace().count(), want, "{id}");
        assert!(figure.contains("class=\"resume\""), "{id}: the resume is drawn");
    }
    assert!(dom.contains("<table id=\"probe\""), "the probe's results");
    // The latest attention maps, and the reconstructions of every other step.
    let section = |id: &str| {
        let at = dom.find(&format!("<section id=\"{id}\"")).unwrap();
        &dom[at..at + dom[at..].find("</section>").unwrap()]
    };
    assert_eq!(section("attention").matches("<img").count(), 1);
    assert_eq!(section("reconstructions").matches("<img").count(), 5);
    // Every picture decoded in the browser.
    let decoded = attrs(&dom, "data-decoded");
    assert_eq!(decoded.len(), pictures.len());
    assert!(decoded.iter().all(|d| *d == "yes"), "{decoded:?}");
    let load_ms: f64 = attrs(&dom, "data-load-ms")[0].parse().unwrap();
    assert!(load_ms < 1000.0, "the page took {load_ms} ms to load");

    // A screenshot: ink inside every plot's area, as the page lays it out.
    let shot = dir.join("shot.png");
    let rects: Vec<[u32; 4]> = attrs(&dom, "data-rect")
        .iter()
        .map(|r| {
            let v: Vec<u32> = r.split(',').map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect();
    let height = rects.iter().map(|r| r[1] + r[3]).max().unwrap() + 40;
    let size = format!("--window-size=1200,{height}");
    let out = browse(&browser, &[&size, &format!("--screenshot={}", shot.display())], &page);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&shot).unwrap().to_rgb8();
    for [x, y, w, h] in &rects {
        let mut ink = 0;
        for py in *y..(y + h).min(img.height()) {
            for px in *x..(x + w).min(img.width()) {
                let p = img.get_pixel(px, py).0;
                // The curves' blue (#1f6fb4), not the white ground or grey axes.
                if p[2] > 120 && p[0] < 90 {
                    ink += 1;
                }
            }
        }
        assert!(ink > 20, "the plot at {x},{y} ({w}x{h}) is blank in the screenshot");
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    } as u32;
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | val(c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
