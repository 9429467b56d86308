//! `bzzz config example`: a commented file with every field and its default.

use super::*;

/// A commented example file with every field and its default.
pub fn example() -> String {
    let n = NetworkFile::default();
    let c = CapabilitiesFile::default();
    let k = ControlFile::default();
    let d = |x: Duration| humantime::format_duration(x).to_string();
    let mut extra = BTreeMap::new();
    extra.insert("owner", "ml-team");
    format!(
        r#"# BZZZ node configuration (/etc/bzzz/bzzz.yaml, or --config PATH).
# Every field is optional; shown values are the defaults.
# Any field can be overridden by an environment variable named after its path:
#   BZZZ_HTTP=127.0.0.1:9090   BZZZ_NETWORK__MDNS=false   BZZZ_LABELS__ZONE=eu-1
# Command-line flags win over both.

# Node identity key and local state.
data_dir: /var/lib/bzzz
# HTTP API (/api/v1/), web UI (/), setup (/setup) and metrics (/metrics).
http: 0.0.0.0:8080
# auto | human | json
log_format: auto
# Log filter; BZZZ_LOG overrides it (e.g. BZZZ_LOG=info,bzzz_net=debug).
log_level: info

network:
  # Multiaddrs to listen on: TCP and QUIC.
  listen:
    - {l0}
    - {l1}
  # Peers to join through (any member); redialed with backoff when lost.
  # bootstrap:
  #   - /ip4/10.0.0.5/tcp/{port}/p2p/12D3KooW...
  bootstrap: []
  # Find peers on the local network (multicast DNS).
  mdns: {mdns}
  # Capability announcement period.
  announce_interval: {ai}
  # A node silent for this long leaves the cluster view (> announce_interval).
  peer_timeout: {pt}
  # Most peers to hold connections to.
  max_peers: {mp}
  # Link liveness: a link whose ping takes longer than ping_timeout is closed.
  ping_interval: {pi}
  ping_timeout: {pto}

capabilities:
  # How often hardware and Ollama are re-detected (changes are announced at once).
  refresh_interval: {ri}
  # Ollama's HTTP API on this node.
  ollama_url: {ou}
  # Ollama's model store; unset = $OLLAMA_MODELS, ~/.ollama/models,
  # /usr/share/ollama/.ollama/models (the first that exists).
  # ollama_models_dir: /data/ollama/models
  # Hardware that cannot be detected; merged in and marked "declared".
  declared:
    gpus: []
    #  - vendor: nvidia
    #    model: RTX 4090
    #    vram_total_bytes: 25769803776
    # cpu_cores: 64
    # memory_total_bytes: 274877906944

# Placement labels, announced with the capabilities.
labels: {{}}
#  zone: eu-west-1
#  rack: r12
#  extra:
#    owner: {owner}

# Control plane (Raft leader election, scores, SLURP).
control:
  # Leader heartbeat period.
  heartbeat_interval: {hb}
  # Election timeout range; a follower first waits out the leader's lease
  # (election_timeout_max), then a random time in this range.
  election_timeout_min: {emin}
  election_timeout_max: {emax}
  # How often the leader plans (inventory, Raft membership, leadership).
  planner_interval: {plan}
  # A voter out of sight keeps its seat this long.
  voter_grace: {grace}
  # A member out of sight this long leaves Raft (it keeps its certificate
  # and key share until the operator removes it: `bzzz member remove`).
  evict_after: {evict}
  # The audit chain's head is signed by the threshold admin key every this
  # many entries, and this long after the last checkpoint when newer
  # entries exist (`bzzz audit verify` checks every checkpoint).
  audit_checkpoint_every: {cp_every}
  audit_checkpoint_interval: {cp_interval}
  # Node score = vram·vram_gib + ram·ram_gib + cores·cpu_core
  #   + disk_free·disk_free_gib + min(uptime, cap)·uptime_hour
  #   − load_per_core·load − rtt_ms·link_ms   (sizes in GiB)
  weights:
    vram_gib: {w_vram}
    ram_gib: {w_ram}
    cpu_core: {w_cpu}
    disk_free_gib: {w_disk}
    uptime_hour: {w_up}
    uptime_cap_hours: {w_cap}
    load: {w_load}
    link_ms: {w_link}
  # Leadership moves to a better-scored voter only when it beats the leader
  # by margin (relative) and min_margin (absolute) after min_tenure seconds.
  leadership:
    margin: {margin}
    min_margin: {min_margin}
    min_tenure: {tenure}
    max_voters: {max_voters}

# Model distribution (SPEC §8).
models:
  # Ollama models directory placed models land in (Ollama's layout:
  # manifests/ and blobs/; BZZZ keeps partial downloads and piece manifests
  # in its bzzz/ subdirectory). Unset: capabilities.ollama_models_dir, else
  # $OLLAMA_MODELS, else /usr/share/ollama/.ollama/models if it exists, else
  # ~/.ollama/models. Also --models-dir.
  # ollama_dir: /usr/share/ollama/.ollama/models

# Serving: model backends on this node and the inference API.
serve:
  # Servers already running here: {{kind: ollama | openai, url: http://…}}.
  backends: []
  # One server process per model placed here; {{model_path}}, {{port}} and
  # {{ctx}} are replaced; it must answer GET /health once ready.
  # managed:
  #   command: [python3, scripts/serve-llamacpp.py, --model, "{{model_path}}", --port, "{{port}}"]
  #   ctx: 4096
  #   start_timeout: 2m
  # After setup the inference API needs an API key with `infer` on the
  # model (`bzzz apikey create --role backend_developer`). true opens it to
  # callers without a key (the cluster rule set by `bzzz serve anonymous
  # on|off` overrides this on every node).
  anonymous_inference: false
  # The inference API alone on a second address (Ollama's port, where no
  # Ollama listens).
  # listen: 0.0.0.0:11434

# Agents: this node works tasks of the cluster's repositories (`bzzz repo
# add`; docs/agents.md). Needs bubblewrap, prlimit and setpriv.
agents:
  enabled: false
  # Tasks worked at once here.
  max_tasks: 1
  # The model when neither the task nor its repository names one.
  # model: smollm2:135m
  # The OpenAI-compatible API the agent asks (default: this node's own
  # inference router, http://HTTP/v1), with the key in api_key_file.
  # llm_url: http://127.0.0.1:8080/v1
  # api_key_file: /etc/bzzz/agent.key
  # A claim lapses this long after its last renewal.
  lease: 1m
  # How often the repositories are read for tasks.
  poll_every: 10s
  # Wall time of one sandboxed command, and of one task.
  command_timeout: 1m
  task_timeout: 15m
  # Address space (bytes) and processes of the sandbox.
  memory_bytes: 1073741824
  processes: 64
  # Where tasks are worked (the sandbox user must reach it; default
  # $TMPDIR/bzzz-agents-NODE).
  # work_dir: /var/tmp/bzzz-agents
  # Escalation: a JSON POST when a task fails or needs a person.
  # webhook: https://chat.example/hooks/bzzz

# The DHT under UCXL addresses (docs/dht.md).
dht:
  # Nodes (closest by Kademlia distance) that hold each record.
  replication: 3
  # Each holder re-sends its records to the closest nodes this often (a lost
  # replica is back within this plus a lookup).
  replicate_every: 20s
  # A record's author republishes it this often.
  republish_every: 5m
"#,
        l0 = n.listen[0],
        l1 = n.listen[1],
        port = DEFAULT_P2P_PORT,
        mdns = n.mdns,
        ai = d(n.announce_interval),
        pt = d(n.peer_timeout),
        mp = n.max_peers,
        pi = d(n.ping_interval),
        pto = d(n.ping_timeout),
        ri = d(c.refresh_interval),
        ou = c.ollama_url,
        owner = extra["owner"],
        hb = d(k.heartbeat_interval),
        emin = d(k.election_timeout_min),
        emax = d(k.election_timeout_max),
        plan = d(k.planner_interval),
        grace = d(k.voter_grace),
        evict = d(k.evict_after),
        cp_every = k.audit_checkpoint_every,
        cp_interval = d(k.audit_checkpoint_interval),
        w_vram = k.weights.vram_gib,
        w_ram = k.weights.ram_gib,
        w_cpu = k.weights.cpu_core,
        w_disk = k.weights.disk_free_gib,
        w_up = k.weights.uptime_hour,
        w_cap = k.weights.uptime_cap_hours,
        w_load = k.weights.load,
        w_link = k.weights.link_ms,
        margin = k.leadership.margin,
        min_margin = k.leadership.min_margin,
        tenure = k.leadership.min_tenure.as_secs_f64(),
        max_voters = k.leadership.max_voters,
    )
}
