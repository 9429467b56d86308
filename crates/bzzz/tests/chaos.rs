//! Chaos in the namespace lab (needs root; CI runs as root): 5 real nodes,
//! at least 30 random faults — a minority/majority partition, the leader
//! isolated, a node or the leader killed with SIGKILL — each followed by a
//! heal. Meanwhile a client writes to the cluster registry through the
//! nodes, and every node's view of (term, leader) is sampled.
//!
//! The checker, over every node's recorded history (sampled views, and the
//! "this node leads" lines of every node's log, restarts included):
//! * never two leaders in one term;
//! * no acknowledged write lost: after each heal every node holds every
//!   write that was acknowledged (HTTP 200 = committed by a quorum);
//! * the minority never commits: writes sent to the minority side are never
//!   acknowledged and never appear anywhere;
//! * everyone converges after each heal: one leader, one term, the same
//!   registry on all 5.
//!
//! The run is seeded (`BZZZ_CHAOS_SEED` to replay; the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use bzzz_testkit::lab::{self, Lab};
use bzzz_testkit::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";
const N: usize = 5;
const FAULTS: usize = 30;

/// splitmix64: a tiny deterministic generator for the fault schedule.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick(&mut self, from: &[usize], k: usize) -> Vec<usize> {
        let mut v = from.to_vec();
        for i in 0..v.len() {
            let j = i + self.below(v.len() - i);
            v.swap(i, j);
        }
        v.truncate(k);
        v.sort_unstable();
        v
    }
}

struct Chaos {
    lab: Lab,
    auth: String,
    /// (host, term, leader) as each node reported it.
    history: Vec<(usize, u64, String)>,
    acked: BTreeMap<String, String>,
    minority_keys: BTreeSet<String>,
    seq: u64,
}

impl Chaos {
    fn host_of(&self, id: &str) -> Option<usize> {
        (1..=N).find(|i| self.lab.node(*i).node_id() == id)
    }

    /// Samples every listed host's view into the history.
    fn sample(&mut self, hosts: &[usize]) -> Vec<Option<(u64, String, String)>> {
        hosts
            .iter()
            .map(|&i| {
                let v = self.lab.get_json(i, "/api/v1/leader")?;
                let term = v["term"].as_u64()?;
                let state = v["state"].as_str()?.to_owned();
                let leader = v["leader"].as_str().map(str::to_owned);
                if let Some(l) = &leader {
                    self.history.push((i, term, l.clone()));
                }
                Some((term, leader.unwrap_or_default(), state))
            })
            .collect()
    }

    /// One leader agreed by every host in `hosts` (and the leader among them).
    fn agreed(&mut self, hosts: &[usize]) -> Option<(usize, u64)> {
        let views = self.sample(hosts);
        let first = views.first()?.clone()?;
        let all_same = views.iter().all(|v| {
            v.as_ref()
                .is_some_and(|(t, l, _)| *t == first.0 && *l == first.1)
        });
        let leaders = views
            .iter()
            .filter(|v| v.as_ref().is_some_and(|(_, _, s)| s == "leader"))
            .count();
        let host = self.host_of(&first.1)?;
        (all_same && leaders == 1 && hosts.contains(&host)).then_some((host, first.0))
    }

    /// Writes a new key through host `i`; true when acknowledged.
    fn write(&mut self, i: usize, minority: bool) -> bool {
        self.seq += 1;
        let key = format!("k{}", self.seq);
        let value = format!("v{}-via-h{i}", self.seq);
        let body = serde_json::json!({ "key": key, "value": value }).to_string();
        let hdr = [("Authorization", self.auth.as_str())];
        let ok = matches!(
            self.lab.http(i, "POST", "/api/v1/registry", &hdr, &body),
            Ok((200, _))
        );
        if minority {
            assert!(
                !ok,
                "the minority side (h{i}) acknowledged a write: {key}\n{}",
                self.lab.logs()
            );
            self.minority_keys.insert(key);
        } else if ok {
            self.acked.insert(key, value);
        }
        ok
    }

    fn registry(&self, i: usize) -> Option<BTreeMap<String, String>> {
        serde_json::from_value(self.lab.get_json(i, "/api/v1/registry")?).ok()
    }

    /// After a heal: one leader everywhere, and the same registry on every
    /// node, holding every acknowledged write and no minority write.
    fn converge(&mut self, round: usize) {
        let all: Vec<usize> = (1..=N).collect();
        let t = Instant::now();
        wait_until(
            "convergence after heal",
            Duration::from_secs(40),
            Duration::from_millis(100),
            || {
                self.agreed(&all)?;
                // A write after the heal proves the cluster commits again,
                // and flushes the log to every node.
                let r0 = self.registry(1)?;
                let same = all.iter().all(|i| self.registry(*i).as_ref() == Some(&r0));
                let holds = self.acked.iter().all(|(k, v)| r0.get(k) == Some(v));
                (same && holds).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", self.lab.logs()));
        let reg = self.registry(1).expect("registry");
        for k in &self.minority_keys {
            assert!(
                !reg.contains_key(k),
                "round {round}: a write sent to the minority ({k}) was committed"
            );
        }
        eprintln!("round {round}: converged in {:?}", t.elapsed());
    }
}

#[test]
fn thirty_random_faults_never_break_raft_safety() {
    if !lab::available() {
        return;
    }
    let seed = std::env::var("BZZZ_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("chaos seed {seed} (replay with BZZZ_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let mut lab = Lab::new(Path::new(BIN), N).expect("lab");
    let hosts: Vec<usize> = (1..=N).collect();
    lab.start_nodes(&hosts, &[]).expect("nodes");
    lab.wait_mesh(&hosts, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    lab.init_cluster(1, "chaos", PASSWORD).expect("init");

    use base64::Engine as _;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{PASSWORD}"))
    );
    let mut c = Chaos {
        lab,
        auth,
        history: vec![],
        acked: BTreeMap::new(),
        minority_keys: BTreeSet::new(),
        seq: 0,
    };
    c.converge(0);

    let mut kinds = BTreeMap::<&str, usize>::new();
    for round in 1..=FAULTS {
        let (leader, _) = wait_until(
            "a leader before the fault",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || c.agreed(&hosts),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.lab.logs()));
        // Short faults never shuffle seats: all 5 keep voting, so 2 hosts
        // are a minority of the voters.
        let voters = c
            .lab
            .get_json(leader, "/api/v1/leader")
            .and_then(|v| v["voters"].as_array().map(Vec::len));
        assert_eq!(
            voters,
            Some(N),
            "round {round}: voters changed\n{}",
            c.lab.logs()
        );
        let kind = match rng.below(4) {
            0 => "partition",
            1 => "isolate_leader",
            2 => "kill_node",
            _ => "kill_leader",
        };
        *kinds.entry(kind).or_default() += 1;
        let mut killed = None;
        let (minority, majority): (Vec<usize>, Vec<usize>) = match kind {
            "partition" => {
                let m = rng.pick(&hosts, 2);
                let rest: Vec<usize> = hosts.iter().copied().filter(|h| !m.contains(h)).collect();
                c.lab.partition(&m, &rest).expect("partition");
                (m, rest)
            }
            "isolate_leader" => {
                c.lab.cut(leader).expect("cut");
                let rest = hosts.iter().copied().filter(|h| *h != leader).collect();
                (vec![leader], rest)
            }
            "kill_node" | "kill_leader" => {
                let victim = if kind == "kill_leader" {
                    leader
                } else {
                    1 + rng.below(N)
                };
                c.lab.node_mut(victim).kill9();
                killed = Some(victim);
                let rest = hosts.iter().copied().filter(|h| *h != victim).collect();
                (vec![], rest)
            }
            _ => unreachable!(),
        };
        eprintln!(
            "round {round}: {kind} minority={minority:?} killed={killed:?} (leader was h{leader})"
        );

        // The majority elects (or keeps) a leader and commits writes.
        let _ = wait_until(
            "a majority leader",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || c.agreed(&majority),
        );
        let writer = majority[rng.below(majority.len())];
        for _ in 0..2 {
            c.write(writer, false);
        }
        // The minority side must not commit.
        if let Some(&m) = minority.first() {
            c.sample(&minority);
            c.write(m, true);
        }
        c.sample(&hosts);

        // Heal.
        match kind {
            "partition" => c.lab.unpartition().expect("unpartition"),
            "isolate_leader" => c.lab.heal(leader).expect("heal"),
            _ => {
                let v = killed.expect("victim");
                let bin = c.lab.bin.clone();
                c.lab.node_mut(v).restart(&bin).expect("restart");
                c.lab
                    .node_mut(v)
                    .wait_ready(Duration::from_secs(20))
                    .expect("ready");
            }
        }
        c.converge(round);
    }
    eprintln!("faults: {kinds:?}; acknowledged writes: {}", c.acked.len());
    assert!(
        c.acked.len() >= FAULTS,
        "the cluster committed too few writes"
    );

    // The checker: never two leaders in one term, from the sampled views…
    let mut by_term: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (_, term, leader) in &c.history {
        by_term.entry(*term).or_default().insert(leader.clone());
    }
    // …and from each node's own log of the terms it led.
    let mut led: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for i in 1..=N {
        let node = c.lab.node(i);
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("this node leads")) {
            if let Some(t) = line
                .split("term=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|t| t.parse::<u64>().ok())
            {
                led.entry(t).or_default().insert(node.node_id().to_owned());
                by_term
                    .entry(t)
                    .or_default()
                    .insert(node.node_id().to_owned());
            }
        }
    }
    for (term, leaders) in &by_term {
        assert!(
            leaders.len() <= 1,
            "two leaders in term {term}: {leaders:?}"
        );
    }
    assert!(
        led.len() >= 3,
        "expected leadership to change hands several times: {led:?}"
    );
    eprintln!(
        "terms observed: {}, terms with a logged leader: {}",
        by_term.len(),
        led.len()
    );
}
