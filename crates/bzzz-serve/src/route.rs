//! Which replica serves a request: a pure function.
//!
//! Order: a replica where the model is loaded first, then the fewest
//! requests in flight (as this router counts them), then the same zone
//! as this node, then the node id (stable). Replicas parked by the
//! circuit breaker come last (tried only when nothing else is left).

use bzzz_proto::NodeId;

/// One replica as the router sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub node: NodeId,
    pub loaded: bool,
    pub in_flight: usize,
    pub same_zone: bool,
    /// Failed recently: parked.
    pub parked: bool,
}

/// The replicas in the order to try them.
pub fn order(mut replicas: Vec<Replica>) -> Vec<NodeId> {
    replicas.sort_by(|a, b| {
        a.parked
            .cmp(&b.parked)
            .then(b.loaded.cmp(&a.loaded))
            .then(a.in_flight.cmp(&b.in_flight))
            .then(b.same_zone.cmp(&a.same_zone))
            .then(a.node.cmp(&b.node))
    });
    replicas.into_iter().map(|r| r.node).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> NodeId {
        NodeId::parse(&format!(
            "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2X{c}"
        ))
        .unwrap()
    }

    fn r(c: char, loaded: bool, in_flight: usize, same_zone: bool, parked: bool) -> Replica {
        Replica {
            node: id(c),
            loaded,
            in_flight,
            same_zone,
            parked,
        }
    }

    #[test]
    fn loaded_then_least_busy_then_zone_parked_last() {
        let o = order(vec![
            r('a', false, 0, true, false),
            r('b', true, 5, false, false),
            r('c', true, 1, false, false),
            r('d', true, 1, true, false),
            r('e', true, 0, true, true),
        ]);
        assert_eq!(o, vec![id('d'), id('c'), id('b'), id('a'), id('e')]);
    }

    proptest::proptest! {
        /// Requests spread: each goes to the least busy, so counts never
        /// differ by more than one between equal replicas.
        #[test]
        fn least_in_flight_spreads_evenly(n in 1usize..40) {
            let mut counts = [0usize; 2];
            for _ in 0..n {
                let first = order(vec![
                    r('a', true, counts[0], true, false),
                    r('b', true, counts[1], true, false),
                ])[0].clone();
                counts[usize::from(first == id('b'))] += 1;
            }
            proptest::prop_assert!(counts[0].abs_diff(counts[1]) <= 1);
        }
    }
}
