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
