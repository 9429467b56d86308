//! Model placement (SLURP, SPEC §8): which nodes hold each model. A pure
//! function of the registry and the nodes the leader sees.
//!
//! Rules, in order:
//! 1. **Fit.** A copy goes on a node's GPUs only if its VRAM estimate fits
//!    in the node's free VRAM minus the estimates of models already placed
//!    there. A node with no GPU room may take a copy to run on CPU if it
//!    fits in free RAM minus what is placed there (marked `cpu_only`);
//!    GPU candidates always come first.
//! 2. **Keep** (hysteresis). A copy stays where it is while the node is
//!    healthy, not excluded, and the model still fits in the node's *total*
//!    VRAM (or RAM) minus the other copies there: VRAM our own loaded
//!    models use is not free, and counting it would evict them.
//! 3. **Pinned** nodes first, then the best-ranked candidates: a node that
//!    already holds the content, then (with `spread_zones`) a zone not yet
//!    used by this model, then the most room left (in 10 % steps, so small
//!    changes do not reorder), then the node score (in steps of 5 points),
//!    then the node id.
//! 4. Never more copies than wanted; fewer when nothing more fits.
//!
//! Models are placed largest first (bin packing's usual greedy order).

use std::collections::{BTreeMap, BTreeSet};

use bzzz_proto::NodeId;
use bzzz_proto::models::{Placed, Registry};

/// One node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub healthy: bool,
    pub vram_total: u64,
    pub vram_free: u64,
    pub ram_total: u64,
    pub ram_free: u64,
    pub zone: Option<String>,
    pub score: f64,
}

/// A candidate's rank: pinned, holder, new zone, room left (tenths),
/// score (steps of 5). Higher wins.
type Rank = (bool, bool, bool, i64, i64);

#[derive(Default, Clone, Copy)]
struct Used {
    vram: u64,
    ram: u64,
}

/// The placement of every live model.
pub fn place(reg: &Registry, nodes: &BTreeMap<NodeId, Node>) -> BTreeMap<String, Vec<Placed>> {
    let mut used: BTreeMap<&NodeId, Used> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut order: Vec<_> = reg.models.values().filter(|e| !e.removed).collect();
    order.sort_by(|a, b| b.vram_bytes.cmp(&a.vram_bytes).then(a.name.cmp(&b.name)));

    // Rule 2 first for every model, so kept copies count before any new one.
    let mut kept: BTreeMap<&str, Vec<Placed>> = BTreeMap::new();
    for e in &order {
        let mut keep = Vec::new();
        for p in reg.placements.get(&e.name).into_iter().flatten() {
            if keep.len() >= usize::from(e.replicas) || e.excluded.contains(&p.node) {
                continue;
            }
            let Some((id, n)) = nodes.get_key_value(&p.node) else {
                continue;
            };
            if !n.healthy {
                continue;
            }
            let u = used.entry(id).or_default();
            let fits = if p.cpu_only {
                u.ram + e.vram_bytes <= n.ram_total
            } else {
                u.vram + e.vram_bytes <= n.vram_total
            };
            if fits {
                if p.cpu_only {
                    u.ram += e.vram_bytes;
                } else {
                    u.vram += e.vram_bytes;
                }
                keep.push(p.clone());
            }
        }
        kept.insert(e.name.as_str(), keep);
    }

    for e in &order {
        let mut chosen = kept.remove(e.name.as_str()).unwrap_or_default();
        let holders: BTreeSet<NodeId> = reg.holders(&e.name).into_iter().collect();
        let want = usize::from(e.replicas);
        let mut gpu_pass = true;
        loop {
            if chosen.len() >= want {
                break;
            }
            let zones: BTreeSet<Option<&String>> = chosen
                .iter()
                .filter_map(|p| nodes.get(&p.node))
                .map(|n| n.zone.as_ref())
                .collect();
            let mut best: Option<(Rank, &NodeId)> = None;
            for (id, n) in nodes {
                if !n.healthy || e.excluded.contains(id) || chosen.iter().any(|p| &p.node == id) {
                    continue;
                }
                let u = used.get(id).copied().unwrap_or_default();
                let (room, total) = if gpu_pass {
                    (n.vram_free.saturating_sub(u.vram), n.vram_total)
                } else {
                    (n.ram_free.saturating_sub(u.ram), n.ram_total)
                };
                if e.vram_bytes > room || total == 0 {
                    continue;
                }
                let left = ((room - e.vram_bytes) as f64 / total as f64 * 10.0).floor() as i64;
                let key = (
                    e.pinned.contains(id),
                    holders.contains(id),
                    !e.spread_zones || !zones.contains(&n.zone.as_ref()),
                    left,
                    (n.score / 5.0).floor() as i64,
                );
                // Higher key wins; equal keys: the lower node id (the
                // iteration order) stays.
                if best.as_ref().is_none_or(|(k, _)| key > *k) {
                    best = Some((key, id));
                }
            }
            match best {
                Some((_, id)) => {
                    let u = used.entry(id).or_default();
                    if gpu_pass {
                        u.vram += e.vram_bytes;
                    } else {
                        u.ram += e.vram_bytes;
                    }
                    chosen.push(Placed {
                        node: id.clone(),
                        cpu_only: !gpu_pass,
                    });
                }
                None if gpu_pass => gpu_pass = false,
                None => break,
            }
        }
        if !chosen.is_empty() {
            out.insert(e.name.clone(), chosen);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bzzz_proto::models::ModelEntry;
    use proptest::prelude::*;

    const GB: u64 = 1 << 30;

    fn id(i: usize) -> NodeId {
        let base = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2";
        let a = b"abcdefghijkmnopqrstuvwxyz"[i / 25] as char;
        let b = b"abcdefghijkmnopqrstuvwxyz"[i % 25] as char;
        NodeId::parse(&format!("{base}{a}{b}")).unwrap()
    }

    fn model(name: &str, vram: u64, replicas: u16, spread: bool) -> ModelEntry {
        ModelEntry {
            spread_zones: spread,
            ..ModelEntry::sample(name, vram, replicas)
        }
    }

    fn gpu(vram: u64, zone: &str, score: f64) -> Node {
        Node {
            healthy: true,
            vram_total: vram,
            vram_free: vram,
            ram_total: 0,
            ram_free: 0,
            zone: Some(zone.into()),
            score,
        }
    }

    #[test]
    fn fits_spreads_prefers_holders_and_falls_back_to_cpu() {
        let mut nodes = BTreeMap::new();
        nodes.insert(id(0), gpu(24 * GB, "a", 50.0));
        nodes.insert(id(1), gpu(24 * GB, "a", 90.0));
        nodes.insert(id(2), gpu(8 * GB, "b", 10.0));
        nodes.insert(
            id(3),
            Node {
                healthy: true,
                vram_total: 0,
                vram_free: 0,
                ram_total: 64 * GB,
                ram_free: 60 * GB,
                zone: None,
                score: 5.0,
            },
        );
        let mut reg = Registry::default();
        reg.put(model("big:1", 20 * GB, 2, true)).unwrap();
        reg.put(model("small:1", 4 * GB, 2, true)).unwrap();
        let p = place(&reg, &nodes);
        let big: Vec<_> = p["big:1"].iter().map(|x| x.node.clone()).collect();
        // Only nodes 0 and 1 fit 20 GB on GPU; zones cannot be spread.
        assert_eq!(big.len(), 2);
        assert!(big.contains(&id(0)) && big.contains(&id(1)));
        // small: zone b (node 2) first for spread, then node 3 on CPU? No:
        // GPU room is left on 0/1 (4 GB each), which beats CPU.
        let small = &p["small:1"];
        assert_eq!(small.len(), 2);
        assert!(small.iter().any(|x| x.node == id(2)));
        assert!(small.iter().all(|x| !x.cpu_only));
        // A model too big for any GPU lands on CPU.
        reg.put(model("huge:1", 40 * GB, 1, false)).unwrap();
        let p = place(&reg, &nodes);
        assert_eq!(
            p["huge:1"],
            vec![Placed {
                node: id(3),
                cpu_only: true
            }]
        );
        // A holder is preferred.
        let mut reg = Registry::default();
        reg.put(model("m:1", GB, 1, false)).unwrap();
        reg.set_held("m:1", id(2), Some(format!("sha256:{}", "a".repeat(64))))
            .unwrap();
        assert_eq!(place(&reg, &nodes)["m:1"][0].node, id(2));
    }

    #[test]
    fn lost_copies_are_replaced_and_kept_ones_stay() {
        let mut nodes: BTreeMap<_, _> = (0..4).map(|i| (id(i), gpu(8 * GB, "z", 50.0))).collect();
        let mut reg = Registry::default();
        reg.put(model("m:1", 4 * GB, 2, false)).unwrap();
        let first = place(&reg, &nodes);
        reg.place("m:1", first["m:1"].clone()).unwrap();
        let lost = first["m:1"][0].node.clone();
        nodes.get_mut(&lost).unwrap().healthy = false;
        let second = place(&reg, &nodes);
        assert_eq!(second["m:1"].len(), 2);
        assert!(!second["m:1"].iter().any(|p| p.node == lost));
        assert!(
            second["m:1"].contains(&first["m:1"][1]),
            "the surviving copy stays"
        );
    }

    fn arb_nodes() -> impl Strategy<Value = BTreeMap<NodeId, Node>> {
        prop::collection::vec(
            (0u64..48, 0u64..64, 0usize..3, any::<bool>(), 0.0f64..100.0),
            1..9,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (vram, ram, zone, sick, score))| {
                    (
                        id(i),
                        Node {
                            healthy: !sick || i == 0,
                            vram_total: vram * GB,
                            vram_free: vram * GB,
                            ram_total: ram * GB,
                            ram_free: ram * GB,
                            zone: Some(["a", "b", "c"][zone].into()),
                            score,
                        },
                    )
                })
                .collect()
        })
    }

    fn arb_reg() -> impl Strategy<Value = Registry> {
        prop::collection::vec((1u64..24, 1u16..4, any::<bool>()), 1..6).prop_map(|v| {
            let mut reg = Registry::default();
            for (i, (vram, r, spread)) in v.into_iter().enumerate() {
                reg.put(model(&format!("m{i}:1"), vram * GB, r, spread))
                    .unwrap();
            }
            reg
        })
    }

    proptest! {
        #[test]
        fn never_over_commits(nodes in arb_nodes(), reg in arb_reg()) {
            let p = place(&reg, &nodes);
            let mut vram: BTreeMap<&NodeId, u64> = BTreeMap::new();
            let mut ram: BTreeMap<&NodeId, u64> = BTreeMap::new();
            for (name, copies) in &p {
                let e = &reg.models[name];
                prop_assert!(copies.len() <= usize::from(e.replicas));
                let distinct: BTreeSet<_> = copies.iter().map(|c| &c.node).collect();
                prop_assert_eq!(distinct.len(), copies.len());
                for c in copies {
                    prop_assert!(nodes[&c.node].healthy);
                    let m = if c.cpu_only { ram.entry(&c.node).or_default() } else { vram.entry(&c.node).or_default() };
                    *m += e.vram_bytes;
                }
            }
            for (n, v) in vram { prop_assert!(v <= nodes[n].vram_free); }
            for (n, v) in ram { prop_assert!(v <= nodes[n].ram_free); }
        }

        #[test]
        fn meets_replication_when_room_is_plenty(nodes in arb_nodes(), reg in arb_reg()) {
            let all: u64 = reg.models.values().map(|e| e.vram_bytes).sum();
            let roomy = nodes.values().filter(|n| n.healthy && n.vram_free >= all).count();
            let p = place(&reg, &nodes);
            for e in reg.models.values() {
                if roomy >= usize::from(e.replicas) {
                    prop_assert_eq!(p.get(&e.name).map_or(0, Vec::len), usize::from(e.replicas));
                }
            }
        }

        #[test]
        fn spreads_across_zones_when_it_can(nodes in arb_nodes(), vram in 1u64..8, r in 2u16..4) {
            let mut reg = Registry::default();
            reg.put(model("m:1", vram * GB, r, true)).unwrap();
            let fit_zones: BTreeSet<_> = nodes.values().filter(|n| n.healthy && n.vram_free >= vram * GB).map(|n| n.zone.clone()).collect();
            let p = place(&reg, &nodes);
            if let Some(c) = p.get("m:1") {
                let gpu: Vec<_> = c.iter().filter(|x| !x.cpu_only).collect();
                let zones: BTreeSet<_> = gpu.iter().map(|x| nodes[&x.node].zone.clone()).collect();
                prop_assert_eq!(zones.len(), gpu.len().min(fit_zones.len()));
            }
        }

        #[test]
        fn stable_under_small_score_noise(nodes in arb_nodes(), reg in arb_reg(), noise in prop::collection::vec(-2.0f64..2.0, 9)) {
            let mut reg = reg;
            let first = place(&reg, &nodes);
            for (name, c) in &first {
                reg.place(name, c.clone()).unwrap();
            }
            let mut noisy = nodes.clone();
            for (i, n) in noisy.values_mut().enumerate() {
                n.score = (n.score + noise[i]).max(0.0);
            }
            prop_assert_eq!(place(&reg, &noisy), first);
        }
    }
}
