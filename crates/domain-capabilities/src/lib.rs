//! domain-capabilities (being written)
