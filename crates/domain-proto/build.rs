//! Compiles the `.proto` files with protox, a protobuf compiler written in Rust,
//! so that no system `protoc` is needed to build this crate.

use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "proto/discovery.proto",
    "proto/domain_data.proto",
    "proto/task.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    prost_build::Config::new()
        .out_dir(&out_dir)
        // Ordered maps make encodings deterministic (job ids hash encoded requests).
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
