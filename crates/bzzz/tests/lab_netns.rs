//! Real hosts in network namespaces (needs root; CI runs as root).

use std::time::{Duration, Instant};

use bzzz_testkit::lab::{self, Lab};
use bzzz_testkit::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

fn all_see_all(lab: &Lab, hosts: &[usize]) -> bool {
    hosts.iter().all(|&i| {
        let seen = lab.cli_peer_ids(i).unwrap_or_default();
        hosts
            .iter()
            .filter(|&&j| j != i)
            .all(|&j| seen.contains(&lab.node(j).node_id().to_owned()))
    })
}

#[test]
fn five_hosts_find_each_other_by_mdns_alone_within_5s() {
    if !lab::available() {
        return;
    }
    let mut lab = Lab::new(std::path::Path::new(BIN), 5).expect("lab");
    let hosts = [1, 2, 3, 4, 5];
    let start = Instant::now();
    lab.start_nodes(&hosts, &[]).expect("nodes"); // defaults: mDNS on, no bootstrap
    wait_until(
        "every host to see every other",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || all_see_all(&lab, &hosts).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    eprintln!(
        "5 hosts formed by mDNS in {:?} after the first start",
        start.elapsed()
    );
}

#[test]
fn a_cut_host_leaves_the_views_and_comes_back_after_heal() {
    if !lab::available() {
        return;
    }
    let mut lab = Lab::new(std::path::Path::new(BIN), 3).expect("lab");
    lab.start_nodes(&[1, 2, 3], &[]).expect("nodes");
    wait_until(
        "formation",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || all_see_all(&lab, &[1, 2, 3]).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // A partition: no FIN, no RST. Ping failure or announcement silence must notice.
    let gone = lab.node(3).node_id().to_owned();
    lab.cut(3).expect("cut");
    let t = Instant::now();
    wait_until(
        "the cut host to leave",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            [1, 2]
                .iter()
                .all(|&i| !lab.cli_peer_ids(i).unwrap_or_default().contains(&gone))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    eprintln!("cut host left both views in {:?}", t.elapsed());
    assert!(
        lab.cli_peer_ids(1)
            .expect("peers")
            .contains(&lab.node(2).node_id().to_owned())
    );

    lab.heal(3).expect("heal");
    let t = Instant::now();
    wait_until(
        "the healed host to rejoin",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || all_see_all(&lab, &[1, 2, 3]).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    eprintln!("healed host back in every view in {:?}", t.elapsed());
}

#[test]
fn bandwidth_caps_apply_without_breaking_the_mesh() {
    if !lab::available() {
        return;
    }
    let mut lab = Lab::new(std::path::Path::new(BIN), 2).expect("lab");
    lab.cap_bandwidth(1, "10mbit").expect("cap");
    let out = lab
        .exec(1, &["tc", "qdisc", "show", "dev", "eth0"])
        .expect("tc");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tbf"),
        "{out:?}"
    );
    lab.start_nodes(&[1, 2], &[]).expect("nodes");
    wait_until(
        "formation under a cap",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || all_see_all(&lab, &[1, 2]).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
}
