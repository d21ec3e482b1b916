//! domain-scheduler (being written)
