//! Identifier newtypes shared by the engine, its drivers and the wire format.

use std::fmt;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_newtype!(
    /// A process's index in the job (its rank in the world communicator).
    Rank(u32)
);
id_newtype!(
    /// A message tag chosen by the application; never negative on the wire.
    Tag(i32)
);
id_newtype!(
    /// A communication context: each communicator owns one for point-to-point traffic and one
    /// for its collectives, so their messages never match each other.
    ContextId(u32)
);
id_newtype!(
    /// Per-(sender, receiver) sequence number of a matchable envelope (eager or RTS).
    Seq(u64)
);
id_newtype!(
    /// A request handle issued by the engine; unique for the engine's lifetime.
    ReqId(u64)
);
id_newtype!(
    /// Identifies one received frame whose payload the driver is still placing.
    FrameToken(u64)
);

/// A fast hasher for the engine's maps, whose keys are small integers the engine issues
/// itself (never chosen by a peer, so hash flooding is not a concern). Multiplicative
/// hashing as in Firefox's and rustc's `FxHasher`.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// `BuildHasher` for [`IdHasher`].
pub type IdBuildHasher = std::hash::BuildHasherDefault<IdHasher>;

/// A hash map keyed by engine-issued ids.
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdBuildHasher>;

/// An id issued from an increasing counter: its raw value keys a [`SeqMap`].
pub trait SeqKey: Copy + Eq + std::hash::Hash {
    /// The raw counter value.
    fn raw(self) -> u64;
}

impl SeqKey for u64 {
    fn raw(self) -> u64 {
        self
    }
}

impl SeqKey for ReqId {
    fn raw(self) -> u64 {
        self.0
    }
}

impl SeqKey for FrameToken {
    fn raw(self) -> u64 {
        self.0
    }
}

/// A map for ids handed out by a counter and dropped soon after: requests, frame tokens.
///
/// A direct-mapped table (slot `id mod slots`) in front of an overflow [`IdMap`]. Live ids
/// are mostly a window of recent counter values, so they land in distinct slots and every
/// operation is an index and a compare; an id whose slot is taken (a long-lived request) goes
/// to the overflow map. The table doubles when the overflow outgrows it, so a burst of many
/// outstanding requests costs no more than a hash map.
#[derive(Clone, Debug)]
pub struct SeqMap<K, V> {
    /// `slots.len()` is a power of two.
    slots: Vec<Option<(K, V)>>,
    overflow: IdMap<K, V>,
    /// Entries in `slots`.
    direct: usize,
}

impl<K: SeqKey, V> Default for SeqMap<K, V> {
    fn default() -> Self {
        Self::with_slots(64)
    }
}

impl<K: SeqKey, V> SeqMap<K, V> {
    fn with_slots(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| None).collect(),
            overflow: IdMap::default(),
            direct: 0,
        }
    }

    fn slot(&self, k: K) -> usize {
        // The mask keeps the value below `slots.len()`, a usize.
        (k.raw() & (self.slots.len() as u64 - 1)) as usize
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.direct + self.overflow.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts `v` under `k`, returning the value it replaces.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let i = self.slot(k);
        match &mut self.slots[i] {
            Some((sk, sv)) if *sk == k => return Some(std::mem::replace(sv, v)),
            s @ None => {
                if !self.overflow.is_empty()
                    && let Some(old) = self.overflow.remove(&k)
                {
                    self.overflow.insert(k, v);
                    return Some(old);
                }
                *s = Some((k, v));
                self.direct += 1;
                return None;
            }
            Some(_) => {}
        }
        let old = self.overflow.insert(k, v);
        if self.overflow.len() > self.slots.len() {
            self.grow();
        }
        old
    }

    /// Doubles the table and moves every entry to its new place.
    fn grow(&mut self) {
        let mut bigger = Self::with_slots(self.slots.len() * 2);
        let direct = self.slots.drain(..).flatten();
        for (k, v) in direct.chain(self.overflow.drain()) {
            bigger.insert(k, v);
        }
        *self = bigger;
    }

    /// The value under `k`.
    pub fn get(&self, k: &K) -> Option<&V> {
        match &self.slots[self.slot(*k)] {
            Some((sk, v)) if sk == k => Some(v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.get(k),
        }
    }

    /// The value under `k`, mutably.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.slot(*k);
        match &mut self.slots[i] {
            Some((sk, v)) if sk == k => Some(v),
            _ => self.overflow.get_mut(k),
        }
    }

    /// Whether `k` has a value.
    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    /// Removes and returns the value under `k`.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.slot(*k);
        match &self.slots[i] {
            Some((sk, _)) if sk == k => {
                self.direct -= 1;
                self.slots[i].take().map(|(_, v)| v)
            }
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.remove(k),
        }
    }

    /// The value under `k`, inserting `f()` first if there is none.
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        if !self.contains_key(&k) {
            self.insert(k, f());
        }
        self.get_mut(&k)
            .expect("an entry was inserted under this key just above")
    }

    /// Keeps only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for s in &mut self.slots {
            if let Some((k, v)) = s
                && !keep(k, v)
            {
                *s = None;
                self.direct -= 1;
            }
        }
        self.overflow.retain(|k, v| keep(k, v));
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .flatten()
            .map(|(k, v)| (k, v))
            .chain(self.overflow.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map agrees with a `HashMap` under random inserts and removals of recent and old ids.
    #[test]
    fn seq_map_matches_a_hash_map() {
        let mut m: SeqMap<u64, u64> = SeqMap::default();
        let mut r = std::collections::HashMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = 0u64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 7 {
                0..=2 => {
                    next += 1 + x % 3;
                    assert_eq!(m.insert(next, step), r.insert(next, step));
                }
                3 | 4 => {
                    let k = next.saturating_sub(x % 200);
                    assert_eq!(m.remove(&k), r.remove(&k));
                }
                5 => {
                    let k = next.saturating_sub(x % 5000);
                    assert_eq!(m.get(&k), r.get(&k));
                    if let Some(v) = m.get_mut(&k) {
                        *v += 1;
                        *r.get_mut(&k).unwrap() += 1;
                    }
                }
                _ => {
                    let k = x % (next + 1);
                    *m.get_or_insert_with(k, || 7) += 1;
                    *r.entry(k).or_insert(7) += 1;
                }
            }
            assert_eq!(m.len(), r.len());
            if step % 50_000 == 0 {
                m.retain(|k, _| k % 3 != 0);
                r.retain(|k, _| k % 3 != 0);
            }
        }
        let mut a: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
        let mut b: Vec<_> = r.into_iter().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert!(m.slots.len() > 64, "grew to {}", m.slots.len());
    }
}
