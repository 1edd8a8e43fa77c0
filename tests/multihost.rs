//! Two hosts on one machine: a network namespace with its own hostname is "host B", reached over a
//! veth pair by Open MPI's TCP transports and an rsh agent that enters the namespace (as ssh would
//! log into a node); `--hostfile` lists both. The same command line runs on real nodes with ssh
//! (launch/README.md). Needs root (CAP_NET_ADMIN), iproute2 and util-linux' unshare: #[ignore]d in a
//! plain `cargo test`; .ci/run runs it where it can make a namespace and says so where it cannot.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::{check_counts, BIN};

/// Host B and its link, removed when dropped.
struct HostB {
    ns: String,
    veth: String,
}

impl Drop for HostB {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(
        out.status.success(),
        "ip {}: {} (the multi-host test needs root: CAP_NET_ADMIN)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[test]
#[ignore = "needs root to make a network namespace (CAP_NET_ADMIN), iproute2 and unshare: .ci/run runs it with --ignored"]
fn a_run_across_two_hosts_gathers_every_rank() {
    let id = std::process::id() % 200 + 20;
    let (ns, a, b) = (format!("tpprof-b{id}"), format!("tpa{id}"), format!("tpb{id}"));
    let (ip_a, ip_b, net) = (format!("10.77.{id}.1"), format!("10.77.{id}.2"), format!("10.77.{id}.0/24"));
    ip(&["netns", "add", &ns]);
    let _host = HostB { ns: ns.clone(), veth: a.clone() };
    ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    ip(&["link", "set", &b, "netns", &ns]);
    ip(&["addr", "add", &format!("{ip_a}/24"), "dev", &a]);
    ip(&["link", "set", &a, "up"]);
    let cidr_b = format!("{ip_b}/24");
    for args in [
        &["addr", "add", cidr_b.as_str(), "dev", b.as_str()][..],
        &["link", "set", b.as_str(), "up"],
        &["link", "set", "lo", "up"],
    ] {
        let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
        full.extend_from_slice(args);
        ip(&full);
    }
    let dir = tempfile::tempdir().unwrap();
    // The rsh agent: `agent HOST COMMAND...` runs COMMAND on host B, as ssh does on a node.
    let agent = dir.path().join("agent.sh");
    std::fs::write(
        &agent,
        format!("#!/bin/sh\nshift\nexec ip netns exec {ns} unshare --uts sh -c \"hostname tpprof-host-b; exec $*\"\n"),
    )
    .unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&agent).status().unwrap().success());
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("{ip_a} slots=1\n{ip_b} slots=1\n")).unwrap();
    let out = dir.path().join("r.json");
    let o = Command::new("timeout")
        .args(["-k", "5", "120", "mpirun", "--hostfile"])
        .arg(&hostfile)
        .args(["-n", "2", "--mca", "plm_rsh_agent"])
        .arg(&agent)
        .args(["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", &net, "--mca", "oob_tcp_if_include", &net])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg(BIN)
        .args([
            "run",
            "--engine",
            "mock",
            "--engine-options",
            r#"{"token_us": 500}"#,
            "--batch",
            "2",
            "--prompt-tokens",
            "8",
            "--generated-tokens",
            "16",
            "--no-progress",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&out)).unwrap()).unwrap();
    crate::util::check_schema(&j);
    check_counts(&j, 2, 2, 16);
    let hosts: Vec<&str> = j["environment"]["hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_eq!(hosts[1], "tpprof-host-b");
    let ranks = j["ranks"].as_array().unwrap();
    // One rank per host: each is local rank 0 of its host, and rank 1's report came from host B.
    assert_eq!(
        ranks.iter().map(|r| (r["host"].as_str().unwrap(), r["local_rank"].as_i64().unwrap())).collect::<Vec<_>>(),
        vec![(hosts[0], 0), ("tpprof-host-b", 0)]
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 rank(s) on 2 host(s)"));
    // Clock offsets measured across the hosts (TCP ping-pong): the namespaces share the kernel's
    // CLOCK_MONOTONIC, so host B's offset is ~0, within the round trip.
    let offsets: Vec<i64> =
        j["environment"]["clock_offsets_ns"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!((offsets.len(), offsets[0]), (2, 0), "{offsets:?}");
    assert!(offsets[1].abs() < 5_000_000, "host B's offset {} ns", offsets[1]);
}
