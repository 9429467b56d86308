//! Agents (SPEC §10) with real node processes on 127.0.0.1, a plain Git
//! repository served by the real `git http-backend`, and a scripted LLM
//! (a named fake: `bzzz_testkit::forge::ScriptedLlm`): every task is done
//! exactly once, also while a node is killed and restarted mid-run; a
//! model that never finishes stops at the step cap.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bzzz_testkit::forge::{GitServer, ScriptedLlm};
use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn cli(args: &[&str]) -> std::process::Output {
    bzzz_testkit::cli(BIN, args)
}

fn tools_missing() -> bool {
    if bzzz_agents::sandbox::check_tools().is_ok() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have bubblewrap (scripts/test.sh installs it)"
    );
    eprintln!("skipped: bubblewrap, prlimit or setpriv missing");
    true
}

/// Nodes with agents on, asking `llm`.
fn cluster(n: usize, llm: &ScriptedLlm, max_tasks: u32) -> (LocalCluster, String) {
    cluster_env(n, llm, max_tasks, Vec::new())
}

fn cluster_env(
    n: usize,
    llm: &ScriptedLlm,
    max_tasks: u32,
    env: Vec<(String, String)>,
) -> (LocalCluster, String) {
    cluster_with(n, llm, max_tasks, env, "")
}

/// [`cluster_env`] with `extra` lines in the `agents:` section.
fn cluster_with(
    n: usize,
    llm: &ScriptedLlm,
    max_tasks: u32,
    env: Vec<(String, String)>,
    extra: &str,
) -> (LocalCluster, String) {
    let cfg = tempfile::Builder::new()
        .prefix("bzzz-agents-cfg-")
        .tempdir()
        .expect("tmp")
        .keep();
    let file = cfg.join("agents.yaml");
    std::fs::write(
        &file,
        format!(
            "agents:\n  enabled: true\n  max_tasks: {max_tasks}\n  model: scripted\n  llm_url: {}\n  lease: 4s\n  poll_every: 500ms\n  command_timeout: 20s\n{extra}",
            llm.url()
        ),
    )
    .expect("config");
    let opts = LocalOpts {
        extra_args: vec!["--config".into(), file.to_string_lossy().into_owned()],
        env,
    };
    let mut c = LocalCluster::start(Path::new(BIN), n, &opts).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let pw = c.init(0, PASSWORD).expect("init");
    (c, pw)
}

fn repo_add(c: &LocalCluster, pw: &str, url: &str, extra: &[&str]) {
    let api = c.nodes[0].api();
    let kind: &[&str] = if extra.contains(&"--kind") {
        &[]
    } else {
        &["--kind", "git"]
    };
    let mut args = vec!["repo", "add", url];
    args.extend(kind);
    args.extend(["--api", &api, "--operator-password-file", pw, "--json"]);
    args.extend(extra);
    let last = std::cell::RefCell::new(String::new());
    wait_until(
        "the repository is added",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let out = cli(&args);
            *last.borrow_mut() = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success().then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", last.borrow(), c.logs()));
}

fn tasks(c: &LocalCluster, i: usize) -> Vec<Value> {
    let out = cli(&["task", "ls", "--api", &c.nodes[i].api(), "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn task_file(id: &str) -> String {
    // The pause makes each task last long enough to be caught mid-run.
    format!("---\nid: {id}\n---\n# Greet {id}\n\nrun: sleep 2\nwrite out/{id}.txt: hello {id}\n")
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Waits until node `i` holds a live claim; returns that task's id.
fn holding(c: &LocalCluster, i: usize) -> String {
    let id = c.nodes[i].node_id().to_owned();
    wait_until(
        "the node holds a claim",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || {
            tasks(c, 0).into_iter().find_map(|t| {
                (t["node"] == id.as_str() && t["live"] == true && t["state"] != "done")
                    .then(|| t["id"].as_str().map(str::to_owned))
                    .flatten()
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()))
}

#[test]
fn twenty_tasks_done_exactly_once_across_a_node_killed_mid_run() {
    if tools_missing() {
        return;
    }
    let llm = ScriptedLlm::start().expect("llm");
    let root = tempfile::tempdir().expect("git root");
    let git = GitServer::start(root.path()).expect("git server");
    let ids: Vec<String> = (1..=20).map(|i| format!("t{i:02}")).collect();
    let files: Vec<(String, String)> = ids
        .iter()
        .map(|id| (format!("tasks/{id}.md"), task_file(id)))
        .chain([("README.md".to_owned(), "work\n".to_owned())])
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    git.create("work", &refs).expect("repo");
    let (mut c, pw) = cluster(3, &llm, 2);
    repo_add(&c, &pw, &git.url("work"), &[]);
    let listed = cli(&["repo", "ls", "--api", &c.nodes[1].api(), "--json"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&git.url("work")),
        "{listed:?}"
    );
    // Node 1 is paused (SIGSTOP) while it works a task, past its lease:
    // another node takes the task over and delivers it. When node 1 goes
    // on, the leader refuses its renewal, so it pushes nothing late.
    let paused = holding(&c, 1);
    let pid1 = c.nodes[1].pid().expect("pid");
    signal(pid1, "-STOP");
    let id1 = c.nodes[1].node_id().to_owned();
    wait_until(
        "another node delivers the paused node's task",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            tasks(&c, 0)
                .into_iter()
                .find(|t| t["id"] == paused.as_str() && t["state"] == "done")
                .filter(|t| t["node"] != id1.as_str())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", tasks(&c, 0), c.logs()));
    signal(pid1, "-CONT");
    // Node 2 is killed (SIGKILL) while it works a task, and restarted.
    holding(&c, 2);
    c.nodes[2].kill9();
    c.nodes[2].restart(Path::new(BIN)).expect("restart");
    c.nodes[2]
        .wait_ready(Duration::from_secs(30))
        .expect("restarted");
    let board = wait_until(
        "every task done",
        Duration::from_secs(240),
        Duration::from_millis(250),
        || {
            let t = tasks(&c, 2);
            (t.len() == 20 && t.iter().all(|t| t["state"] == "done")).then_some(t)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", tasks(&c, 0), c.logs()));
    let mut reclaimed = 0;
    for t in &board {
        let id = t["id"].as_str().expect("id");
        let claims = t["claims"].as_u64().expect("claims");
        assert!(claims >= 1, "{t}");
        reclaimed += usize::from(claims > 1);
        assert_eq!(t["branch"], format!("bzzz/task-{id}"), "{t}");
        assert_eq!(t["repo"], git.url("work"));
        let content = git
            .show("work", &format!("bzzz/task-{id}"), &format!("out/{id}.txt"))
            .unwrap_or_else(|e| {
                let key = t["key"].as_str().unwrap_or_default();
                let q = format!("/api/v1/tasks/log?key={}", key.replace('#', "%23"));
                let logs: Vec<String> = (0..3)
                    .map(|i| format!("{:?}", c.nodes[i].get_json(&q)))
                    .collect();
                panic!("{e}: {t}\n{logs:#?}")
            });
        assert_eq!(content, format!("hello {id}\n"));
        // Delivered once: one commit on top of main.
        assert_eq!(
            git.commits_ahead("work", &format!("bzzz/task-{id}"))
                .expect("count"),
            1
        );
    }
    // The killed node's claims were taken over after their lease.
    assert!(reclaimed >= 1, "{board:#?}");
    // Every node is done with its work, the paused one included; no task
    // was pushed twice (the paused node's late push was refused).
    wait_until(
        "every node idle",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            (0..3)
                .all(|i| {
                    c.nodes[i]
                        .get_json("/api/v1/agents")
                        .is_ok_and(|a| a["current"] == 0)
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // The paused node did not push its late work: the branch of the task
    // it held is the other node's commit.
    let short1 = &id1[id1.len() - 8..];
    let author = git
        .log_author("work", &format!("bzzz/task-{paused}"))
        .expect("author");
    assert!(
        !author.contains(short1),
        "the paused node's late push went through: {author}"
    );
    let pushes = git.pushes.load(std::sync::atomic::Ordering::SeqCst);
    // A push whose outcome could not commit (no leader during the kill)
    // is pushed again by the next holder (same branch, same content).
    assert!(
        (20..=20 + reclaimed as u64).contains(&pushes),
        "{pushes} pushes for 20 tasks ({reclaimed} claimed again)"
    );
    let branches = git.branches("work").expect("branches");
    assert_eq!(
        branches.len(),
        21,
        "main + one branch per task: {branches:?}"
    );
    // Each claim is its own Raft entry (fence): distinct across tasks.
    let fences: BTreeMap<u64, &str> = board
        .iter()
        .map(|t| {
            (
                t["fence"].as_u64().expect("fence"),
                t["id"].as_str().expect("id"),
            )
        })
        .collect();
    assert_eq!(fences.len(), 20);
}

#[test]
fn a_model_that_never_finishes_stops_at_the_step_cap() {
    if tools_missing() {
        return;
    }
    let llm = ScriptedLlm::start().expect("llm");
    let root = tempfile::tempdir().expect("git root");
    let git = GitServer::start(root.path()).expect("git server");
    git.create(
        "loop",
        &[(
            "tasks/spin.md",
            "---\nid: spin\nmodel: scripted-loop\n---\nNever done.\n",
        )],
    )
    .expect("repo");
    let hook = bzzz_testkit::forge::Recorder::start().expect("webhook");
    let (c, pw) = cluster_with(
        1,
        &llm,
        1,
        Vec::new(),
        &format!("  webhook: {}\n", hook.url()),
    );
    repo_add(&c, &pw, &git.url("loop"), &["--max-steps", "3"]);
    let t = wait_until(
        "the task fails at the cap",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            tasks(&c, 0)
                .into_iter()
                .find(|t| t["state"] == "failed" || t["state"] == "needs-human")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", tasks(&c, 0), c.logs()));
    assert!(
        t["reason"]
            .as_str()
            .is_some_and(|r| r.contains("step cap (3)")),
        "{t}"
    );
    // The work is kept on the branch even so.
    assert_eq!(t["branch"], "bzzz/task-spin", "{t}");
    // Three failed attempts: a person is needed.
    let t = wait_until(
        "needs-human after three attempts",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            tasks(&c, 0)
                .into_iter()
                .find(|t| t["state"] == "needs-human")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", tasks(&c, 0)));
    assert_eq!(t["attempts"], 3, "{t}");
    assert_eq!(t["claims"], 3, "{t}");
    // Escalation: the webhook heard each failure, the last as needs-human.
    let events = wait_until(
        "the escalations",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let b = hook.bodies();
            (b.len() >= 3).then_some(b)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", hook.bodies()));
    assert_eq!(events[0]["event"], "failed", "{events:?}");
    assert_eq!(events[2]["event"], "needs-human", "{events:?}");
    assert_eq!(events[2]["task"], "spin");
    assert!(
        events[2]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("step cap")),
        "{events:?}"
    );
}

/// Coordination on gossip: a worker stuck on failing steps asks the other
/// agents on its task's topic; the idle node answers with its model's next
/// action, which the worker's model sees (the scripted model writes it
/// into `help.txt`); and the other node's live log shows the steps of a
/// task it does not work.
#[test]
fn a_stuck_worker_gets_help_from_another_node_and_every_node_shows_its_log() {
    if tools_missing() {
        return;
    }
    let llm = ScriptedLlm::start().expect("llm");
    let root = tempfile::tempdir().expect("git root");
    let git = GitServer::start(root.path()).expect("git server");
    git.create(
        "stuck",
        &[(
            "tasks/stuck.md",
            "---\nid: stuck\nmodel: scripted-help\n---\nNeeds a hand.\n",
        )],
    )
    .expect("repo");
    let (c, pw) = cluster(2, &llm, 1);
    let url = git.url("stuck");
    repo_add(&c, &pw, &url, &[]);
    let t = wait_until(
        "the task is done",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            tasks(&c, 0)
                .into_iter()
                .find(|t| t["state"] == "done" || t["state"] == "needs-human")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", tasks(&c, 0), c.logs()));
    assert_eq!(t["state"], "done", "{t}");
    let worker = t["node"].as_str().expect("node").to_owned();
    let other = (0..2)
        .find(|&i| c.nodes[i].node_id() != worker)
        .expect("the other node");
    let help = git
        .show("stuck", "bzzz/task-stuck", "help.txt")
        .unwrap_or_else(|e| panic!("no help.txt: {e}\n{}", c.logs()));
    assert!(help.contains("fix.txt"), "{help}");
    assert!(
        help.contains(c.nodes[other].node_id()),
        "the answer names the helping node: {help}"
    );
    // The other node shows the live log of a task it did not work.
    let key = t["key"].as_str().expect("key").to_owned();
    let log = wait_until(
        "the other node has the log",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let v = c.nodes[other]
                .get_json(&format!("/api/v1/tasks/log?key={}", urlencode(&key)))
                .ok()?;
            let steps = v.as_array()?;
            steps
                .iter()
                .any(|s| s["tool"] == "finish")
                .then(|| steps.clone())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(
        log.iter().any(|s| s["tool"] == "help" && s["ok"] == true),
        "{log:?}"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a task's commands can reach: not the node's secrets (its
/// environment, its data directory, other processes), not the network,
/// not the files outside the work tree; a fork bomb and an allocation
/// past the cap are stopped. The commands report what they saw into the
/// delivered branch.
#[test]
fn a_task_cannot_reach_the_nodes_secrets_or_escape_the_sandbox() {
    if tools_missing() {
        return;
    }
    const SECRET: &str = "bzzz-test-secret-6f1c2a";
    let llm = ScriptedLlm::start().expect("llm");
    let root = tempfile::tempdir().expect("git root");
    let git = GitServer::start(root.path()).expect("git server");
    let (c, pw) = cluster_env(
        1,
        &llm,
        1,
        vec![("FORGE_TOKEN_FOR_TEST".into(), SECRET.into())],
    );
    std::fs::write(c.dir.path().join("node-0").join("forge-token"), SECRET).expect("secret file");
    let api_port = c.nodes[0]
        .api_addr()
        .rsplit(':')
        .next()
        .unwrap_or("8080")
        .to_owned();
    let task = format!(
        "---\nid: probe\n---\n# Probe the sandbox\n\n\
run: sleep 2\n\
run: mkdir -p out && (env; cat /proc/*/environ; grep -rlsF {SECRET} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr) > out/probe.txt 2>&1; true\n\
run: (echo x > /etc/escape) 2>/dev/null && echo outside: written >> out/report.txt || echo outside: refused >> out/report.txt\n\
run: perl -MIO::Socket::INET -e 'exit(IO::Socket::INET->new(PeerAddr => \"127.0.0.1:{api_port}\", Timeout => 2) ? 0 : 1)' && echo socket: open >> out/report.txt || echo socket: refused >> out/report.txt\n\
run: (for i in $(seq 300); do sleep 3 & done) 2>&1 | grep -q fork && echo fork: contained >> out/report.txt || echo fork: ran >> out/report.txt\n\
run: awk 'BEGIN {{ s = \"x\"; while (1) s = s s }}' 2>/dev/null; echo memory: exit $? >> out/report.txt\n"
    );
    git.create("probe", &[("tasks/probe.md", &task)])
        .expect("repo");
    repo_add(&c, &pw, &git.url("probe"), &[]);
    // The availability heartbeat in the capability record: busy while the
    // one slot is taken, ready again after.
    let agents = |c: &LocalCluster| {
        c.nodes[0]
            .get_json("/api/v1/status")
            .ok()
            .map(|s| s["capabilities"]["agents"].clone())
    };
    wait_until(
        "the node announces its agents busy",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            (agents(&c)? == serde_json::json!({"state": "busy", "current": 1, "max": 1}))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", agents(&c)));
    let t = wait_until(
        "the probe is delivered",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            tasks(&c, 0)
                .into_iter()
                .find(|t| t["state"] == "done" || t["state"] == "failed")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", tasks(&c, 0), c.logs()));
    assert_eq!(t["state"], "done", "{t}");
    let probe = git
        .show("probe", "bzzz/task-probe", "out/probe.txt")
        .expect("probe.txt");
    assert!(probe.contains("PATH="), "the search ran: {probe}");
    assert!(
        !probe.contains(SECRET),
        "the node's secret reached the sandbox: {probe}"
    );
    let report = git
        .show("probe", "bzzz/task-probe", "out/report.txt")
        .expect("report.txt");
    for want in ["outside: refused", "socket: refused", "fork: contained"] {
        assert!(report.contains(want), "{want}: {report}");
    }
    let mem = report
        .lines()
        .find_map(|l| l.strip_prefix("memory: exit "))
        .expect("memory line");
    assert_ne!(mem.trim(), "0", "the allocation was stopped: {report}");
    wait_until(
        "the node announces its agents ready",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            (agents(&c)? == serde_json::json!({"state": "ready", "current": 0, "max": 1}))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", agents(&c)));
}

/// Gitea and GitHub (named fakes of their APIs, `FakeForge`, over real
/// `git http-backend` repositories): an issue labelled `bzzz-task` ends as
/// a pull request from `bzzz/task-N`, a comment on the issue with the
/// link, and the labels `in-progress` → `done`; an unlabelled issue is no
/// task. The token is sealed to the nodes, never shown back, never in a
/// log, and never inside the sandbox (the task searches for it).
#[test]
fn forge_issues_end_as_pull_requests_and_the_token_stays_out_of_reach() {
    use bzzz_testkit::forge::FakeForge;
    if tools_missing() {
        return;
    }
    const TOKEN: &str = "forge-token-5d1e0c77";
    let llm = ScriptedLlm::start().expect("llm");
    let (c, pw) = cluster(1, &llm, 1);
    let token_file = c.dir.path().join("forge-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let token_arg = token_file.to_string_lossy().into_owned();
    let probe = format!(
        "write hello.txt: hello from bzzz\n\
run: (env; cat /proc/*/environ; cat .git/config; grep -rlsF {TOKEN} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr) > probe.txt 2>&1; true\n"
    );
    let mut forges = Vec::new();
    for (kind, github) in [("gitea", false), ("github", true)] {
        let root = tempfile::tempdir().expect("git root");
        let f = FakeForge::start(root.path(), TOKEN, github).expect("forge");
        f.create("acme/app", &[("README.md", "app\n")])
            .expect("repo");
        f.issue("acme/app", 7, "Say hello", &probe, &["bzzz-task"]);
        f.issue("acme/app", 8, "Not for agents", "write nope.txt: no\n", &[]);
        repo_add(
            &c,
            &pw,
            &f.url("acme/app"),
            &["--kind", kind, "--token-file", &token_arg],
        );
        forges.push((kind, f, root));
    }
    // The token is never shown back.
    let listed = cli(&["repo", "ls", "--api", &c.nodes[0].api(), "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("\"token\":true") && !listed.contains(TOKEN),
        "{listed}"
    );
    for (kind, f, _) in &forges {
        let url = f.url("acme/app");
        let t = wait_until(
            "the issue's task is done",
            Duration::from_secs(120),
            Duration::from_millis(250),
            || {
                tasks(&c, 0)
                    .into_iter()
                    .find(|t| t["repo"] == url.as_str() && t["id"] == "7" && t["state"] == "done")
            },
        )
        .unwrap_or_else(|e| panic!("{kind}: {e}: {:?}\n{}", tasks(&c, 0), c.logs()));
        let s = f.state();
        let pr = s
            .pulls
            .iter()
            .find(|p| p["head"]["ref"] == "bzzz/task-7")
            .unwrap_or_else(|| panic!("{kind}: a pull request: {:?}", s.pulls));
        assert_eq!(pr["base"]["ref"], "main", "{kind}");
        assert_eq!(t["pr_url"], pr["html_url"], "{kind}: {t}");
        let comment = s
            .comments
            .iter()
            .find(|(_, n, _)| *n == 7)
            .unwrap_or_else(|| panic!("{kind}: a comment: {:?}", s.comments));
        assert!(
            comment.2.contains(pr["html_url"].as_str().unwrap_or("?")),
            "{kind}: {comment:?}"
        );
        // Every API call carried the token; none was refused.
        assert!(
            s.requests.iter().all(|(_, _, ok)| *ok),
            "{kind}: {:?}",
            s.requests
        );
        drop(s);
        let labels = f.labels("acme/app", 7);
        assert!(
            labels.contains(&"done".to_owned()) && !labels.contains(&"in-progress".to_owned()),
            "{kind}: {labels:?}"
        );
        assert!(
            !tasks(&c, 0)
                .iter()
                .any(|t| t["repo"] == url.as_str() && t["id"] == "8"),
            "{kind}: an unlabelled issue is no task"
        );
        // The work, and what the task could see: no token.
        let root = f.git_root();
        let git = |args: &[&str]| bzzz_testkit::forge::git(&root.join("acme/app.git"), args);
        assert_eq!(
            git(&["show", "bzzz/task-7:hello.txt"]).expect("hello"),
            "hello from bzzz\n"
        );
        let seen = git(&["show", "bzzz/task-7:probe.txt"]).expect("probe");
        assert!(seen.contains("PATH="), "{kind}: the search ran: {seen}");
        assert!(
            !seen.contains(TOKEN),
            "{kind}: the token reached the sandbox: {seen}"
        );
    }
    // Nor is it in the node's log.
    let log = std::fs::read_to_string(c.dir.path().join("node-0.log")).unwrap_or_default();
    assert!(
        !log.is_empty() && !log.contains(TOKEN),
        "the token is in the log"
    );
}
