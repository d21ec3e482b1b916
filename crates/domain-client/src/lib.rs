//! The client library (placeholder)
