//! The setup wizard in real headless Chromium (Debian `chromium` +
//! `chromium-driver`, driven over WebDriver by fantoccini).
//!
//! Skips with a reason when Chromium is not installed, except under CI
//! (`CI` set), where `scripts/test.sh` installs it and a skip would hide a
//! missing feature: there it fails instead.

use std::path::Path;
use std::time::Duration;

use bzzz_testkit::browser::{self, text_of, wait_for};
use bzzz_testkit::{LocalCluster, LocalOpts, http};
use fantoccini::Locator;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_wizard_shows_the_words_once_and_locks_after_setup() {
    if !browser::available() {
        return;
    }
    // Three nodes: the operator ticks one peer; the other, merely in
    // view, must get nothing (issue #22).
    let mut c = LocalCluster::start(Path::new(BIN), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(20)).expect("formed");
    let (_driver, port) = browser::start_driver(c.dir.path(), &[]);
    let client = browser::session(c.dir.path(), port).await;
    let base = c.nodes[0].api();

    // The form: every peer in view listed by id, none ticked.
    client.goto(&format!("{base}/setup")).await.expect("goto");
    for i in [1, 2] {
        let id = c.nodes[i].node_id();
        let b = client
            .find(Locator::Css(&format!("#holders input[data-node='{id}']")))
            .await
            .expect("a box per peer");
        assert_eq!(
            b.prop("checked").await.expect("prop").as_deref(),
            Some("false")
        );
    }
    client
        .find(Locator::Css(&format!(
            "#holders input[data-node='{}']",
            c.nodes[1].node_id()
        )))
        .await
        .expect("box")
        .click()
        .await
        .expect("tick");
    client
        .find(Locator::Css("#cluster"))
        .await
        .expect("cluster field")
        .clear()
        .await
        .expect("clear");
    for (id, v) in [
        ("#cluster", "browser-lab"),
        ("#password", "a long operator password"),
        ("#password2", "a long operator password"),
    ] {
        client
            .find(Locator::Css(id))
            .await
            .expect(id)
            .send_keys(v)
            .await
            .expect("type");
    }
    client
        .find(Locator::Css("#start"))
        .await
        .expect("start")
        .click()
        .await
        .expect("click");

    // The words, shown once.
    wait_for(&client, "#mnemonic li").await;
    let items = client
        .find_all(Locator::Css("#mnemonic li"))
        .await
        .expect("words");
    let mut words = Vec::new();
    for li in &items {
        words.push(li.text().await.expect("word"));
    }
    assert_eq!(words.len(), 24, "{words:?}");
    let hex = text_of(&client, "#master-hex").await;
    let master = bzzz_crypto::threshold::MasterKey::from_mnemonic(&words.join(" "))
        .expect("the page shows a valid BIP39 mnemonic");
    assert_eq!(*master.hex(), hex, "words and hex are the same key");
    let inputs = client
        .find_all(Locator::Css("#confirm-form input[name^=w]"))
        .await
        .expect("confirm inputs");
    let mut positions = Vec::new();
    for i in &inputs {
        let name = i.attr("name").await.expect("attr").expect("name");
        positions.push(name[1..].parse::<usize>().expect("position"));
    }
    assert_eq!(positions.len(), 3);

    // Reloading shows that the words are gone.
    client.refresh().await.expect("reload");
    assert!(
        client
            .find_all(Locator::Css("#mnemonic li"))
            .await
            .expect("query")
            .is_empty(),
        "the words were shown twice"
    );
    assert!(
        text_of(&client, "#words-gone")
            .await
            .contains("cannot be shown again")
    );
    let src = client.source().await.expect("source");
    assert!(!src.contains(&words[..3].join(" ")) && !src.contains(&hex));

    // Confirm with the re-typed words (on the page after the reload).
    for p in &positions {
        client
            .find(Locator::Css(&format!("#w{p}")))
            .await
            .expect("input")
            .send_keys(&words[p - 1])
            .await
            .expect("type");
    }
    client
        .find(Locator::Css("#confirm"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("click");
    let state = wait_for(&client, "#setup-state[data-state=initialized]")
        .await
        .attr("data-state")
        .await
        .expect("attr");
    assert_eq!(state.as_deref(), Some("initialized"));
    let pk = text_of(&client, "#admin-public-key").await;
    assert_eq!(pk, hex::encode(master.admin_key().public()));
    // The ticked peer holds a share; the other is no member at all.
    let ticked = c.nodes[1].get_json("/api/v1/keys").expect("keys");
    assert_eq!(ticked["share_state"], "valid", "{ticked}");
    let other = c.nodes[2].get_json("/api/v1/keys").expect("keys");
    assert_eq!(other["initialized"], false, "{other}");

    // Reloading after setup still shows no words; a second setup is refused.
    client.refresh().await.expect("reload");
    let src = client.source().await.expect("source");
    assert!(!src.contains(&words.join(" ")) && !src.contains(&hex));
    client
        .goto(&format!("{base}/setup/reveal"))
        .await
        .expect("goto");
    assert!(
        client
            .find_all(Locator::Css("#mnemonic li"))
            .await
            .expect("query")
            .is_empty()
    );
    assert!(
        client
            .find_all(Locator::Css("#setup-form"))
            .await
            .expect("query")
            .is_empty(),
        "setup form offered after setup"
    );
    let second: serde_json::Value = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/setup/start', {method: 'POST',
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                 body: 'cluster=again&password=another%20long%20password&password2=another%20long%20password'})
               .then(r => done(r.status)).catch(e => done(String(e)));",
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(second, 409, "a second setup from the browser");
    let addr = base.trim_start_matches("http://");
    let (code, _) = http::request(
        addr,
        "POST",
        "/api/v1/setup",
        &[],
        r#"{"cluster":"again","operator_password":"another long password"}"#,
    )
    .expect("post");
    assert_eq!(code, 409);

    // Operator login: the admin page needs it; a wrong password is refused;
    // with the right one, a join token can be created from the page.
    client.goto(&format!("{base}/admin")).await.expect("goto");
    wait_for(&client, "#login-form").await;
    for (pw, ok) in [
        ("not the password", false),
        ("a long operator password", true),
    ] {
        wait_for(&client, "#password")
            .await
            .send_keys(pw)
            .await
            .expect("type");
        client
            .find(Locator::Css("#login"))
            .await
            .expect("login")
            .click()
            .await
            .expect("click");
        if !ok {
            assert!(
                text_of(&client, "#error")
                    .await
                    .contains("wrong operator credential")
            );
        }
    }
    wait_for(&client, "#create-token")
        .await
        .click()
        .await
        .expect("click");
    let token = text_of(&client, "#token").await;
    assert!(token.starts_with("bzzzjoin1."), "{token}");
    bzzz_crypto::records::check_token(&token, &master.admin_key().public(), bzzz::keys::unix_now())
        .expect("the page's token is signed by the cluster admin key");
    // The cluster page: 2 of 2, no lone-holder warning, the picture with
    // the two holders as members (the unticked peer is none).
    client.goto(&format!("{base}/cluster")).await.expect("goto");
    let policy = text_of(&client, "#key-policy").await;
    assert!(
        policy.contains("2 of 2") && policy.contains("majority") && policy.contains("epoch 0"),
        "{policy}"
    );
    let src = client.source().await.expect("source");
    assert!(!src.contains("only this node holds the admin key"), "{src}");
    wait_for(&client, "#cluster-svg g.node.member").await;
    let mut shares = Vec::new();
    for m in client
        .find_all(Locator::Css("#cluster-svg g.node.member"))
        .await
        .expect("members")
    {
        shares.push(
            m.attr("data-share")
                .await
                .expect("attr")
                .unwrap_or_default(),
        );
    }
    shares.sort();
    assert_eq!(shares, vec!["1", "2"], "{src}");
    client.goto(&format!("{base}/admin")).await.expect("goto");
    wait_for(&client, "#logout")
        .await
        .click()
        .await
        .expect("click");
    client.goto(&format!("{base}/admin")).await.expect("goto");
    wait_for(&client, "#login-form").await;
    client.close().await.expect("close");
}

/// Types `v` into the field `css` (cleared first).
async fn fill(client: &fantoccini::Client, css: &str, v: &str) {
    let e = wait_for(client, css).await;
    e.clear().await.expect("clear");
    e.send_keys(v).await.expect("type");
}

async fn click(client: &fantoccini::Client, css: &str) {
    wait_for(client, css).await.click().await.expect("click");
}

/// Logs in on the node at `base` as `user`.
async fn log_in(client: &fantoccini::Client, base: &str, user: &str, password: &str) {
    client.goto(&format!("{base}/login")).await.expect("goto");
    fill(client, "#user", user).await;
    fill(client, "#password", password).await;
    click(client, "#login").await;
    wait_for(client, "#logout").await;
}

/// Roles, users and API keys in the console (SPEC §9): the operator
/// creates a role in the form on node 0 (threshold-signed, committed);
/// a user logs in on node 1, sees it on that node's roles page and makes
/// itself an API key (the secret shown once works as a Bearer
/// credential); a form POST without the session's CSRF token is refused
/// and changes nothing; removing the user ends its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_users_and_keys_in_the_console_with_csrf_tokens() {
    use std::time::Duration;
    if !browser::available() {
        return;
    }
    const PASSWORD: &str = "a long operator password";
    const OLGA: &str = "olga's own long password";
    let mut c = LocalCluster::start(Path::new(BIN), 2, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    c.init(0, PASSWORD).expect("init");
    let olga_pw = c.dir.path().join("olga-password");
    std::fs::write(&olga_pw, format!("{OLGA}\n")).expect("write");
    let (api0, api1) = (c.nodes[0].api(), c.nodes[1].api());
    let olga_pw_s = olga_pw.to_string_lossy().into_owned();
    bzzz_testkit::wait_until(
        "user olga is added and known on node 1",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = bzzz_testkit::cli(
                BIN,
                &[
                    "user",
                    "add",
                    "olga",
                    "--role",
                    "observer",
                    "--password-file",
                    &olga_pw_s,
                    "--api",
                    &api0,
                ],
            );
            if !out.status.success() {
                return None;
            }
            let v = bzzz_testkit::cli_json(BIN, &["user", "ls", "--api", &api1, "--json"]);
            v.as_array()?
                .iter()
                .any(|u| u["name"] == "olga")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    let (_driver, port) = browser::start_driver(c.dir.path(), &[]);
    let client = browser::session(c.dir.path(), port).await;

    // The operator makes a role in the form on node 0.
    log_in(&client, &api0, "admin", PASSWORD).await;
    client.goto(&format!("{api0}/roles")).await.expect("goto");
    fill(&client, "#role-name", "reviewer").await;
    fill(
        &client,
        "#role-permissions",
        "read:cluster\ninfer:model:smollm2*",
    )
    .await;
    click(&client, "#save-role").await;
    let notice = text_of(&client, "#notice").await;
    assert!(notice.contains("reviewer"), "{notice}");

    // A form POST without the CSRF token: refused, nothing changes.
    client.goto(&format!("{api0}/roles")).await.expect("goto");
    fill(&client, "#role-name", "sneaky").await;
    client
        .execute(
            "document.querySelector('#role-form input[name=csrf]').remove();",
            vec![],
        )
        .await
        .expect("js");
    click(&client, "#save-role").await;
    let error = text_of(&client, "#error").await;
    assert!(error.contains("CSRF"), "{error}");
    let (code, roles) = http::get(&c.nodes[0].api_addr(), "/api/v1/roles").expect("roles");
    assert_eq!(code, 200);
    assert!(
        roles.contains("reviewer") && !roles.contains("sneaky"),
        "{roles}"
    );
    // The same without a session's token but from a script with a header
    // credential is not a browser form: the token applies to sessions.

    // The user logs in on node 1 and sees the role there.
    let page1 = |client: &fantoccini::Client| {
        let client = client.clone();
        let api1 = api1.clone();
        async move {
            client.goto(&format!("{api1}/roles")).await.expect("goto");
            client.source().await.expect("source")
        }
    };
    let src = page1(&client).await;
    assert!(
        src.contains("login-form"),
        "node 1 has no session yet: {src}"
    );
    log_in(&client, &api1, "olga", OLGA).await;
    let whoami = text_of(&client, "#whoami").await;
    assert!(
        whoami.contains("user:olga") && whoami.contains("observer"),
        "{whoami}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let src = page1(&client).await;
        if src.contains("data-role=\"reviewer\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the role reaches node 1's page: {src}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Olga makes herself a key; the secret is shown once and works.
    client.goto(&format!("{api1}/access")).await.expect("goto");
    fill(&client, "#key-name", "laptop").await;
    click(&client, "#create-key").await;
    let secret = text_of(&client, "#secret").await;
    assert!(secret.starts_with("bzzz_"), "{secret}");
    let auth = format!("Bearer {secret}");
    let (code, who) = http::raw(
        &c.nodes[0].api_addr(),
        "GET",
        "/api/v1/whoami",
        &[("authorization", auth.as_str())],
        "",
    )
    .expect("whoami");
    assert_eq!(code, 200, "{who}");
    assert!(who.contains("\"observer\""), "{who}");
    client.goto(&format!("{api1}/access")).await.expect("goto");
    let src = client.source().await.expect("source");
    assert!(!src.contains(&secret), "the secret is shown once");
    // Olga cannot grant herself more: the form refuses a role she lacks.
    fill(&client, "#key-role", "admin").await;
    click(&client, "#create-key").await;
    let error = text_of(&client, "#error").await;
    assert!(error.contains("admin"), "{error}");

    // Removing the user ends its session on every node's next request.
    let out = bzzz_testkit::cli(BIN, &["user", "rm", "olga", "--api", &api0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        client.goto(&format!("{api1}/access")).await.expect("goto");
        if client
            .source()
            .await
            .expect("source")
            .contains("login-form")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "olga's session ends");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.close().await.expect("close");
}

/// The tasks page (issue #23): the operator sees the board with each
/// task's state, opens a running task and watches its live step log (the
/// page reloads itself) until the task is done. The model is the
/// scripted LLM (a named fake, `bzzz_testkit::forge::ScriptedLlm`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_page_lists_tasks_and_the_live_log_of_a_running_one() {
    use bzzz_testkit::forge::{GitServer, ScriptedLlm};
    if !browser::available() || bzzz_agents::sandbox::check_tools().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI has chromium and bubblewrap"
        );
        return;
    }
    const PASSWORD: &str = "a long operator password";
    let llm = ScriptedLlm::start().expect("llm");
    let root = tempfile::tempdir().expect("git root");
    let git = GitServer::start(root.path()).expect("git server");
    git.create(
        "board",
        &[
            (
                "tasks/slow.md",
                "---\nid: slow\npriority: 9\n---\n# Slow one\n\nrun: sleep 4\nwrite out/slow.txt: slow\n",
            ),
            (
                "tasks/quick.md",
                "---\nid: quick\n---\n# Quick one\n\nwrite out/quick.txt: quick\n",
            ),
        ],
    )
    .expect("repo");
    let cfg = tempfile::tempdir().expect("cfg");
    let file = cfg.path().join("agents.yaml");
    std::fs::write(
        &file,
        format!(
            "agents:\n  enabled: true\n  max_tasks: 1\n  model: scripted\n  llm_url: {}\n  lease: 5s\n  poll_every: 500ms\n",
            llm.url()
        ),
    )
    .expect("config");
    let opts = LocalOpts {
        extra_args: vec!["--config".into(), file.to_string_lossy().into_owned()],
        ..Default::default()
    };
    let mut c = LocalCluster::start(Path::new(BIN), 1, &opts).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let pw = c.init(0, PASSWORD).expect("init");
    let api = c.nodes[0].api();
    let url = git.url("board");
    bzzz_testkit::wait_until(
        "the repository is added",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            bzzz_testkit::cli(
                BIN,
                &[
                    "repo",
                    "add",
                    &url,
                    "--kind",
                    "git",
                    "--api",
                    &api,
                    "--operator-password-file",
                    &pw,
                ],
            )
            .status
            .success()
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    let (_driver, port) = browser::start_driver(c.dir.path(), &[]);
    let client = browser::session(c.dir.path(), port).await;
    log_in(&client, &api, "admin", PASSWORD).await;
    client.goto(&format!("{api}/tasks")).await.expect("goto");
    // The slow task (higher priority) is taken first; open it while it runs.
    browser::wait_for_secs(&client, "tr[data-id=slow]", 60).await;
    click(&client, "tr[data-id=slow] a").await;
    let row = browser::wait_for_secs(&client, "#log tr.ok", 30).await;
    let first = row.text().await.expect("text");
    assert!(
        first.contains("run") && first.contains("sleep 4"),
        "{first}"
    );
    // The page follows the task to its end by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let state = loop {
        let s = text_of(&client, "#task td.state").await;
        if s == "done" || std::time::Instant::now() > deadline {
            break s;
        }
        // Not synchronization: the page reloads itself every 2 s.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(state, "done");
    let log = text_of(&client, "#log").await;
    assert!(
        log.contains("write_file") && log.contains("finish"),
        "{log}"
    );
    client.goto(&format!("{api}/tasks")).await.expect("goto");
    browser::wait_for_secs(&client, "tr[data-id=quick][data-state=done]", 60).await;
    let board = text_of(&client, "#tasks").await;
    assert!(
        board.contains("bzzz/task-slow") && board.contains("bzzz/task-quick"),
        "{board}"
    );
    client.close().await.expect("close");
}
