//! domain-cluster (being written)
