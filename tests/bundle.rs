//! launch/turbomind-bundle.sh, the way it is used to bring TurboMind to a GPU machine in parts:
//! seal a directory into checked parts, bring them one call at a time, resume where it stopped, refuse
//! a broken part, say so when the machine is fresh (the parts are gone), and unpack only a whole,
//! checked bundle. No GPU and no lmdeploy needed: the bundle here is a directory of random bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/launch/turbomind-bundle.sh");

struct Out {
    code: i32,
    text: String,
}

fn bundle(args: &[&str]) -> Out {
    let out = Command::new("bash").arg(SCRIPT).args(args).output().expect("run bash");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Out { code: out.status.code().unwrap_or(-1), text }
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// Random (incompressible) bytes, so the bundle really spans several parts.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn make_stage(dir: &Path, seed: u64) -> PathBuf {
    let stage = dir.join(format!("stage-{seed}"));
    std::fs::create_dir_all(stage.join("site/pkg")).unwrap();
    std::fs::create_dir_all(stage.join("lib")).unwrap();
    std::fs::write(stage.join("BUNDLE-INFO"), format!("test bundle {seed}\n")).unwrap();
    std::fs::write(stage.join("site/pkg/__init__.py"), "X = 1\n").unwrap();
    std::fs::write(stage.join("lib/libbig.so"), random_bytes(300_000, seed)).unwrap();
    stage
}

#[test]
fn bundle_parts_arrive_one_call_at_a_time_are_checked_and_resume() {
    if !have("xz") || !have("python3") || !have("sha256sum") {
        eprintln!("skipped: turbomind-bundle.sh needs xz, python3 and sha256sum");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (parts, carried, dest) = (tmp.path().join("parts"), tmp.path().join("carried"), tmp.path().join("dest"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let stage = make_stage(tmp.path(), 1);

    let sealed = bundle(&["seal", &s(&stage), "-o", &s(&parts), "--part-size", "100K"]);
    assert_eq!(sealed.code, 0, "{}", sealed.text);
    let manifest = std::fs::read_to_string(parts.join("MANIFEST")).unwrap();
    let n = manifest.lines().filter(|l| l.ends_with(|c: char| c.is_ascii_digit()) && l.contains(" part-")).count();
    assert!(n >= 3, "300 kB of random bytes in 100 kB parts: {manifest}");
    assert!(manifest.lines().any(|l| l.ends_with(" bundle.tar.xz")), "{manifest}");

    // A fresh machine, nothing carried: says so, exit 3.
    let fresh = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest)]);
    assert_eq!(fresh.code, 3, "{}", fresh.text);
    assert!(fresh.text.contains("this machine is fresh"), "{}", fresh.text);

    // Part 1 arrives: kept, the others named as missing.
    let staged = bundle(&["stage", "1", "-o", &s(&parts), "--to", &s(&carried)]);
    assert_eq!(staged.code, 0, "{}", staged.text);
    let first = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest)]);
    assert_eq!(first.code, 3, "{}", first.text);
    let missing: Vec<String> = (2..=n).map(|k| k.to_string()).collect();
    assert!(
        first.text.contains(&format!("1 of {n} parts"))
            && first.text.contains(&format!("missing part(s) {}", missing.join(" "))),
        "{}",
        first.text
    );
    assert!(!dest.join("READY").exists());

    // A part broken on the way is refused, and nothing is unpacked.
    bundle(&["stage", "2", "-o", &s(&parts), "--to", &s(&carried)]);
    let part = carried.join("part-01");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let broken = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest)]);
    assert_eq!(broken.code, 1, "{}", broken.text);
    assert!(broken.text.contains("part-01: sha256 differs"), "{}", broken.text);
    assert!(!dest.join("READY").exists());

    // The rest arrive one call each (part 1 is not brought again): the last one completes it.
    for k in 2..=n {
        bundle(&["stage", &k.to_string(), "-o", &s(&parts), "--to", &s(&carried)]);
        let r = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest)]);
        assert_eq!(r.code, if k == n { 0 } else { 3 }, "part {k}: {}", r.text);
    }
    assert!(dest.join("READY").exists());
    assert_eq!(std::fs::read(dest.join("lib/libbig.so")).unwrap(), std::fs::read(stage.join("lib/libbig.so")).unwrap());
    assert_eq!(std::fs::read_to_string(dest.join("site/pkg/__init__.py")).unwrap(), "X = 1\n");
    let again = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest)]);
    assert_eq!(again.code, 0, "{}", again.text);
    assert!(again.text.contains("ready in"), "{}", again.text);
    let env = bundle(&["env", "-d", &s(&dest)]);
    assert!(env.text.contains(&format!("PYTHONPATH={}/site", dest.display())), "{}", env.text);

    // Another bundle is refused where one is installed, and replaces parts of an older one.
    let other = make_stage(tmp.path(), 2);
    let parts2 = tmp.path().join("parts2");
    assert_eq!(bundle(&["seal", &s(&other), "-o", &s(&parts2), "--part-size", "100K"]).code, 0);
    bundle(&["stage", "1", "-o", &s(&parts2), "--to", &s(&carried)]);
    let clash = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest)]);
    assert_eq!(clash.code, 1, "{}", clash.text);
    assert!(clash.text.contains("holds another bundle"), "{}", clash.text);
    let dest2 = tmp.path().join("dest2");
    let half = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest2)]);
    assert_eq!(half.code, 3, "{}", half.text);
    bundle(&["stage", "1", "-o", &s(&parts), "--to", &s(&carried)]);
    let switched = bundle(&["install", "-b", &s(&carried), "-d", &s(&dest2)]);
    assert!(switched.text.contains("starting over"), "{}", switched.text);
}
