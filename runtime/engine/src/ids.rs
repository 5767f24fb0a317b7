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
