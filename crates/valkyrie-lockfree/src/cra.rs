//! CRA, the compressed radix arena: a path-compressed radix tree over bytes
//! whose nodes live in one `Vec` and are addressed by `u32` index.
//!
//! Each node stores its edge label: inline when it has at most 4 bytes,
//! otherwise as an offset into one shared label arena. It also stores the
//! first byte of that label, the index and count of its children, and up to
//! two value ids, one for an exact entry and one for a prefix entry ending at
//! that node. The
//! children of a node sit next to each other in the node array, sorted by
//! first byte, so choosing among a few children reads adjacent nodes and the
//! label usually comes with the node. A parallel array of first bytes serves
//! binary search among many children.
//!
//! Prefix entries match by bytes: the prefix `/api` matches `/api`, `/api/v1`
//! and `/apiary`. A caller that wants segment boundaries inserts `/api/` as a
//! prefix and `/api` as an exact entry.
//!
//! Every prefix value records the id of the next shorter prefix value on its
//! path, so a lookup descends once, remembers the deepest prefix value and
//! then follows that chain to visit shorter prefixes without backtracking.
//!
//! The tree is meant to be built from a full set of entries with
//! [`CraBuilder`] (or [`Cra::compact`]) for each snapshot. [`Cra::insert`] and
//! [`Cra::remove`] also work in place: adding a child copies the sibling
//! block to the end of the arena and removing an entry leaves its node and
//! value slot behind, which [`Cra::fragmentation`] reports until the next
//! compaction.

use std::fmt;
use std::mem::size_of;

/// Value id or node index meaning "none".
const NONE: u32 = u32::MAX;

/// Kind of a CRA entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// Matches only a path equal to the entry's path.
    Exact,
    /// Matches every path that starts with the entry's bytes.
    Prefix,
}

/// Maximum length of a label stored inside its node.
const INLINE_LABEL: usize = 4;

/// Children scanned one by one; larger sibling blocks are binary searched
/// through `Cra::first_bytes`.
const LINEAR_SCAN_CHILDREN: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Node {
    /// Label bytes when `label_len <= INLINE_LABEL`, otherwise the label's
    /// offset in the label arena as a little-endian `u32`.
    label: [u8; INLINE_LABEL],
    label_len: u32,
    first_child: u32,
    exact: u32,
    prefix: u32,
    /// At most 256, one child per byte value.
    child_count: u16,
    first_byte: u8,
}

impl Node {
    const fn leaf(label: [u8; INLINE_LABEL], label_len: u32, first_byte: u8) -> Node {
        Node {
            label,
            label_len,
            first_child: 0,
            exact: NONE,
            prefix: NONE,
            child_count: 0,
            first_byte,
        }
    }

    /// Returns the number of label bytes this node keeps in the arena.
    fn arena_label_len(&self) -> usize {
        if self.label_len as usize > INLINE_LABEL {
            self.label_len as usize
        } else {
            0
        }
    }

    fn is_unused(&self) -> bool {
        self.child_count == 0 && self.exact == NONE && self.prefix == NONE
    }
}

/// Arena bytes per node: the node itself plus its first label byte.
const NODE_BYTES: usize = size_of::<Node>() + 1;

/// Path-compressed radix tree over byte strings with exact and prefix
/// entries. See the module documentation.
#[derive(Clone)]
pub struct Cra<V> {
    nodes: Vec<Node>,
    /// First label byte of each node, parallel to `nodes`.
    first_bytes: Vec<u8>,
    labels: Vec<u8>,
    values: Vec<Option<V>>,
    /// For a prefix value: the next shorter prefix value on its path, or
    /// `NONE`. Unused for exact values.
    shorter_prefix: Vec<u32>,
    entries: usize,
    dead_nodes: usize,
    dead_label_bytes: usize,
    dead_values: usize,
}

impl<V> Default for Cra<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Cra<V> {
    /// Creates an empty tree holding only the root node.
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::leaf([0; INLINE_LABEL], 0, 0)],
            first_bytes: vec![0],
            labels: Vec::new(),
            values: Vec::new(),
            shorter_prefix: Vec::new(),
            entries: 0,
            dead_nodes: 0,
            dead_label_bytes: 0,
            dead_values: 0,
        }
    }

    /// Returns the number of entries (exact and prefix).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Returns true if the tree contains no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Returns the number of reachable nodes, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.dead_nodes
    }

    /// Returns the arena size in bytes: node slots with their first label
    /// byte, label bytes, and value slots with their prefix links. Dead space
    /// is included.
    pub fn arena_bytes(&self) -> usize {
        self.nodes.len() * NODE_BYTES
            + self.labels.len()
            + self.values.len() * (size_of::<Option<V>>() + size_of::<u32>())
    }

    /// Returns the arena bytes that no lookup can reach: node slots of
    /// relocated or removed nodes, their label bytes and removed values.
    pub fn dead_bytes(&self) -> usize {
        self.dead_nodes * NODE_BYTES
            + self.dead_label_bytes
            + self.dead_values * (size_of::<Option<V>>() + size_of::<u32>())
    }

    /// Returns dead arena space divided by arena size: 0 after
    /// [`Cra::compact`] or [`CraBuilder::build`], and growing with in-place
    /// inserts and removes.
    pub fn fragmentation(&self) -> f64 {
        self.dead_bytes() as f64 / self.arena_bytes() as f64
    }

    /// Returns the value of the exact entry equal to `path`.
    pub fn exact(&self, path: &[u8]) -> Option<&V> {
        let node = self.find_node(path)?;
        self.value(self.nodes[node as usize].exact)
    }

    /// Returns the value of the prefix entry equal to `path` (not the
    /// longest prefix of it: see [`Cra::longest_prefix`]).
    pub fn prefix_entry(&self, path: &[u8]) -> Option<&V> {
        let node = self.find_node(path)?;
        self.value(self.nodes[node as usize].prefix)
    }

    /// Returns the value of the longest prefix entry that `path` starts
    /// with.
    #[inline]
    pub fn longest_prefix(&self, path: &[u8]) -> Option<&V> {
        self.value(self.descend(path).1)
    }

    /// Visits the entries matching `path`, most specific first: the exact
    /// entry equal to `path`, then prefix entries from longest to shortest.
    /// Stops at and returns the first value that `accept` returns true for.
    #[inline]
    pub fn lookup<F>(&self, path: &[u8], mut accept: F) -> Option<&V>
    where
        F: FnMut(&V) -> bool,
    {
        self.matches(path)
            .map(|(_, value)| value)
            .find(|value| accept(value))
    }

    /// Returns an iterator over the entries matching `path`, most specific
    /// first, with their kind.
    #[inline]
    pub fn matches(&self, path: &[u8]) -> Matches<'_, V> {
        let (exact, prefix) = self.descend(path);
        Matches {
            tree: self,
            exact,
            prefix,
        }
    }

    /// Inserts an entry, returning the value it replaced.
    ///
    /// # Panics
    ///
    /// Panics if the arena would exceed `u32::MAX` nodes, label bytes or
    /// values.
    pub fn insert(&mut self, path: &[u8], kind: MatchKind, value: V) -> Option<V> {
        let mut node = 0usize;
        let mut pos = 0usize;
        // Nearest prefix value on a proper ancestor of `node`.
        let mut above = NONE;
        loop {
            if pos == path.len() {
                return self.set_value(node, kind, value, above);
            }
            let Some(child) = self.find_child(node, path[pos]) else {
                let leaf = self.add_child(node, &path[pos..]);
                if self.nodes[node].prefix != NONE {
                    above = self.nodes[node].prefix;
                }
                return self.set_value(leaf, kind, value, above);
            };
            let label = self.label(child);
            let common = common_prefix_len(label, &path[pos..]);
            if common < label.len() {
                self.split(child, common);
            }
            if self.nodes[node].prefix != NONE {
                above = self.nodes[node].prefix;
            }
            node = child;
            pos += common;
        }
    }

    /// Removes an entry, returning its value. Nodes left without values or
    /// children are unlinked from their parents; their slots stay in the
    /// arena as dead space until [`Cra::compact`].
    pub fn remove(&mut self, path: &[u8], kind: MatchKind) -> Option<V> {
        let mut trail = Vec::new();
        let mut node = 0usize;
        let mut pos = 0usize;
        while pos < path.len() {
            let child = self.find_child(node, path[pos])?;
            let label = self.label(child);
            if !path[pos..].starts_with(label) {
                return None;
            }
            trail.push(node);
            node = child;
            pos += label.len();
        }

        let id = match kind {
            MatchKind::Exact => std::mem::replace(&mut self.nodes[node].exact, NONE),
            MatchKind::Prefix => std::mem::replace(&mut self.nodes[node].prefix, NONE),
        };
        if id == NONE {
            return None;
        }
        if kind == MatchKind::Prefix {
            let shorter = self.shorter_prefix[id as usize];
            self.relink_below(node, shorter);
        }
        self.entries -= 1;
        self.dead_values += 1;
        let value = self.values[id as usize].take();

        // Unlink nodes left without values or children, bottom up.
        while let Some(parent) = trail.pop() {
            if !self.nodes[node].is_unused() {
                break;
            }
            self.unlink_child(parent, node);
            node = parent;
        }
        value
    }

    /// Rebuilds the arena so that it contains only reachable nodes, label bytes
    /// and values, laid out breadth first. Chains of nodes without values
    /// and with one child are merged, so the result is the same as building
    /// the current entries from scratch, and fragmentation drops to 0.
    pub fn compact(&mut self) {
        let mut compacted = Cra::new();
        let mut value_map = vec![NONE; self.values.len()];
        // `order[i]` is the old node copied into new node `i`; the queue is
        // the tail of `order` not yet expanded.
        let mut order = vec![0usize];
        let mut label = Vec::new();

        compacted.nodes[0].exact =
            self.move_value(self.nodes[0].exact, &mut compacted, &mut value_map);
        compacted.nodes[0].prefix =
            self.move_value(self.nodes[0].prefix, &mut compacted, &mut value_map);

        // Copy the children of each copied node as one block at the end.
        let mut next = 0;
        while next < order.len() {
            let old = order[next];
            let start = compacted.nodes.len();
            let children = self.child_range(old);
            for child in children.clone() {
                let mut last = child;
                label.clear();
                label.extend_from_slice(self.label(child));
                // Merge a chain of single children without values into one
                // node, whose label is the concatenation of the chain.
                while self.nodes[last].child_count == 1
                    && self.nodes[last].exact == NONE
                    && self.nodes[last].prefix == NONE
                {
                    last = self.nodes[last].first_child as usize;
                    label.extend_from_slice(self.label(last));
                }
                let mut node = compacted.new_leaf(&label);
                node.exact =
                    self.move_value(self.nodes[last].exact, &mut compacted, &mut value_map);
                node.prefix =
                    self.move_value(self.nodes[last].prefix, &mut compacted, &mut value_map);
                compacted.nodes.push(node);
                compacted.first_bytes.push(self.first_bytes[child]);
                order.push(last);
            }
            compacted.nodes[next].first_child = to_u32(start);
            compacted.nodes[next].child_count = children.len() as u16;
            next += 1;
        }

        // Translate the prefix chains to the new value ids.
        for (old_id, &new_id) in value_map.iter().enumerate() {
            if new_id != NONE {
                let shorter = self.shorter_prefix[old_id];
                compacted.shorter_prefix[new_id as usize] = if shorter == NONE {
                    NONE
                } else {
                    value_map[shorter as usize]
                };
            }
        }

        compacted.entries = self.entries;
        *self = compacted;
    }

    /// Returns every entry as `(path, kind, value)`, in depth-first order
    /// with children sorted by byte, so paths come out sorted.
    pub fn entries(&self) -> Vec<(Vec<u8>, MatchKind, &V)> {
        let mut out = Vec::with_capacity(self.entries);
        // Stack of (node, path length before this node's label).
        let mut stack = vec![(0usize, 0usize)];
        let mut path = Vec::new();
        while let Some((node, depth)) = stack.pop() {
            path.truncate(depth);
            path.extend_from_slice(self.label(node));
            if let Some(value) = self.value(self.nodes[node].exact) {
                out.push((path.clone(), MatchKind::Exact, value));
            }
            if let Some(value) = self.value(self.nodes[node].prefix) {
                out.push((path.clone(), MatchKind::Prefix, value));
            }
            for child in self.child_range(node).rev() {
                stack.push((child, path.len()));
            }
        }
        out
    }

    #[inline(always)]
    fn value(&self, id: u32) -> Option<&V> {
        if id == NONE {
            None
        } else {
            self.values[id as usize].as_ref()
        }
    }

    #[inline(always)]
    fn label(&self, node: usize) -> &[u8] {
        let node = &self.nodes[node];
        let len = node.label_len as usize;
        if len <= INLINE_LABEL {
            &node.label[..len]
        } else {
            let start = u32::from_le_bytes(node.label) as usize;
            &self.labels[start..start + len]
        }
    }

    /// Creates an unlinked leaf node for `label`, storing the label inline
    /// or appending it to the label arena.
    fn new_leaf(&mut self, label: &[u8]) -> Node {
        let first_byte = label.first().copied().unwrap_or(0);
        Node::leaf(self.store_label(label), to_u32(label.len()), first_byte)
    }

    /// Returns the `label` field for `bytes`: the bytes themselves if short,
    /// otherwise their offset after appending them to the arena.
    fn store_label(&mut self, bytes: &[u8]) -> [u8; INLINE_LABEL] {
        if bytes.len() <= INLINE_LABEL {
            let mut inline = [0; INLINE_LABEL];
            inline[..bytes.len()].copy_from_slice(bytes);
            inline
        } else {
            let offset = to_u32(self.labels.len());
            self.labels.extend_from_slice(bytes);
            offset.to_le_bytes()
        }
    }

    /// Returns the `label` field for bytes `start..end` of `node`'s label
    /// without appending to the arena. A part short enough to move inline
    /// leaves its arena bytes dead.
    fn sub_label(&mut self, node: &Node, start: usize, end: usize) -> [u8; INLINE_LABEL] {
        let len = node.label_len as usize;
        if len <= INLINE_LABEL {
            let mut inline = [0; INLINE_LABEL];
            inline[..end - start].copy_from_slice(&node.label[start..end]);
            return inline;
        }
        let offset = u32::from_le_bytes(node.label) as usize;
        if end - start <= INLINE_LABEL {
            let mut inline = [0; INLINE_LABEL];
            inline[..end - start].copy_from_slice(&self.labels[offset + start..offset + end]);
            self.dead_label_bytes += end - start;
            inline
        } else {
            to_u32(offset + start).to_le_bytes()
        }
    }

    fn child_range(&self, node: usize) -> std::ops::Range<usize> {
        let node = &self.nodes[node];
        let start = node.first_child as usize;
        start..start + node.child_count as usize
    }

    #[inline(always)]
    fn find_child(&self, node: usize, byte: u8) -> Option<usize> {
        let node = &self.nodes[node];
        let start = node.first_child as usize;
        let count = usize::from(node.child_count);
        if count <= LINEAR_SCAN_CHILDREN {
            let index = self.nodes[start..start + count]
                .iter()
                .position(|child| child.first_byte == byte)?;
            Some(start + index)
        } else {
            let index = self.first_bytes[start..start + count]
                .binary_search(&byte)
                .ok()?;
            Some(start + index)
        }
    }

    /// Returns the label length of `node` if `rest` starts with its label.
    /// Inline labels are compared byte by byte, which avoids a `memcmp`
    /// call for the short labels that most nodes have.
    #[inline(always)]
    fn match_label(&self, node: usize, rest: &[u8]) -> Option<usize> {
        let node_ref = &self.nodes[node];
        let len = node_ref.label_len as usize;
        if rest.len() < len {
            return None;
        }
        let matched = if len <= INLINE_LABEL {
            (0..len).all(|i| node_ref.label[i] == rest[i])
        } else {
            rest.starts_with(self.label(node))
        };
        matched.then_some(len)
    }

    /// Descends along `path` and returns the exact value id at its end (if
    /// the path ends on a node boundary) and the deepest prefix value id.
    #[inline(always)]
    fn descend(&self, path: &[u8]) -> (u32, u32) {
        let mut node = 0usize;
        let mut pos = 0usize;
        let mut deepest_prefix = self.nodes[0].prefix;
        loop {
            if pos == path.len() {
                return (self.nodes[node].exact, deepest_prefix);
            }
            let Some(child) = self.find_child(node, path[pos]) else {
                return (NONE, deepest_prefix);
            };
            let Some(matched) = self.match_label(child, &path[pos..]) else {
                return (NONE, deepest_prefix);
            };
            pos += matched;
            node = child;
            let prefix = self.nodes[node].prefix;
            if prefix != NONE {
                deepest_prefix = prefix;
            }
        }
    }

    /// Returns the node whose path equals `path`.
    fn find_node(&self, path: &[u8]) -> Option<u32> {
        let mut node = 0usize;
        let mut pos = 0usize;
        while pos < path.len() {
            let child = self.find_child(node, path[pos])?;
            let label = self.label(child);
            if !path[pos..].starts_with(label) {
                return None;
            }
            pos += label.len();
            node = child;
        }
        Some(node as u32)
    }

    fn set_value(&mut self, node: usize, kind: MatchKind, value: V, above: u32) -> Option<V> {
        let current = match kind {
            MatchKind::Exact => self.nodes[node].exact,
            MatchKind::Prefix => self.nodes[node].prefix,
        };
        if current != NONE {
            return self.values[current as usize].replace(value);
        }
        let id = to_u32(self.values.len());
        self.values.push(Some(value));
        self.entries += 1;
        match kind {
            MatchKind::Exact => {
                self.shorter_prefix.push(NONE);
                self.nodes[node].exact = id;
            }
            MatchKind::Prefix => {
                self.shorter_prefix.push(above);
                self.nodes[node].prefix = id;
                self.relink_below(node, id);
            }
        }
        None
    }

    /// Points the nearest prefix values below `node` (those with no other
    /// prefix value between them and `node`) at `shorter`.
    fn relink_below(&mut self, node: usize, shorter: u32) {
        let mut stack: Vec<usize> = self.child_range(node).collect();
        while let Some(current) = stack.pop() {
            let prefix = self.nodes[current].prefix;
            if prefix != NONE {
                self.shorter_prefix[prefix as usize] = shorter;
            } else {
                stack.extend(self.child_range(current));
            }
        }
    }

    /// Splits `node` after `at` label bytes: the node keeps its index and the
    /// first part of the label, and a new single child takes the rest of the
    /// label with the old children and values. No label bytes are copied.
    fn split(&mut self, node: usize, at: usize) {
        let old = self.nodes[node];
        let len = old.label_len as usize;
        let mut tail = old;
        tail.first_byte = self.label(node)[at];
        tail.label = self.sub_label(&old, at, len);
        tail.label_len = to_u32(len - at);
        let head_label = self.sub_label(&old, 0, at);
        let tail_index = to_u32(self.nodes.len());
        self.first_bytes.push(tail.first_byte);
        self.nodes.push(tail);
        self.nodes[node] = Node {
            label: head_label,
            label_len: to_u32(at),
            first_child: tail_index,
            exact: NONE,
            prefix: NONE,
            child_count: 1,
            first_byte: old.first_byte,
        };
    }

    /// Adds a leaf with `label` under `node` and returns its index. The
    /// sibling block grows in place when it ends the arena; otherwise it is
    /// copied to the end and the old block becomes dead space.
    fn add_child(&mut self, node: usize, label: &[u8]) -> usize {
        let leaf = self.new_leaf(label);
        let range = self.child_range(node);
        let at = self.first_bytes[range.clone()].partition_point(|&b| b < label[0]);
        if range.end == self.nodes.len() && !range.is_empty() {
            self.nodes.insert(range.start + at, leaf);
            self.first_bytes.insert(range.start + at, label[0]);
        } else {
            let start = self.nodes.len();
            self.nodes.extend_from_within(range.start..range.start + at);
            self.nodes.push(leaf);
            self.nodes.extend_from_within(range.start + at..range.end);
            self.first_bytes
                .extend_from_within(range.start..range.start + at);
            self.first_bytes.push(label[0]);
            self.first_bytes
                .extend_from_within(range.start + at..range.end);
            self.nodes[node].first_child = to_u32(start);
            self.dead_nodes += range.len();
        }
        self.nodes[node].child_count += 1;
        self.nodes[node].first_child as usize + at
    }

    /// Removes `child` from the sibling block of `parent` by shifting the
    /// later siblings down; the last slot of the block becomes dead.
    fn unlink_child(&mut self, parent: usize, child: usize) {
        let range = self.child_range(parent);
        self.dead_label_bytes += self.nodes[child].arena_label_len();
        self.nodes.copy_within(child + 1..range.end, child);
        self.first_bytes.copy_within(child + 1..range.end, child);
        self.nodes[parent].child_count -= 1;
        self.dead_nodes += 1;
        // Keep the dead slot harmless for `entries` and debug output.
        self.nodes[range.end - 1] = Node::leaf([0; INLINE_LABEL], 0, 0);
    }

    fn move_value(&mut self, id: u32, into: &mut Cra<V>, value_map: &mut [u32]) -> u32 {
        if id == NONE {
            return NONE;
        }
        let new_id = to_u32(into.values.len());
        into.values.push(self.values[id as usize].take());
        into.shorter_prefix.push(NONE);
        value_map[id as usize] = new_id;
        new_id
    }
}

impl<V> fmt::Debug for Cra<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cra")
            .field("entries", &self.entries)
            .field("node_count", &self.node_count())
            .field("arena_bytes", &self.arena_bytes())
            .field("fragmentation", &self.fragmentation())
            .finish_non_exhaustive()
    }
}

/// Iterator over the entries matching a path, most specific first, from
/// [`Cra::matches`].
pub struct Matches<'a, V> {
    tree: &'a Cra<V>,
    exact: u32,
    prefix: u32,
}

impl<'a, V> Iterator for Matches<'a, V> {
    type Item = (MatchKind, &'a V);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let tree = self.tree;
        if self.exact != NONE {
            let id = std::mem::replace(&mut self.exact, NONE);
            if let Some(value) = tree.value(id) {
                return Some((MatchKind::Exact, value));
            }
        }
        while self.prefix != NONE {
            let id = self.prefix;
            self.prefix = tree.shorter_prefix[id as usize];
            if let Some(value) = tree.value(id) {
                return Some((MatchKind::Prefix, value));
            }
        }
        None
    }
}

/// Collects entries and builds a compact [`Cra`] from them.
pub struct CraBuilder<V> {
    tree: Cra<V>,
}

impl<V> Default for CraBuilder<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> CraBuilder<V> {
    /// Creates a builder with no entries.
    pub fn new() -> Self {
        Self { tree: Cra::new() }
    }

    /// Adds an entry, returning the value it replaced.
    pub fn insert(&mut self, path: &[u8], kind: MatchKind, value: V) -> Option<V> {
        self.tree.insert(path, kind, value)
    }

    /// Returns the tree with its arena compacted.
    pub fn build(mut self) -> Cra<V> {
        self.tree.compact();
        self.tree
    }
}

impl<P: AsRef<[u8]>, V> FromIterator<(P, MatchKind, V)> for Cra<V> {
    /// Builds a compact tree; a later duplicate of a path and kind replaces
    /// the earlier one.
    fn from_iter<I: IntoIterator<Item = (P, MatchKind, V)>>(entries: I) -> Self {
        let mut builder = CraBuilder::new();
        for (path, kind, value) in entries {
            builder.insert(path.as_ref(), kind, value);
        }
        builder.build()
    }
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n)
        .ok()
        .filter(|&n| n != NONE)
        .expect("CRA arena is limited to u32::MAX - 1 nodes, label bytes and values")
}

#[cfg(test)]
mod tests {
    use super::*;
    use MatchKind::{Exact, Prefix};

    fn sample() -> Cra<&'static str> {
        [
            ("/", Prefix, "root"),
            ("/api", Exact, "api-exact"),
            ("/api", Prefix, "api"),
            ("/api/v1/", Prefix, "v1"),
            ("/api/v1/users", Exact, "users"),
            ("/static/", Prefix, "static"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn most_specific_first() {
        let tree = sample();
        let all: Vec<_> = tree.matches(b"/api/v1/users").collect();
        assert_eq!(
            all,
            vec![
                (Exact, &"users"),
                (Prefix, &"v1"),
                (Prefix, &"api"),
                (Prefix, &"root")
            ]
        );
        let all: Vec<_> = tree.matches(b"/api").collect();
        assert_eq!(
            all,
            vec![(Exact, &"api-exact"), (Prefix, &"api"), (Prefix, &"root")]
        );
        assert_eq!(tree.longest_prefix(b"/apiary"), Some(&"api"));
        assert_eq!(tree.longest_prefix(b"/stat"), Some(&"root"));
        assert_eq!(tree.longest_prefix(b"nothing"), None);
        assert_eq!(tree.exact(b"/api/v1/"), None);
        assert_eq!(tree.prefix_entry(b"/api/v1/"), Some(&"v1"));
    }

    #[test]
    fn lookup_stops_at_accepted() {
        let tree = sample();
        let mut seen = Vec::new();
        let found = tree.lookup(b"/api/v1/users", |v| {
            seen.push(*v);
            *v == "api"
        });
        assert_eq!(found, Some(&"api"));
        assert_eq!(seen, vec!["users", "v1", "api"]);
        assert_eq!(tree.lookup(b"/api/v1/users", |_| false), None);
    }

    #[test]
    fn build_has_no_fragmentation() {
        let tree = sample();
        assert_eq!(tree.fragmentation(), 0.0);
        assert_eq!(tree.len(), 6);
        assert!(tree.node_count() >= 6);
    }

    #[test]
    fn in_place_updates_fragment_and_compact_restores() {
        let mut tree = sample();
        assert_eq!(tree.insert(b"/api/v2/", Prefix, "v2"), None);
        assert_eq!(tree.insert(b"/api/v3/", Prefix, "v3"), None);
        assert_eq!(
            tree.fragmentation(),
            0.0,
            "a block at the arena's end grows in place"
        );
        assert_eq!(tree.insert(b"/metrics", Exact, "metrics"), None);
        assert!(
            tree.fragmentation() > 0.0,
            "adding a sibling relocates a block"
        );
        assert_eq!(tree.remove(b"/static/", Prefix), Some("static"));
        assert_eq!(tree.remove(b"/static/", Prefix), None);
        let before = tree.fragmentation();
        assert!(before > 0.0);
        assert_eq!(tree.longest_prefix(b"/api/v3/x"), Some(&"v3"));
        assert_eq!(tree.longest_prefix(b"/static/x"), Some(&"root"));

        let entries_before: Vec<_> = tree
            .entries()
            .into_iter()
            .map(|(p, k, v)| (p, k, *v))
            .collect();
        let nodes_before = tree.node_count();
        tree.compact();
        assert_eq!(tree.fragmentation(), 0.0);
        assert!(tree.node_count() <= nodes_before);
        let entries_after: Vec<_> = tree
            .entries()
            .into_iter()
            .map(|(p, k, v)| (p, k, *v))
            .collect();
        assert_eq!(entries_before, entries_after);
        assert_eq!(tree.longest_prefix(b"/api/v3/x"), Some(&"v3"));
    }

    #[test]
    fn compact_merges_single_child_chains() {
        let mut tree = Cra::new();
        tree.insert(b"/a/b/c", Exact, 1);
        tree.insert(b"/a/b/d", Exact, 2);
        tree.remove(b"/a/b/d", Exact);
        // Root, "/a/b/" and "c" remain reachable before compaction.
        assert_eq!(tree.node_count(), 3);
        tree.compact();
        assert_eq!(tree.node_count(), 2, "root and one leaf \"/a/b/c\"");
        assert_eq!(tree.exact(b"/a/b/c"), Some(&1));
    }

    #[test]
    fn removing_prefix_relinks_longer_ones() {
        let mut tree = sample();
        assert_eq!(tree.remove(b"/api", Prefix), Some("api"));
        let all: Vec<_> = tree.matches(b"/api/v1/x").map(|(_, v)| *v).collect();
        assert_eq!(all, vec!["v1", "root"]);
        tree.insert(b"/api", Prefix, "api-again");
        let all: Vec<_> = tree.matches(b"/api/v1/x").map(|(_, v)| *v).collect();
        assert_eq!(all, vec!["v1", "api-again", "root"]);
    }

    #[test]
    fn empty_path_entries() {
        let mut tree = Cra::new();
        tree.insert(b"", Exact, 1);
        tree.insert(b"", Prefix, 2);
        assert_eq!(tree.exact(b""), Some(&1));
        assert_eq!(tree.longest_prefix(b"anything"), Some(&2));
        assert_eq!(tree.matches(b"").count(), 2);
    }

    #[test]
    fn wide_fanout_uses_sorted_children() {
        let mut builder = CraBuilder::new();
        for b in (0..=255u8).rev() {
            builder.insert(&[b, b'x'], Exact, b);
        }
        let tree = builder.build();
        for b in 0..=255u8 {
            assert_eq!(tree.exact(&[b, b'x']), Some(&b));
            assert_eq!(tree.exact(&[b]), None);
        }
        assert_eq!(tree.node_count(), 257);
    }
}
