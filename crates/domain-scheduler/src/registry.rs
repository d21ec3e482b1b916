//! The node registry: who joined with which capabilities, how busy each node is, and when it was
//! last seen.
//!
//! Assignment needs "the least loaded node that has this endpoint with free capacity" many times
//! per second over thousands of nodes, so the registry keeps, per endpoint, an ordered set of the
//! nodes that still have room for it, keyed by `(load, node id)`: the first entry that meets a
//! task's minimums is the answer, and ties go to the smallest node id.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use domain_proto::discovery::Node;

/// The most capabilities one node may list: real nodes list a handful, and the registry checks
/// them pairwise for duplicates.
pub const MAX_CAPABILITIES: usize = 256;

/// Why a node's registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The node id is empty.
    #[error("node {name:?} has an empty id")]
    EmptyId {
        /// The node's name.
        name: String,
    },
    /// The node lists more than [`MAX_CAPABILITIES`] capabilities.
    #[error("node {node} lists {count} capabilities, more than the limit of {MAX_CAPABILITIES}")]
    TooManyCapabilities {
        /// The node id.
        node: String,
        /// Capabilities listed.
        count: usize,
    },
    /// A capability has an empty endpoint.
    #[error("node {node} lists a capability with an empty endpoint")]
    EmptyEndpoint {
        /// The node id.
        node: String,
    },
    /// The node lists the same endpoint twice.
    #[error("node {node} lists endpoint {endpoint} more than once")]
    DuplicateEndpoint {
        /// The node id.
        node: String,
        /// The repeated endpoint.
        endpoint: String,
    },
    /// A capacity below -1 (-1 means unlimited).
    #[error("node {node} gives endpoint {endpoint} capacity {capacity} (expected -1 or more)")]
    InvalidCapacity {
        /// The node id.
        node: String,
        /// The endpoint.
        endpoint: String,
        /// The capacity given.
        capacity: i32,
    },
    /// A negative CPU or GPU count.
    #[error("node {node} advertises negative {resource} count {value}")]
    NegativeResource {
        /// The node id.
        node: String,
        /// `"cpu"` or `"gpu"`.
        resource: &'static str,
        /// The count given.
        value: i32,
    },
}

/// One capability of a registered node and the tasks of it running there.
#[derive(Debug, Clone)]
struct Slot {
    endpoint: Arc<str>,
    /// -1: unlimited. 0 for an endpoint the node no longer offers but still runs tasks of.
    capacity: i32,
    running: u32,
}

impl Slot {
    fn has_room(&self) -> bool {
        self.capacity < 0 || i64::from(self.running) < i64::from(self.capacity)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    node: Node,
    slots: Vec<Slot>,
    /// Tasks running on the node, over all its endpoints.
    load: u32,
    cpu: u32,
    gpu: u32,
    last_seen: u64,
}

/// What a task asks of a node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs<'a> {
    pub(crate) endpoint: &'a str,
    pub(crate) min_cpu: u32,
    pub(crate) min_gpu: u32,
    /// The task names its receiver: only that node will do.
    pub(crate) only: Option<&'a str>,
    /// The node that ran the previous attempt: chosen only if no other node fits.
    pub(crate) avoid: Option<&'a str>,
}

/// The registered nodes, their load and liveness (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    nodes: HashMap<Arc<str>, Entry>,
    /// Per endpoint, the nodes with room for one more task of it, by (load, id).
    free: HashMap<Arc<str>, BTreeSet<(u32, Arc<str>)>>,
    /// Bumped whenever room appears (a join, a finished task), so that tasks waiting for
    /// resources are looked at again only when that can change the answer.
    generation: u64,
}

impl Registry {
    /// Registers `node`, or replaces the registration of a node with the same id.
    ///
    /// A rejoining node keeps its running tasks; an endpoint it no longer lists keeps counting
    /// them until they end, but takes no new ones.
    pub(crate) fn join(&mut self, node: Node, now: u64) -> Result<(), JoinError> {
        check(&node)?;
        let id: Arc<str> = Arc::from(node.id.as_str());
        let mut old_slots = Vec::new();
        let mut load = 0;
        if let Some(old) = self.nodes.get(&id) {
            old_slots = old.slots.clone();
            load = old.load;
            self.unindex(&id);
        }
        let mut slots: Vec<Slot> = node
            .capabilities
            .iter()
            .map(|cap| {
                let running = old_slots
                    .iter()
                    .find(|s| *s.endpoint == *cap.endpoint)
                    .map_or(0, |s| s.running);
                Slot {
                    endpoint: self.intern(&cap.endpoint),
                    capacity: cap.capacity,
                    running,
                }
            })
            .collect();
        for old in old_slots {
            if old.running > 0 && !slots.iter().any(|s| s.endpoint == old.endpoint) {
                slots.push(Slot { capacity: 0, ..old });
            }
        }
        let entry = Entry {
            cpu: node.cpu.map_or(0, |c| c.max(0).unsigned_abs()),
            gpu: node.gpu.map_or(0, |g| g.max(0).unsigned_abs()),
            node,
            slots,
            load,
            last_seen: now,
        };
        self.nodes.insert(id.clone(), entry);
        self.index(&id);
        self.generation += 1;
        Ok(())
    }

    /// Removes a node; returns its registration if it was known.
    pub(crate) fn leave(&mut self, id: &str) -> Option<Node> {
        let key: Arc<str> = self.nodes.get_key_value(id)?.0.clone();
        self.unindex(&key);
        self.nodes.remove(&key).map(|entry| entry.node)
    }

    /// Records that the node was seen at `now`; false if it is not registered.
    pub(crate) fn heartbeat(&mut self, id: &str, now: u64) -> bool {
        match self.nodes.get_mut(id) {
            Some(entry) => {
                entry.last_seen = entry.last_seen.max(now);
                true
            }
            None => false,
        }
    }

    /// Ids of the nodes not seen for `timeout` milliseconds or more at `now`, in id order.
    pub(crate) fn unseen_for(&self, timeout: u64, now: u64) -> Vec<Arc<str>> {
        let mut ids: Vec<Arc<str>> = self
            .nodes
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.last_seen) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.nodes.contains_key(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id).map(|e| &e.node)
    }

    /// The registered nodes, in id order.
    pub(crate) fn nodes(&self) -> Vec<&Node> {
        let mut nodes: Vec<&Node> = self.nodes.values().map(|e| &e.node).collect();
        nodes.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Tasks running on `id`, over all its endpoints.
    pub(crate) fn load(&self, id: &str) -> Option<u32> {
        self.nodes.get(id).map(|e| e.load)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The node that should run a task with these needs, if any has room (see the module docs).
    pub(crate) fn pick(&self, needs: &Needs<'_>) -> Option<Arc<str>> {
        if let Some(only) = needs.only {
            let (id, entry) = self.nodes.get_key_value(only)?;
            let slot = entry
                .slots
                .iter()
                .find(|s| *s.endpoint == *needs.endpoint)?;
            let fits = slot.has_room() && entry.cpu >= needs.min_cpu && entry.gpu >= needs.min_gpu;
            return fits.then(|| id.clone());
        }
        let candidates = self.free.get(needs.endpoint)?;
        let mut fallback = None;
        for (_, id) in candidates {
            let Some(entry) = self.nodes.get(id) else {
                continue;
            };
            if entry.cpu < needs.min_cpu || entry.gpu < needs.min_gpu {
                continue;
            }
            if needs.avoid == Some(&**id) {
                fallback = Some(id.clone());
                continue;
            }
            return Some(id.clone());
        }
        fallback
    }

    /// Counts one more task of `endpoint` running on `id`.
    pub(crate) fn acquire(&mut self, id: &str, endpoint: &str) {
        self.adjust(id, endpoint, true);
    }

    /// Counts one task of `endpoint` on `id` as ended; a no-op for a node that left.
    pub(crate) fn release(&mut self, id: &str, endpoint: &str) {
        self.adjust(id, endpoint, false);
    }

    fn adjust(&mut self, id: &str, endpoint: &str, acquire: bool) {
        let Some(key) = self.nodes.get_key_value(id).map(|(k, _)| k.clone()) else {
            return;
        };
        self.unindex(&key);
        if let Some(entry) = self.nodes.get_mut(&key) {
            let slot = match entry
                .slots
                .iter_mut()
                .position(|s| *s.endpoint == *endpoint)
            {
                Some(i) => &mut entry.slots[i],
                None => {
                    // Only reached when a restored task names an endpoint its node no longer
                    // offers: count it so that its end balances the books.
                    let endpoint: Arc<str> = Arc::from(endpoint);
                    entry.slots.push(Slot {
                        endpoint,
                        capacity: 0,
                        running: 0,
                    });
                    let last = entry.slots.len() - 1;
                    &mut entry.slots[last]
                }
            };
            if acquire {
                slot.running += 1;
                entry.load += 1;
            } else if slot.running > 0 {
                slot.running -= 1;
                entry.load = entry.load.saturating_sub(1);
                self.generation += 1;
            }
        }
        self.index(&key);
    }

    fn index(&mut self, id: &Arc<str>) {
        let Some(entry) = self.nodes.get(id) else {
            return;
        };
        for slot in entry.slots.iter().filter(|s| s.has_room()) {
            self.free
                .entry(slot.endpoint.clone())
                .or_default()
                .insert((entry.load, id.clone()));
        }
    }

    fn unindex(&mut self, id: &Arc<str>) {
        let Some(entry) = self.nodes.get(id) else {
            return;
        };
        for slot in &entry.slots {
            if let Some(set) = self.free.get_mut(&slot.endpoint) {
                set.remove(&(entry.load, id.clone()));
                if set.is_empty() {
                    self.free.remove(&slot.endpoint);
                }
            }
        }
    }

    /// Shares one allocation per endpoint name between all nodes that offer it.
    fn intern(&self, endpoint: &str) -> Arc<str> {
        self.free
            .get_key_value(endpoint)
            .map_or_else(|| Arc::from(endpoint), |(k, _)| k.clone())
    }
}

fn check(node: &Node) -> Result<(), JoinError> {
    if node.id.is_empty() {
        return Err(JoinError::EmptyId {
            name: node.name.clone(),
        });
    }
    for (resource, value) in [("cpu", node.cpu), ("gpu", node.gpu)] {
        if let Some(value) = value.filter(|v| *v < 0) {
            return Err(JoinError::NegativeResource {
                node: node.id.clone(),
                resource,
                value,
            });
        }
    }
    if node.capabilities.len() > MAX_CAPABILITIES {
        return Err(JoinError::TooManyCapabilities {
            node: node.id.clone(),
            count: node.capabilities.len(),
        });
    }
    for (i, cap) in node.capabilities.iter().enumerate() {
        if cap.endpoint.is_empty() {
            return Err(JoinError::EmptyEndpoint {
                node: node.id.clone(),
            });
        }
        if cap.capacity < -1 {
            return Err(JoinError::InvalidCapacity {
                node: node.id.clone(),
                endpoint: cap.endpoint.clone(),
                capacity: cap.capacity,
            });
        }
        if node.capabilities[..i]
            .iter()
            .any(|c| c.endpoint == cap.endpoint)
        {
            return Err(JoinError::DuplicateEndpoint {
                node: node.id.clone(),
                endpoint: cap.endpoint.clone(),
            });
        }
    }
    Ok(())
}
