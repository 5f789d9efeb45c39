//! Lock-free structures of the routing engine: the fingerprinted exact-match
//! table (FIT), the compressed radix arena (CRA) and snapshot publication
//! (RCU). Nothing here does I/O.
