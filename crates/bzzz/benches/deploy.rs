//! SSH deploy benchmark: `cargo bench -p bzzz --bench deploy` (root:
//! network-namespace lab). Prints a Markdown table.
//!
//! One script, one lab, two tools: host 1 runs a seed node, hosts 2–5 run a
//! real `sshd` (key login as root, a private install prefix per host). For
//! 1, 2 and 4 target hosts:
//! * BZZZ: `bzzz deploy --accept-new-host-keys` from inside host 1, timed
//!   until the command exits, i.e. until every node has **joined** the
//!   mesh (preflight, upload of the 30 MB release binary with checksum,
//!   config, service, start, membership).
//! * Ansible (Debian `ansible`, tuned: pipelining, SSH multiplexing with
//!   ControlPersist, forks 10): a playbook that copies the same binary and a
//!   config and starts the node, timed until its HTTP port answers on every
//!   host (**started**, not joined).
//!
//! Before every measurement the targets are wiped (processes killed,
//! prefix emptied) and the seed is a fresh one-node cluster, so both tools
//! install from scratch. `BENCH_ROUNDS` (default 3) rounds; the median is
//! reported.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bzzz_testkit::lab::{self, Lab, SSH_PREFIX};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Fresh targets: no processes, an empty prefix, sshd back up.
fn wipe(lab: &mut Lab, targets: &[usize], pubkey: &Path) -> anyhow::Result<()> {
    for &i in targets {
        lab.kill_all_in(i);
        let root = lab.dir.path().join(format!("root-h{i}"));
        let _ = std::fs::remove_dir_all(&root);
        lab.start_sshd(i, pubkey, false)?;
    }
    Ok(())
}

/// A fresh one-node seed cluster on host 1.
fn fresh_seed(lab: &mut Lab) -> anyhow::Result<()> {
    if lab.nodes[0].is_some() {
        lab.node_mut(1).kill9();
        let _ = std::fs::remove_dir_all(&lab.node(1).data_dir);
    }
    lab.nodes[0] = None;
    lab.kill_all_in(1);
    lab.start_node(1, &[])?;
    lab.init_cluster(1, "bench", PASSWORD)
}

fn bzzz_deploy(lab: &Lab, targets: &[usize]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let out = lab.deploy(1, targets, &["--accept-new-host-keys"])?;
    let took = t0.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "bzzz deploy failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    if std::env::var_os("BENCH_DEBUG").is_some() {
        // When each host entered each state (ms since the run started).
        let mut per_host = std::collections::BTreeMap::<String, Vec<String>>::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            per_host
                .entry(v["host"].as_str().unwrap_or("?").to_owned())
                .or_default()
                .push(format!(
                    "{} {}",
                    v["state"].as_str().unwrap_or("?"),
                    v["elapsed_ms"]
                ));
        }
        for (h, states) in per_host {
            eprintln!("  {h}: {}", states.join(", "));
        }
    }
    Ok(took)
}

fn ansible_deploy(lab: &Lab, targets: &[usize], round: usize) -> anyhow::Result<Duration> {
    let dir = lab
        .dir
        .path()
        .join(format!("ansible-{}-{round}", targets.len()));
    std::fs::create_dir_all(dir.join("cp"))?;
    let key = lab.dir.path().join("id_ed25519");
    let mut inv = String::from("[lab]\n");
    for &i in targets {
        inv.push_str(&format!("h{i} ansible_host={}\n", lab.host(i).ip));
    }
    inv.push_str(&format!(
        "[lab:vars]\nansible_user=root\nansible_ssh_private_key_file={}\nansible_python_interpreter=/usr/bin/python3\n",
        key.display()
    ));
    std::fs::write(dir.join("inventory"), inv)?;
    std::fs::write(
        dir.join("ansible.cfg"),
        format!(
            "[defaults]\nhost_key_checking = False\nforks = 10\ngathering = explicit\nretry_files_enabled = False\n\
             [ssh_connection]\npipelining = True\ncontrol_path_dir = {cp}\n\
             ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null\n",
            cp = dir.join("cp").display()
        ),
    )?;
    std::fs::write(
        dir.join("deploy.yml"),
        format!(
            r#"- hosts: lab
  gather_facts: false
  tasks:
    - name: directories
      command: mkdir -p {p}/bin {p}/etc {p}/data {p}/log
    - name: binary
      copy: {{ src: "{bin}", dest: "{p}/bin/bzzz", mode: "0755" }}
    - name: config
      copy:
        dest: "{p}/etc/bzzz.yaml"
        content: |
          data_dir: {p}/data
          http: 0.0.0.0:8080
          network:
            listen: [/ip4/0.0.0.0/tcp/4140, /ip4/0.0.0.0/udp/4140/quic-v1]
    - name: start
      shell: "setsid {p}/bin/bzzz node run --config {p}/etc/bzzz.yaml > {p}/log/bzzz.log 2>&1 < /dev/null &"
    - name: started
      wait_for: {{ host: "{{{{ ansible_host }}}}", port: 8080, timeout: 60 }}
"#,
            p = SSH_PREFIX,
            bin = BIN,
        ),
    )?;
    let cfg = dir.join("ansible.cfg");
    let t0 = Instant::now();
    let out = lab.exec(
        1,
        &[
            "env",
            &format!("ANSIBLE_CONFIG={}", cfg.display()),
            "ANSIBLE_NOCOLOR=1",
            "ansible-playbook",
            "-i",
            &dir.join("inventory").to_string_lossy(),
            &dir.join("deploy.yml").to_string_lossy(),
        ],
    )?;
    let took = t0.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "ansible-playbook failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !lab::available() {
        return Ok(());
    }
    let have_ansible = Command::new("ansible-playbook")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_ansible {
        eprintln!("ansible-playbook not found: install ansible for the baseline");
    }
    let mut lab = Lab::new(Path::new(BIN), 5)?;
    let key = lab.dir.path().join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()?;
    anyhow::ensure!(st.success(), "ssh-keygen failed");
    let pubkey = lab.dir.path().join("id_ed25519.pub");
    let size = std::fs::metadata(BIN)?.len();
    let sets: [&[usize]; 3] = [&[2], &[2, 3], &[2, 3, 4, 5]];
    let mut rows = Vec::new();
    for targets in sets {
        let (mut b, mut a) = (Vec::new(), Vec::new());
        for round in 0..rounds() {
            wipe(&mut lab, &[2, 3, 4, 5], &pubkey)?;
            fresh_seed(&mut lab)?;
            let t = bzzz_deploy(&lab, targets)?;
            eprintln!("bzzz    {} host(s), round {round}: {t:?}", targets.len());
            b.push(t);
            if have_ansible && std::env::var_os("BENCH_NO_ANSIBLE").is_none() {
                wipe(&mut lab, &[2, 3, 4, 5], &pubkey)?;
                let t = ansible_deploy(&lab, targets, round)?;
                eprintln!("ansible {} host(s), round {round}: {t:?}", targets.len());
                a.push(t);
            }
        }
        rows.push((targets.len(), median(b), (!a.is_empty()).then(|| median(a))));
    }
    wipe(&mut lab, &[2, 3, 4, 5], &pubkey)?;
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    println!(
        "\n### SSH deploy from scratch ({:.0} MB binary, namespace lab, median of {} rounds)\n",
        size as f64 / 1e6,
        rounds()
    );
    println!("| hosts | BZZZ (joined) | Ansible tuned (started) | BZZZ / Ansible |");
    println!("|---|---|---|---|");
    for (n, b, a) in &rows {
        let (a_s, ratio) = match a {
            Some(a) => (s(*a), format!("{:.2}", b.as_secs_f64() / a.as_secs_f64())),
            None => ("—".into(), "—".into()),
        };
        println!("| {n} | {} | {a_s} | {ratio} |", s(*b));
    }
    let one = rows[0].1.as_secs_f64();
    let four = rows[2].1.as_secs_f64();
    println!("\nBZZZ 4 hosts / 1 host: {:.2}", four / one);
    Ok(())
}
