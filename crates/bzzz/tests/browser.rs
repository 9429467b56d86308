//! The setup wizard in real headless Chromium (Debian `chromium` +
//! `chromium-driver`, driven over WebDriver by fantoccini).
//!
//! Skips with a reason when Chromium is not installed, except under CI
//! (`CI` set), where `scripts/test.sh` installs it and a skip would hide a
//! missing feature: there it fails instead.

use std::path::Path;

use bzzz_testkit::browser::{self, text_of, wait_for};
use bzzz_testkit::{LocalCluster, LocalOpts, http};
use fantoccini::Locator;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_wizard_shows_the_words_once_and_locks_after_setup() {
    if !browser::available() {
        return;
    }
    let c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    let (_driver, port) = browser::start_driver(c.dir.path(), &[]);
    let client = browser::session(c.dir.path(), port).await;
    let base = c.nodes[0].api();

    // The form.
    client.goto(&format!("{base}/setup")).await.expect("goto");
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
    // The cluster page: one node, 1 of 1, the lone-holder warning, the
    // picture with this node as leader and share holder.
    client.goto(&format!("{base}/cluster")).await.expect("goto");
    let policy = text_of(&client, "#key-policy").await;
    assert!(
        policy.contains("1 of 1") && policy.contains("majority") && policy.contains("epoch 0"),
        "{policy}"
    );
    let src = client.source().await.expect("source");
    assert!(src.contains("only this node holds the admin key"), "{src}");
    let me = wait_for(&client, "#cluster-svg g.node.member").await;
    assert_eq!(
        me.attr("data-share").await.expect("attr").as_deref(),
        Some("1")
    );
    assert_eq!(
        me.attr("data-raft").await.expect("attr").as_deref(),
        Some("leader")
    );
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
