//! `steadfast status --ruleset` reads Steadfast's nftables tables from the kernel of the
//! namespace it runs in, with no daemon and no nft program. Needs root.

use std::net::Ipv4Addr;
use std::process::Command;

use steadfast_os::netns::{self, NetnsGuard};

fn status_ruleset_in(namespace: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", namespace, env!("CARGO_BIN_EXE_steadfast")])
        .args(["status", "--ruleset"])
        .output()
        .expect("running steadfast status --ruleset");
    assert!(
        out.status.success(),
        "steadfast status --ruleset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_ruleset_shows_an_armed_fence_as_the_kernel_holds_it() {
    let ns =
        NetnsGuard::create(&format!("sfst-{}-ruleset", std::process::id())).expect("namespace");
    assert_eq!(
        status_ruleset_in(ns.name()),
        "# no steadfast_* nftables table in this network namespace\n"
    );
    let vip = Ipv4Addr::new(10, 215, 0, 100);
    let fence = netns::spawn_in(ns.name(), move || {
        steadfast_os::fence::Fence::arm("web", &[vip]).expect("arming")
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
    let text = status_ruleset_in(ns.name());
    // The owner table names the process that holds it: this test.
    let this_program = std::fs::read_to_string("/proc/self/comm").expect("comm");
    assert!(
        text.starts_with(&format!(
            "table inet steadfast_live_web {{ # progname {} (pid {})\n\tflags owner\n",
            this_program.trim(),
            std::process::id()
        )),
        "{text}"
    );
    for expected in [
        "\t\ttype filter hook input priority filter - 10; policy accept;\n\t\tip daddr 10.215.0.100 meta mark set 0x00005f1d\n",
        "table arp steadfast_live_web {",
        "\t\tarp saddr ip 10.215.0.100 meta mark set 0x00005f1d\n",
        "table inet steadfast_fence_web {\n\tset lease {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t}\n",
        "\tchain lease_end {\n\t\tdelete @lease { ip daddr } drop\n\t}\n",
        "\tchain lease_keeper {\n\t\ttype filter hook output priority -20; policy accept;\n\t\tip daddr 10.215.0.100 meta mark vmap { 0x5f1e0000 : jump lease_end, 0x5f1e0001 : jump lease_1, ",
        "\t\tip saddr 10.215.0.100 ip saddr != @lease counter packets 0 bytes 0 drop\n",
        "table arp steadfast_fence_web {",
        "\t\tarp daddr ip 10.215.0.100 meta mark != 0x00005f1d counter packets 0 bytes 0 drop\n",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    assert!(!text.contains("undecoded"), "{text}");
    drop(fence);
}
