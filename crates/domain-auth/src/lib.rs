//! domain-auth (being written)
