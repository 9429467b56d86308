//! Who leads and who votes: pure functions with hysteresis.
//!
//! * [`preferred_leader`]: the best-scored healthy voter, but a sitting
//!   leader keeps its place unless it is unhealthy, or has served
//!   `min_tenure` and someone beats it by both a relative and an absolute
//!   margin. Close or noisy scores never move leadership.
//! * [`choose_voters`]: an odd-sized set (at most `max_voters`) of healthy
//!   nodes, preferring sitting voters: a non-voter replaces the weakest
//!   voter only when it beats it by the same margins.
//!
//! Ties are broken by node id, so every node computes the same answer from
//! the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bzzz_proto::NodeId;
use serde::{Deserialize, Serialize};

/// Hysteresis and size settings (config `control`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// A challenger must score more than `(1 + margin) ×` the incumbent…
    pub margin: f64,
    /// …and at least this much more in absolute terms.
    pub min_margin: f64,
    /// A leader is not displaced for a better score before this.
    #[serde(with = "secs")]
    pub min_tenure: Duration,
    /// Most voters (the rest are learners).
    pub max_voters: usize,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            margin: 0.15,
            min_margin: 5.0,
            min_tenure: Duration::from_secs(3),
            max_voters: 5,
        }
    }
}

/// The sitting leader and how long it has led.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incumbent {
    pub id: NodeId,
    pub tenure: Duration,
}

fn beats(challenger: f64, incumbent: f64, p: &Policy) -> bool {
    challenger > incumbent * (1.0 + p.margin) && challenger - incumbent >= p.min_margin
}

/// Healthy nodes (score > 0) ordered best first, ties by id.
fn ranked(scores: &BTreeMap<NodeId, f64>) -> Vec<(&NodeId, f64)> {
    let mut v: Vec<(&NodeId, f64)> = scores
        .iter()
        .filter(|(_, s)| s.is_finite() && **s > 0.0)
        .map(|(n, s)| (n, *s))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v
}

/// The node that should lead, among `voters` (see the module docs).
pub fn preferred_leader(
    scores: &BTreeMap<NodeId, f64>,
    voters: &BTreeSet<NodeId>,
    incumbent: Option<&Incumbent>,
    p: &Policy,
) -> Option<NodeId> {
    let best = ranked(scores)
        .into_iter()
        .find(|(n, _)| voters.contains(*n))
        .map(|(n, s)| (n.clone(), s));
    let Some(inc) = incumbent else {
        return best.map(|(n, _)| n);
    };
    let inc_score = scores.get(&inc.id).copied().unwrap_or(0.0);
    let inc_ok = inc_score > 0.0 && voters.contains(&inc.id);
    match best {
        None => inc_ok.then(|| inc.id.clone()),
        Some((b, _)) if !inc_ok => Some(b),
        Some((b, s)) if b != inc.id && inc.tenure >= p.min_tenure && beats(s, inc_score, p) => {
            Some(b)
        }
        Some(_) => Some(inc.id.clone()),
    }
}

/// The voter set (see the module docs).
pub fn choose_voters(
    scores: &BTreeMap<NodeId, f64>,
    current: &BTreeSet<NodeId>,
    p: &Policy,
) -> BTreeSet<NodeId> {
    let ranked = ranked(scores);
    let mut k = p.max_voters.max(1).min(ranked.len());
    if k > 1 && k.is_multiple_of(2) {
        k -= 1;
    }
    // Sitting healthy voters, best first.
    let mut keep: Vec<(&NodeId, f64)> = ranked
        .iter()
        .filter(|(n, _)| current.contains(*n))
        .copied()
        .collect();
    keep.truncate(k);
    let mut others = ranked
        .iter()
        .filter(|(n, _)| !current.contains(*n))
        .copied()
        .peekable();
    // Fill empty seats with the best others.
    while keep.len() < k {
        match others.next() {
            Some(o) => keep.push(o),
            None => break,
        }
    }
    // A challenger takes the weakest seat only by a clear margin.
    for (n, s) in others {
        keep.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        match keep.last() {
            Some((_, weakest)) if beats(s, *weakest, p) => {
                keep.pop();
                keep.push((n, s));
            }
            _ => break,
        }
    }
    keep.into_iter().map(|(n, _)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        // Real peer ids are base58 multihashes; any valid one will do.
        let ids = [
            "12D3KooWF9VRSKt6RF8fG5PaJv955HSiRS74iG74V6njrdBmjhJL",
            "12D3KooWSZDMiSJ1txfvBTQgUg6BupdcmYw2N8xdVy3yRj15TtP7",
            "12D3KooWQ5K74cmnWqbC9LbC7m5Sy7LmC6dmxFVGiWBqNb7h6EnU",
            "12D3KooWAFtBebMYi5LFZjpS9GJrSo8FYPAcUSyT6LFAPTgbX8m1",
            "12D3KooWAMfP1XwKZaQVJDGUvBa9SoFAZA6WswLFXVQR16G72d51",
            "12D3KooWHastg6XAWzkiBqvUuKFxGQZztPXB9nFv8Dx7TKn1Kqij",
            "12D3KooWJzm4hytqrVufmhJVxKq14qJC3bpN9gdYSwRnbv9cvk4E",
        ];
        NodeId::parse(ids[usize::from(i)]).expect("id")
    }

    fn scores(v: &[f64]) -> BTreeMap<NodeId, f64> {
        v.iter()
            .enumerate()
            .map(|(i, s)| (id(i as u8), *s))
            .collect()
    }

    fn all(n: u8) -> BTreeSet<NodeId> {
        (0..n).map(id).collect()
    }

    #[test]
    fn the_best_voter_leads_when_nobody_does() {
        let s = scores(&[10.0, 80.0, 30.0]);
        assert_eq!(
            preferred_leader(&s, &all(3), None, &Policy::default()),
            Some(id(1))
        );
        // A non-voter never leads.
        let voters: BTreeSet<NodeId> = [id(0), id(2)].into();
        assert_eq!(
            preferred_leader(&s, &voters, None, &Policy::default()),
            Some(id(2))
        );
    }

    #[test]
    fn close_scores_do_not_move_leadership_a_clear_winner_does_after_tenure() {
        let p = Policy::default();
        let settled = Incumbent {
            id: id(0),
            tenure: Duration::from_secs(60),
        };
        // Within 15 %: stays.
        let s = scores(&[100.0, 110.0, 50.0]);
        assert_eq!(
            preferred_leader(&s, &all(3), Some(&settled), &p),
            Some(id(0))
        );
        // 15 % but below the absolute margin: stays.
        let small = scores(&[10.0, 14.0]);
        assert_eq!(
            preferred_leader(&small, &all(2), Some(&settled), &p),
            Some(id(0))
        );
        // Clearly better: moves, but only after the minimum tenure.
        let s = scores(&[100.0, 200.0, 50.0]);
        assert_eq!(
            preferred_leader(&s, &all(3), Some(&settled), &p),
            Some(id(1))
        );
        let fresh = Incumbent {
            id: id(0),
            tenure: Duration::from_secs(1),
        };
        assert_eq!(preferred_leader(&s, &all(3), Some(&fresh), &p), Some(id(0)));
    }

    #[test]
    fn an_unhealthy_leader_is_replaced_at_once() {
        let p = Policy::default();
        let fresh = Incumbent {
            id: id(0),
            tenure: Duration::ZERO,
        };
        let s = scores(&[0.0, 20.0, 30.0]);
        assert_eq!(preferred_leader(&s, &all(3), Some(&fresh), &p), Some(id(2)));
        assert_eq!(
            preferred_leader(&scores(&[0.0]), &all(1), Some(&fresh), &p),
            None
        );
    }

    #[test]
    fn voters_are_an_odd_bounded_set_of_the_best_with_hysteresis() {
        let p = Policy::default();
        let s = scores(&[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]);
        let v = choose_voters(&s, &BTreeSet::new(), &p);
        assert_eq!(v, [id(2), id(3), id(4), id(5), id(6)].into());
        // Four healthy nodes: three voters.
        let four = scores(&[10.0, 20.0, 30.0, 40.0]);
        assert_eq!(choose_voters(&four, &BTreeSet::new(), &p).len(), 3);
        // A sitting voter keeps its seat against a slightly better node…
        let current: BTreeSet<NodeId> = [id(0), id(1), id(2)].into();
        let s = scores(&[100.0, 100.0, 100.0, 105.0]);
        assert_eq!(
            choose_voters(
                &s,
                &current,
                &Policy {
                    max_voters: 3,
                    ..p.clone()
                }
            ),
            current
        );
        // …but not against a clearly better one, nor when it is unhealthy.
        let s = scores(&[100.0, 100.0, 0.0, 200.0]);
        let v = choose_voters(&s, &current, &Policy { max_voters: 3, ..p });
        assert_eq!(v, [id(0), id(1), id(3)].into());
    }

    proptest::proptest! {
        #[test]
        fn choices_are_stable_and_well_formed(
            raw in proptest::collection::vec(0.0f64..1000.0, 1..7),
            noise in proptest::collection::vec(-0.01f64..0.01, 7),
            max_voters in 1usize..7,
        ) {
            let p = Policy { max_voters, ..Policy::default() };
            let s = scores(&raw);
            let v = choose_voters(&s, &BTreeSet::new(), &p);
            let healthy = raw.iter().filter(|x| **x > 0.0).count();
            proptest::prop_assert!(v.len() <= max_voters && v.len() <= healthy);
            proptest::prop_assert!(v.len() <= 1 || v.len() % 2 == 1);
            proptest::prop_assert!(v.iter().all(|n| s[n] > 0.0));
            // Idempotent, and 1 % noise changes neither voters nor leader.
            proptest::prop_assert_eq!(&choose_voters(&s, &v, &p), &v);
            let noisy: BTreeMap<NodeId, f64> = s
                .iter()
                .zip(&noise)
                .map(|((n, x), e)| (n.clone(), if *x > 0.0 { (x * (1.0 + e)).max(1e-9) } else { 0.0 }))
                .collect();
            proptest::prop_assert_eq!(&choose_voters(&noisy, &v, &p), &v);
            if let Some(l) = preferred_leader(&s, &v, None, &p) {
                let inc = Incumbent { id: l.clone(), tenure: Duration::from_secs(3600) };
                proptest::prop_assert_eq!(preferred_leader(&noisy, &v, Some(&inc), &p), Some(l));
            }
        }
    }
}
