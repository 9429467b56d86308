//! The DHT in the node (SPEC §7): keeps `bzzz-dht`'s view of roles and
//! keys in step with the Raft state, hands role keys to new readers
//! (grants), serves peers' listings, and applies the cluster
//! configuration stored in the DHT.
//!
//! | takes | sends |
//! |---|---|
//! | the Raft state (woken by `watch_keys`), a 2 s tick, `Service::Dht` requests | `Dht::set_authz`, `RoleKeyGrant` proposals, the control settings' cluster overrides |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bzzz_dht::{Authz, Dht, SharedAuthz};
use bzzz_proto::NodeId;
use bzzz_proto::ucxl::Address;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{ClusterOverrides, ControlSettings};
use crate::control::ControlCell;
use crate::state::Tasks;

/// The cluster-wide settings `bzzz config migrate` moves into the DHT:
/// (local YAML section, address).
pub const CONFIG_ADDRESSES: [(&str, &str); 2] = [
    (
        "control.weights",
        "ucxl://any:admin@cluster:config/*^/control/weights",
    ),
    (
        "control.leadership",
        "ucxl://any:admin@cluster:config/*^/control/leadership",
    ),
];

/// How often a node reads the cluster configuration from the DHT.
const CONFIG_EVERY: Duration = Duration::from_secs(2);

/// Opens the persistent record store (`<data_dir>/dht.redb`).
pub fn open_store(
    data_dir: &std::path::Path,
    authz: &SharedAuthz,
) -> anyhow::Result<bzzz_net::store::DiskStore> {
    let check = Arc::new(bzzz_dht::record::StoreCheck(authz.clone()));
    Ok(bzzz_net::store::DiskStore::open(
        &data_dir.join("dht.redb"),
        check,
    )?)
}

/// Age recipients of this node and of the proven members in view.
pub fn recipients(keys: &bzzz_keys::Keys) -> BTreeMap<NodeId, String> {
    keys.recipients(true).into_iter().collect()
}

/// What the checks need, from the replicated state.
pub fn authz_of(state: &bzzz_control::raft::ClusterState) -> Authz {
    let Some(c) = &state.cluster else {
        return Authz::default();
    };
    Authz {
        cluster: c.name.clone(),
        admin_public_key: bzzz_crypto::records::parse_public_key(&c.admin_public_key)
            .unwrap_or_default(),
        roles: state.roles.clone(),
        role_keys: state.role_keys.clone(),
        removed: state.removed_set(),
    }
}

/// Brings the DHT's view of roles, keys and this node's certificate up to
/// date with the applied state (cheap when nothing changed).
pub fn sync(dht: &Dht, keys: &bzzz_keys::Keys, control: &crate::control::Control) {
    if let Some(c) = keys.cluster() {
        dht.set_cert(Some(c.cert));
    }
    let stamp = control.with_state(|s| {
        (
            s.admin_seq,
            s.role_keys
                .values()
                .flatten()
                .map(|k| k.sealed.len())
                .sum::<usize>(),
        )
    });
    dht.refresh(stamp, || control.with_state(authz_of));
}

/// Parses the cluster overrides from the records' values (YAML or JSON).
pub fn parse_override(section: &str, text: &str, o: &mut ClusterOverrides) -> Result<(), String> {
    match section {
        "control.weights" => {
            let w: bzzz_control::score::Weights =
                serde_norway::from_str(text).map_err(|e| format!("{section}: {e}"))?;
            w.validate().map_err(|e| format!("{section}: {e}"))?;
            o.weights = Some(w);
        }
        "control.leadership" => {
            let p: bzzz_control::leadership::Policy =
                serde_norway::from_str(text).map_err(|e| format!("{section}: {e}"))?;
            o.leadership = Some(p);
        }
        _ => return Err(format!("unknown section {section}")),
    }
    Ok(())
}

/// A [`bzzz_net::Service::Dht`] request that is answered here rather
/// than by the DHT crate: it needs the replicated state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum KeyRequest {
    /// New keys for `chains` as `action` would need them, made by the
    /// receiver, which must be a reader of each (issue #22: the node that
    /// serves the operator's request may be the reader being shut out; it
    /// never sees the secret). The answer is
    /// `Result<BTreeMap<chain, RoleKey>, String>`.
    MakeRoleKeys {
        action: bzzz_proto::cluster::AdminAction,
        chains: Vec<String>,
    },
}

/// Most chains one [`KeyRequest::MakeRoleKeys`] may ask for.
const MAX_CHAINS_PER_REQUEST: usize = 256;

/// The part of the applied state that decides who reads which chain and
/// which keys exist (cheap to copy, unlike the whole state).
pub fn key_state(control: &crate::control::Control) -> bzzz_control::raft::ClusterState {
    control.with_state(|s| bzzz_control::raft::ClusterState {
        membership: s.membership.clone(),
        nodes: s.nodes.clone(),
        share_holders: s.share_holders.clone(),
        roles: s.roles.clone(),
        role_keys: s.role_keys.clone(),
        removed: s.removed.clone(),
        ..Default::default()
    })
}

/// `state` as it would be once `action` applies (for the readers and
/// keys an admin change must bring; role keys themselves are not added).
pub fn simulate(
    mut sim: bzzz_control::raft::ClusterState,
    action: &bzzz_proto::cluster::AdminAction,
) -> bzzz_control::raft::ClusterState {
    use bzzz_proto::cluster::AdminAction;
    match action {
        AdminAction::PutRole { role } => {
            sim.roles.insert(role.name.clone(), role.clone());
        }
        AdminAction::RemoveRole { name } => {
            sim.roles.remove(name);
        }
        AdminAction::RemoveMember { node_id } => {
            sim.nodes.remove(node_id);
            sim.removed.insert(
                node_id.clone(),
                bzzz_proto::cluster::Signed {
                    body: String::new(),
                    signature: String::new(),
                },
            );
        }
        AdminAction::SetRule { .. }
        | AdminAction::RoleKeys {}
        | AdminAction::Access { .. }
        | AdminAction::SetOperatorKey { .. }
        | AdminAction::ApproveMember { .. } => {}
    }
    sim
}

/// The chains an admin change bringing `sim` about must carry a new key
/// for (SPEC §9): the next key of every chain it takes a reader from
/// (revocation rotates), the first key of every chain that has none.
pub fn chains_needing_keys(sim: &bzzz_control::raft::ClusterState) -> Vec<String> {
    let mut chains = sim.chains_to_rotate();
    for c in bzzz_proto::dht::chains(&sim.roles) {
        if !sim.role_keys.contains_key(&c) && !chains.contains(&c) {
            chains.push(c);
        }
    }
    chains
}

/// New keys for `chains` (each must need one under `sim`), sealed to the
/// readers with a known recipient and marked as made by `maker`. Called
/// on a reader of every chain (`maker`); with `maker` `None`, the keys
/// are sealed to nobody (a rotation no reader in reach can take: writers
/// need only its public key).
pub fn make_role_keys(
    sim: &bzzz_control::raft::ClusterState,
    chains: &[String],
    recipients: &BTreeMap<NodeId, String>,
    maker: Option<&NodeId>,
) -> Result<BTreeMap<String, bzzz_proto::dht::RoleKey>, String> {
    let needed = chains_needing_keys(sim);
    if let Some(c) = chains.iter().find(|c| !needed.contains(c)) {
        return Err(format!("{c:?} needs no new key for this change"));
    }
    if let Some(m) = maker
        && let Some(c) = chains.iter().find(|c| !sim.chain_readers(c).contains(m))
    {
        return Err(format!(
            "{m} may not read {c:?}, so it does not make its key"
        ));
    }
    let mut keys = bzzz_dht::new_keys(
        chains,
        &sim.role_keys,
        |c| {
            if maker.is_some() {
                sim.chain_readers(c)
            } else {
                std::collections::BTreeSet::new()
            }
        },
        recipients,
        bzzz_keys::unix_now(),
    )?;
    for k in keys.values_mut() {
        k.made_by = maker.cloned();
    }
    Ok(keys)
}

/// Answers [`KeyRequest`]s (`None`: the payload is none, for the DHT).
fn serve_key_request(
    payload: &[u8],
    keys: &bzzz_keys::Keys,
    control: Option<&crate::control::Control>,
) -> Option<Vec<u8>> {
    let KeyRequest::MakeRoleKeys { action, chains } = serde_json::from_slice(payload).ok()?;
    let answer = (|| {
        let control = control.ok_or("the control plane is not running here")?;
        if chains.is_empty() || chains.len() > MAX_CHAINS_PER_REQUEST {
            return Err(format!(
                "ask for 1 to {MAX_CHAINS_PER_REQUEST} chains, not {}",
                chains.len()
            ));
        }
        if let bzzz_proto::cluster::AdminAction::PutRole { role } = &action {
            role.validate()?;
        }
        let unique: std::collections::BTreeSet<&String> = chains.iter().collect();
        if unique.len() != chains.len() {
            return Err("a chain is named twice".to_owned());
        }
        let sim = simulate(key_state(control), &action);
        make_role_keys(&sim, &chains, &recipients(keys), Some(keys.node_id()))
    })();
    if let Err(e) = &answer {
        debug!("refused to make role keys: {e}");
    }
    serde_json::to_vec(&answer).ok()
}

/// Asks `maker` (a reader of each of `chains`) for their new keys as
/// `action` needs them.
pub async fn ask_role_keys(
    net: &bzzz_net::NetHandle,
    maker: &NodeId,
    action: &bzzz_proto::cluster::AdminAction,
    chains: &[String],
) -> Result<BTreeMap<String, bzzz_proto::dht::RoleKey>, String> {
    let req = serde_json::to_vec(&KeyRequest::MakeRoleKeys {
        action: action.clone(),
        chains: chains.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    let raw = tokio::time::timeout(
        Duration::from_secs(5),
        net.call(bzzz_net::Service::Dht, maker, req),
    )
    .await
    .map_err(|_| "no answer within 5 s".to_owned())?
    .map_err(|e| e.to_string())?;
    let keys: BTreeMap<String, bzzz_proto::dht::RoleKey> =
        serde_json::from_slice::<Result<_, String>>(&raw)
            .map_err(|_| "not an answer to the request (not a member?)".to_owned())??;
    if keys.len() != chains.len() {
        return Err("the answer is not the keys asked for".into());
    }
    Ok(keys)
}

/// Whether `got` is what a reader should have made for `chains` under
/// `sim` (issue #22 review): made by `maker`, the next epoch, a fresh
/// public key, and sealed to exactly the readers with a known recipient.
/// A maker that answers otherwise is passed over.
pub fn check_made_keys(
    sim: &bzzz_control::raft::ClusterState,
    chains: &[String],
    got: &BTreeMap<String, bzzz_proto::dht::RoleKey>,
    recipients: &BTreeMap<NodeId, String>,
    maker: &NodeId,
) -> Result<(), String> {
    for c in chains {
        let k = got.get(c).ok_or_else(|| format!("no key for {c:?}"))?;
        if k.made_by.as_ref() != Some(maker) {
            return Err(format!("the key of {c:?} is not marked as made by {maker}"));
        }
        let known = sim.role_keys.get(c);
        let next = known.and_then(|v| v.last()).map_or(1, |k| k.epoch + 1);
        if k.epoch != next {
            return Err(format!(
                "epoch {} of {c:?} is not the next ({next})",
                k.epoch
            ));
        }
        bzzz_crypto::seal::parse_recipient(&k.public).map_err(|e| e.to_string())?;
        if known.is_some_and(|v| v.iter().any(|old| old.public == k.public)) {
            return Err(format!("the key of {c:?} is an old one"));
        }
        // Sealed to readers only, the maker among them (the maker's view
        // of who is in reach may differ from this node's: readers it
        // missed get the key by a grant).
        let readers = sim.chain_readers(c);
        let sealed: std::collections::BTreeSet<NodeId> = k.sealed.keys().cloned().collect();
        if k.readers != sealed || !sealed.is_subset(&readers) || !sealed.contains(maker) {
            return Err(format!(
                "the key of {c:?} is not sealed to its maker and readers only"
            ));
        }
        if sealed
            .iter()
            .any(|n| !recipients.contains_key(n) && n != maker)
        {
            debug!("the maker of {c:?} sealed it to a reader this node does not see");
        }
    }
    Ok(())
}

/// The answer to a DHT request from a peer that is no member (callers
/// read it as a failed answer: it is neither a listing nor a record).
pub const NOT_A_MEMBER: &[u8] = br#"{"error":"not a member of this cluster"}"#;

/// Runs the DHT's node duties until cancelled.
pub async fn run(
    dht: Dht,
    keys: Arc<bzzz_keys::Keys>,
    cell: ControlCell,
    settings: ControlSettings,
    local_file: crate::config::ClusterOverrides,
    inbound: tokio::sync::mpsc::Receiver<bzzz_net::ServiceRequest>,
    tasks: Tasks,
) {
    {
        // Members only (a Raft member or a peer whose certificate this
        // node verified), like every P2P service but the keys service's
        // admission: a stranger that connects lists and fetches nothing.
        let dht = dht.clone();
        let cell = cell.clone();
        let keys = keys.clone();
        tasks.tracker.spawn(bzzz_net::service::serve(
            inbound,
            16,
            tasks.tracker.clone(),
            tasks.cancel.clone(),
            move |peer, payload| {
                let dht = dht.clone();
                let keys = keys.clone();
                let cell = cell.clone();
                let admitted = cell.get().is_some_and(|c| c.admits(&peer));
                async move {
                    if !admitted {
                        tracing::debug!(%peer, "a DHT request from a non-member is refused");
                        return Some(NOT_A_MEMBER.to_vec());
                    }
                    let keys = keys.clone();
                    let cell = cell.clone();
                    tokio::task::spawn_blocking(move || {
                        serve_key_request(&payload, &keys, cell.get().map(|c| c.as_ref()))
                            .or_else(|| dht.serve(&payload))
                    })
                    .await
                    .ok()
                    .flatten()
                }
            },
        ));
    }
    let mut tick = tokio::time::interval(CONFIG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx: Option<watch::Receiver<u64>> = None;
    let mut warned = false;
    let mut applied = ClusterOverrides::default();
    loop {
        tokio::select! {
            _ = tasks.cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = async {
                match rx.as_mut() {
                    Some(r) => { if r.changed().await.is_err() { std::future::pending::<()>().await } }
                    None => std::future::pending().await,
                }
            } => {}
        }
        let Some(cluster) = keys.cluster() else {
            continue;
        };
        let Some(control) = cell.get() else {
            continue;
        };
        if rx.is_none() {
            rx = Some(control.watch_keys());
        }
        let _ = cluster;
        sync(&dht, &keys, control);
        let authz = dht.authz();
        grant(&dht, &keys, control, &authz).await;
        // The cluster configuration.
        let mut o = ClusterOverrides::default();
        for (section, addr) in CONFIG_ADDRESSES {
            let Ok(a) = addr.parse::<Address>() else {
                continue;
            };
            match dht.get(&a).await {
                Ok(v) => {
                    let text = String::from_utf8_lossy(&v.value);
                    if let Err(e) = parse_override(section, &text, &mut o) {
                        warn!(
                            "the cluster's {section} in the DHT is invalid ({e}); the local value stays"
                        );
                    }
                }
                Err(bzzz_dht::DhtError::NotFound(_)) => {}
                Err(e) => debug!("cannot read {addr}: {e}"),
            }
        }
        if o != applied {
            if !warned {
                for (section, local_set) in [
                    (
                        "control.weights",
                        local_file.weights.is_some() && o.weights.is_some(),
                    ),
                    (
                        "control.leadership",
                        local_file.leadership.is_some() && o.leadership.is_some(),
                    ),
                ] {
                    if local_set {
                        warn!(
                            "{section} in the local config file is overridden by the cluster's value in the DHT (see `bzzz config migrate`)"
                        );
                    }
                }
                warned = true;
            }
            info!(
                weights = o.weights.is_some(),
                leadership = o.leadership.is_some(),
                "applying the cluster configuration from the DHT"
            );
            if let Ok(mut c) = settings.cluster.write() {
                *c = o.clone();
            }
            applied = o;
        }
    }
}

/// Hands role keys this node holds to readers that lack them; only the
/// lowest-id holder in reach does it, to avoid duplicate proposals
/// (duplicates would be refused anyway).
async fn grant(
    dht: &Dht,
    keys: &bzzz_keys::Keys,
    control: &crate::control::Control,
    authz: &Authz,
) {
    let ring = dht.keyring();
    if ring.is_empty() {
        return;
    }
    let recipients = recipients(keys);
    let me = keys.node_id().clone();
    let todo = control.with_state(|s| {
        bzzz_dht::grants(authz, &ring, |c| s.chain_readers(c), &recipients)
            .into_iter()
            .filter(|(chain, epoch, _)| {
                // The lowest-id node in reach that holds this epoch.
                s.role_keys
                    .get(chain)
                    .and_then(|v| v.iter().find(|k| k.epoch == *epoch))
                    .and_then(|k| {
                        k.sealed
                            .keys()
                            .filter(|n| recipients.contains_key(*n))
                            .min()
                            .cloned()
                    })
                    .is_some_and(|first| first == me)
            })
            .collect::<Vec<_>>()
    });
    for (chain, epoch, grants) in todo {
        let n = grants.len();
        match control
            .propose(bzzz_control::raft::Command::RoleKeyGrant {
                chain: chain.clone(),
                epoch,
                grants,
            })
            .await
        {
            Ok(r) if r.rejected.is_none() => {
                info!(chain, epoch, nodes = n, "role key granted to new readers")
            }
            Ok(r) => debug!(chain, epoch, "grant refused: {:?}", r.rejected),
            Err(e) => debug!(chain, epoch, "grant not committed: {e}"),
        }
    }
}
