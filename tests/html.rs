//! `tpprof report --html`: the page of two real mock runs on 2 ranks, its refusals, and the page as
//! a real browser (headless chromium) renders it.

use crate::util::*;

/// A mock run on `n` ranks into `<tmp>/<name>` (distinct names: the legend shows them).
fn mock_run(n: usize, token_us: u32, name: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let opts = format!(r#"{{"token_us": {token_us}}}"#);
    run_to(
        n,
        &[
            "--engine",
            "mock",
            "--engine-options",
            &opts,
            "--batch",
            "2",
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "24",
        ],
        &path,
        dir,
    )
}

fn report_html(files: &[&Path], out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN).arg("report").args(files).arg("--html").arg(out).args(extra).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Refused: exit 2 and exactly one line, `error: …` naming `needle`.
fn refused(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "should name {needle:?}: {err}");
}

#[test]
fn html_report_of_two_mock_runs() {
    let (a, b) = (mock_run(2, 1000, "a.json"), mock_run(2, 2500, "b.json"));
    let (ja, jb) = (ok(&a), ok(&b));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.html");
    let o = report_html(&[&a.path, &b.path], &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("wrote {}", out.display()));
    let page = std::fs::read_to_string(&out).unwrap();
    // One chart per kind the data allows: merged CDF (both files overlaid), a rank CDF per file,
    // ITL by tenth (rank 0's of both files overlaid, and each file's ranks), TTFT per sample,
    // memory per file; no CUPTI (a sentence).
    for j in [&ja, &jb] {
        assert_eq!(j["summary"]["itl_p50_by_tenth_ms"].as_array().map(Vec::len), Some(10));
        for k in 0..2 {
            assert_eq!(j["ranks"][k]["itl_p50_by_tenth_ms"].as_array().map(Vec::len), Some(10), "rank {k}");
        }
    }
    let figures = |kind: &str| page.matches(&format!("<figure data-plot=\"{kind}\">")).count();
    for (kind, n) in [
        ("itl-cdf", 1),
        ("itl-cdf-ranks", 2),
        ("itl-position", 1),
        ("itl-position-ranks", 2),
        ("ttft", 1),
        ("memory", 2),
        ("cupti", 0),
    ] {
        assert_eq!(figures(kind), n, "{kind}");
    }
    assert_eq!(page.matches("<svg").count(), 9);
    assert!(
        page.contains("data-missing=\"cupti\">A: no CUPTI data (the run was made without --cupti)"),
        "a sentence instead of the CUPTI chart"
    );
    // The legend names both files with engine and TP; both ranks of each are in the rank CDFs.
    assert!(page.contains("A: mock TP=2 a.json") && page.contains("B: mock TP=2 b.json"), "legend");
    for rank in 0..2 {
        assert_eq!(
            page.matches(&format!("rank {rank} ({} gaps)", 2 * 23)).count(),
            2,
            "rank {rank}: 2 samples × 23 gaps, in both files"
        );
    }
    // The mock has no GPU: memory is the host RSS, said so.
    assert!(page.contains("host memory (RSS): no GPU memory measured"));
    // Self-contained: nothing in it points outside the file.
    for needle in ["http://", "https://", "src=", "href=", "url(", "<script", "<link"] {
        assert!(!page.contains(needle), "{needle}");
    }

    // An existing page is kept unless --force (as `tpprof run` keeps an earlier JSON).
    refused(&report_html(&[&a.path], &out, &[]), "already exists: pass --force");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), page, "left as it was");
    let o = report_html(&[&a.path], &out, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&out).unwrap().matches("<svg").count() >= 4, "replaced by A's page");
    // Bad input: one line naming cause and fix, exit 2, nothing written.
    let elsewhere = dir.path().join("missing/out.html");
    refused(&report_html(&[&a.path], &elsewhere, &[]), "does not exist");
    refused(&report_html(&[Path::new("no-such.json")], &dir.path().join("n.html"), &[]), "cannot read no-such.json");
    refused(
        &report_html(&[&a.path, Path::new("results/schema.json")], &dir.path().join("s.html"), &[]),
        "is not a tpprof result JSON",
    );
    refused(&report_html(&[&a.path], dir.path(), &[]), "is a directory");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only out.html: no temp files, no pages of bad input"
    );
    // Without --html: each file's text summary.
    let o = Command::new(BIN).arg("report").arg(&a.path).arg(&b.path).output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches("status: ok").count(), 2);
}

/// Debian's chromium, where installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n))).find(|p| p.is_file())
}

/// chromium --headless on a file: (stdout, the console messages it logged to stderr).
fn headless(browser: &Path, page: &Path, args: &[&str]) -> (String, Vec<String>) {
    let out = Command::new("timeout")
        .args(["-k", "5", "60"])
        .arg(browser)
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("start chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let console =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The page of the committed H200 TP=1/2/4 results as a browser renders it: every chart is in the
/// DOM chromium built (as SVG with its lines), the console stays empty, and the screenshot is far
/// from blank. The checks are first shown to catch what they look for (a console error, a blank
/// page).
#[test]
#[ignore = "needs chromium (apt-get install chromium): .ci/run installs it and runs this with -- --ignored"]
fn html_report_renders_in_headless_chromium() {
    let browser = chromium().expect("chromium not found on PATH: apt-get install chromium");
    let dir = tempfile::tempdir().unwrap();
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/h200/tp-scaling-x4");
    let files: Vec<PathBuf> = ["tp1_10k-800_default", "tp4_10k-800_cupti"]
        .iter()
        .map(|n| results.join(format!("qwen2.5-32b_fp16_{n}.json")))
        .collect();
    let page = dir.path().join("report.html");
    let o = report_html(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>(), &page, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    let charts = html.matches("<svg").count();
    assert_eq!(charts, 7, "two files: merged CDF, 2 rank CDFs, TTFT, 2 memory, 1 CUPTI");

    // The checks catch what they look for.
    let bad = dir.path().join("bad.html");
    std::fs::write(&bad, "<!DOCTYPE html><html><body><script>console.error('boom')</script></body></html>").unwrap();
    let (_, console) = headless(&browser, &bad, &["--dump-dom"]);
    assert!(console.iter().any(|l| l.contains("boom")), "a console error is seen: {console:?}");
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank_png = dir.path().join("blank.png");
    headless(&browser, &blank, &["--window-size=1100,3000", &format!("--screenshot={}", blank_png.display())]);

    // The DOM chromium built: every chart, each with its plotted lines, and the tables.
    let (dom, console) = headless(&browser, &page, &["--dump-dom"]);
    assert!(console.is_empty(), "console messages: {console:?}");
    assert_eq!(dom.matches("<svg").count(), charts, "every chart parsed as SVG");
    assert!(dom.matches("<polyline").count() > 2 * charts, "lines in the charts");
    assert!(dom.contains("<th>TP (ranks)</th>") && dom.contains("</table>"));
    // The rendered page: a screenshot far larger than a blank page's of the same size.
    let png = dir.path().join("report.png");
    let (_, console) =
        headless(&browser, &page, &["--window-size=1100,3000", &format!("--screenshot={}", png.display())]);
    assert!(console.is_empty(), "console messages: {console:?}");
    let (size, blank_size) = (std::fs::metadata(&png).unwrap().len(), std::fs::metadata(&blank_png).unwrap().len());
    assert!(size > 10 * blank_size.max(1), "screenshot {size} B, a blank page's {blank_size} B");
}
