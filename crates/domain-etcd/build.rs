//! Compiles etcd's v3 API (`proto/`) with protox, a protobuf compiler written in Rust, so
//! that no system `protoc` is needed; tonic generates the clients, no server.

use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "proto/kv.proto",
    "proto/auth.proto",
    "proto/rpc.proto",
    "proto/v3election.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(out_dir)
        .compile_fds(descriptors)?;
    Ok(())
}
