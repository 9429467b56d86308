//! Model distribution (SPEC §8) with real node processes on 127.0.0.1: a
//! GGUF added on one node is placed by the leader on nodes with VRAM,
//! fetched from the swarm into Ollama's layout (read back the way Ollama
//! reads it), the adder's extra copy is deleted once the placed copies are
//! ready; a corrupt holder's pieces are detected and fetched elsewhere; a
//! partial file is resumed without fetching its verified pieces again; a
//! lost copy is re-placed; removal deletes every copy.
//!
//! Transfer speed and the swarm's upload split are measured by the
//! namespace-lab benchmark (`cargo bench -p bzzz --bench models`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";
const PIECE: usize = 256 * 1024;

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn cli(args: &[&str]) -> std::process::Output {
    bzzz_testkit::cli(BIN, args)
}

fn cli_json(args: &[&str]) -> Value {
    bzzz_testkit::cli_json(BIN, args)
}

/// A GGUF file: a real header (llama, Q4_1, a ChatML template) and
/// `pieces` pieces of deterministic pseudo-random tensor data.
fn make_gguf(path: &Path, pieces: usize, seed: u64) -> Vec<u8> {
    use bzzz_models::gguf::{Value as V, synthetic_header};
    let mut bytes = synthetic_header(
        &[
            ("general.architecture", V::Str("llama".into())),
            ("general.file_type", V::Int(3)),
            ("llama.block_count", V::Int(4)),
            ("llama.context_length", V::Int(2048)),
            ("llama.embedding_length", V::Int(256)),
            ("llama.attention.head_count", V::Int(4)),
            (
                "tokenizer.chat_template",
                V::Str("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}".into()),
            ),
        ],
        &[("token_embd.weight", vec![256, 1024])],
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    while bytes.len() < pieces * PIECE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(pieces * PIECE);
    std::fs::write(path, &bytes).expect("write gguf");
    bytes
}

fn gpu_opts(c: &LocalCluster, name: &str) -> LocalOpts {
    let cfg = c.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        "capabilities:\n  declared:\n    gpus:\n      - vendor: nvidia\n        model: L4 (declared)\n        vram_total_bytes: 8589934592\n",
    )
    .expect("config");
    LocalOpts {
        extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        ..Default::default()
    }
}

fn store(c: &LocalCluster, i: usize) -> PathBuf {
    c.nodes[i].data_dir.join("ollama")
}

/// What Ollama would list in a models directory: it globs
/// `manifests/*/*/*/*`, names each `ns/model:tag` (no `library/`), its
/// digest is the sha256 of the manifest file, its size the config's plus
/// every layer's, its quantization the config blob's `file_type`.
fn ollama_list(dir: &Path) -> Vec<(String, String, u64, String)> {
    fn subdirs(p: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
    let mut out = Vec::new();
    for host in subdirs(&dir.join("manifests")) {
        for ns in subdirs(&host) {
            for model in subdirs(&ns) {
                for tag in subdirs(&model) {
                    let bytes = std::fs::read(&tag).expect("manifest");
                    let m: Value = serde_json::from_slice(&bytes).expect("manifest json");
                    let mut size = m["config"]["size"].as_u64().expect("config size");
                    for l in m["layers"].as_array().expect("layers") {
                        size += l["size"].as_u64().expect("layer size");
                        let d = l["digest"].as_str().expect("digest").replace(':', "-");
                        let blob = dir.join("blobs").join(&d);
                        assert_eq!(
                            std::fs::metadata(&blob).map(|m| m.len()).ok(),
                            l["size"].as_u64(),
                            "{} in place",
                            blob.display()
                        );
                    }
                    let cfg = m["config"]["digest"]
                        .as_str()
                        .expect("config")
                        .replace(':', "-");
                    let cfg: Value = serde_json::from_slice(
                        &std::fs::read(dir.join("blobs").join(cfg)).expect("config blob"),
                    )
                    .expect("config json");
                    let f = |p: &Path| p.file_name().expect("name").to_string_lossy().into_owned();
                    let ns = f(&ns);
                    let name = if ns == "library" {
                        format!("{}:{}", f(&model), f(&tag))
                    } else {
                        format!("{ns}/{}:{}", f(&model), f(&tag))
                    };
                    out.push((
                        name,
                        bzzz_models::ollama::sha256_digest(&bytes),
                        size,
                        cfg["file_type"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
        }
    }
    // Nothing but digests in blobs/ (Ollama deletes anything else).
    for e in std::fs::read_dir(dir.join("blobs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            n.starts_with("sha256-") && n.len() == 71,
            "{n} in blobs/ is not a digest"
        );
    }
    out
}

fn metric(c: &LocalCluster, i: usize, name: &str) -> u64 {
    let api = c.nodes[i].api();
    let text = bzzz_testkit::http::get(api.trim_start_matches("http://"), "/metrics")
        .map(|r| r.1)
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("bzzz_{name}_total ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn status(c: &LocalCluster, i: usize, name: &str) -> Value {
    cli_json(&[
        "model",
        "status",
        name,
        "--api",
        &c.nodes[i].api(),
        "--json",
    ])
}

/// Node ids whose copy is `ready`.
fn ready(s: &Value) -> Vec<String> {
    s["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["state"] == "ready" && n["bytes_done"] == n["bytes_total"])
                .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An initialized cluster: node 0 without a GPU, then `gpus` nodes with a
/// declared 8 GiB GPU; the operator password file's path; the registry
/// answering.
fn cluster(gpus: usize) -> (LocalCluster, String) {
    let mut c = LocalCluster::start(bin(), 1, &LocalOpts::default()).expect("start");
    for n in 0..gpus {
        let o = gpu_opts(&c, &format!("gpu{n}"));
        c.add_node(&o).expect("gpu node");
    }
    c.wait_formed(Duration::from_secs(20)).expect("mesh");
    let pw = c.init(0, PASSWORD).expect("init");
    wait_until(
        "the registry answers",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            c.nodes[0]
                .get_json("/api/v1/models")
                .ok()
                .filter(Value::is_array)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    (c, pw)
}

#[test]
fn models_are_placed_fetched_from_the_swarm_verified_resumed_and_replaced() {
    let (mut c, pw) = cluster(3);
    let api = c.nodes[0].api();
    let ids: Vec<String> = c.nodes.iter().map(|n| n.node_id().to_owned()).collect();

    // 1. Add on node 0 (no GPU) with 2 copies, node 3 excluded: nodes 1
    //    and 2 (GPUs) get it.
    let gguf = c.dir.path().join("tiny.gguf");
    let pieces = 24;
    let content = make_gguf(&gguf, pieces, 0);
    let added = c.add_model(
        0,
        &gguf,
        "Tiny:1",
        &pw,
        &["--replicas", "2", "--exclude", &ids[3]],
    );
    assert_eq!(added["name"], "tiny:1");
    let digest = added["digest"].as_str().expect("digest").to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let size = added["size_bytes"].as_u64().expect("size");
    assert!(size > content.len() as u64);
    let s = wait_until(
        "2 copies ready",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let s = status(&c, 0, "tiny:1");
            (ready(&s).len() == 2).then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(s["replicas"], 2);
    assert_eq!(s["digest"], digest.as_str());
    let mut got = ready(&s);
    got.sort();
    let mut want = vec![ids[1].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(got, want, "the two GPU nodes not excluded hold it");
    for i in [1, 2] {
        let listed = ollama_list(&store(&c, i));
        assert_eq!(
            listed,
            vec![("tiny:1".to_owned(), digest.clone(), size, "Q4_1".to_owned())],
            "node {i}'s store as Ollama lists it"
        );
    }
    // The adder's copy goes once the placed ones are ready (manifest, then
    // its blobs).
    wait_until(
        "the adder's copy is deleted",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let empty = ollama_list(&store(&c, 0)).is_empty()
                && std::fs::read_dir(store(&c, 0).join("blobs"))
                    .map(|r| r.count())
                    .unwrap_or(0)
                    == 0;
            empty.then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // 2. Node 1's blob goes bad on disk; node 3 already has half the
    //    pieces in a partial file. A third copy goes to node 3: it resumes
    //    and fetches the rest from nodes 1 and 2, detecting node 1's bad
    //    pieces.
    let model_blob = {
        let m: Value = serde_json::from_slice(
            &std::fs::read(store(&c, 1).join("manifests/registry.ollama.ai/library/tiny/1"))
                .expect("manifest"),
        )
        .expect("json");
        m["layers"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    };
    assert_eq!(model_blob, bzzz_models::ollama::sha256_digest(&content));
    let blob_name = model_blob.replace(':', "-");
    let corrupt: Vec<u8> = content.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(store(&c, 1).join("blobs").join(&blob_name), &corrupt).expect("corrupt");
    let partial_dir = store(&c, 3).join("bzzz/partial");
    std::fs::create_dir_all(&partial_dir).expect("partial dir");
    let mut half = content[..pieces / 2 * PIECE].to_vec();
    half.resize(content.len(), 0);
    std::fs::write(partial_dir.join(format!("{blob_name}.part")), &half).expect("partial");
    let again = c.add_model(0, &gguf, "tiny:1", &pw, &["--replicas", "3"]);
    assert_eq!(
        again["digest"],
        digest.as_str(),
        "same content, same digest"
    );
    wait_until(
        "node 3 holds a copy",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            ready(&status(&c, 0, "tiny:1"))
                .contains(&ids[3])
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let on3 = std::fs::read(store(&c, 3).join("blobs").join(&blob_name)).expect("blob on 3");
    assert!(on3 == content, "node 3's blob is the original");
    assert_eq!(metric(&c, 3, "model_pieces_resumed"), (pieces / 2) as u64);
    assert_eq!(
        metric(&c, 3, "model_bytes_fetched"),
        size - (pieces / 2 * PIECE) as u64,
        "only the missing pieces (and the small config, template, params blobs) were fetched"
    );
    assert!(
        metric(&c, 3, "model_bad_pieces") >= 1,
        "node 1's bad pieces were detected\n{}",
        c.logs()
    );

    // 3. A node holding a copy dies: the copy is re-placed (node 0, on
    //    CPU: no other GPU is left) and fetched from the others.
    c.nodes[2].kill9();
    let t0 = std::time::Instant::now();
    let s = wait_until(
        "the lost copy is re-placed",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let s = c.nodes[0].get_json("/api/v1/models/tiny:1").ok()?;
            let r = ready(&s);
            (r.len() == 3 && r.contains(&ids[0]) && !r.contains(&ids[2])).then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!("re-placed and fetched in {:?}", t0.elapsed());
    let n0 = s["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node_id"] == ids[0].as_str()))
        .cloned()
        .expect("node 0");
    assert_eq!(n0["cpu_only"], true, "no GPU left: node 0 runs it on CPU");
    assert_eq!(
        std::fs::read(store(&c, 0).join("blobs").join(&blob_name)).expect("blob on 0"),
        content
    );

    // The models page shows the model × node table.
    let (code, page) =
        bzzz_testkit::http::get(api.trim_start_matches("http://"), "/models").expect("page");
    assert_eq!(code, 200);
    assert!(
        page.contains("tiny:1") && page.contains("held") && page.contains("(CPU)"),
        "{page}"
    );

    // 4. A new version under the same tag rolls out to the placed nodes;
    //    the old blob goes once the new manifest is in place.
    let v2 = make_gguf(&gguf, 8, 1);
    let added2 = c.add_model(0, &gguf, "tiny:1", &pw, &["--replicas", "3"]);
    let digest2 = added2["digest"].as_str().expect("digest").to_owned();
    assert_ne!(digest2, digest);
    assert_eq!(added2["changed"], true);
    let blob2 = bzzz_models::ollama::sha256_digest(&v2).replace(':', "-");
    wait_until(
        "the new version is everywhere, the old blob gone",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            [0, 1, 3]
                .iter()
                .all(|i| {
                    let l = ollama_list(&store(&c, *i));
                    l.len() == 1
                        && l[0].1 == digest2
                        && store(&c, *i).join("blobs").join(&blob2).exists()
                        && !store(&c, *i).join("blobs").join(&blob_name).exists()
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        let stores: Vec<String> = [0, 1, 3]
            .iter()
            .map(|i| {
                let blobs: Vec<String> = std::fs::read_dir(store(&c, *i).join("blobs"))
                    .map(|r| {
                        r.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                format!("node {i}: {:?} {blobs:?}", ollama_list(&store(&c, *i)))
            })
            .collect();
        panic!("{e}\n{}\n{}", stores.join("\n"), c.logs())
    });

    // 5. The same model from a directory in Ollama's layout (same manifest:
    //    same digest, nothing changes) and, under another name, from an
    //    Ollama store (`--from-ollama`).
    let dir3 = store(&c, 3).to_string_lossy().into_owned();
    let same = c.add_model(0, Path::new(&dir3), "tiny:1", &pw, &["--replicas", "3"]);
    assert_eq!(same["digest"], digest2.as_str());
    assert_eq!(same["changed"], false);
    let copy = cli_json(&[
        "model",
        "add",
        "--from-ollama",
        "tiny:1",
        "--ollama-dir",
        &dir3,
        "--name",
        "copy:1",
        "--api",
        &api,
        "--operator-password-file",
        &pw,
        "--json",
    ]);
    assert_eq!(copy["name"], "copy:1");
    assert_eq!(copy["digest"], digest2.as_str());
    wait_until(
        "copy:1 is ready",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (ready(&status(&c, 0, "copy:1")).len() == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // 6. Removal: every live node deletes its copies; the list is empty.
    for name in ["tiny:1", "copy:1"] {
        let out = cli(&[
            "model",
            "rm",
            name,
            "--api",
            &api,
            "--operator-password-file",
            &pw,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(
        "every copy is deleted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            [0, 1, 3]
                .iter()
                .all(|i| {
                    ollama_list(&store(&c, *i)).is_empty()
                        && std::fs::read_dir(store(&c, *i).join("blobs"))
                            .map(|r| r.count())
                            .unwrap_or(0)
                            == 0
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let ls = cli_json(&["model", "ls", "--api", &api, "--json"]);
    assert_eq!(ls, serde_json::json!([]));
    // Bad input is refused with a message, not a panic.
    let out = cli(&["model", "status", "../x", "--api", &api, "--json"]);
    assert!(!out.status.success());
    let out = cli(&["model", "status", "nope:1", "--api", &api, "--json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model"));
}

/// The real SmolLM2-135M GGUF (`TEST_SMOLLM2_GGUF`, fetched by
/// `scripts/test.sh`): added on a node without a GPU, it lands on the GPU
/// node in Ollama's layout and reads back with the right digest, size and
/// quantization; the registry has its GGUF facts.
#[test]
fn a_real_gguf_lands_in_ollamas_layout() {
    let Some(gguf) = std::env::var_os("TEST_SMOLLM2_GGUF").map(PathBuf::from) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "TEST_SMOLLM2_GGUF is not set (scripts/test.sh fetches it)"
        );
        eprintln!(
            "skipped: set TEST_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (scripts/test.sh does)"
        );
        return;
    };
    let (c, pw) = cluster(1);
    let added = c.add_model(0, &gguf, "smollm2:135m", &pw, &[]);
    let digest = added["digest"].as_str().expect("digest").to_owned();
    let size = added["size_bytes"].as_u64().expect("size");
    let s = wait_until(
        "the GPU node holds it",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let s = status(&c, 0, "smollm2:135m");
            (ready(&s) == vec![c.nodes[1].node_id().to_owned()]).then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(s["facts"]["architecture"], "llama");
    assert_eq!(s["facts"]["quantization"], "Q4_1");
    let params = s["facts"]["parameters"].as_u64().expect("parameters");
    assert!((130_000_000..140_000_000).contains(&params), "{params}");
    let listed = ollama_list(&store(&c, 1));
    assert_eq!(
        listed,
        vec![("smollm2:135m".to_owned(), digest, size, "Q4_1".to_owned())]
    );
    let gguf_len = std::fs::metadata(&gguf).expect("gguf").len();
    assert!(
        size > gguf_len && size < gguf_len + 4096,
        "model layer + small blobs"
    );
    let model_blob = store(&c, 1).join("blobs").join(
        bzzz_models::ollama::sha256_digest(&std::fs::read(&gguf).expect("read")).replace(':', "-"),
    );
    assert_eq!(
        std::fs::metadata(model_blob).expect("model blob").len(),
        gguf_len
    );
}
