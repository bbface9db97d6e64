//! Compiles the gRPC contract. protoc comes from `protoc-bin-vendored`, so a
//! fresh machine needs no system protoc.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // Build scripts are single-threaded, so setting the variable here is sound.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pbxtokend_descriptor.bin"))
        .compile_protos(
            &[PathBuf::from("proto/pbxtokend/v1/pbxtokend.proto")],
            &[PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
