//! What an audit decides, from the listings of a domain's nodes alone: which copies to
//! make and which to remove so that every item keeps exactly the copies its domain asks
//! for. Pure: no clock, no network, so every rule has a test.

use std::collections::BTreeMap;

/// One node's items of the domain, as its listing said: item id → root (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listing {
    /// The node's peer id.
    pub node: String,
    /// Whether the node may be given copies (it offers `/store/v1`).
    pub takes_copies: bool,
    /// Its items: id → root. An item without a root is a version of its own ("").
    pub items: BTreeMap<String, String>,
}

/// One copy to make: the item `id`, as `from` holds it with root `root`, onto `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Copy {
    pub from: String,
    pub to: String,
    pub id: String,
    pub root: String,
}

/// One copy to remove: `id` from `node`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Removal {
    pub node: String,
    pub id: String,
}

/// An audit's decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub copies: Vec<Copy>,
    pub removals: Vec<Removal>,
    /// Items that keep fewer copies than asked after the plan: not enough nodes.
    pub short: usize,
}

impl Plan {
    /// Whether the domain is as it should be.
    pub(crate) fn is_empty(&self) -> bool {
        self.copies.is_empty() && self.removals.is_empty()
    }
}

/// The plan for a domain keeping `copies` copies of each item, given the listings of its
/// nodes in order of trust (`listings[0]` first: the node registered without a break for
/// the longest) and `deleted`, which says whether an id was deleted by a client.
///
/// The rules, per item id:
/// - deleted: removed wherever it is;
/// - versions disagree (a node was away during an upsert, or missed the removal of an
///   older version): the version most nodes hold is the item, and between versions held
///   by as many, the one the most trusted node holds (a node that was away is trusted
///   least); the others are stale: overwritten by a copy where a copy is due, removed
///   elsewhere;
/// - fewer than `copies` holders of the item: copies from its most trusted holder onto the
///   nodes that take copies and hold the fewest items (stale holders first);
/// - more: the least trusted holders' copies removed.
pub(crate) fn plan(copies: u32, listings: &[Listing], deleted: impl Fn(&str) -> bool) -> Plan {
    let copies = usize::try_from(copies).unwrap_or(usize::MAX).max(1);
    // id → (node index, root), nodes in order of trust.
    let mut holders: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
    for (index, listing) in listings.iter().enumerate() {
        for (id, root) in &listing.items {
            holders
                .entry(id.as_str())
                .or_default()
                .push((index, root.as_str()));
        }
    }
    // Items per node, counting the copies planned so far: where the next copy goes.
    let mut load: Vec<usize> = listings.iter().map(|l| l.items.len()).collect();
    let mut plan = Plan::default();
    for (id, held) in holders {
        let remove = |plan: &mut Plan, index: usize| {
            plan.removals.push(Removal {
                node: listings[index].node.clone(),
                id: id.to_owned(),
            });
        };
        if deleted(id) {
            held.iter().for_each(|&(index, _)| remove(&mut plan, index));
            continue;
        }
        let current = current_version(&held);
        let (good, stale): (Vec<_>, Vec<_>) = held.iter().partition(|(_, root)| *root == current);
        let good: Vec<usize> = good.into_iter().map(|&(index, _)| index).collect();
        let mut stale: Vec<usize> = stale.into_iter().map(|&(index, _)| index).collect();
        if good.len() > copies {
            for &index in &good[copies..] {
                remove(&mut plan, index);
                load[index] -= 1;
            }
        }
        let mut missing = copies.saturating_sub(good.len());
        // Stale holders first (the copy overwrites their version), then the least loaded
        // of the others; ties go to the more trusted node.
        let mut targets: Vec<usize> = stale
            .iter()
            .copied()
            .filter(|&index| listings[index].takes_copies)
            .collect();
        let mut others: Vec<usize> = (0..listings.len())
            .filter(|index| listings[*index].takes_copies && !held.iter().any(|h| h.0 == *index))
            .collect();
        others.sort_by_key(|&index| (load[index], index));
        targets.extend(others);
        for to in targets.into_iter().take(missing) {
            plan.copies.push(Copy {
                from: listings[good[0]].node.clone(),
                to: listings[to].node.clone(),
                id: id.to_owned(),
                root: current.to_owned(),
            });
            stale.retain(|&index| index != to);
            if !held.iter().any(|h| h.0 == to) {
                load[to] += 1;
            }
            missing -= 1;
        }
        if missing > 0 {
            plan.short += 1;
        }
        stale.into_iter().for_each(|index| remove(&mut plan, index));
    }
    plan
}

/// The version of an item that stands: held by the most nodes, then by the most trusted.
/// `held` is in order of trust.
fn current_version<'a>(held: &[(usize, &'a str)]) -> &'a str {
    let mut best = held[0].1;
    let mut best_count = 0;
    for &(_, root) in held {
        let count = held.iter().filter(|(_, r)| *r == root).count();
        // `>`: a later (less trusted) holder's version wins only with more holders.
        if count > best_count {
            best = root;
            best_count = count;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(node: &str, items: &[(&str, &str)]) -> Listing {
        Listing {
            node: node.to_owned(),
            takes_copies: true,
            items: items
                .iter()
                .map(|(id, root)| ((*id).to_owned(), (*root).to_owned()))
                .collect(),
        }
    }

    fn copy(from: &str, to: &str, id: &str, root: &str) -> Copy {
        Copy {
            from: from.into(),
            to: to.into(),
            id: id.into(),
            root: root.into(),
        }
    }

    fn removal(node: &str, id: &str) -> Removal {
        Removal {
            node: node.into(),
            id: id.into(),
        }
    }

    const KEPT: fn(&str) -> bool = |_| false;

    #[test]
    fn a_domain_with_every_copy_in_place_needs_nothing() {
        let listings = [
            listing("a", &[("x", "r1"), ("y", "r2")]),
            listing("b", &[("x", "r1")]),
            listing("c", &[("y", "r2")]),
        ];
        assert_eq!(plan(2, &listings, KEPT), Plan::default());
    }

    #[test]
    fn an_item_with_too_few_copies_is_copied_to_the_least_loaded_node() {
        let listings = [
            listing("a", &[("x", "r1"), ("y", "r2"), ("z", "r3")]),
            listing("b", &[("y", "r2"), ("z", "r3")]),
            listing("c", &[]),
        ];
        let plan = plan(2, &listings, KEPT);
        assert_eq!(plan.copies, vec![copy("a", "c", "x", "r1")]);
        assert!(plan.removals.is_empty());
    }

    #[test]
    fn copies_spread_over_the_nodes_as_they_are_planned() {
        let listings = [
            listing("a", &[("w", "r0"), ("x", "r1")]),
            listing("b", &[]),
            listing("c", &[]),
        ];
        let plan = plan(2, &listings, KEPT);
        assert_eq!(
            plan.copies,
            vec![copy("a", "b", "w", "r0"), copy("a", "c", "x", "r1")]
        );
    }

    #[test]
    fn an_item_with_too_many_copies_loses_those_of_the_least_trusted_nodes() {
        let listings = [
            listing("a", &[("x", "r1")]),
            listing("b", &[("x", "r1")]),
            listing("c", &[("x", "r1")]),
        ];
        let plan = plan(2, &listings, KEPT);
        assert!(plan.copies.is_empty());
        assert_eq!(plan.removals, vec![removal("c", "x")]);
        // One copy asked for: only the most trusted keeps it.
        let plan = super::plan(1, &listings, KEPT);
        assert_eq!(plan.removals, vec![removal("b", "x"), removal("c", "x")]);
    }

    #[test]
    fn a_stale_version_is_overwritten_where_a_copy_is_due_and_removed_elsewhere() {
        // `c` was away during an upsert of x: it holds the older root.
        let listings = [
            listing("a", &[("x", "new")]),
            listing("b", &[]),
            listing("c", &[("x", "old")]),
        ];
        let plan = plan(2, &listings, KEPT);
        assert_eq!(plan.copies, vec![copy("a", "c", "x", "new")]);
        assert!(plan.removals.is_empty());
        // With both copies in place, the stale one only goes.
        let listings = [
            listing("a", &[("x", "new")]),
            listing("b", &[("x", "new")]),
            listing("c", &[("x", "old")]),
        ];
        let plan = super::plan(2, &listings, KEPT);
        assert!(plan.copies.is_empty());
        assert_eq!(plan.removals, vec![removal("c", "x")]);
    }

    #[test]
    fn the_version_most_nodes_hold_is_the_item() {
        // `a` missed the removal of the older version, though it stayed registered.
        let listings = [
            listing("a", &[("x", "old")]),
            listing("b", &[("x", "new")]),
            listing("c", &[("x", "new")]),
        ];
        let plan = plan(2, &listings, KEPT);
        assert!(plan.copies.is_empty());
        assert_eq!(plan.removals, vec![removal("a", "x")]);
    }

    #[test]
    fn between_versions_held_by_as_many_nodes_the_most_trusted_decides() {
        let listings = [
            listing("a", &[("x", "new")]),
            listing("b", &[]),
            listing("c", &[("x", "old")]),
        ];
        let plan = plan(2, &listings, KEPT);
        assert_eq!(plan.copies, vec![copy("a", "c", "x", "new")]);
        let listings = [listing("a", &[("x", "new")]), listing("b", &[("x", "old")])];
        let plan = super::plan(1, &listings, KEPT);
        assert_eq!(plan.removals, vec![removal("b", "x")]);
    }

    #[test]
    fn a_deleted_item_is_removed_everywhere_and_never_copied() {
        let listings = [
            listing("a", &[("x", "r1"), ("y", "r2")]),
            listing("b", &[("y", "r2")]),
            listing("c", &[]),
        ];
        let plan = plan(2, &listings, |id| id == "x");
        assert!(plan.copies.is_empty());
        assert_eq!(plan.removals, vec![removal("a", "x")]);
    }

    #[test]
    fn a_node_that_takes_no_copies_is_never_a_target() {
        let mut reader = listing("b", &[]);
        reader.takes_copies = false;
        let listings = [listing("a", &[("x", "r1")]), reader];
        let plan = plan(2, &listings, KEPT);
        assert!(plan.copies.is_empty());
        assert_eq!(plan.short, 1);
    }

    #[test]
    fn with_fewer_nodes_than_copies_every_node_gets_one() {
        let listings = [
            listing("a", &[("x", "r1")]),
            listing("b", &[]),
            listing("c", &[]),
        ];
        let plan = plan(5, &listings, KEPT);
        assert_eq!(
            plan.copies,
            vec![copy("a", "b", "x", "r1"), copy("a", "c", "x", "r1")]
        );
        assert_eq!(plan.short, 1);
    }
}
